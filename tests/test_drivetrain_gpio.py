"""DifferentialDrive on gpiozero's mock pins: the duty cycle on every pin, for every action."""

from __future__ import annotations

import math
import os
import signal
import threading
from functools import partial

import pytest
from drivetrain_helpers import closing_all, stop_from_many_threads
from gpiozero import DigitalOutputDevice, GPIOPinInUse, Motor
from gpiozero.pins.mock import MockFactory, MockPWMPin

from malpi.actions import DEFAULT_ACTIONS, STOP, MotorCommand
from malpi.drivetrain.gpio import DifferentialDrive
from malpi.drivetrain.guarded import DrivetrainClosed

# Pins: in/in driver (forward, backward per side, optional enables), phase/enable driver.
LF, LB, RF, RB, LEN, REN = 17, 18, 22, 23, 24, 25
LPH, LPW, RPH, RPW = 5, 12, 6, 13

IN_IN = dict(driver="in_in", left_forward=LF, left_backward=LB, right_forward=RF, right_backward=RB)
IN_IN_EN = dict(IN_IN, left_enable=LEN, right_enable=REN)
PH_EN = dict(
    driver="phase_enable", left_phase=LPH, left_enable=LPW, right_phase=RPH, right_enable=RPW
)

# Worked out by hand from DEFAULT_ACTIONS: left = throttle + steering, right = throttle -
# steering, each clamped to [-1, 1]; e.g. hard_left (-0.8, 0.45) -> (-0.35, 1.25 -> 1.0).
SPEEDS = {
    "hard_left": (-0.35, 1.0),
    "left": (0.25, 0.95),
    "straight": (0.7, 0.7),
    "right": (0.95, 0.25),
    "hard_right": (1.0, -0.35),
}
EXPECTED_IN_IN = {
    "hard_left": {LF: 0.0, LB: 0.35, RF: 1.0, RB: 0.0},
    "left": {LF: 0.25, LB: 0.0, RF: 0.95, RB: 0.0},
    "straight": {LF: 0.7, LB: 0.0, RF: 0.7, RB: 0.0},
    "right": {LF: 0.95, LB: 0.0, RF: 0.25, RB: 0.0},
    "hard_right": {LF: 1.0, LB: 0.0, RF: 0.0, RB: 0.35},
}
EXPECTED_PH_EN = {  # phase 1 = backward; enable carries the speed
    "hard_left": {LPH: 1.0, LPW: 0.35, RPH: 0.0, RPW: 1.0},
    "left": {LPH: 0.0, LPW: 0.25, RPH: 0.0, RPW: 0.95},
    "straight": {LPH: 0.0, LPW: 0.7, RPH: 0.0, RPW: 0.7},
    "right": {LPH: 0.0, LPW: 0.95, RPH: 0.0, RPW: 0.25},
    "hard_right": {LPH: 0.0, LPW: 1.0, RPH: 1.0, RPW: 0.35},
}


class HookPin(MockPWMPin):
    """A mock PWM pin that can run a callback when its state is written."""

    hook = None

    def _change_state(self, value):
        changed = super()._change_state(value)
        if self.hook is not None:
            self.hook()
        return changed


@pytest.fixture
def factory():
    f = MockFactory(pin_class=HookPin)
    yield f
    f.reset()


@pytest.fixture
def make(factory):
    with closing_all(partial(DifferentialDrive, pin_factory=factory)) as make:
        yield make


def assert_pins(factory, expected):
    actual = {p: factory.pin(p).state for p in expected}
    assert actual == {p: pytest.approx(v, abs=1e-9) for p, v in expected.items()}


def test_the_hand_table_covers_the_default_actions():
    assert sorted(SPEEDS) == sorted(DEFAULT_ACTIONS.names)
    for action in DEFAULT_ACTIONS:
        assert action.command.mixed() == pytest.approx(SPEEDS[action.name])


@pytest.mark.parametrize(
    "params, expected, extra",
    [
        (IN_IN, EXPECTED_IN_IN, {}),
        (IN_IN_EN, EXPECTED_IN_IN, {LEN: 1.0, REN: 1.0}),
        (PH_EN, EXPECTED_PH_EN, {}),
    ],
    ids=["motor", "motor_with_enable", "phase_enable_motor"],
)
def test_every_action_sets_every_pin_and_stop_clears_them(make, factory, params, expected, extra):
    dt = make(**params)
    all_pins = list(next(iter(expected.values()))) + list(extra)
    zeros = dict.fromkeys(all_pins, 0.0)
    assert_pins(factory, zeros)  # constructed stopped, enable pins included
    for action in DEFAULT_ACTIONS:
        dt.apply(action.command)
        assert_pins(factory, expected[action.name] | extra)
        dt.stop()
        assert_pins(factory, zeros)
    # Straight from one action to another, no stop between (directions flip cleanly).
    for a, b in [("hard_left", "hard_right"), ("hard_right", "hard_left"), ("straight", "left")]:
        dt.apply(DEFAULT_ACTIONS[DEFAULT_ACTIONS.index(a)].command)
        dt.apply(DEFAULT_ACTIONS[DEFAULT_ACTIONS.index(b)].command)
        assert_pins(factory, expected[b] | extra)
    dt.apply(STOP)  # a zero command: motors off, but (unlike stop()) the bridge stays enabled
    assert_pins(factory, dict.fromkeys(expected["left"], 0.0) | extra)
    dt.stop()
    assert_pins(factory, zeros)


def test_pwm_pins_are_pwm_and_frequency_is_configurable(make, factory):
    dt = make(**IN_IN_EN, pwm_frequency=1000)
    dt.apply(DEFAULT_ACTIONS.command(DEFAULT_ACTIONS.index("straight")))
    assert all(factory.pin(p).frequency == 1000 for p in (LF, LB, RF, RB))
    assert factory.pin(LEN).frequency is None  # the enable pin is plain digital
    dt.close()
    factory.reset()
    dt = make(**PH_EN)
    assert factory.pin(LPW).frequency == 100 and factory.pin(RPW).frequency == 100  # gpiozero's
    assert factory.pin(LPH).frequency is None


@pytest.mark.parametrize(
    "command, expected",
    [
        (MotorCommand(0.0, 3.0), {LF: 1.0, LB: 0.0, RF: 1.0, RB: 0.0}),
        (MotorCommand(0.0, -9.0), {LF: 0.0, LB: 1.0, RF: 0.0, RB: 1.0}),
        (MotorCommand(5.0, -7.0), {LF: 0.0, LB: 0.0, RF: 0.0, RB: 1.0}),  # (1, -1) mixed
        (MotorCommand(-4.0, 0.0), {LF: 0.0, LB: 1.0, RF: 1.0, RB: 0.0}),  # spin left
        (MotorCommand(math.inf, 0.0), {LF: 0.0, LB: 0.0, RF: 0.0, RB: 0.0}),
    ],
)
def test_out_of_range_commands_are_clamped_and_non_finite_ones_stop(
    make, factory, command, expected
):
    dt = make(**IN_IN)
    dt.apply(MotorCommand(0.0, 0.5))
    if math.isfinite(command.steering) and math.isfinite(command.throttle):
        dt.apply(command)
    else:
        with pytest.raises(ValueError, match="non-finite"):
            dt.apply(command)
    assert_pins(factory, expected)


def test_nan_command_stops_and_raises(make, factory):
    dt = make(**PH_EN)
    dt.apply(MotorCommand(0.0, 0.7))
    with pytest.raises(ValueError):
        dt.apply(MotorCommand(float("nan"), 0.2))
    assert_pins(factory, {LPH: 0.0, LPW: 0.0, RPH: 0.0, RPW: 0.0})


# -- calibration --------------------------------------------------------------

STRAIGHT = MotorCommand(0.0, 0.7)


@pytest.mark.parametrize(
    "calibration, command, expected",
    [
        ({"left_inverted": True}, STRAIGHT, {LF: 0.0, LB: 0.7, RF: 0.7, RB: 0.0}),
        ({"right_inverted": True}, STRAIGHT, {LF: 0.7, LB: 0.0, RF: 0.0, RB: 0.7}),
        ({"max_speed": 0.5}, STRAIGHT, {LF: 0.35, LB: 0.0, RF: 0.35, RB: 0.0}),
        ({"max_speed": 0.5}, MotorCommand(0.0, -1.0), {LF: 0.0, LB: 0.5, RF: 0.0, RB: 0.5}),
        # min_speed: a non-zero speed s becomes 0.3 + s * (1 - 0.3); zero stays zero.
        ({"min_speed": 0.3}, STRAIGHT, {LF: 0.79, LB: 0.0, RF: 0.79, RB: 0.0}),
        ({"min_speed": 0.3}, MotorCommand(1.0, 0.0), {LF: 1.0, LB: 0.0, RF: 0.0, RB: 1.0}),
        ({"min_speed": 0.3}, MotorCommand(0.5, 0.5), {LF: 1.0, LB: 0.0, RF: 0.0, RB: 0.0}),
        # Positive trim steers right by slowing the right side; negative slows the left.
        ({"steering_trim": 0.2}, STRAIGHT, {LF: 0.7, LB: 0.0, RF: 0.56, RB: 0.0}),
        ({"steering_trim": -0.2}, STRAIGHT, {LF: 0.56, LB: 0.0, RF: 0.7, RB: 0.0}),
        ({"steering_trim": 0.2}, STOP, {LF: 0.0, LB: 0.0, RF: 0.0, RB: 0.0}),
        (
            {"left_inverted": True, "max_speed": 0.8, "steering_trim": 0.5},
            MotorCommand(0.0, 1.0),
            {LF: 0.0, LB: 0.8, RF: 0.4, RB: 0.0},
        ),
    ],
)
def test_calibration(make, factory, calibration, command, expected):
    dt = make(**IN_IN, **calibration)
    dt.apply(command)
    assert_pins(factory, expected)
    dt.stop()
    assert_pins(factory, dict.fromkeys(expected, 0.0))


# -- stop(): threads, signals, close -----------------------------------------


def test_stop_from_many_threads_at_once(make, factory):
    dt = make(**IN_IN_EN)
    dt.apply(STRAIGHT)
    assert stop_from_many_threads(dt) == []
    assert_pins(factory, dict.fromkeys([LF, LB, RF, RB, LEN, REN], 0.0))


def test_stops_racing_commands_leave_consistent_outputs(make, factory):
    dt = make(**IN_IN)
    stop_flag = threading.Event()
    errors = []

    def driver():
        i = 0
        while not stop_flag.is_set():
            try:
                dt.apply(DEFAULT_ACTIONS.command(i % len(DEFAULT_ACTIONS)))
            except Exception as exc:  # pragma: no cover
                errors.append(exc)
            i += 1

    def stopper():
        while not stop_flag.is_set():
            dt.stop()

    threads = [threading.Thread(target=driver) for _ in range(3)] + [
        threading.Thread(target=stopper) for _ in range(3)
    ]
    for t in threads:
        t.start()
    threading.Event().wait(0.2)
    stop_flag.set()
    for t in threads:
        t.join(10)
    assert not errors
    # Whatever came last, the outputs are one whole command (never half of two), or stopped.
    snapshot = {p: factory.pin(p).state for p in (LF, LB, RF, RB)}
    candidates = [dict.fromkeys((LF, LB, RF, RB), 0.0)] + list(EXPECTED_IN_IN.values())
    assert any(snapshot == {p: pytest.approx(v) for p, v in c.items()} for c in candidates)
    dt.stop()
    assert_pins(factory, dict.fromkeys((LF, LB, RF, RB), 0.0))


def test_a_signal_handler_stop_in_the_middle_of_apply_wins(make, factory):
    """SIGINT/SIGTERM handlers run on the main thread between two bytecodes of apply()."""
    dt = make(**IN_IN)
    fired = []

    def handler(signum, frame):
        fired.append(signum)
        dt.stop()  # re-enters the drivetrain's lock on the same thread: must not deadlock

    def raise_signal_once():
        factory.pin(LF).hook = None
        os.kill(os.getpid(), signal.SIGUSR1)  # delivered before the next bytecode

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        factory.pin(LF).hook = raise_signal_once  # fires while the left motor is being written
        dt.apply(STRAIGHT)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert fired == [signal.SIGUSR1]
    # Without the check, the right motor would now be running at 0.7 after the stop.
    assert_pins(factory, dict.fromkeys((LF, LB, RF, RB), 0.0))
    dt.apply(STRAIGHT)  # and the drivetrain still works afterwards
    assert_pins(factory, EXPECTED_IN_IN["straight"])


def test_a_failed_write_leaves_the_motors_stopped(make, factory):
    dt = make(**IN_IN)
    dt.apply(STRAIGHT)

    def fail():
        factory.pin(RF).hook = None
        raise OSError("GPIO chip went away")

    factory.pin(RF).hook = fail
    with pytest.raises(OSError):
        dt.apply(DEFAULT_ACTIONS.command(DEFAULT_ACTIONS.index("left")))
    assert_pins(factory, dict.fromkeys((LF, LB, RF, RB), 0.0))


def test_stop_after_close_and_close_releases_the_pins(make, factory):
    dt = make(**IN_IN_EN)
    dt.apply(STRAIGHT)
    dt.close()
    assert dt.closed
    dt.stop()  # safe, does nothing
    dt.close()  # idempotent
    for p in (LF, LB, RF, RB, LEN, REN):
        assert factory.pin(p).function == "input"  # released
        assert factory.pin(p).state == 0
    with pytest.raises(DrivetrainClosed):
        dt.apply(STRAIGHT)
    # The pins can be claimed again.
    again = make(**IN_IN_EN)
    again.apply(STRAIGHT)
    assert_pins(factory, EXPECTED_IN_IN["straight"])


def test_context_manager_closes(factory):
    with DifferentialDrive(**PH_EN, pin_factory=factory) as dt:
        dt.apply(STRAIGHT)
    assert dt.closed
    assert all(factory.pin(p).function == "input" for p in (LPH, LPW, RPH, RPW))


# -- construction ------------------------------------------------------------


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(IN_IN, driver="l298n"), "driver must be one of"),
        ({k: v for k, v in IN_IN.items() if k != "right_backward"}, "right_backward is required"),
        (dict(IN_IN, left_phase=5), "left_phase does not apply"),
        (dict(IN_IN, left_enable=24), "both or neither"),
        (dict(PH_EN, left_forward=17), "left_forward does not apply"),
        ({k: v for k, v in PH_EN.items() if k != "left_enable"}, "left_enable is required"),
        (dict(IN_IN, right_backward=LF), "used twice: left_forward and right_backward"),
        (dict(IN_IN, left_forward="gpio9", right_forward="GPIO9"), "used twice"),
        (dict(IN_IN, left_forward=True), "must be a GPIO number"),
        (dict(IN_IN, max_speed=0.0), "max_speed"),
        (dict(IN_IN, max_speed=1.5), "max_speed"),
        (dict(IN_IN, min_speed=-0.1), "min_speed"),
        (dict(IN_IN, min_speed=0.6, max_speed=0.5), "below max_speed"),
        (dict(IN_IN, steering_trim=float("nan")), "steering_trim"),
        (dict(IN_IN, pwm_frequency=0), "pwm_frequency"),
    ],
)
def test_bad_parameters_are_refused_before_any_pin_is_touched(factory, params, message):
    with pytest.raises(ValueError, match=message):
        DifferentialDrive(pin_factory=factory, **params)
    assert factory.pins == {}


def test_a_pin_in_use_fails_construction_and_frees_the_pins_already_claimed(factory):
    blocker = DigitalOutputDevice(RB, pin_factory=factory)
    with pytest.raises(GPIOPinInUse):
        DifferentialDrive(**IN_IN, pin_factory=factory)
    blocker.close()
    left = Motor(LF, LB, pin_factory=factory)  # the left motor's pins were given back
    left.close()


def test_speeds_reports_the_calibrated_outputs(make):
    dt = make(**IN_IN, max_speed=0.5, left_inverted=True)
    assert dt.speeds(STRAIGHT) == pytest.approx((-0.35, 0.35))
    for action in DEFAULT_ACTIONS:
        left, right = dt.speeds(action.command)
        assert -1 <= left <= 1 and -1 <= right <= 1
