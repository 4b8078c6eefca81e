"""``malpi setup`` on gpiozero's mock pins: the steps write a config that ``malpi drive``
accepts, each output runs bounded at low power, a wrong direction is swapped, the arrow keys
calibrate, and every motor test stops its outputs on Ctrl-C, a lost terminal and an exception."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes.filepins import open_wires
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from malpi.actions import MotorCommand
from malpi.cli import main
from malpi.config import load_config
from malpi.setup.outputs import pulse
from malpi.setup.terminal import Scripted
from malpi.setup.wizard import Setup, run

FAKE = Path(__file__).parent / "fakes" / "filepins.py"
LEFT_FORWARD, LEFT_BACKWARD, RIGHT_FORWARD, RIGHT_BACKWARD = 17, 27, 22, 23


@pytest.fixture
def pins():
    factory = MockFactory(pin_class=MockPWMPin)
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = None


def peak(factory, bcm: int) -> float:
    """The highest duty cycle a pin was driven to, and it must end at 0."""
    pin = factory.pin(bcm)
    return max(s.state for s in pin.states)


def differential(**extra) -> dict:
    return {"drivetrain.backend": "differential", "camera.backend": "sim", **extra}


def test_setup_yes_writes_a_config_that_drive_accepts(tmp_path, pins, capsys):
    out = tmp_path / "malpi.toml"
    rc = main(["setup", "--yes", "--out", str(out), "--drivetrain", "differential",
               "--pin", "left_forward=5", "--camera", "sim", "--seconds", "0.2",
               "--camera-seconds", "0.5", "--frame", str(tmp_path / "frame.jpg")])  # fmt: skip
    assert rc == 0
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "frames/s measured" in said
    config = load_config(out)
    assert config.drivetrain.backend == "differential"
    assert config.drivetrain.differential.left_forward == 5
    # Each wheel ran forward at the test power (30 %), and everything ended stopped.
    assert peak(pins, 5) == pytest.approx(0.3) and peak(pins, RIGHT_FORWARD) == pytest.approx(0.3)
    assert peak(pins, LEFT_BACKWARD) == 0 and peak(pins, RIGHT_BACKWARD) == 0
    assert all(pins.pin(n).state == 0 for n in (5, 27, 22, 23))
    assert (tmp_path / "frame.jpg").stat().st_size > 1000

    # malpi drive accepts it (on mock pins whose state outlives the process).
    drive = [sys.executable, str(FAKE), str(tmp_path / "wires"), "drive", "--config", str(out),
             "--duration", "2", "--no-link", "--no-record", "--quiet"]  # fmt: skip
    result = subprocess.run(drive, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stopped after" in result.stderr


def test_a_second_run_starts_from_the_written_config_and_keeps_a_backup(tmp_path, pins):
    out = tmp_path / "malpi.toml"
    common = ["setup", "--yes", "--out", str(out), "--no-motors", "--no-camera"]
    assert main([*common, "--drivetrain", "servo", "--pin", "steering_pin=18"]) == 0
    assert main([*common, "--set", "drivetrain.servo.max_speed=0.4"]) == 0
    config = load_config(out)
    assert config.drivetrain.servo.steering_pin == 18 and config.drivetrain.servo.max_speed == 0.4
    assert load_config(tmp_path / "malpi.toml.bak").drivetrain.servo.max_speed == 1.0


def test_bad_pins_are_refused_naming_the_key_and_nothing_is_written(tmp_path, pins, capsys):
    out = tmp_path / "malpi.toml"
    rc = main(["setup", "--yes", "--out", str(out), "--drivetrain", "differential",
               "--pin", "left_forward=-5", "--no-camera"])  # fmt: skip
    assert rc == 1 and not out.exists()
    assert "drivetrain.differential.left_forward" in capsys.readouterr().err


def test_a_wheel_that_turns_backwards_is_inverted_and_a_swapped_pair_is_swapped(pins):
    term = Scripted(
        answers=[
            "differential", "in_in", "", "", "", "", "", "",  # drivetrain, driver, six pins
            "y",  # wheels off the ground
            "n", "y",  # left wheel turned backwards: inverted, run again, now right
            "o", "y",  # the other (left) wheel moved: sides swapped, run again
            "n",  # not on the floor: no steering trim
            "sim",
        ],
        keys=["enter", "enter"],
    )  # fmt: skip
    setup = Setup(term, None, {"camera.backend": "sim"}, seconds=0.1)
    config = run(setup, camera=False)
    d = config.drivetrain.differential
    # The swap moved the left side's pins and inversion to the right and back.
    assert (d.left_forward, d.right_forward) == (RIGHT_FORWARD, LEFT_FORWARD)
    assert d.right_inverted and not d.left_inverted
    # Inverted, the left wheel was driven on its backward pin.
    assert peak(pins, LEFT_BACKWARD) == pytest.approx(0.3)
    assert all(pins.pin(n).state == 0 for n in (17, 27, 22, 23))


def test_the_arrow_keys_calibrate_and_each_change_runs_the_wheels(pins):
    keys = ["up", "up", "up", "down", "enter", "down", "quit"]
    setup = Setup(Scripted(answers=["n"], keys=keys), None,
                  differential(), seconds=0.1)  # fmt: skip
    setup.calibrate()
    assert setup.config().drivetrain.differential.min_speed == pytest.approx(0.04)
    assert setup.config().drivetrain.differential.max_speed == 1.0  # q: left as it was
    # Each press ran both wheels at (just above) the candidate min_speed; they ended stopped.
    assert peak(pins, LEFT_FORWARD) == pytest.approx(0.06, abs=0.002)
    assert pins.pin(LEFT_FORWARD).state == 0 and pins.pin(RIGHT_FORWARD).state == 0


def test_servo_trims_are_validated_as_they_are_entered(pins):
    keys = ["right"] * 3 + ["enter"] + ["left"] * 60 + ["enter", "enter", "enter", "enter"]
    term = Scripted(keys=keys)
    setup = Setup(term, None, {"drivetrain.backend": "servo"}, seconds=0.1)
    setup.adjust(setup_adjustment(setup, "steering_center_us"))
    setup.adjust(setup_adjustment(setup, "steering_min_us"))
    s = setup.config().drivetrain.servo
    assert s.steering_center_us == 1530
    assert s.steering_min_us == 500  # the lowest the configuration allows


def setup_adjustment(setup: Setup, name: str):
    from malpi.setup.wizard import adjustments

    (a,) = [a for a in adjustments(setup.config(), 0.3) if a.key.endswith(name)]
    object.__setattr__(a, "seconds", 0.05)
    return a


def test_a_motor_test_stops_its_outputs_on_an_exception(pins):
    config = load_config(None, differential())

    def fail(drivetrain):
        assert pins.pin(LEFT_FORWARD).state == pytest.approx(0.3)
        raise RuntimeError("something broke mid-test")

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="mid-test"):
        pulse(config, MotorCommand(0.15, 0.15), 3.0, during=fail)
    assert time.monotonic() - start < 0.5
    assert pins.pin(LEFT_FORWARD).state == 0


def test_test_power_and_time_are_bounded():
    with pytest.raises(ValueError, match="test power"):
        Setup(Scripted(), None, differential(), power=0.8)
    with pytest.raises(ValueError, match="test time"):
        Setup(Scripted(), None, differential(), seconds=10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM])
def test_a_motor_test_stops_on_ctrl_c_and_a_lost_terminal(tmp_path, sig):
    """`malpi setup motors` in its own process, its pins' state in a file: mid-run, the signal
    stops the outputs and the process ends without running the next output."""
    config = tmp_path / "malpi.toml"
    config.write_text("[drivetrain]\nbackend = 'differential'\n")
    wires_path = tmp_path / "wires"
    wires = open_wires(wires_path)
    cmd = [sys.executable, str(FAKE), str(wires_path), "setup", "motors", "--yes",
           "--config", str(config), "--seconds", "3"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while wires[LEFT_FORWARD] == 0:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        assert wires[LEFT_FORWARD] == pytest.approx(0.3)
        sent = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert time.monotonic() - sent < 5.0  # a loaded machine; the stop itself is at once
    assert proc.returncode != 0
    assert list(wires[[17, 27, 22, 23]]) == [0, 0, 0, 0]
    assert "RIGHT wheel" not in out  # it did not go on to the next output
    if sig != signal.SIGINT:
        assert "outputs stopped" in err and "Traceback" not in err


def test_a_servo_car_arms_its_esc_then_tests_steering_and_throttle(tmp_path, pins):
    out = tmp_path / "malpi.toml"
    rc = main(["setup", "--yes", "--out", str(out), "--drivetrain", "servo", "--no-camera",
               "--seconds", "0.2"])  # fmt: skip
    assert rc == 0 and load_config(out).drivetrain.backend == "servo"
    frame_us = 20000
    steering, throttle = pins.pin(12), pins.pin(13)
    # Neutral first (the ESC arms on it), then forward at 30 %: 1500 + 0.3 * 500 us.
    throttle_pulses = [round(s.state * frame_us) for s in throttle.states if s.state]
    assert throttle_pulses[0] == 1500 and max(throttle_pulses) == 1650
    assert max(round(s.state * frame_us) for s in steering.states) == 1800  # 0.6 of the way right
    assert throttle.state == 0 and steering.state == 0  # released: no pulses


def test_the_steering_trim_is_found_on_the_floor(pins):
    keys = ["enter", "enter", "right", "right", "enter"]  # min/max kept, trim 0.04
    setup = Setup(Scripted(answers=["y"], keys=keys), None, differential(), seconds=0.1)
    setup.calibrate()
    assert setup.config().drivetrain.differential.steering_trim == pytest.approx(0.04)
    # Trimmed right, the right side runs slower: 30 % * (1 - 0.04) the last time.
    assert [s.state for s in pins.pin(RIGHT_FORWARD).states if s.state][-1] == pytest.approx(
        0.3 * 0.96
    )
    assert peak(pins, LEFT_FORWARD) == pytest.approx(0.3)
    assert pins.pin(LEFT_FORWARD).state == 0 and pins.pin(RIGHT_FORWARD).state == 0
