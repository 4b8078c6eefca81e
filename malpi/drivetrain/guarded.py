"""The locking and stop discipline shared by the GPIO drivetrains.

``stop()`` must work from any thread and from a signal handler, any number of
times, even after ``close()``. A re-entrant lock serialises the outputs between
threads; a signal handler runs on the main thread *between* two bytecodes of
whatever the main thread was doing, possibly in the middle of ``apply()``, so
re-entrancy is needed to not deadlock, and ``apply()`` checks afterwards whether
a stop landed inside it and, if so, stops again: a stop is never undone by the
tail of a command that was being written when it arrived.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import abstractmethod

from malpi.actions import MotorCommand
from malpi.drivetrain.base import Drivetrain

log = logging.getLogger(__name__)


class DrivetrainClosed(RuntimeError):
    """apply() on a drivetrain whose outputs have been released."""


class GuardedDrivetrain(Drivetrain):
    """A drivetrain whose subclass only writes outputs; this class makes that safe.

    Subclasses implement ``_write`` (a clamped, finite command), ``_write_stop``
    and ``_release``; all three are called with the lock held.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._stops = 0  # counts stop() calls, so apply() can tell one happened inside it

    @abstractmethod
    def _write(self, command: MotorCommand) -> None:
        """Set the outputs for this command (already clamped to [-1, 1])."""

    @abstractmethod
    def _write_stop(self) -> None:
        """Set the outputs to stopped."""

    @abstractmethod
    def _release(self) -> None:
        """Release the outputs (the pins)."""

    @property
    def closed(self) -> bool:
        return self._closed

    def apply(self, command: MotorCommand) -> None:
        if not (math.isfinite(command.steering) and math.isfinite(command.throttle)):
            self.stop()
            raise ValueError(f"non-finite motor command {command}; motors stopped")
        with self._lock:
            if self._closed:
                raise DrivetrainClosed(f"{type(self).__name__} is closed")
            stops = self._stops
            try:
                self._write(command.clamped())
            except BaseException:
                # Half-written outputs are worse than none.
                self._write_stop()
                raise
            if self._stops != stops:
                self._write_stop()

    def stop(self) -> None:
        with self._lock:
            self._stops += 1
            if not self._closed:
                self._write_stop()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._write_stop()
            finally:
                self._closed = True
                self._release()
                log.info("%s closed", type(self).__name__)
