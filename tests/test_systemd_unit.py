"""The systemd units pass systemd-analyze verify (warnings count as failures)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "malpi.service"
WEB_UNIT = UNIT.with_name("malpi-web.service")
pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def verify(tmp_path, text, name="malpi.service"):
    # verify checks that ExecStart exists: point it at this environment's malpi.
    malpi = Path(sys.executable).with_name("malpi")
    unit = tmp_path / name
    unit.write_text(text.replace("/opt/malpi/venv/bin/malpi", str(malpi)))
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("unit", [UNIT, WEB_UNIT], ids=lambda u: u.name)
def test_unit_verifies_cleanly(tmp_path, unit):
    out = verify(tmp_path, unit.read_text(), unit.name)
    assert out.returncode == 0 and out.stdout.strip() == "" and out.stderr.strip() == "", out.stderr


def test_unit_has_what_the_daemon_relies_on():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=malpi",
        "SupplementaryGroups=gpio video",
        "StateDirectory=malpi",
        "DeviceAllow=char-gpiochip rw",
        "DeviceAllow=char-video4linux rw",
    ):
        assert line in text


def test_a_broken_unit_is_caught(tmp_path):
    out = verify(tmp_path, UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    assert out.returncode != 0 or out.stderr.strip()


def test_the_console_unit_holds_no_hardware_and_yields_to_the_daemon():
    text = WEB_UNIT.read_text()
    for line in ("User=malpi-web", "PrivateDevices=yes", "CapabilityBoundingSet=\n",
                 "MemoryMax=", "Nice=10", "ProtectSystem=strict", "After=network-online.target malpi.service"):  # fmt: skip
        assert line in text, line
    assert "SupplementaryGroups" not in text and "DeviceAllow" not in text
