"""Shared by the drivetrain tests: drivetrains made for a test and closed after it, and a stop storm."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def closing_all(build: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """A ``make(**kwargs)`` that builds a drivetrain with ``build``; all it made are closed after."""
    made = []

    def make(**kwargs):
        dt = build(**kwargs)
        made.append(dt)
        return dt

    yield make
    for dt in made:
        dt.close()


def stop_from_many_threads(dt, threads: int = 32, rounds: int = 20) -> list[Exception]:
    """``dt.stop()`` ``rounds`` times in each of ``threads`` threads released at once; the errors."""
    barrier = threading.Barrier(threads)
    errors = []

    def stopper():
        try:
            barrier.wait()
            for _ in range(rounds):
                dt.stop()
        except Exception as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    started = [threading.Thread(target=stopper) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join(10)
    return errors
