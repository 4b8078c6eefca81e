"""What a newcomer sees on the terminal: commands run for real, assertions on their output."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from daemon_helpers import SPEC, make_policy_file

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: ``\\r\\033[K`` clears what the line held."""
    return [line.rsplit("\r\033[K", 1)[-1] for line in text.split("\n")]


def test_drive_status_line_and_log_records_do_not_mix(tmp_path):
    policy = make_policy_file(tmp_path)
    cmd = [sys.executable, "-m", "malpi", "drive", "--sim", "--duration", "3", "--no-link"]
    cmd += ["--no-record", "--set", f'policy.path="{policy}"']
    cmd += [
        "--set",
        f"camera.width={SPEC.image_width}",
        "--set",
        f"camera.height={SPEC.image_height}",
    ]
    env = {**os.environ, "MALPI_STATUS_LINE": "1"}
    run = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    err = run.stderr.decode()  # not text=True: that would turn each \r into a newline
    assert run.returncode == 0, err[-3000:]
    lines = screen(err)
    assert any(line.startswith("auto   ep 1 step") for line in lines), err  # the status
    # Every log record starts its own line: none is glued to the end of the status line.
    glued = [line for line in lines if " INFO " in line and not TIMESTAMP.match(line)]
    assert not glued, err
    # Each event is shown once (logged; the status line does not print it again), said once.
    assert err.count("mode: paused -> auto") == 1, err
    assert err.count("control loop stopped (duration reached)") == 1, err
    assert "mode: mode" not in err
