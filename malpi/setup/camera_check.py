"""Is the camera there, how fast does it deliver, and what does the policy see?"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from malpi.camera.capture import CameraError
from malpi.camera.factory import camera_from_config
from malpi.config import Config


@dataclass(frozen=True)
class CameraReport:
    frames: int
    seconds: float
    size: tuple[int, int]  # width, height: the policy's input
    frame_path: Path | None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def check_camera(
    config: Config, seconds: float = 3.0, frame_path: Path | None = None
) -> CameraReport:
    """Capture for ``seconds``, count the frames, and save the newest one (as the policy sees it:
    cropped, flipped and resized) to ``frame_path``. Raises CameraError when no frame comes."""
    camera = camera_from_config(config)
    camera.start()
    try:
        first = camera.wait_newer(-1, timeout=max(5.0, 2 / config.camera.fps))
        if first is None:
            raise CameraError(
                str(camera.error or f"{config.camera.backend} camera: no frame in 5 s")
            )
        start, last = time.monotonic(), first
        while time.monotonic() - start < seconds:
            frame = camera.wait_newer(last.index, timeout=1.0)
            if frame is None:
                raise CameraError(str(camera.error or "the camera stopped delivering frames"))
            last = frame
        elapsed = time.monotonic() - start
    finally:
        camera.close()
    if frame_path is not None:
        frame_path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(frame_path), cv2.cvtColor(last.image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {frame_path}")
    height, width = last.image.shape[:2]
    return CameraReport(last.index - first.index, elapsed, (width, height), frame_path)
