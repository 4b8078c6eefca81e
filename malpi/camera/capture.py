"""A capture thread shared by the hardware camera backends, and the policy-input transform.

A backend implements three hooks: ``_open`` (runs in the caller's thread, so a
missing device fails ``start()`` loudly), ``_grab`` (blocking; one raw frame and
its capture time, or None at the end of the stream) and ``_release``. The
thread turns each raw frame into an RGB uint8 image at the policy's input size
and puts it into a :class:`NewestFrame`, so a reader only ever sees the newest
frame and never a queued one.

A dead capture thread is observable: ``alive`` goes False, ``error`` holds the
exception (None when a finite source simply ended, see ``ended``), an optional
``on_error`` callback fires in the capture thread, and ``wait_newer`` returns
at once instead of waiting out its timeout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from malpi.camera.base import Camera, Frame, NewestFrame

log = logging.getLogger(__name__)


class CameraError(RuntimeError):
    """A camera that cannot be opened or stopped delivering frames."""


# (channel order of the first three channels, number of channels) -> cv2 conversion to RGB
_TO_RGB = {
    ("BGR", 3): cv2.COLOR_BGR2RGB,
    ("BGR", 4): cv2.COLOR_BGRA2RGB,
    ("RGB", 4): cv2.COLOR_RGBA2RGB,
}


@dataclass(frozen=True)
class FrameTransform:
    """Crop, resize, flip and convert a raw camera frame into the policy's input.

    ``crop`` is ``(left, top, right, bottom)`` as fractions of the frame *as seen
    after flipping* (so it is chosen on the upright picture), e.g.
    ``(0, 0.4, 1, 1)`` drops the top 40 % (the sky). The output is a new
    C-contiguous, read-only ``height x width x 3`` uint8 RGB array.
    """

    height: int = 120
    width: int = 160
    crop: tuple[float, float, float, float] | None = None
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.crop is not None:
            if not isinstance(self.crop, Sequence) or len(self.crop) != 4:
                raise ValueError(f"crop must be (left, top, right, bottom), got {self.crop!r}")
            crop = tuple(float(c) for c in self.crop)
            left, top, right, bottom = crop
            if not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in crop):
                raise ValueError(f"crop fractions must lie in [0, 1], got {self.crop!r}")
            if not (left < right and top < bottom):
                raise ValueError(f"crop needs left < right and top < bottom, got {self.crop!r}")
            object.__setattr__(self, "crop", crop)

    def __call__(self, image: np.ndarray, order: str = "RGB") -> np.ndarray:
        """Transform one frame whose first three channels are in ``order`` ("RGB" or "BGR")."""
        if order not in ("RGB", "BGR"):
            raise ValueError(f"channel order must be 'RGB' or 'BGR', got {order!r}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(f"expected H x W, H x W x 3 or H x W x 4, got shape {image.shape}")
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise ValueError(f"empty image of shape {image.shape}")

        out = image
        if self.crop is not None:
            out = out[
                self._span(h, self.crop[1], self.crop[3], self.vflip),
                self._span(w, self.crop[0], self.crop[2], self.hflip),
            ]
        if out.shape[:2] != (self.height, self.width):
            shrink = out.shape[0] >= self.height and out.shape[1] >= self.width
            # INTER_AREA averages when shrinking (no aliasing); it is blocky when enlarging.
            interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            out = cv2.resize(out, (self.width, self.height), interpolation=interp)
        # Convert and flip after resizing: both are per-pixel, so cheaper on the small image.
        if out.ndim == 2:
            out = cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)
        elif (order, out.shape[2]) in _TO_RGB:
            out = cv2.cvtColor(out, _TO_RGB[(order, out.shape[2])])
        if self.hflip or self.vflip:
            out = cv2.flip(out, -1 if self.hflip and self.vflip else 1 if self.hflip else 0)
        # The frame is shared by every reader and must not alias a buffer the backend reuses.
        if np.may_share_memory(out, image) or not out.flags.c_contiguous:
            out = np.ascontiguousarray(out).copy()
        out.setflags(write=False)
        return out

    @staticmethod
    def _span(n: int, lo: float, hi: float, flipped: bool) -> slice:
        # The crop is given on the flipped picture; mirror it onto the raw one.
        if flipped:
            lo, hi = 1.0 - hi, 1.0 - lo
        a = min(round(lo * n), n - 1)
        b = max(round(hi * n), a + 1)
        return slice(a, b)


class CaptureCamera(Camera):
    """A camera whose backend's blocking ``_grab()`` runs in a capture thread.

    Subclasses set ``channel_order`` (of the raw frames) and implement
    ``_open``, ``_grab`` and ``_release``. ``_release`` is called exactly once,
    from the capture thread when it ends (or from ``start``/``close`` if the
    thread never ran), so a backend never sees its device released while a
    grab is in progress.
    """

    channel_order: str = "BGR"
    join_timeout: float = 3.0  # how long close() waits for a grab in progress

    def __init__(
        self,
        *,
        height: int = 120,
        width: int = 160,
        crop: tuple[float, float, float, float] | None = None,
        hflip: bool = False,
        vflip: bool = False,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.transform = FrameTransform(height, width, crop, hflip, vflip)
        self._on_error = on_error
        self._slot = NewestFrame()
        self._stopping = threading.Event()
        self._state_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._release_lock = threading.Lock()
        self._released = False
        self._error: BaseException | None = None
        self._ended = False

    # -- backend hooks -------------------------------------------------------

    @abstractmethod
    def _open(self) -> None:
        """Open the device; raise CameraError if it is not there."""

    @abstractmethod
    def _grab(self) -> tuple[np.ndarray, float] | None:
        """Block until the next raw frame; return it with its ``time.monotonic()`` capture time.

        Return None when a finite source has ended; raise on failure.
        """

    @abstractmethod
    def _release(self) -> None:
        """Release the device."""

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on close(); False if the camera is closing."""
        return not self._stopping.wait(max(0.0, seconds))

    # -- Camera --------------------------------------------------------------

    def start(self) -> None:
        with self._state_lock:
            if self._closed:
                raise CameraError(f"{self._describe()} is closed")
            if self._started:
                raise CameraError(f"{self._describe()} is already started")
            self._started = True
            try:
                self._open()
                self._thread = threading.Thread(
                    target=self._run, name=f"capture-{type(self).__name__}", daemon=True
                )
                self._thread.start()
            except BaseException:
                self._release_once()
                raise
        log.info("%s started", self._describe())

    def latest(self) -> Frame | None:
        return self._slot.latest()

    def wait_newer(self, after_index: int, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            # Wait in short slices so a capture thread that dies mid-wait is noticed at once.
            remaining = deadline - time.monotonic()
            frame = self._slot.wait_newer(after_index, min(max(remaining, 0.0), 0.05))
            if frame is not None or remaining <= 0 or not self.alive:
                return frame

    def close(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._stopping.set()
            thread = self._thread
        if thread is None:
            self._release_once()
        elif thread is not threading.current_thread():
            thread.join(self.join_timeout)
            if thread.is_alive():
                # The grab is stuck in the driver; the thread releases the device when it returns.
                log.warning(
                    "%s: capture thread still blocked after %.1f s; leaving it to exit",
                    self._describe(),
                    self.join_timeout,
                )
        log.info("%s closed", self._describe())

    # -- health --------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """True while the capture thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the capture thread, if any."""
        return self._error

    @property
    def ended(self) -> bool:
        """True once a finite source (a video file without looping) has delivered its last frame."""
        return self._ended

    # -- internals -----------------------------------------------------------

    def _describe(self) -> str:
        return type(self).__name__

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                grabbed = self._grab()
                if grabbed is None:
                    self._ended = True
                    log.info("%s: end of stream", self._describe())
                    break
                raw, timestamp = grabbed
                if self._stopping.is_set():
                    break
                self._slot.put(self.transform(raw, self.channel_order), timestamp)
        except BaseException as exc:
            self._error = exc
            log.error("%s: capture thread failed: %r", self._describe(), exc, exc_info=exc)
            if self._on_error is not None:
                try:
                    self._on_error(exc)
                except Exception:
                    log.exception("%s: on_error callback raised", self._describe())
        finally:
            self._release_once()

    def _release_once(self) -> None:
        with self._release_lock:
            if self._released:
                return
            self._released = True
        try:
            self._release()
        except Exception:
            log.exception("%s: releasing the device failed", self._describe())
