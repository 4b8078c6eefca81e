"""Running one motor output for a short, bounded time, and stopping it whatever happens.

Every motion ``malpi setup`` makes goes through :func:`pulse`: the command is
applied for at most ``seconds`` (never more than :data:`MAX_SECONDS`, at no
more than :data:`MAX_POWER`), then the outputs are stopped — also on Ctrl-C,
on an exception, and when the terminal goes away (SIGHUP) or the process is
told to end (SIGTERM), which would otherwise kill Python without running any
``finally``. Each trial builds the drivetrain from the candidate configuration,
so what is tested is exactly what ``malpi drive`` will do with it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from malpi.actions import MotorCommand
from malpi.config import Config
from malpi.drivetrain.base import Drivetrain
from malpi.drivetrain.factory import drivetrain_from_config

log = logging.getLogger(__name__)

MAX_POWER = 0.5  # of full throttle: a test on a stand, not a drive
MAX_SECONDS = 3.0


class TerminalLost(Exception):
    """SIGHUP or SIGTERM arrived while an output was running (the outputs are stopped)."""


@dataclass(frozen=True)
class Output:
    """One thing to test: a name people know, the command that moves only it, and the question."""

    name: str  # e.g. "left wheel"
    command: MotorCommand
    question: str  # asked after the pulse, answered yes when it moved as it should


def outputs(config: Config, power: float) -> list[Output]:
    """The outputs of the configured drivetrain, each moved the way it should be checked."""
    if config.drivetrain.backend == "servo":
        return [
            Output("steering", MotorCommand(0.6, 0.0), "Did the front wheels turn RIGHT?"),
            Output("throttle", MotorCommand(0.0, power), "Did the wheels turn FORWARD?"),
        ]
    # A differential drive mixes left = throttle + steering, right = throttle - steering.
    half = power / 2
    return [
        Output("left wheel", MotorCommand(half, half), "Did the LEFT wheel turn FORWARD?"),
        Output("right wheel", MotorCommand(-half, half), "Did the RIGHT wheel turn FORWARD?"),
    ]


def check_bounds(power: float, seconds: float) -> None:
    if not 0 < power <= MAX_POWER:
        raise ValueError(f"test power must be in (0, {MAX_POWER}], got {power}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"test time must be in (0, {MAX_SECONDS}] s, got {seconds}")


def pulse(
    config: Config,
    command: MotorCommand,
    seconds: float,
    *,
    settle: float = 0.0,
    during: Callable[[Drivetrain], None] | None = None,
) -> None:
    """Build the drivetrain, hold it stopped for ``settle`` s (an ESC arms on neutral), apply
    ``command`` for ``seconds`` (bounded), stop and release it. ``during`` is called once while
    the command runs (tests use it to read the pins, or to raise)."""
    seconds = min(seconds, MAX_SECONDS)
    with drivetrain_from_config(config) as drivetrain, stops_on_signals(drivetrain):
        try:
            drivetrain.stop()
            time.sleep(settle)
            drivetrain.apply(command)
            if during is not None:
                during(drivetrain)
            time.sleep(seconds)
        finally:
            drivetrain.stop()


@contextlib.contextmanager
def stops_on_signals(drivetrain: Drivetrain) -> Iterator[None]:
    """While inside, SIGHUP and SIGTERM stop the outputs at once and raise :class:`TerminalLost`;
    SIGINT stops them and raises KeyboardInterrupt. Outside the main thread (where Python
    delivers no signals) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def lost(signum: int, frame: Any) -> None:
        drivetrain.stop()  # first: the stop must not wait for the stack to unwind
        raise TerminalLost(f"{signal.Signals(signum).name}: outputs stopped")

    def interrupted(signum: int, frame: Any) -> None:
        drivetrain.stop()
        raise KeyboardInterrupt

    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGHUP, lost),
            (signal.SIGTERM, lost),
            (signal.SIGINT, interrupted),
        )
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
