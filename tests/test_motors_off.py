"""Motors made safe from outside the daemon: after a SIGKILL (no stop() runs, a GPIO line keeps its
last level) the unit's ExecStopPost= command stops them; at start-up the drivetrain is claimed and
stopped before anything else can fail. Pins: gpiozero's mock pins mirrored into a file, so that
their state outlives the process as a real wire's does (tests/fakes/filepins.py)."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import PINS, SPEC, make_policy_file, wait_until
from fakes.filepins import open_wires

from malpi.recorder.store import EpisodeStore

FAKE = Path(__file__).parent / "fakes" / "filepins.py"
UNIT = Path(__file__).resolve().parents[1] / "systemd" / "malpi.service"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return make_policy_file(tmp_path_factory.mktemp("policy"))


def write_config(tmp: Path, policy: Path) -> Path:
    path = tmp / "malpi.toml"
    path.write_text(
        f"""
[loop]
rate_hz = 50.0
[camera]
backend = "sim"
width = {SPEC.image_width}
height = {SPEC.image_height}
fps = 50.0
[drivetrain]
backend = "differential"
[policy]
path = "{policy}"
backend = "litert_float"
store = "{tmp / "store"}"
[recording]
path = "{tmp / "episodes.sqlite"}"
[link]
enabled = false
"""
    )
    return path


def daemon(pins: Path, config: Path, *args: str) -> list[str]:
    return [sys.executable, str(FAKE), str(pins), "drive", "--config", str(config), *args]


def unit_stop_command(pins: Path, config: Path) -> list[str]:
    """The unit's ExecStopPost= line, with this machine's malpi (on the file-backed pins)."""
    (line,) = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStopPost=")]
    argv = shlex.split(line.partition("=")[2])
    assert argv[0] == "/opt/malpi/venv/bin/malpi"
    argv = [str(config) if a == "/etc/malpi/malpi.toml" else a for a in argv[1:]]
    return [sys.executable, str(FAKE), str(pins), *argv]


def test_a_killed_daemons_motors_are_stopped_by_the_units_stop_command(tmp_path, policy):
    pins, config = tmp_path / "pins", write_config(tmp_path, policy)
    wires = open_wires(pins)
    proc = subprocess.Popen(
        daemon(pins, config, "--mode", "auto", "--quiet"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: any(wires[p] > 0 for p in PINS), 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.3)
    assert any(wires[p] > 0 for p in PINS), "a killed daemon's motors keep running"
    # The recorder process saw its parent go and closed the episode itself.
    wait_until(lambda: _outcomes(tmp_path) == ["interrupted"], 10)

    out = subprocess.run(unit_stop_command(pins, config), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [wires[p] for p in PINS] == [0.0] * len(PINS)
    assert "driven to stop" in out.stdout


def test_start_up_stops_the_motors_before_anything_can_fail(tmp_path, policy):
    """A daemon that dies at start-up (here: a broken policy bundle) has stopped the motors a
    previous run left running: the drivetrain is claimed first."""
    pins, config = tmp_path / "pins", write_config(tmp_path, tmp_path / "broken.malpi")
    (tmp_path / "broken.malpi").write_bytes(b"not a bundle")
    wires = open_wires(pins)
    wires[list(PINS)] = 0.7  # as a killed daemon left them
    out = subprocess.run(daemon(pins, config), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "not a readable policy bundle" in out.stderr, out.stderr[-2000:]
    assert [wires[p] for p in PINS] == [0.0] * len(PINS)


def _outcomes(tmp: Path) -> list[str]:
    with EpisodeStore(tmp / "episodes.sqlite", readonly=True) as store:
        return [e.outcome for e in store.episodes()]
