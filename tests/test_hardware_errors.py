"""Hardware failures say what is wrong and what to do: no raw warnings, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero import Device, OutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from malpi.config import load_config
from malpi.drivetrain.factory import GPIOUnavailable, drivetrain_from_config

ON_A_PI = Path("/proc/device-tree/model").exists()


@pytest.mark.skipif(ON_A_PI, reason="a Raspberry Pi has GPIO")
def test_no_gpio_is_one_clear_error(tmp_path):
    """Without a pin library gpiozero warns four times and raises a bare error: one line instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPIOZERO_")}
    cmd = [sys.executable, "-m", "malpi", "drive", "--no-link", "--no-record", "--quiet"]
    cmd += ["--set", "drivetrain.backend=differential", "--set", "realtime.enabled=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert "malpi: error: no GPIO here" in out.stderr
    assert "lgpio:" in out.stderr and "sudo apt install python3-lgpio" in out.stderr
    assert "malpi drive --sim" in out.stderr
    assert "PinFactoryFallback" not in out.stderr and "Traceback" not in out.stderr


def test_a_pin_held_elsewhere_names_its_config_key():
    factory = MockFactory(pin_class=MockPWMPin)
    try:
        holder = OutputDevice(22, pin_factory=factory)  # another device already has GPIO22
        config = load_config(None, {"drivetrain.backend": "differential"})
        with pytest.raises(GPIOUnavailable) as info:
            drivetrain_from_config(config, pin_factory=factory)
        message = str(info.value)
        assert "drivetrain.differential.right_forward = 22" in message
        assert "sudo systemctl stop malpi" in message
        # What was claimed before the failure was released: the pins can be had again.
        holder.close()
        drivetrain_from_config(config, pin_factory=factory).close()
    finally:
        factory.close()
        Device.pin_factory = None
