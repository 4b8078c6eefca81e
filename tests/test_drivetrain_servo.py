"""ServoDrive on gpiozero's mock pins: the pulse width each pin's duty cycle implies at 50 Hz."""

from __future__ import annotations

from functools import partial

import pytest
from drivetrain_helpers import closing_all, stop_from_many_threads
from gpiozero import GPIOPinInUse, OutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from malpi.actions import DEFAULT_ACTIONS, STOP, MotorCommand
from malpi.drivetrain.guarded import DrivetrainClosed
from malpi.drivetrain.servo import ServoDrive

STEER, THROTTLE = 18, 19

# By hand, default 1000/1500/2000 us on both channels: pulse = 1500 + 500 * value.
EXPECTED_US = {  # action: (steering, throttle)
    "hard_left": (1100.0, 1725.0),  # (-0.8, 0.45)
    "left": (1325.0, 1800.0),  # (-0.35, 0.6)
    "straight": (1500.0, 1850.0),  # (0, 0.7)
    "right": (1675.0, 1800.0),  # (0.35, 0.6)
    "hard_right": (1900.0, 1725.0),  # (0.8, 0.45)
}


@pytest.fixture
def factory():
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


@pytest.fixture
def make(factory):
    with closing_all(
        partial(ServoDrive, steering_pin=STEER, throttle_pin=THROTTLE, pin_factory=factory)
    ) as make:
        yield make


def pulse_us(factory, pin) -> float:
    """The pulse width the pin's PWM implies: duty cycle x period."""
    p = factory.pin(pin)
    assert p.frequency == 50  # one pulse every 20 ms
    return p.state / p.frequency * 1e6


def assert_pulses(factory, steering_us, throttle_us):
    assert pulse_us(factory, STEER) == pytest.approx(steering_us, abs=1e-6)
    assert pulse_us(factory, THROTTLE) == pytest.approx(throttle_us, abs=1e-6)


def test_the_hand_table_covers_the_default_actions():
    assert sorted(EXPECTED_US) == sorted(DEFAULT_ACTIONS.names)


def test_starts_centred_and_neutral(make, factory):
    make()
    assert_pulses(factory, 1500, 1500)
    assert factory.pin(STEER).state == pytest.approx(0.075)  # 1.5 ms of 20 ms


def test_every_action_sets_both_pulses_and_stop_returns_to_neutral(make, factory):
    dt = make()
    for action in DEFAULT_ACTIONS:
        dt.apply(action.command)
        assert_pulses(factory, *EXPECTED_US[action.name])
        assert dt.pulses_us(action.command) == pytest.approx(EXPECTED_US[action.name])
        dt.stop()
        assert_pulses(factory, 1500, 1500)
        dt.stop()  # idempotent
        assert_pulses(factory, 1500, 1500)
    dt.apply(DEFAULT_ACTIONS.command(0))
    dt.apply(STOP)
    assert_pulses(factory, 1500, 1500)


@pytest.mark.parametrize(
    "command, expected",
    [
        (MotorCommand(3.0, -3.0), (2000, 1000)),
        (MotorCommand(-1.5, 1.5), (1000, 2000)),
        (MotorCommand(-1.0, -1.0), (1000, 1000)),
        (MotorCommand(1.0, 1.0), (2000, 2000)),
    ],
)
def test_out_of_range_commands_are_clamped(make, factory, command, expected):
    make().apply(command)
    assert_pulses(factory, *expected)


def test_non_finite_command_stops_and_raises(make, factory):
    dt = make()
    dt.apply(MotorCommand(0.3, 0.8))
    with pytest.raises(ValueError, match="non-finite"):
        dt.apply(MotorCommand(0.0, float("nan")))
    assert_pulses(factory, 1500, 1500)


@pytest.mark.parametrize(
    "calibration, command, expected",
    [
        # Steering trim: a centre of 1550 us; each side keeps its full throw.
        ({"steering_center_us": 1550}, MotorCommand(0.0, 0.0), (1550, 1500)),
        ({"steering_center_us": 1550}, MotorCommand(0.35, 0.0), (1550 + 0.35 * 450, 1500)),
        ({"steering_center_us": 1550}, MotorCommand(-1.0, 0.0), (1000, 1500)),
        ({"steering_reversed": True}, MotorCommand(-0.8, 0.45), (1900, 1725)),
        ({"throttle_reversed": True}, MotorCommand(0.0, 0.7), (1500, 1150)),
        # An ESC whose neutral is not midway: 1000 / 1400 / 2000 us.
        ({"throttle_neutral_us": 1400}, MotorCommand(0.0, 0.7), (1500, 1820)),
        ({"throttle_neutral_us": 1400}, MotorCommand(0.0, -0.5), (1500, 1200)),
        ({"throttle_neutral_us": 1400}, STOP, (1500, 1400)),
        ({"max_speed": 0.5}, MotorCommand(0.0, 0.7), (1500, 1675)),
        ({"max_speed": 0.5}, MotorCommand(0.0, -1.0), (1500, 1250)),
        (
            {
                "steering_min_us": 1100,
                "steering_max_us": 1900,
                "throttle_min_us": 1200,
                "throttle_max_us": 1800,
            },
            MotorCommand(1.0, -1.0),
            (1900, 1200),
        ),
    ],
)
def test_calibration(make, factory, calibration, command, expected):
    dt = make(**calibration)
    dt.apply(command)
    assert_pulses(factory, *expected)


def test_stop_uses_the_configured_neutral_and_centre(make, factory):
    dt = make(steering_center_us=1450, throttle_neutral_us=1520)
    assert_pulses(factory, 1450, 1520)
    dt.apply(MotorCommand(0.9, 0.9))
    dt.stop()
    assert_pulses(factory, 1450, 1520)


def test_frame_width_sets_the_pwm_frequency(make, factory):
    make(frame_us=10000)  # 100 Hz servos
    assert factory.pin(STEER).frequency == 100
    assert factory.pin(THROTTLE).state == pytest.approx(0.15)  # 1.5 ms of 10 ms


def test_stop_from_many_threads_at_once(make, factory):
    dt = make()
    dt.apply(MotorCommand(0.5, 1.0))
    assert stop_from_many_threads(dt) == []
    assert_pulses(factory, 1500, 1500)


def test_close_stops_the_pulses_and_stop_after_close_is_safe(make, factory):
    dt = make()
    dt.apply(MotorCommand(0.0, 1.0))
    dt.close()
    dt.stop()
    dt.close()
    for pin in (STEER, THROTTLE):
        assert factory.pin(pin).frequency is None  # no pulses at all
        assert factory.pin(pin).function == "input"  # released
    with pytest.raises(DrivetrainClosed):
        dt.apply(STOP)
    make()  # the pins can be claimed again
    assert_pulses(factory, 1500, 1500)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steering_pin": None}, "steering_pin must be"),
        ({"throttle_pin": STEER}, "used twice"),
        ({"steering_min_us": 1600, "steering_center_us": 1500}, "min < center < max"),
        ({"steering_min_us": 2000}, "min < center < max"),
        ({"steering_center_us": 2100}, "min < center < max"),
        ({"throttle_neutral_us": 1000}, "min < center < max"),
        ({"throttle_max_us": -5}, "throttle_max_us must be a positive"),
        ({"max_speed": 0}, "max_speed"),
        ({"max_speed": 1.2}, "max_speed"),
        ({"frame_us": 1900}, "do not fit"),
    ],
)
def test_bad_parameters_are_refused_before_any_pin_is_touched(factory, kwargs, message):
    params = {"steering_pin": STEER, "throttle_pin": THROTTLE} | kwargs
    with pytest.raises(ValueError, match=message):
        ServoDrive(pin_factory=factory, **params)
    assert factory.pins == {}


def test_a_pin_in_use_frees_the_other(factory):
    blocker = OutputDevice(THROTTLE, pin_factory=factory)
    with pytest.raises(GPIOPinInUse):
        ServoDrive(steering_pin=STEER, throttle_pin=THROTTLE, pin_factory=factory)
    blocker.close()
    assert factory.pin(STEER).function == "input"
    ServoDrive(steering_pin=STEER, throttle_pin=THROTTLE, pin_factory=factory).close()
