"""Differential drive: two motors on an H-bridge, through gpiozero's Motor/PhaseEnableMotor and Robot.

Two kinds of driver input are supported:

- ``driver="in_in"`` — gpiozero ``Motor``: a PWM pin per direction (IN1/IN2 of
  an L298N, DRV8833, TB6612FNG…), plus an optional digital enable pin (ENA/ENB
  with the jumper removed, or STBY).
- ``driver="phase_enable"`` — gpiozero ``PhaseEnableMotor``: a direction pin
  (phase) and a PWM speed pin (enable), e.g. a DRV8835 in PH/EN mode or a
  Cytron MDD10A.

A command's steering and throttle are mixed into left/right speeds
(``MotorCommand.mixed``), then calibrated: the steering trim slows one side,
``min_speed``/``max_speed`` map a non-zero speed into the range where the motors
actually turn, and an inverted side is negated. When stopped, every pin is low
(enable and phase too): the bridge is off and the motors coast.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from gpiozero import Motor, PhaseEnableMotor, Robot

from malpi.actions import MotorCommand
from malpi.drivetrain.guarded import GuardedDrivetrain

log = logging.getLogger(__name__)

Pin = int | str

DRIVERS = ("in_in", "phase_enable")


class DifferentialDrive(GuardedDrivetrain):
    """Left and right motors on an H-bridge; all parameters are plain values for configuration."""

    def __init__(
        self,
        *,
        driver: str = "in_in",
        left_forward: Pin | None = None,
        left_backward: Pin | None = None,
        right_forward: Pin | None = None,
        right_backward: Pin | None = None,
        left_phase: Pin | None = None,
        right_phase: Pin | None = None,
        left_enable: Pin | None = None,
        right_enable: Pin | None = None,
        left_inverted: bool = False,
        right_inverted: bool = False,
        max_speed: float = 1.0,
        min_speed: float = 0.0,
        steering_trim: float = 0.0,
        pwm_frequency: float | None = None,
        pin_factory: Any = None,
    ) -> None:
        super().__init__()
        pins = {
            "left_forward": left_forward,
            "left_backward": left_backward,
            "right_forward": right_forward,
            "right_backward": right_backward,
            "left_phase": left_phase,
            "right_phase": right_phase,
            "left_enable": left_enable,
            "right_enable": right_enable,
        }
        _check_pins(driver, pins)
        _check_number("max_speed", max_speed, 0.0, 1.0, low_open=True)
        _check_number("min_speed", min_speed, 0.0, 1.0)
        if min_speed >= max_speed:
            raise ValueError(f"min_speed ({min_speed}) must be below max_speed ({max_speed})")
        _check_number("steering_trim", steering_trim, -1.0, 1.0)
        if pwm_frequency is not None:
            _check_number("pwm_frequency", pwm_frequency, 0.0, math.inf, low_open=True)
        self.driver = driver
        self.left_inverted = bool(left_inverted)
        self.right_inverted = bool(right_inverted)
        self.max_speed = float(max_speed)
        self.min_speed = float(min_speed)
        self.steering_trim = float(steering_trim)

        made: list[Any] = []  # close what was built if a later pin fails
        try:
            if driver == "in_in":
                left = Motor(
                    left_forward,
                    left_backward,
                    enable=left_enable,
                    pwm=True,
                    pin_factory=pin_factory,
                )
                made.append(left)
                right = Motor(
                    right_forward,
                    right_backward,
                    enable=right_enable,
                    pwm=True,
                    pin_factory=pin_factory,
                )
                made.append(right)
                pwm_devices = [m.forward_device for m in (left, right)] + [
                    m.backward_device for m in (left, right)
                ]
            else:
                left = PhaseEnableMotor(left_phase, left_enable, pwm=True, pin_factory=pin_factory)
                made.append(left)
                right = PhaseEnableMotor(
                    right_phase, right_enable, pwm=True, pin_factory=pin_factory
                )
                made.append(right)
                pwm_devices = [left.enable_device, right.enable_device]
            self._robot = Robot(left, right, pin_factory=pin_factory)
            made.append(self._robot)
            if pwm_frequency is not None:
                for device in pwm_devices:
                    device.frequency = pwm_frequency
            # gpiozero drives a Motor's enable pin high at once; start from "all pins low".
            self._write_stop()
        except BaseException:
            for device in reversed(made):
                device.close()
            raise
        self._left, self._right = left, right
        log.info(
            "DifferentialDrive(%s): %s",
            driver,
            ", ".join(f"{k}={v}" for k, v in pins.items() if v is not None),
        )

    def calibrate(
        self,
        *,
        min_speed: float | None = None,
        max_speed: float | None = None,
        steering_trim: float | None = None,
    ) -> None:
        """Change the running drivetrain's calibration (the link's set_calibration); the next
        command uses it. Checked as the constructor checks it; nothing changes on an error."""
        lo = self.min_speed if min_speed is None else min_speed
        hi = self.max_speed if max_speed is None else max_speed
        trim = self.steering_trim if steering_trim is None else steering_trim
        _check_number("max_speed", hi, 0.0, 1.0, low_open=True)
        _check_number("min_speed", lo, 0.0, 1.0)
        if lo >= hi:
            raise ValueError(f"min_speed ({lo}) must be below max_speed ({hi})")
        _check_number("steering_trim", trim, -1.0, 1.0)
        with self._lock:
            self.min_speed, self.max_speed, self.steering_trim = float(lo), float(hi), float(trim)

    def speeds(self, command: MotorCommand) -> tuple[float, float]:
        """The calibrated (left, right) motor values this command produces, each in [-1, 1]."""
        left, right = command.clamped().mixed()
        # Positive trim steers right: slow the right side (negative: the left).
        if self.steering_trim > 0:
            right *= 1.0 - self.steering_trim
        elif self.steering_trim < 0:
            left *= 1.0 + self.steering_trim
        left, right = self._scale(left), self._scale(right)
        if self.left_inverted:
            left = -left
        if self.right_inverted:
            right = -right
        return _clamp(left), _clamp(right)

    def _scale(self, speed: float) -> float:
        if speed == 0.0:
            return 0.0
        return math.copysign(self.min_speed + abs(speed) * (self.max_speed - self.min_speed), speed)

    def _write(self, command: MotorCommand) -> None:
        left, right = self.speeds(command)
        for motor in (self._left, self._right):
            enable = getattr(motor, "enable_device", None)
            if isinstance(motor, Motor) and enable is not None and not enable.value:
                enable.on()
        self._robot.value = (left, right)

    def _write_stop(self) -> None:
        robot = self._robot
        robot.stop()  # both direction pins low / PWM enable low
        for motor in (robot.left_motor, robot.right_motor):
            if isinstance(motor, Motor):
                if getattr(motor, "enable_device", None) is not None:
                    motor.enable_device.off()
            else:
                motor.phase_device.off()

    def _release(self) -> None:
        self._robot.close()  # closes both motors and frees their pins


def _check_pins(driver: str, pins: dict[str, Pin | None]) -> None:
    """Reject a wrong pin set before any GPIO is touched; messages name the parameter."""
    if driver not in DRIVERS:
        raise ValueError(f"driver must be one of {DRIVERS}, got {driver!r}")
    if driver == "in_in":
        required = ["left_forward", "left_backward", "right_forward", "right_backward"]
        forbidden = ["left_phase", "right_phase"]
        optional_pair = ("left_enable", "right_enable")
        if (pins["left_enable"] is None) != (pins["right_enable"] is None):
            raise ValueError(f"give both or neither of {optional_pair} for driver 'in_in'")
    else:
        required = ["left_phase", "left_enable", "right_phase", "right_enable"]
        forbidden = ["left_forward", "left_backward", "right_forward", "right_backward"]
    for name in required:
        if pins[name] is None:
            raise ValueError(f"{name} is required for driver {driver!r}")
    for name in forbidden:
        if pins[name] is not None:
            raise ValueError(f"{name} does not apply to driver {driver!r}")
    seen: dict[Pin, str] = {}
    for name, pin in pins.items():
        if pin is None:
            continue
        if isinstance(pin, bool) or not isinstance(pin, int | str):
            raise ValueError(f"{name} must be a GPIO number or name, got {pin!r}")
        key = pin.upper() if isinstance(pin, str) else pin
        if key in seen:
            raise ValueError(f"pin {pin!r} is used twice: {seen[key]} and {name}")
        seen[key] = name


def _check_number(name: str, value: float, lo: float, hi: float, *, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value > hi or value < lo or (low_open and value == lo):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}={value} is outside {bracket}{lo}, {hi}]")


def _clamp(v: float) -> float:
    return -1.0 if v < -1.0 else 1.0 if v > 1.0 else v
