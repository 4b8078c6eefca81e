"""Configuration: defaults, validation naming the key at fault, and no GPIO touched on a bad config."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from malpi.config import Config, ConfigError, load_config, to_toml


def write(tmp_path, text):
    p = tmp_path / "malpi.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid_and_round_trip(tmp_path):
    c = load_config()
    assert c == Config() and c.loop.rate_hz == 20.0 and c.safety.deadman_ms == 300.0
    assert c.camera.backend == "sim" and len(c.action_table) == 5
    assert load_config(write(tmp_path, to_toml(c))) == c


@pytest.mark.parametrize(
    "text, message",
    [
        ("[loop]\nrate_hz = 0\n", "loop.rate_hz: must be in (0, 200]"),
        ("[loop]\nrate = 20\n", "loop.rate: unknown key"),
        ("[loop]\nrate_hz = 'fast'\n", "loop.rate_hz: expected a number"),
        ("[camera]\nbackend = 'kinect'\n", "camera.backend: must be one of"),
        ("[camera]\nwidth = 160.5\n", "camera.width: expected int"),
        ("[camera]\ncrop = [0.5, 0, 0.2, 1]\n", "camera.crop: fractions"),
        ("[safety]\nmax_overruns = 0\n", "safety.max_overruns"),
        (
            "[drivetrain]\nbackend = 'differential'\n[drivetrain.differential]\nright_forward = 17\n",
            "drivetrain.differential.right_forward: pin 17 is already used by drivetrain.differential.left_forward",
        ),
        (
            "[drivetrain]\nbackend = 'differential'\n[drivetrain.differential]\nleft_forward = 40\n",
            "drivetrain.differential.left_forward: BCM pin must be 0..27",
        ),
        (
            "[drivetrain]\nbackend = 'servo'\n[drivetrain.servo]\nthrottle_pin = 12\n",
            "drivetrain.servo.throttle_pin: pin 12 is already used",
        ),
        (
            "[drivetrain]\nbackend = 'servo'\n[drivetrain.servo]\nsteering_min_us = 1600\n",
            "drivetrain.servo.steering_min_us",
        ),
        ("[policy]\nbackend = 'onnx'\n", "policy.backend: must be one of"),
        ("[link]\ncommand = 'localhost:5555'\n", "link.command: must be a tcp://"),
        (
            "[[actions]]\nname = 'go'\nsteering = 0.0\nthrottle = 1.5\n",
            "actions: action 'go': throttle=1.5 is outside",
        ),
        ("[[actions]]\nname = 'go'\nsteering = 0.0\n", "actions: action 0: missing key"),
        ("loop = 3\n", "loop: expected a table"),
        ("[loop\n", "not valid TOML"),
        (
            "[drivetrain]\nbackend = 'differential'\n[drivetrain.differential]\nleft_forward = -5\n",
            "drivetrain.differential.left_forward: driver in_in needs this pin (BCM 0..27), got -5",
        ),
        (
            "[drivetrain]\nbackend = 'differential'\n[drivetrain.differential]\nleft_enable = -5\n",
            "drivetrain.differential.left_enable: BCM pin must be 0..27, or -1 for not wired, got -5",
        ),
        (
            "[drivetrain]\nbackend = 'differential'\n[drivetrain.differential]\n"
            "driver = 'phase_enable'\nleft_phase = 5\nright_phase = 6\nleft_enable = -1\n"
            "right_enable = 13\n",
            "drivetrain.differential.left_enable: driver phase_enable needs this pin",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        load_config(tmp_path / "nope.toml")


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes("# réglages\n[loop]\nrate_hz = 20\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(byte 3 is 0xe9\)"):
        load_config(p)


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path}: Is a directory"):
        load_config(tmp_path)


def test_drive_without_a_config_refuses_and_says_what_to_do(tmp_path):
    """No config on the car: the built-in defaults would drive the simulator, so refuse."""
    env = {k: v for k, v in os.environ.items() if k != "MALPI_CONFIG"}
    env["HOME"] = str(tmp_path)  # no ~/.config/malpi/malpi.toml
    if Path("/etc/malpi/malpi.toml").exists():
        pytest.skip("this machine has a robot config in /etc/malpi")
    out = subprocess.run(
        [sys.executable, "-m", "malpi", "drive"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2
    assert "no configuration found" in out.stderr
    assert "malpi setup" in out.stderr and "malpi drive --sim" in out.stderr
    assert "Traceback" not in out.stderr and "track" not in out.stderr  # nothing was started


def test_the_users_config_is_found(tmp_path, monkeypatch):
    from malpi.config import find_config

    monkeypatch.delenv("MALPI_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    user = tmp_path / ".config/malpi/malpi.toml"
    user.parent.mkdir(parents=True)
    user.write_text("[loop]\nrate_hz = 25\n")
    assert find_config() == user
    assert find_config(str(tmp_path / "other.toml")) == tmp_path / "other.toml"
    monkeypatch.setenv("MALPI_CONFIG", "/x.toml")
    assert find_config() == Path("/x.toml")


def test_config_show_prints_the_effective_config(tmp_path):
    p = write(tmp_path, "[loop]\nrate_hz = 30\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "malpi",
            "config",
            "show",
            "--config",
            str(p),
            "--set",
            "camera.fps=45",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    shown = tomllib.loads(out.stdout)
    assert shown["loop"]["rate_hz"] == 30.0 and shown["camera"]["fps"] == 45.0
    assert shown["drivetrain"]["differential"]["left_forward"] == 17 and len(shown["actions"]) == 5


def test_bad_config_stops_start_up_before_any_gpio(tmp_path):
    """The daemon refuses a bad config with the key named, before a single pin is claimed."""
    p = write(
        tmp_path,
        "[drivetrain]\nbackend = 'differential'\n[drivetrain.differential]\nleft_backward = 22\n",
    )
    code = f"""
import sys
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin
Device.pin_factory = MockFactory(pin_class=MockPWMPin)
from malpi.cli import main
rc = main(["drive", "--config", {str(p)!r}])
print("PINS", sorted(Device.pin_factory.pins), "RC", rc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "PINS [] RC 1" in out.stdout, out.stderr
    assert (
        "drivetrain.differential.right_forward: pin 22 is already used" in out.stderr
        or "drivetrain.differential.left_backward" in out.stderr
    )


def test_every_key_is_documented():
    """docs/configuration.md names every key of the schema, so defaults stay documented."""
    import dataclasses
    import typing
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()

    def keys(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield prefix, f.name

    missing = []
    for section, key in keys(Config):
        if section and f"[{section.rstrip('.')}]" not in doc:
            missing.append(section.rstrip("."))
        if f"`{key}`" not in doc and f"[[{key}]]" not in doc:
            missing.append(section + key)
    assert not missing, f"undocumented config keys: {missing}"


def test_the_camera_must_keep_up_with_the_loop():
    """Below the loop's rate the LSTM would see frames twice (issue 12.5)."""
    with pytest.raises(ConfigError, match="camera.fps: 15 is below loop.rate_hz = 30"):
        load_config(None, {"loop.rate_hz": 30.0, "camera.fps": 15.0})
