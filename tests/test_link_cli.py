"""The commands end to end: `malpi drive --sim` serves the link; telemetry, push and teleop use it."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

from daemon_helpers import SPEC
from extras import needs_pygame
from link_helpers import bundles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def malpi(*args, timeout=60, env=None):
    return subprocess.run(
        [sys.executable, "-m", "malpi", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@contextlib.contextmanager
def served_drive(tmp_path):
    """`malpi drive --sim` serving its link on free loopback ports, stopped with SIGINT after.

    Yields the command address and the telemetry options of the client commands."""
    (tmp_path / "a.malpi").write_bytes(bundles()["a"])
    cmd_port, tel_port = free_port(), free_port()
    drive = subprocess.Popen(
        [
            sys.executable, "-m", "malpi", "drive", "--sim", "--quiet",
            "--set", f'policy.path="{tmp_path / "a.malpi"}"',
            "--set", f'policy.store="{tmp_path / "store"}"',
            "--set", f'recording.path="{tmp_path / "rec.sqlite"}"',
            "--set", f"camera.width={SPEC.image_width}",
            "--set", f"camera.height={SPEC.image_height}",
            "--set", f'link.command="tcp://127.0.0.1:{cmd_port}"',
            "--set", f'link.telemetry="tcp://127.0.0.1:{tel_port}"',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_for_link(cmd_port, drive)
        yield f"127.0.0.1:{cmd_port}", ["--telemetry-port", str(tel_port)]
    finally:
        drive.send_signal(signal.SIGINT)
        _, err = drive.communicate(timeout=30)
    assert drive.returncode == 0, err[-3000:]
    assert f"link: commands on tcp://127.0.0.1:{cmd_port}" in err


def _wait_for_link(port: int, drive: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the daemon answers (a client started earlier would wait; these tests want it up)."""
    from malpi.operator.client import LinkTimeout, RobotClient

    deadline = time.monotonic() + timeout
    while True:
        assert drive.poll() is None, "malpi drive exited"
        try:
            with RobotClient(command=f"tcp://127.0.0.1:{port}", insecure=True, timeout=0.5) as c:
                c.ping()
                return
        except LinkTimeout:
            assert time.monotonic() < deadline, "malpi drive's link did not come up"


OPTS = ["--insecure", "--timeout", "10"]


def test_drive_serves_the_link_to_telemetry_and_push(tmp_path):
    (tmp_path / "b.malpi").write_bytes(bundles()["b"])
    (tmp_path / "bad.malpi").write_bytes(bundles()["b"][:5000])
    with served_drive(tmp_path) as (host, telemetry):
        topics = ["--topic", "step", "--topic", "frame"]
        out = malpi("telemetry", host, *telemetry, *OPTS, "--count", "6", *topics)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(lines) == 6 and {m["topic"] for m in lines} <= {"step", "frame"}
        step = next(m for m in lines if m["topic"] == "step")
        assert step["mode"] == "auto" and step["source"] == "policy" and len(step["probs"]) == 5

        pushed = malpi("push", host, str(tmp_path / "b.malpi"), *OPTS)  # push: commands only
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        assert "running v1-" in pushed.stdout
        assert "running, not kept: the car boots v1-" in pushed.stdout  # policy.path boots
        status = malpi("status", host, *OPTS)
        assert status.returncode == 0, status.stderr[-2000:]
        assert "(pushed " in status.stdout and "boots     v1-" in status.stdout
        keep = malpi("push", host, *OPTS, "--keep")
        assert keep.returncode == 1 and "refused (refused): policy.path is set" in keep.stdout
        bad = malpi("push", host, str(tmp_path / "bad.malpi"), *OPTS)
        assert bad.returncode == 1 and "refused (rejected)" in bad.stdout
        back = malpi("push", host, *OPTS, "--rollback", "--json")
        assert back.returncode == 0 and json.loads(back.stdout)["type"] == "rollback_policy"


@needs_pygame
def test_drive_serves_the_link_to_teleop(tmp_path):
    with served_drive(tmp_path) as (host, telemetry):
        shot = tmp_path / "teleop.png"
        ui = malpi(
            "teleop", host, *telemetry, *OPTS, "--seconds", "1.5", "--size", "320x240",
            "--screenshot", str(shot), env={"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"},
        )  # fmt: skip
        assert ui.returncode == 0, ui.stderr[-2000:]
        assert shot.stat().st_size > 10_000


def test_drive_refuses_a_busy_link_address_before_moving(tmp_path):
    (tmp_path / "a.malpi").write_bytes(bundles()["a"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        out = malpi(
            "drive", "--sim", "--quiet", "--duration", "5",
            "--set", f'policy.path="{tmp_path / "a.malpi"}"',
            "--set", f'recording.path="{tmp_path / "rec.sqlite"}"',
            "--set", f"camera.width={SPEC.image_width}",
            "--set", f"camera.height={SPEC.image_height}",
            "--set", f'link.command="tcp://127.0.0.1:{port}"',
            "--set", 'link.telemetry="tcp://127.0.0.1:*"',
        )  # fmt: skip
    assert out.returncode == 1 and time.monotonic() - t0 < 30
    assert f"link.command: cannot bind tcp://127.0.0.1:{port}" in out.stderr


def test_bench_link_quick(tmp_path, capsys):
    from malpi.bench import link as bench

    (tmp_path / "a.malpi").write_bytes(bundles()["a"])
    result = bench.run(
        rate_hz=20,
        requests=50,
        reloads=1,
        json_path=str(tmp_path / "b.json"),
        seed_size=False,
        policy=str(tmp_path / "a.malpi"),
        pull_drive_s=0.5,
    )
    saved = json.loads((tmp_path / "b.json").read_text())
    for key in ("rtt_p99_ms", "rtt_curve_p99_ms", "reload_missed_periods", "reload_max_period_ms"):
        assert saved[key] is not None and saved[key] == result[key]
    assert saved["telemetry_step_msgs_per_s"] > 1000
    # Everything recorded was pulled: an episode per policy (boot, reload) and the bench's own.
    assert saved["pull_episodes"] >= 2 and saved["pull_steps"] > 20
    assert saved["pull_steps_per_s"] > 0 and saved["pull_missed_periods"] is not None
    out = capsys.readouterr().out
    assert "hot reload while driving" in out and "pulling the recording while driving" in out


def test_commands_fail_fast_and_clearly_without_a_robot(tmp_path, capsys):
    from malpi.cli import main

    junk = tmp_path / "x.malpi"
    junk.write_bytes(b"not sent")
    host = f"127.0.0.1:{free_port()}"
    for args in (
        ["push", host, str(junk)],
        ["push", host, "--rollback"],
        ["push", host, "--keep"],
        ["status", host],
        ["telemetry", host, "--count", "1"],  # telemetry alone would wait forever
        ["pull", host, "--list"],
    ):
        t0 = time.monotonic()
        assert main([*args, "--insecure", "--timeout", "0.5"]) == 1
        assert time.monotonic() - t0 < 5, args
        assert (
            f"no reply from {host} within 0.5 s (is malpi drive running there"
            in capsys.readouterr().err
        )
    assert main(["push", host]) == 1
    err = capsys.readouterr().err
    assert "malpi: error: malpi push: give a BUNDLE file, --keep (the running policy) or" in err
