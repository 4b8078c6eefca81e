"""``malpi setup``: from the wiring to a validated configuration, one bounded test at a time.

The steps, in order: the drivetrain and its driver, the pins, a short
low-power run of each output with the wheels off the ground (turned the wrong
way? it is swapped in the configuration and run again), the calibration with
the arrow keys, the camera (its measured frame rate and a saved frame), and
the configuration written. Every value goes through the configuration's own
validation as it is entered, so what is written is what ``malpi drive``
accepts. Each motion goes through :func:`malpi.setup.outputs.pulse`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malpi.actions import MotorCommand
from malpi.camera.capture import CameraError
from malpi.config import Config, ConfigError, load_config
from malpi.setup.camera_check import check_camera
from malpi.setup.outputs import MAX_SECONDS, check_bounds, outputs, pulse
from malpi.setup.terminal import Terminal

log = logging.getLogger(__name__)

# What the systemd unit's configuration needs besides the hardware (tools/install-pi.sh).
SERVICE = {
    "recording.path": "/var/lib/malpi/episodes.sqlite",
    "policy.store": "/var/lib/malpi/policies",
    "link.curve": True,
    "link.keys_dir": "/etc/malpi/keys",
    "link.command": "tcp://0.0.0.0:5555",
    "link.telemetry": "tcp://0.0.0.0:5556",
    # The browser console (systemd/malpi-web.service): on the network, over HTTPS, with a login.
    "web.listen": "0.0.0.0:8080",
    "web.tls": True,
    "web.password_file": "/etc/malpi/web/password",
    "web.tls_dir": "/var/lib/malpi-web/tls",
}

DRIVETRAINS = {"differential": "two motors on an H-bridge", "servo": "steering servo and ESC"}
DRIVERS = {
    "in_in": "two inputs per motor: L298N, DRV8833, TB6612FNG",
    "phase_enable": "direction + speed per motor: DRV8835 PH/EN, Cytron MDD10A",
}
CAMERAS = {"picamera2": "a Pi camera module", "opencv": "a USB webcam or a video file"}
SIDES = ("forward", "backward", "phase", "enable")


def pin_names(config: Config) -> list[str]:
    """The configuration keys of the pins this drivetrain and driver use, in wiring order."""
    dt = config.drivetrain
    if dt.backend == "servo":
        return ["drivetrain.servo.steering_pin", "drivetrain.servo.throttle_pin"]
    own = ("forward", "backward", "enable") if dt.differential.driver == "in_in" else SIDES[2:]
    return [f"drivetrain.differential.{s}_{n}" for s in ("left", "right") for n in own]


@dataclass(frozen=True)
class Adjustment:
    """A value found with the arrow keys; ``trial`` (if any) runs after each change."""

    key: str
    help: str
    step: float
    low: float
    high: float
    keys: tuple[str, str] = ("down", "up")  # lower, raise
    trial: MotorCommand | None = None
    seconds: float = 0.7


def adjustments(config: Config, power: float) -> list[Adjustment]:
    if config.drivetrain.backend == "servo":
        s = "drivetrain.servo."
        turn = ("left", "right")
        return [
            Adjustment(s + "steering_center_us", "until the wheels point straight ahead",
                       10, 1000, 2000, turn, MotorCommand(0.0, 0.0)),
            Adjustment(s + "steering_min_us", "until the wheels reach full lock on that side "
                       "without the servo straining (buzzing)", 10, 500, 1500, turn,
                       MotorCommand(-1.0, 0.0)),
            Adjustment(s + "steering_max_us", "likewise on the other side", 10, 1500, 2500, turn,
                       MotorCommand(1.0, 0.0)),
            Adjustment(s + "throttle_neutral_us", "until the wheels stand still (the ESC armed)",
                       10, 1000, 2000, trial=MotorCommand(0.0, 0.0), seconds=1.5),
            Adjustment(s + "max_speed", "the most throttle the policy may use (no run: 0.3 to "
                       "0.5 is a good first drive)", 0.05, 0.05, 1.0),
        ]  # fmt: skip
    d = "drivetrain.differential."
    return [
        Adjustment(d + "min_speed", "until both wheels just turn (each press runs them)",
                   0.02, 0.0, power, trial=MotorCommand(0.0, 0.001)),
        Adjustment(d + "max_speed", "the most power the policy may use (no run: 0.5 to 0.7 is "
                   "a good first drive)", 0.05, 0.1, 1.0),
    ]  # fmt: skip


TRIM_SECONDS = min(1.5, MAX_SECONDS)


def trim_adjustment(power: float) -> Adjustment:
    """The differential steering trim, tried on the floor: straight ahead at ``power``."""
    return Adjustment("drivetrain.differential.steering_trim", "(right: it pulls left)", 0.02,
                      -0.5, 0.5, ("left", "right"), MotorCommand(0.0, power), TRIM_SECONDS)  # fmt: skip


class Setup:
    """The steps, on a configuration built up as dotted keys over ``base`` (a file or None)."""

    def __init__(
        self,
        term: Terminal,
        base: Path | None = None,
        settings: dict[str, Any] | None = None,
        *,
        power: float = 0.3,
        seconds: float = 1.0,
    ) -> None:
        check_bounds(power, seconds)
        self.term, self.base = term, base
        self.settings = dict(settings or {})
        self.power, self.seconds = power, seconds
        self.config()  # the flags themselves must be valid

    def config(self, **extra: Any) -> Config:
        return load_config(self.base, {**self.settings, **extra})

    def value(self, key: str) -> Any:
        node: Any = self.config()
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def set(self, key: str, value: Any) -> bool:
        """Keep ``key = value`` if the configuration stays valid; otherwise say why."""
        try:
            self.config(**{key: value})
        except ConfigError as exc:
            self.term.say(f"  not valid: {exc}")
            return False
        self.settings[key] = value
        return True

    # -- the steps ----------------------------------------------------------------------

    def choose_drivetrain(self) -> None:
        backend = self.value("drivetrain.backend")
        default = backend if backend in DRIVETRAINS else "differential"
        backend = self.term.choose("Drivetrain", DRIVETRAINS, default)
        self.settings["drivetrain.backend"] = backend
        if backend == "differential":
            driver = self.term.choose("Motor driver", DRIVERS, self.value(
                "drivetrain.differential.driver"))  # fmt: skip
            self.settings["drivetrain.differential.driver"] = driver
            if driver == "phase_enable":  # these have no default pins: ask with a free one
                for n in ("left_phase", "right_phase", "left_enable", "right_enable"):
                    key = f"drivetrain.differential.{n}"
                    self.settings.setdefault(key, {"left_phase": 5, "right_phase": 6,
                                                   "left_enable": 12, "right_enable": 13}[n])  # fmt: skip

    def choose_pins(self) -> None:
        """Ask each pin (BCM numbers); a conflict is asked again, naming the pin at fault."""
        self.term.say("GPIO pins, by BCM number (GPIO17 is physical pin 11; pinout.xyz shows all).")
        names = pin_names(self.config())
        ask = list(names)
        while True:
            for key in ask:
                optional = key.endswith("_enable") and self.value(
                    "drivetrain.differential.driver") == "in_in"  # fmt: skip
                hint = " (-1 = not wired)" if optional else ""
                raw = self.term.ask(f"  {key.rpartition('.')[2]}{hint}", str(self.value(key)))
                try:
                    self.settings[key] = int(raw)
                except ValueError:
                    self.term.say(f"  {raw!r} is not a pin number")
                    self.settings.pop(key, None)
            try:
                self.config()
                return
            except ConfigError as exc:
                self.term.say(f"  {exc}")
                at_fault = str(exc).partition(":")[0]
                ask = [at_fault] if at_fault in names else names

    def test_outputs(self) -> None:
        self.term.say(
            f"Each output now runs for {self.seconds:.1f} s at {self.power:.0%} power. Lift the "
            "car so that its wheels are off the ground; Ctrl-C stops at once."
        )
        if not self.term.confirm("Are the wheels off the ground?"):
            self.term.say("  motor test skipped")
            return
        servo = self.value("drivetrain.backend") == "servo"
        if servo:
            self.term.say("Arming the ESC: switch it on now; neutral is sent for 3 s.")
            pulse(self.config(), MotorCommand(0.0, 0.0), 3.0)
        for out in outputs(self.config(), self.power):
            while True:
                self.term.say(f"Running the {out.name}...")
                pulse(self.config(), out.command, self.seconds, settle=0.3 if servo else 0.0)
                answers = {"y": "yes", "n": "it went the other way", "r": "run it again",
                           "s": "nothing moved: skip"}  # fmt: skip
                if not servo:
                    answers["o"] = "the other wheel moved"
                answer = self.term.choose(out.question, answers, "y")
                if answer == "y":
                    break
                if answer == "n":
                    self._reverse(out.name, servo)
                elif answer == "o":
                    self._swap_sides()
                elif answer == "s":
                    self.term.say("  check the wiring and the motor power; a motor that hums "
                                  "but does not turn needs more power (min_speed below)")  # fmt: skip
                    break
                self.term.say("  running it again to check")

    def _reverse(self, name: str, servo: bool) -> None:
        if servo:
            key = f"drivetrain.servo.{name}_reversed"
        else:
            key = f"drivetrain.differential.{name.split()[0]}_inverted"
        self.settings[key] = not self.value(key)
        self.term.say(f"  {key} = {str(self.settings[key]).lower()}")

    def _swap_sides(self) -> None:
        d = "drivetrain.differential."
        for n in (*SIDES, "inverted"):
            left, right = self.value(f"{d}left_{n}"), self.value(f"{d}right_{n}")
            self.settings[f"{d}left_{n}"], self.settings[f"{d}right_{n}"] = right, left
        self.term.say("  left and right swapped (pins and inversion)")

    def calibrate(self) -> None:
        self.term.say("Calibration: the arrow keys change a value, Enter keeps it, q leaves it.")
        for a in adjustments(self.config(), self.power):
            self.adjust(a)
        if self.value("drivetrain.backend") == "differential":
            self.trim()

    def trim(self) -> None:
        """Steering trim: only on the floor, where the car can show whether it runs straight."""
        seconds = TRIM_SECONDS
        self.term.say(
            f"Steering trim: each press of left/right runs the car straight ahead for {seconds} s "
            f"at {self.power:.0%} power; trim until it keeps a straight line."
        )
        if not self.term.confirm("Is the car on the floor with 2 m clear ahead?", default=False):
            self.term.say("  steering trim skipped")
            return
        self.adjust(trim_adjustment(self.power))

    def adjust(self, a: Adjustment) -> None:
        value = kept = self.value(a.key)
        lower, higher = a.keys
        self.term.say(f"{a.key} = {value}: {lower}/{higher} {a.help}")
        while True:
            key = self.term.key()
            if key == "enter":
                self.settings[a.key] = value
                return
            if key == "quit":
                self.settings[a.key] = kept
                return
            if key not in a.keys:
                continue
            step = a.step if key == higher else -a.step
            new = min(a.high, max(a.low, value + step))
            new = int(round(new)) if isinstance(kept, int) else round(new, 3)
            if new == value or not self.set(a.key, new):
                continue
            value = new
            self.term.say(f"  {a.key} = {value}")
            if a.trial is not None:
                pulse(self.config(), a.trial, a.seconds)

    def choose_camera(self) -> None:
        backend = self.value("camera.backend")
        options = dict(CAMERAS)
        if "camera.backend" in self.settings and backend == "sim":  # only from a flag or --set
            options["sim"] = "the simulator's camera (no real camera)"
        default = backend if backend in options else "picamera2"
        self.settings["camera.backend"] = self.term.choose("Camera", options, default)
        if self.settings["camera.backend"] == "opencv":
            source = self.term.ask("  device index, /dev/videoN or file", self.value(
                "camera.opencv.source"))  # fmt: skip
            self.set("camera.opencv.source", source)

    def check_camera(self, seconds: float, frame_path: Path | None) -> bool:
        """Measure the camera; False if it failed and the person does not want to go on."""
        config = self.config()
        try:
            report = check_camera(config, seconds, frame_path)
        except (CameraError, OSError, ValueError) as exc:
            self.term.say(f"camera: {exc}")
            return self.term.confirm("Write the configuration without a working camera?", False)
        self.term.say(
            f"camera: {report.fps:.1f} frames/s measured over {report.seconds:.1f} s "
            f"(camera.fps = {config.camera.fps:g}), {report.size[0]}x{report.size[1]} as the "
            f"policy sees it" + (f", saved to {frame_path}: look at it" if frame_path else "")
        )
        if report.fps < config.loop.rate_hz * 0.9:
            self.term.say(
                f"  slower than loop.rate_hz = {config.loop.rate_hz:g}: the car would stop for "
                "stale frames; lower loop.rate_hz or find the camera's limit"
            )
        return True


def run(
    setup: Setup,
    *,
    motors: bool = True,
    calibrate: bool = True,
    camera: bool = True,
    camera_seconds: float = 3.0,
    frame_path: Path | None = None,
) -> Config | None:
    """All the steps; the configuration to write, or None if the person gave up."""
    for name, enabled, action in (
        ("drivetrain", True, setup.choose_drivetrain),
        ("pins", True, setup.choose_pins),
        ("motor test", motors, setup.test_outputs),
        ("calibration", calibrate and motors, setup.calibrate),
        ("camera", True, setup.choose_camera),
    ):
        if enabled:
            setup.term.say(f"\n== {name} ==")
            action()
    if camera:
        setup.term.say("\n== camera check ==")
        if not setup.check_camera(camera_seconds, frame_path):
            return None
    return setup.config()
