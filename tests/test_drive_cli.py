"""The main job, end to end: `malpi drive --sim` drives the simulated car, records, stops cleanly on SIGINT."""

import os
import signal
import subprocess
import sys
import time

from daemon_helpers import SPEC, make_policy_file

from malpi.recorder.store import EpisodeStore


def test_drive_sim_drives_records_and_stops_on_ctrl_c(tmp_path):
    policy = make_policy_file(tmp_path)
    db = tmp_path / "rec.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "malpi",
        "drive",
        "--sim",
        "--set",
        f'policy.path="{policy}"',
        "--set",
        f'recording.path="{db}"',
        "--set",
        f"camera.width={SPEC.image_width}",
        "--set",
        f"camera.height={SPEC.image_height}",
    ]
    env = {**os.environ, "MALPI_STATUS_LINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert "auto" in err and "Hz" in err  # the live status line
    assert "control loop stopped (SIGINT); motors stopped" in err
    store = EpisodeStore(db)
    (episode,) = store.episodes()
    steps = list(store.iter_steps(episode.id))
    assert len(steps) >= 20 and {s.source for s in steps} == {"policy"}
    assert episode.outcome == "finished"


def test_no_record_runs_beside_a_recording_daemon(tmp_path):
    """--no-record means no recorder: the database another daemon records into is not touched."""
    from malpi.recorder.recorder import Recorder

    db = tmp_path / "rec.sqlite"
    with Recorder(db):  # holds the database's write lock, as a running daemon does
        cmd = [sys.executable, "-m", "malpi", "drive", "--sim", "--no-record", "--no-link"]
        cmd += ["--duration", "1.5", "--set", f'recording.path="{db}"']
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "duration reached" in out.stderr
    assert EpisodeStore(db).episodes() == []
