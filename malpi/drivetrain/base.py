"""The drivetrain interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from malpi.actions import MotorCommand


class Drivetrain(ABC):
    """Turns motor commands into motion. ``stop()`` is always safe: any thread, any number of times."""

    @abstractmethod
    def apply(self, command: MotorCommand) -> None:
        """Drive with this command (clamped to [-1, 1]) until the next command or stop."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the motors now. Idempotent and thread-safe."""

    @abstractmethod
    def close(self) -> None:
        """Stop and release the outputs; safe to call more than once."""

    def __enter__(self) -> Drivetrain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
