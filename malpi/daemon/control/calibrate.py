"""``malpi setup``'s motor test and calibration, on the running daemon (the link's ``calibration``,
``motor_test`` and ``set_calibration``; docs/protocol.md, "Calibration").

The daemon owns the pins, so a browser or any other link client tests and
calibrates through it, with the setup's own definitions
(:func:`malpi.setup.outputs.outputs`, :func:`malpi.setup.wizard.adjustments`,
the steering-trim trial) and bounds (``MAX_POWER``, ``MAX_SECONDS``). All of it
runs on the control loop's thread, in paused mode only:

- a motor test is a timed command the loop applies in place of "stopped" in
  each period until it is due, never recorded; any mode change, drive command
  (a stop too), new fault or the daemon stopping ends it at once;
- a calibration value is checked by the configuration's own validation,
  applied to the running drivetrain between two periods, and kept for the next
  boot in the overlay (:mod:`malpi.calibration`), written off the loop's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malpi.actions import MotorCommand
from malpi.calibration import read_overlay, value_of, with_values, write_overlay
from malpi.config import Config, ConfigError
from malpi.daemon.control.telemetry import Telemetry
from malpi.drivetrain.base import Drivetrain
from malpi.setup.outputs import MAX_POWER, MAX_SECONDS

log = logging.getLogger(__name__)

COMMANDS = ("calibration", "motor_test", "set_calibration")

# What to check after a trial of an adjustment (malpi setup asks it with the arrow keys' help).
QUESTIONS = {
    "drivetrain.differential.min_speed": "Did both wheels just turn? (raise min_speed until "
    "they do)",
    "drivetrain.differential.steering_trim": "Did the car keep a straight line? (trim right "
    "if it pulls left)",
    "drivetrain.servo.steering_center_us": "Do the front wheels point straight ahead?",
    "drivetrain.servo.steering_min_us": "Did the wheels reach full lock on that side without "
    "the servo straining (buzzing)?",
    "drivetrain.servo.steering_max_us": "Did the wheels reach full lock on the other side "
    "without the servo straining (buzzing)?",
    "drivetrain.servo.throttle_neutral_us": "Do the wheels stand still?",
}
TRIAL_NAMES = {"drivetrain.differential.steering_trim": "straight ahead"}

Done = Callable[[dict[str, Any] | None, str, str], None]  # (result, error code, message)


class CalibrationError(Exception):
    """A calibration request the robot does not carry out; ``code`` is the reply's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Offer:
    """Something motor_test can run."""

    name: str
    question: str
    on_floor: bool
    adjusts: str | None
    seconds: float
    command: Callable[[float], MotorCommand]  # power -> the command

    @property
    def uses_power(self) -> bool:
        return self.command(0.1) != self.command(0.2)


def offered(config: Config) -> tuple[list[Any], list[Offer]]:
    """(the setup's adjustments, the tests) for this configuration's drivetrain."""
    from malpi.setup.outputs import outputs
    from malpi.setup.wizard import adjustments, trim_adjustment

    backend = config.drivetrain.backend
    adjust = [] if backend == "sim" else list(adjustments(config, MAX_POWER))
    if backend == "differential":
        adjust.append(trim_adjustment(MAX_POWER))
    offers = [
        Offer(o.name, o.question, False, None, 1.0, lambda p, name=o.name: _output(config, name, p))
        for o in outputs(config, MAX_POWER)
    ]
    for a in adjust:
        if a.trial is None:
            continue
        trim = a.key.endswith("steering_trim")
        leaf = a.key.rpartition(".")[2].removesuffix("_us").replace("_", " ")
        trial = a.trial
        offers.append(
            Offer(
                TRIAL_NAMES.get(a.key, leaf),
                QUESTIONS.get(a.key, a.help),
                trim,  # the trim shows only on the floor, driving straight ahead
                a.key,
                a.seconds,
                (lambda p: MotorCommand(0.0, p)) if trim else (lambda p, c=trial: c),
            )
        )
    return adjust, offers


def _output(config: Config, name: str, power: float) -> MotorCommand:
    from malpi.setup.outputs import outputs

    return next(o.command for o in outputs(config, power) if o.name == name)


@dataclass
class RunningTest:
    offer: Offer
    command: MotorCommand
    power: float
    seconds: float
    started: float  # time.monotonic()
    done: Done


class Calibrator:
    """The loop's calibration state: the configuration in force, the overlay, a running test.
    Every method but the overlay writer runs on the control loop's thread."""

    def __init__(
        self, config: Config, overlay: Path, drivetrain: Drivetrain, telemetry: Telemetry
    ) -> None:
        self.config = config  # with the overlay and every change since applied
        self.path = overlay
        self.drivetrain = drivetrain
        self.telemetry = telemetry
        try:
            self.kept = read_overlay(overlay)  # what the overlay holds (keys set over the link)
        except ConfigError as exc:  # the boot read it already; a file broken since is replaced
            log.warning("%s", exc)
            self.kept = {}
        self.test: RunningTest | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="malpi-calibration")
        self._adjustments, self._offers = offered(config)

    # -- calibration (read) ---------------------------------------------------------

    def read(self) -> dict[str, Any]:
        return {
            "backend": self.config.drivetrain.backend,
            "adjustments": [
                {
                    "key": a.key,
                    "value": float(value_of(self.config, a.key)),
                    "step": a.step,
                    "low": a.low,
                    "high": a.high,
                    "help": a.help,
                }
                for a in self._adjustments
            ],  # fmt: skip
            "outputs": [
                {
                    "name": o.name,
                    "question": o.question,
                    "on_floor": o.on_floor,
                    "adjusts": o.adjusts,
                    "seconds": o.seconds,
                    "uses_power": o.uses_power,
                }
                for o in self._offers
            ],  # fmt: skip
            "max_power": MAX_POWER,
            "max_seconds": MAX_SECONDS,
            "file": str(self.path),
            "testing": self.test.offer.name if self.test else None,
        }

    # -- motor_test -------------------------------------------------------------------

    def start_test(
        self, name: str, power: float, seconds: float, paused: bool, latched: list[str], done: Done
    ) -> None:
        if not paused:
            raise CalibrationError("refused", "a motor test runs only in paused mode")
        if latched:
            raise CalibrationError(
                "refused",
                f"a latched fault ({', '.join(latched)}): choose paused to re-arm after "
                "finding out why, then test",
            )
        if self.test is not None:
            raise CalibrationError("busy", f"the {self.test.offer.name} test is running")
        offer = next((o for o in self._offers if o.name == name), None)
        if offer is None:
            names = ", ".join(o.name for o in self._offers) or "none"
            raise CalibrationError(
                "invalid", f"motor_test: no output {name!r}; this robot's: {names}"
            )
        if not (0 < power <= MAX_POWER and 0 < seconds <= MAX_SECONDS):
            raise CalibrationError(
                "invalid",
                f"motor_test: power must be in (0, {MAX_POWER}] and seconds in "
                f"(0, {MAX_SECONDS}], got {power} and {seconds}",
            )
        command = offer.command(power)
        self.test = RunningTest(offer, command, power, seconds, time.monotonic(), done)
        self.telemetry.event(
            "motor_test",
            f"motor test: {name} for {seconds:g} s"
            + (f" at {power:.0%} power" if offer.uses_power else ""),
            output=name, power=power, seconds=seconds,
        )  # fmt: skip

    def command(self, now: float, drove_since: Callable[[float], bool]) -> MotorCommand | None:
        """The running test's command for this period (None: no test, or it just ended)."""
        test = self.test
        if test is None:
            return None
        if drove_since(test.started):
            self.end_test("drive command")
            return None
        if now - test.started >= test.seconds:
            self.end_test(None)
            return None
        return test.command

    def end_test(self, stopped_by: str | None) -> None:
        """End the running test (if any) now: the outputs stop, the event and the reply say how."""
        test, self.test = self.test, None
        if test is None:
            return
        self.drivetrain.stop()
        ran = min(time.monotonic() - test.started, test.seconds)
        name = test.offer.name
        self.telemetry.event(
            "motor_test_ended",
            f"motor test: {name} ran {ran:.1f} s" + (f", stopped: {stopped_by}" if stopped_by else ""),
            output=name, ran_s=round(ran, 3), stopped_by=stopped_by,
        )  # fmt: skip
        result = {
            "output": name,
            "power": test.power,
            "seconds": test.seconds,
            "ran_s": round(ran, 3),
            "completed": stopped_by is None,
            "stopped_by": stopped_by,
        }
        try:
            test.done(result, "", "")
        except Exception:  # a reply that cannot be sent must not stop the loop
            log.exception("motor test reply failed")

    # -- set_calibration ----------------------------------------------------------------

    def set(self, key: str, value: float, paused: bool, done: Done) -> dict[str, Any]:
        """Check and apply ``key = value`` now; ``done`` (on the writer's thread) once the
        overlay is written or could not be. Returns what changed."""
        if not paused:
            raise CalibrationError("refused", "calibration changes only in paused mode")
        adjustment = next((a for a in self._adjustments if a.key == key), None)
        if adjustment is None:
            keys = ", ".join(a.key for a in self._adjustments) or "none"
            raise CalibrationError(
                "invalid",
                f"set_calibration: {key[:128]!r} is not adjustable here; this robot's: {keys}",
            )
        if not adjustment.low <= value <= adjustment.high:
            raise CalibrationError(
                "invalid",
                f"{key}: {value!r} is outside the calibration's range "
                f"[{adjustment.low:g}, {adjustment.high:g}]",
            )
        try:
            config = with_values(self.config, {key: value})
        except ConfigError as exc:
            raise CalibrationError("invalid", str(exc)) from None
        new, previous = value_of(config, key), value_of(self.config, key)
        calibrate = getattr(self.drivetrain, "calibrate", None)
        if calibrate is None:
            raise CalibrationError("refused", "this drivetrain cannot be calibrated while running")
        leaf = key.rpartition(".")[2]
        try:
            calibrate(**{leaf: new})
        except ValueError as exc:
            raise CalibrationError("invalid", f"{key}: {exc}") from None
        self.config = config
        self.kept = {**self.kept, key: new}
        snapshot = dict(self.kept)
        result = {"key": key, "value": float(new), "previous": float(previous),
                  "file": str(self.path)}  # fmt: skip

        def write() -> None:
            try:
                write_overlay(self.path, snapshot)
                done({**result, "persisted": True, "note": None}, "", "")
            except OSError as exc:
                log.error("calibration overlay %s not written: %s", self.path, exc)
                note = (
                    f"applied, but not kept for the next boot: {self.path}: {exc.strerror or exc}"
                )
                done({**result, "persisted": False, "note": note}, "", "")

        self._writer.submit(write)
        self.telemetry.event(
            "calibration", f"{key}: {previous} -> {new}", key=key, value=new, previous=previous
        )
        return result

    def close(self) -> None:
        self._writer.shutdown(wait=True)
