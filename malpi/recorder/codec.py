"""Encoding of what a step stores: frames as JPEG, probabilities as float32 bytes.

OpenCV is imported on first use so that listing or deleting episodes, and
importing the reader, do not need it. Frames are RGB everywhere in MaLPi;
OpenCV works in BGR, so the conversion happens here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_JPEG_QUALITY = 90


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "encoding or decoding recorded frames needs OpenCV: "
            "pip install opencv-python-headless (it is in malpi[robot], [sim] and [train])"
        ) from exc
    return cv2


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """An RGB uint8 H x W x 3 image as JPEG bytes."""
    cv2 = _cv2()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    # Full-resolution colour (4:4:4): at 160 x 120 the default 4:2:0 subsampling
    # smears thin coloured lines such as lane markings, which the policy needs.
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_444"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a frame of shape {image.shape} as JPEG")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes as an RGB uint8 H x W x 3 image; ValueError if they do not decode."""
    cv2 = _cv2()
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{len(data)} bytes that are not a decodable JPEG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def check_frame(image: object) -> np.ndarray:
    """The frame if it is an RGB uint8 H x W x 3 array; ValueError naming the problem otherwise."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"a frame must be a numpy array, not {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a frame must be H x W x 3 uint8 RGB, not {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"a frame must not be empty, got shape {image.shape}")
    return image


def pack_probs(probs: np.ndarray | Sequence[float] | None) -> bytes | None:
    """Probabilities as little-endian float32 bytes (None stays None)."""
    if probs is None:
        return None
    return np.asarray(probs, dtype="<f4").reshape(-1).tobytes()


def unpack_probs(data: bytes | None) -> np.ndarray | None:
    if data is None:
        return None
    return np.frombuffer(data, dtype="<f4").astype(np.float32)
