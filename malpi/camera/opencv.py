"""OpenCV camera: a USB webcam (device index or /dev/videoN) or a video file or stream URL.

A video file is played at its own frame rate (or ``fps``), so it behaves like
a live camera: the control loop sees frames arrive in real time and the
newest-frame slot drops whatever it is too slow for. At its end a file either
loops or ends the camera (``ended`` becomes True and no more frames arrive).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable

import cv2
import numpy as np

from malpi.camera.capture import CameraError, CaptureCamera

log = logging.getLogger(__name__)

# A live device that fails this many reads in a row is treated as gone.
_MAX_FAILED_READS = 5
_DEFAULT_FILE_FPS = 30.0


class OpenCVCamera(CaptureCamera):
    """Frames from ``cv2.VideoCapture``.

    ``source`` is a device index (``0``, or the string ``"0"``), a device path
    (``/dev/video0``), a stream URL (``rtsp://…``) or a video file path.
    """

    channel_order = "BGR"  # what cv2.VideoCapture.read() returns

    def __init__(
        self,
        source: int | str = 0,
        *,
        height: int = 120,
        width: int = 160,
        crop: tuple[float, float, float, float] | None = None,
        hflip: bool = False,
        vflip: bool = False,
        capture_width: int | None = None,
        capture_height: int | None = None,
        fps: float | None = None,
        fourcc: str | None = None,
        loop: bool = False,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(
            height=height, width=width, crop=crop, hflip=hflip, vflip=vflip, on_error=on_error
        )
        if isinstance(source, str) and source.strip().isdigit():
            source = int(source)
        if isinstance(source, bool) or not isinstance(source, int | str) or source == "":
            raise ValueError(f"source must be a device index or a path/URL, got {source!r}")
        if fps is not None and not (fps > 0 and fps < float("inf")):
            raise ValueError(f"fps must be positive, got {fps!r}")
        if fourcc is not None and len(fourcc) != 4:
            raise ValueError(f"fourcc must be four characters, got {fourcc!r}")
        for name, v in (("capture_width", capture_width), ("capture_height", capture_height)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.source = source
        self.is_file = False  # decided when opened
        self.capture_width = capture_width
        self.capture_height = capture_height
        self.fps = fps
        self.fourcc = fourcc
        self.loop = loop
        self._cap: cv2.VideoCapture | None = None
        self._period = 0.0  # file pacing: seconds per frame
        self._next_due = 0.0

    def _describe(self) -> str:
        return f"OpenCVCamera({self.source!r})"

    def _open(self) -> None:
        if isinstance(self.source, str):
            self.is_file = _is_regular_file(self.source)
            if not self.is_file and "://" not in self.source and not os.path.exists(self.source):
                raise CameraError(
                    f"{self._describe()}: no such file or device (a webcam plugged in? "
                    "ls /dev/video* lists them; camera.opencv.source picks one)"
                )
        self._cap = self._new_capture()
        if self.is_file:
            file_fps = self._cap.get(cv2.CAP_PROP_FPS)
            rate = self.fps or (file_fps if 0 < file_fps < 1000 else _DEFAULT_FILE_FPS)
            self._period = 1.0 / rate
            log.info(
                "%s: playing at %.1f fps%s",
                self._describe(),
                rate,
                ", looping" if self.loop else "",
            )
        else:
            self._configure_device(self._cap)

    def _new_capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.source)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"{self._describe()}: cannot open")
        return cap

    def _configure_device(self, cap: cv2.VideoCapture) -> None:
        # Requests only: a driver may pick the nearest mode it has, so log what we got.
        if self.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.capture_width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.capture_width)
        if self.capture_height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.capture_height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        # Fewer driver buffers = less latency; our thread drains them anyway.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        log.info(
            "%s: %dx%d at %.1f fps",
            self._describe(),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            cap.get(cv2.CAP_PROP_FPS),
        )

    def _grab(self) -> tuple[np.ndarray, float] | None:
        assert self._cap is not None
        if self.is_file:
            return self._grab_file()
        for _ in range(_MAX_FAILED_READS):
            ok, image = self._cap.read()
            if ok:
                return image, time.monotonic()
        raise CameraError(f"{self._describe()}: {_MAX_FAILED_READS} reads failed in a row")

    def _grab_file(self) -> tuple[np.ndarray, float] | None:
        assert self._cap is not None
        ok, image = self._cap.read()
        if not ok:
            if not self.loop:
                return None
            # Reopening rewinds every container; seeking to frame 0 is not reliable for all.
            self._cap.release()
            self._cap = self._new_capture()
            ok, image = self._cap.read()
            if not ok:
                raise CameraError(f"{self._describe()}: no frame after rewinding")
        self._pace()
        return image, time.monotonic()

    def _pace(self) -> None:
        """Wait until this file frame is due, as a live camera would deliver it."""
        now = time.monotonic()
        if self._next_due == 0.0 or now - self._next_due > self._period:
            # First frame, or we fell more than a frame behind: restart the clock, never burst.
            self._next_due = now
        self._sleep(self._next_due - now)
        self._next_due += self._period

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
