"""The Raspberry Pi camera through picamera2 (libcamera).

picamera2 ships with Raspberry Pi OS as an apt package (``python3-picamera2``)
and needs libcamera's Python bindings, so it cannot be installed from PyPI on
a PC: it is imported only when the camera is started. A virtualenv on the Pi
must be created with ``--system-site-packages`` to see it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from malpi.camera.capture import CameraError, CaptureCamera

log = logging.getLogger(__name__)

# Beyond this a SensorTimestamp is taken to be on an unexpected clock, not merely old.
_MAX_TIMESTAMP_AGE = 5.0


class Picamera2Camera(CaptureCamera):
    """Frames from a Pi camera module via picamera2's video configuration.

    The ISP scales the sensor image to ``capture_width x capture_height``;
    the capture thread then crops and resizes that to the policy's input.
    """

    # libcamera names formats like DRM fourccs, little-endian: picamera2's "RGB888"
    # is stored B, G, R per pixel (OpenCV's BGR). The transform swaps it to RGB.
    channel_order = "BGR"
    pixel_format = "RGB888"

    def __init__(
        self,
        camera_num: int = 0,
        *,
        height: int = 120,
        width: int = 160,
        crop: tuple[float, float, float, float] | None = None,
        hflip: bool = False,
        vflip: bool = False,
        capture_width: int = 640,
        capture_height: int = 480,
        fps: float = 30.0,
        buffer_count: int = 4,
        frame_timeout: float = 2.0,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(
            height=height, width=width, crop=crop, hflip=hflip, vflip=vflip, on_error=on_error
        )
        if isinstance(camera_num, bool) or not isinstance(camera_num, int) or camera_num < 0:
            raise ValueError(f"camera_num must be a non-negative integer, got {camera_num!r}")
        for name, v in (("capture_width", capture_width), ("capture_height", capture_height)):
            # picamera2 rejects odd sizes.
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 2:
                raise ValueError(f"{name} must be a positive even integer, got {v!r}")
        if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive, got {fps!r}")
        if isinstance(buffer_count, bool) or not isinstance(buffer_count, int) or buffer_count < 1:
            raise ValueError(f"buffer_count must be a positive integer, got {buffer_count!r}")
        if not (isinstance(frame_timeout, int | float) and frame_timeout > 0):
            raise ValueError(f"frame_timeout must be positive, got {frame_timeout!r}")
        self.camera_num = camera_num
        self.capture_size = (capture_width, capture_height)
        self.fps = float(fps)
        self.buffer_count = buffer_count
        self.frame_timeout = float(frame_timeout)
        self._cam: Any = None
        self._timed_out = False
        self._warned_clock = False

    def _describe(self) -> str:
        return f"Picamera2Camera({self.camera_num})"

    def _open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError(
                "picamera2 is not importable: on Raspberry Pi OS install it with "
                "'sudo apt install python3-picamera2' and create the virtualenv with "
                "--system-site-packages"
            ) from exc
        cameras = Picamera2.global_camera_info()
        if self.camera_num >= len(cameras):
            raise CameraError(
                f"{self._describe()}: no such camera; libcamera sees {len(cameras)}. Check the "
                "ribbon cable at both ends (the right way round), and what "
                "'rpicam-hello --list-cameras' lists; camera.picamera2.camera_num picks one"
            )
        try:
            cam = Picamera2(self.camera_num)
        except Exception as exc:
            raise CameraError(f"{self._describe()}: cannot open: {exc}") from exc
        try:
            config = cam.create_video_configuration(
                main={"size": self.capture_size, "format": self.pixel_format},
                buffer_count=self.buffer_count,
                controls={"FrameRate": self.fps},
                # No completed frame is held back for us: each capture is a fresh one.
                queue=False,
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:
            cam.close()
            raise CameraError(f"{self._describe()}: cannot configure/start: {exc}") from exc
        self._cam = cam
        log.info(
            "%s: %s, %s %s at %.1f fps",
            self._describe(),
            cameras[self.camera_num].get("Model", "unknown model"),
            self.pixel_format,
            cam.camera_configuration()["main"]["size"],
            self.fps,
        )

    def _grab(self) -> tuple[np.ndarray, float]:
        try:
            request = self._cam.capture_request(wait=self.frame_timeout)
        except TimeoutError as exc:
            self._timed_out = True
            raise CameraError(
                f"{self._describe()}: no frame within {self.frame_timeout} s (cable? power?)"
            ) from exc
        try:
            image = request.make_array("main")  # a copy: the buffer goes back to libcamera
            metadata = request.get_metadata()
        finally:
            request.release()
        return image, self._timestamp(metadata)

    def _timestamp(self, metadata: dict[str, Any]) -> float:
        """The frame's SensorTimestamp on the time.monotonic() clock."""
        now = time.monotonic()
        ns = metadata.get("SensorTimestamp")
        if isinstance(ns, int) and ns > 0:
            # libcamera documents SensorTimestamp on CLOCK_BOOTTIME, which runs ahead of
            # CLOCK_MONOTONIC by the time spent suspended (zero on a Pi that never sleeps).
            ts = ns / 1e9 - _boottime_offset()
            if now - _MAX_TIMESTAMP_AGE < ts <= now + 0.01:
                return min(ts, now)
        if not self._warned_clock:
            self._warned_clock = True
            log.warning(
                "%s: unusable SensorTimestamp %r; using the time of arrival", self._describe(), ns
            )
        return now

    def _release(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            if self._timed_out:
                # A timed-out capture leaves its job queued; picamera2 says to flush before closing.
                cam.cancel_all_and_flush()
            cam.stop()
        finally:
            cam.close()


def _boottime_offset() -> float:
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None:
        return 0.0
    return time.clock_gettime(clock) - time.monotonic()
