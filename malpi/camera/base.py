"""The camera interface every backend implements, and the newest-frame slot they share."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured image. ``timestamp`` is ``time.monotonic()`` at capture."""

    image: np.ndarray  # H x W x 3, uint8, RGB
    timestamp: float
    index: int  # increases by one per captured frame, from 0


class NewestFrame:
    """A one-slot mailbox: the writer overwrites, readers only ever see the newest frame.

    This is what keeps the control loop from working on a queued, stale frame.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._next_index = 0

    def put(self, image: np.ndarray, timestamp: float | None = None) -> Frame:
        with self._cond:
            ts = time.monotonic() if timestamp is None else timestamp
            self._frame = Frame(image, ts, self._next_index)
            self._next_index += 1
            self._cond.notify_all()
            return self._frame

    def latest(self) -> Frame | None:
        with self._cond:
            return self._frame

    def wait_newer(self, after_index: int, timeout: float) -> Frame | None:
        """The newest frame with index > after_index, waiting up to timeout; None on time-out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frame is None or self._frame.index <= after_index:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._frame


class Camera(ABC):
    """A source of timestamped RGB frames at the policy's resolution."""

    @abstractmethod
    def start(self) -> None:
        """Begin capturing (a backend may start a capture thread here)."""

    @abstractmethod
    def latest(self) -> Frame | None:
        """The newest frame, or None before the first; never blocks."""

    @abstractmethod
    def wait_newer(self, after_index: int, timeout: float) -> Frame | None:
        """Block until a frame newer than ``after_index`` exists (None on time-out)."""

    @abstractmethod
    def close(self) -> None:
        """Stop capturing and release the device; safe to call more than once."""

    @property
    def error(self) -> BaseException | None:
        """Why the camera stopped delivering frames, if it failed (a backend with a thread sets it)."""
        return None

    def __enter__(self) -> Camera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
