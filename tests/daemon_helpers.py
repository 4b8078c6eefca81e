"""A daemon on the simulator's camera and gpiozero's mock pins, run in a thread for tests."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import make_fixtures
from gpiozero.pins.mock import MockFactory, MockPWMPin

from malpi.config import load_config
from malpi.daemon.control.build import build_robot

PINS = (17, 27, 22, 23)  # the default differential pins: left fwd/back, right fwd/back
RATE_HZ = 50.0
PERIOD = 1.0 / RATE_HZ

# The tiny policy the tests drive (committed in tests/data/: no TensorFlow needed), and the
# camera size they configure is its image size.
SPEC = make_fixtures.SPEC


def make_policy_file(tmp: Path) -> Path:
    path = tmp / "tiny.malpi"
    path.write_bytes(make_fixtures.read("a"))
    return path


def robot_config(tmp: Path, policy: Path, **overrides):
    base = {
        "camera.backend": "sim",
        "camera.width": SPEC.image_width,
        "camera.height": SPEC.image_height,
        "camera.fps": 50.0,  # a frame per period
        "drivetrain.backend": "differential",
        "loop.rate_hz": RATE_HZ,
        "policy.path": str(policy),
        "policy.backend": "litert_float",
        "recording.path": str(tmp / "episodes.sqlite"),
        "sim.physics_hz": 100.0,
        "link.enabled": False,  # the link tests turn it on (link_helpers)
        # Here the loop is a thread of the test process, sharing its GIL and CPU with the test
        # itself and whatever else the machine runs: a second of overruns, not 5 periods, before
        # the latch. The rule itself is tested with its default (test_daemon_safety); timing is
        # measured by `malpi bench loop/stress` on the real daemon, not asserted here.
        "safety.max_overruns": 50,
    }
    base.update(overrides)
    return load_config(None, base)


def duty(factory: MockFactory) -> dict[int, float]:
    return {p: float(factory.pin(p).state) for p in PINS}


def moving(factory: MockFactory) -> bool:
    return any(v > 0 for v in duty(factory).values())


def wait_until(cond, timeout: float = 5.0, interval: float = 0.002) -> float:
    """Poll ``cond`` until true; returns the time it took (raises on time-out)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - t0


class SlowBackend:
    """A policy backend that takes ``factor`` control periods per step: an overrunning loop."""

    def __init__(self, inner, factor: float):
        self.inner, self.factor = inner, factor

    def run(self, *args):
        time.sleep(PERIOD * self.factor)
        return self.inner.run(*args)


class Events:
    """A telemetry sink that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, topic: str, payload: dict) -> None:
        with self.lock:
            self.messages.append((topic, payload))

    def safety_stop(self, fault: str, timeout: float = 2.0) -> dict:
        """The latest safety_stop event for ``fault``, waiting for it (it is published by the loop
        thread just after the motors stop, so a test that saw the pins drop may be a moment early)."""
        found: list[dict] = []

        def seen() -> bool:
            found[:] = [e for e in self.of("event", "safety_stop") if e.get("fault") == fault]
            return bool(found)

        wait_until(seen, timeout)
        return found[-1]

    def of(self, topic: str, kind: str | None = None) -> list[dict]:
        with self.lock:
            return [
                p
                for t, p in self.messages
                if t == topic and (kind is None or p.get("kind") == kind)
            ]


@contextlib.contextmanager
def running_robot(config, notifier=None):
    factory = MockFactory(pin_class=MockPWMPin)
    robot = build_robot(config, pin_factory=factory, notifier=notifier)
    events = Events()
    robot.telemetry.add_sink(events)
    result: dict = {}

    def run():
        try:
            result["rc"] = robot.loop.run(install_signal_handlers=False)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            result["exc"] = exc

    thread = threading.Thread(target=run, name="control-loop", daemon=True)
    thread.start()
    try:
        wait_until(lambda: robot.loop.stats.periods > 2)
        yield robot, factory, events, result
    finally:
        robot.loop.request_stop("test over")
        thread.join(10)
        robot.close()
        factory.reset()
