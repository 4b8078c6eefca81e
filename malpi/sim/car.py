"""Car kinematics for both MaLPi drivetrains, with actuator lag, a speed limit and noise.

``steering``: a servo-steered RC car (bicycle model). The servo follows the
steering command with a first-order lag; the motor's speed follows
throttle x max_speed with a slower one. Positive steering turns right.

``differential``: a two-motor robot. ``MotorCommand.mixed()`` gives the left
and right motor commands; each wheel's speed follows its command with the motor
lag, and a skid-steer efficiency scales the ideal yaw rate down as real
tracked/skid robots do.

Noise: per episode, a steering trim (servo centre offset) and per-motor gain
errors; per control step, a relative speed error and a yaw-rate disturbance.
``noise=0`` gives exact, repeatable kinematics. The speed itself is never in
one camera frame, which is why the policy needs memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from malpi.actions import MotorCommand

DRIVETRAINS = ("steering", "differential")


@dataclass(frozen=True)
class CarParams:
    drivetrain: str = "steering"
    max_speed: float = 2.0  # m/s at full throttle (each wheel's for differential drive)
    wheelbase: float = 0.20  # m, steering: front to rear axle
    max_steer_deg: float = 28.0  # steering: front wheel angle at full lock
    wheel_separation: float = 0.16  # m, differential: between the wheels
    turn_efficiency: float = 0.6  # differential: skid-steer fraction of the ideal yaw rate
    steer_lag: float = 0.08  # s, servo time constant
    motor_lag: float = 0.25  # s, motor + inertia time constant
    noise: float = 1.0  # scales all noise below; 0 = exact kinematics
    speed_noise: float = 0.03  # relative, per control step
    yaw_noise: float = 0.05  # rad/s, per control step
    trim: float = 0.02  # per-episode steering offset, fraction of full lock (std)
    gain_spread: float = 0.04  # per-episode motor gain error (std)
    physics_dt: float = 0.01  # s, longest integration sub-step
    length: float = 0.30  # m, body size (drawing only)
    width: float = 0.18

    def __post_init__(self) -> None:
        if self.drivetrain not in DRIVETRAINS:
            raise ValueError(f"drivetrain must be one of {DRIVETRAINS}, not {self.drivetrain!r}")

    def with_(self, **changes: object) -> CarParams:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CarState:
    """Everything that determines the car's future motion (ground truth)."""

    x: float
    y: float
    heading: float  # rad, anticlockwise from +x
    speed: float  # m/s along the heading (negative when reversing)
    a0: float  # steering: servo position in command units; differential: left wheel m/s
    a1: float  # steering: unused (= speed);               differential: right wheel m/s
    trim: float = 0.0
    gain_left: float = 1.0
    gain_right: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class Car:
    """One car. ``step`` advances it by dt under a command; ``rng`` supplies the noise."""

    def __init__(self, params: CarParams | None = None, rng: np.random.Generator | None = None):
        self.params = params or CarParams()
        self.rng = rng if rng is not None else np.random.default_rng()
        self._noise = np.zeros((0, 2))
        self._ni = 0
        self.state = CarState(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    # -- state -------------------------------------------------------------------

    def reset(self, x: float, y: float, heading: float, speed: float = 0.0) -> CarState:
        """Place the car, at rest (or at ``speed``), and draw this episode's trim and gains."""
        p = self.params
        n = p.noise
        trim = float(self.rng.normal(0, p.trim * n)) if n else 0.0
        gl, gr = (1 + self.rng.normal(0, p.gain_spread * n, 2)) if n else (1.0, 1.0)
        self._noise = self.rng.standard_normal((256, 2)) if n else np.zeros((1, 2))
        self._ni = 0
        self.state = CarState(
            x,
            y,
            heading,
            speed,
            0.0 if p.drivetrain == "steering" else speed,
            speed,
            trim,
            float(gl),
            float(gr),
        )
        return self.state

    def put(self, x: float, y: float, heading: float) -> CarState:
        """Move the car to a pose, at rest, keeping this episode's trim and gains."""
        st = self.state
        self.state = CarState(x, y, heading, 0.0, 0.0, 0.0, st.trim, st.gain_left, st.gain_right)
        return self.state

    def set_state(self, state: CarState) -> None:
        self.state = state

    @property
    def yaw_rate(self) -> float:
        """Current yaw rate without noise (rad/s, positive = turning left)."""
        st = self.state
        return self._yaw_rate(st.a0, st.a1, st.speed, st.trim)

    # -- dynamics ------------------------------------------------------------------

    def step(self, command: MotorCommand, dt: float) -> CarState:
        p, st = self.params, self.state
        c = command.clamped()
        if p.noise:
            if self._ni >= len(self._noise):
                self._noise = self.rng.standard_normal((256, 2))
                self._ni = 0
            n0, n1 = self._noise[self._ni]
            self._ni += 1
            speed_k = 1.0 + p.noise * p.speed_noise * n0
            yaw_d = p.noise * p.yaw_noise * n1 * min(1.0, abs(st.speed) / 0.5)  # none at rest
        else:
            speed_k, yaw_d = 1.0, 0.0
        x, y, h, v, a0, a1 = st.x, st.y, st.heading, st.speed, st.a0, st.a1
        subs = max(1, math.ceil(dt / p.physics_dt - 1e-9))
        h_dt = dt / subs
        ks = 1.0 - math.exp(-h_dt / p.steer_lag)
        km = 1.0 - math.exp(-h_dt / p.motor_lag)
        vmax = p.max_speed
        if p.drivetrain == "steering":
            target_v = c.throttle * vmax * (st.gain_left + st.gain_right) / 2
        else:
            left, right = c.mixed()
            tl, tr = left * vmax * st.gain_left, right * vmax * st.gain_right
        steering = p.drivetrain == "steering"
        max_steer = math.radians(p.max_steer_deg)
        turn = p.turn_efficiency / p.wheel_separation
        # the loop is the hot path of the whole simulator: plain floats, no calls
        for _ in range(subs):
            if steering:
                a0 += (c.steering - a0) * ks
                v += (target_v - v) * km
                v = -vmax if v < -vmax else vmax if v > vmax else v  # the speed limit
                a1 = v
                sa = a0 + st.trim
                sa = -1.0 if sa < -1.0 else 1.0 if sa > 1.0 else sa
                w = -v * math.tan(sa * max_steer) / p.wheelbase
            else:
                a0 += (tl - a0) * km
                a1 += (tr - a1) * km
                v = (a0 + a1) / 2
                v = -vmax if v < -vmax else vmax if v > vmax else v
                w = (a1 - a0) * turn
            w = w * speed_k + yaw_d
            vv = v * speed_k
            if -1e-9 < w < 1e-9:
                x += vv * math.cos(h) * h_dt
                y += vv * math.sin(h) * h_dt
            else:  # exact arc at constant speed and yaw rate
                h1 = h + w * h_dt
                r = vv / w
                x += r * (math.sin(h1) - math.sin(h))
                y -= r * (math.cos(h1) - math.cos(h))
                h = h1
        h = math.remainder(h, math.tau)
        self.state = CarState(x, y, h, v, a0, a1, st.trim, st.gain_left, st.gain_right)
        return self.state

    def _yaw_rate(self, a0: float, a1: float, v: float, trim: float) -> float:
        p = self.params
        if p.drivetrain == "steering":
            steer = max(-1.0, min(1.0, a0 + trim))
            return -v * math.tan(steer * math.radians(p.max_steer_deg)) / p.wheelbase
        return (a1 - a0) / p.wheel_separation * p.turn_efficiency  # can spin on the spot

    def preview_curvature(self, command: MotorCommand, dt: float) -> float:
        """Nominal curvature (no noise, no trim) after applying ``command`` for dt: what a
        controller that knows the car's model expects from this command."""
        p, st = self.params, self.state
        c = command.clamped()
        if p.drivetrain == "steering":
            a0 = st.a0 + (c.steering - st.a0) * (1.0 - math.exp(-dt / p.steer_lag))
            return -math.tan(max(-1.0, min(1.0, a0)) * math.radians(p.max_steer_deg)) / p.wheelbase
        k = 1.0 - math.exp(-dt / p.motor_lag)
        left, right = c.mixed()
        a0 = st.a0 + (left * p.max_speed - st.a0) * k
        a1 = st.a1 + (right * p.max_speed - st.a1) * k
        v = (a0 + a1) / 2
        return (a1 - a0) / p.wheel_separation * p.turn_efficiency / max(v, 0.05)
