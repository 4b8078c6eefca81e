"""RC-car drivetrain: a steering servo and an ESC, both driven with gpiozero ``Servo`` pulses.

Pulse widths are in microseconds, as RC gear is specified. Each channel maps a
command value in [-1, 1] piecewise-linearly onto its pulses: -1 -> min, 0 ->
center (steering; this is the trim) or neutral (throttle), +1 -> max, so an
off-centre trim or an ESC with an asymmetric neutral keeps the full range on
both sides. ``steering_reversed``/``throttle_reversed`` swap the ends.

``stop()`` sends the throttle neutral pulse and centres the steering; ``close()``
does that and then stops the pulses (ESCs treat a lost signal as neutral).
Many car ESCs need neutral for a moment at power-up to arm, which is what the
construction sends; some also need brake-then-neutral before they reverse —
that is the ESC's protocol, not handled here.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from gpiozero import Servo

from malpi.actions import MotorCommand
from malpi.drivetrain.guarded import GuardedDrivetrain

log = logging.getLogger(__name__)

Pin = int | str


class PulseMap:
    """A command value in [-1, 1] -> a pulse width in microseconds, through a centre point."""

    def __init__(
        self, name: str, min_us: float, center_us: float | None, max_us: float, reversed_: bool
    ) -> None:
        for key, v in (("min_us", min_us), ("max_us", max_us), ("center_us", center_us)):
            if v is None and key == "center_us":
                continue
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not math.isfinite(v)
                or v <= 0
            ):
                raise ValueError(f"{name}_{key} must be a positive number, got {v!r}")
        center = (min_us + max_us) / 2 if center_us is None else center_us
        if not min_us < center < max_us:
            raise ValueError(
                f"{name} pulses must satisfy min < center < max, got {min_us} < {center} < {max_us}"
            )
        self.min_us, self.center_us, self.max_us = float(min_us), float(center), float(max_us)
        self.reversed = bool(reversed_)

    def pulse_us(self, value: float) -> float:
        v = -value if self.reversed else value
        v = -1.0 if v < -1.0 else 1.0 if v > 1.0 else v
        if v >= 0:
            return self.center_us + v * (self.max_us - self.center_us)
        return self.center_us + v * (self.center_us - self.min_us)

    def servo_value(self, pulse_us: float) -> float:
        """gpiozero's Servo.value for this pulse (Servo is linear from min to max)."""
        v = -1.0 + 2.0 * (pulse_us - self.min_us) / (self.max_us - self.min_us)
        return -1.0 if v < -1.0 else 1.0 if v > 1.0 else v


class ServoDrive(GuardedDrivetrain):
    """Steering servo + ESC throttle; all parameters are plain values for configuration."""

    def __init__(
        self,
        *,
        steering_pin: Pin,
        throttle_pin: Pin,
        steering_min_us: float = 1000.0,
        steering_center_us: float | None = None,
        steering_max_us: float = 2000.0,
        steering_reversed: bool = False,
        throttle_min_us: float = 1000.0,
        throttle_neutral_us: float | None = None,
        throttle_max_us: float = 2000.0,
        throttle_reversed: bool = False,
        max_speed: float = 1.0,
        frame_us: float = 20000.0,
        pin_factory: Any = None,
    ) -> None:
        super().__init__()
        for name, pin in (("steering_pin", steering_pin), ("throttle_pin", throttle_pin)):
            if pin is None or isinstance(pin, bool) or not isinstance(pin, int | str):
                raise ValueError(f"{name} must be a GPIO number or name, got {pin!r}")
        same = (steering_pin.upper() if isinstance(steering_pin, str) else steering_pin) == (
            throttle_pin.upper() if isinstance(throttle_pin, str) else throttle_pin
        )
        if same:
            raise ValueError(f"pin {steering_pin!r} is used twice: steering_pin and throttle_pin")
        self.steering = PulseMap(
            "steering", steering_min_us, steering_center_us, steering_max_us, steering_reversed
        )
        self.throttle = PulseMap(
            "throttle", throttle_min_us, throttle_neutral_us, throttle_max_us, throttle_reversed
        )
        if (
            isinstance(max_speed, bool)
            or not isinstance(max_speed, int | float)
            or not 0.0 < max_speed <= 1.0
        ):
            raise ValueError(f"max_speed={max_speed!r} is outside (0, 1]")
        if (
            isinstance(frame_us, bool)
            or not isinstance(frame_us, int | float)
            or not math.isfinite(frame_us)
        ):
            raise ValueError(f"frame_us must be a finite number, got {frame_us!r}")
        for m in (self.steering, self.throttle):
            if m.max_us >= frame_us:
                raise ValueError(f"pulses up to {m.max_us} us do not fit a {frame_us} us frame")
        self.max_speed = float(max_speed)
        self.frame_us = float(frame_us)

        def make(pin: Pin, pulses: PulseMap) -> Servo:
            return Servo(
                pin,
                initial_value=pulses.servo_value(
                    pulses.center_us
                ),  # centred / neutral from the start
                min_pulse_width=pulses.min_us / 1e6,
                max_pulse_width=pulses.max_us / 1e6,
                frame_width=self.frame_us / 1e6,
                pin_factory=pin_factory,
            )

        self._make, self._steering_pin = make, steering_pin  # calibrate() remakes the servo
        self._steering_servo = make(steering_pin, self.steering)
        try:
            self._throttle_servo = make(throttle_pin, self.throttle)
        except BaseException:
            self._steering_servo.close()
            raise
        log.info(
            "ServoDrive: steering on %s (%g/%g/%g us), throttle on %s (%g/%g/%g us)",
            steering_pin,
            self.steering.min_us,
            self.steering.center_us,
            self.steering.max_us,
            throttle_pin,
            self.throttle.min_us,
            self.throttle.center_us,
            self.throttle.max_us,
        )

    def calibrate(
        self,
        *,
        steering_min_us: float | None = None,
        steering_center_us: float | None = None,
        steering_max_us: float | None = None,
        throttle_neutral_us: float | None = None,
        max_speed: float | None = None,
    ) -> None:
        """Change the running drivetrain's calibration (the link's set_calibration); the next
        command uses it. A new steering range remakes the steering servo's output (its pulse
        range is fixed when it is made); the outputs are left centred and at neutral."""
        s, t = self.steering, self.throttle
        steering = PulseMap(
            "steering",
            s.min_us if steering_min_us is None else steering_min_us,
            s.center_us if steering_center_us is None else steering_center_us,
            s.max_us if steering_max_us is None else steering_max_us,
            s.reversed,
        )
        throttle = PulseMap(
            "throttle",
            t.min_us,
            t.center_us if throttle_neutral_us is None else throttle_neutral_us,
            t.max_us,
            t.reversed,
        )
        speed = self.max_speed if max_speed is None else max_speed
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.0 < speed <= 1.0:
            raise ValueError(f"max_speed={speed!r} is outside (0, 1]")
        if steering.max_us >= self.frame_us:
            raise ValueError(
                f"pulses up to {steering.max_us} us do not fit a {self.frame_us} us frame"
            )
        with self._lock:
            if (steering.min_us, steering.max_us) != (s.min_us, s.max_us) and not self._closed:
                self._steering_servo.close()
                self._steering_servo = self._make(self._steering_pin, steering)
            self.steering, self.throttle, self.max_speed = steering, throttle, float(speed)
            if not self._closed:
                self._write_stop()

    def pulses_us(self, command: MotorCommand) -> tuple[float, float]:
        """The (steering, throttle) pulse widths in microseconds this command produces."""
        c = command.clamped()
        return self.steering.pulse_us(c.steering), self.throttle.pulse_us(
            c.throttle * self.max_speed
        )

    def _write(self, command: MotorCommand) -> None:
        steering_us, throttle_us = self.pulses_us(command)
        self._steering_servo.value = self.steering.servo_value(steering_us)
        self._throttle_servo.value = self.throttle.servo_value(throttle_us)

    def _write_stop(self) -> None:
        # Throttle first: it is the one that moves the car.
        self._throttle_servo.value = self.throttle.servo_value(self.throttle.center_us)
        self._steering_servo.value = self.steering.servo_value(self.steering.center_us)

    def _release(self) -> None:
        try:
            self._throttle_servo.close()
        finally:
            self._steering_servo.close()
