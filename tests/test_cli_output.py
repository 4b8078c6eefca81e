"""What a newcomer sees on the terminal: commands run for real, assertions on their output."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import SPEC, make_policy_file
from extras import needs_gym, needs_tf

import malpi
from malpi import quiet
from malpi.cli import _parsers, build_parser, main

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


# What TensorFlow and LiteRT print on fd 2 by themselves on a machine without a GPU.
CHATTER = ("XNNPACK delegate", "cuInit", "Could not find cuda drivers", "absl::InitializeLog")


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: without the test suite's own quieting of TensorFlow."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _malpi(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "malpi", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_user_env(), timeout=timeout)


def test_litert_commands_print_no_native_chatter(tmp_path):
    out = _malpi("policy", "info", str(make_policy_file(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert not [word for word in CHATTER if word in out.stderr], out.stderr
    verbose = _malpi("-v", "policy", "info", str(make_policy_file(tmp_path)))
    assert "XNNPACK delegate" in verbose.stderr  # -v shows what the native libraries say


@needs_tf
def test_tensorflow_commands_print_no_native_chatter(tmp_path):
    out = _malpi("policy", "new", "--out", str(tmp_path / "new.malpi"))
    assert out.returncode == 0, out.stderr
    assert not [word for word in CHATTER if word in out.stderr], out.stderr
    assert "parity: LiteRT float vs Keras" in out.stderr  # the command's own log still shows


def test_filtered_stderr_drops_only_the_known_lines(capfd):
    with quiet.filtered_stderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 00:00:1.5 42 model.cc:7] a real error\n")
        os.write(2, b"no newline at the end")
    assert (
        capfd.readouterr().err
        == "E0000 00:00:1.5 42 model.cc:7] a real error\nno newline at the end"
    )


@needs_gym
def test_eval_prints_a_summary_and_writes_the_report(tmp_path, capsys):
    bundle, report_path = make_policy_file(tmp_path), tmp_path / "eval.json"
    args = ["eval", str(bundle), "--tracks", "1000,1001", "--laps", "1", "--max-steps", "30"]
    assert main([*args, "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert [t["track"] for t in report["per_track"]] == [1000, 1001]
    lines = out.splitlines()
    assert len(lines) < 30 and max(map(len, lines)) < 100, out
    assert lines[0].split()[:2] == ["policy", report["bundle"]]
    assert [line.split()[0] for line in lines if line.startswith("   100")] == ["1000", "1001"]
    assert f"the whole report: {report_path}" in out

    assert main([*args, "--json", "-"]) == 0  # for a pipe: the report itself on stdout
    assert json.loads(capsys.readouterr().out)["per_track"][1]["track"] == 1001


def test_policy_info_is_readable_and_json_has_it_all(capsys):
    shipped = str(Path(malpi.__file__).parent / "data" / "default.malpi")  # a long provenance
    assert main(["policy", "info", shipped]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) < 100, out
    assert "  dagger          [3 entries]" in out  # the DAgger history in brief
    assert main(["policy", "info", shipped, "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert len(manifest["provenance"]["dagger"]) == 3


def test_every_option_says_what_it_is_for():
    missing = [
        f"{parser.prog} {action.option_strings or action.dest}"
        for parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not (action.help or "").strip()
    ]
    missing += [
        f"{parser.prog} {command.dest}"
        for parser in _parsers(build_parser())
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for command in action._choices_actions
        if not (command.help or "").strip()
    ]
    assert missing == []


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "control steps before a track is given up (default: 3000)" in out
    assert "laps to complete on each track (default: 3)" in out


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["eval", "x.malpi", "--tracks", "abc"], "--tracks"),
        (["eval", "x.malpi", "--backend", "tflite"], "--backend"),
        (["train", "demos", "--out", "x.sqlite", "--image", "120"], "--image"),
        (["train", "compare", "--data", "x", "--workdir", "w", "--modes", "burnin,x"], "--modes"),
        (["sim", "expert", "--seeds", "1-"], "--seeds"),
        (["bench", "rl", "--seeds", "a,b"], "--seeds"),
    ],
)
def test_a_bad_value_names_its_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2  # a usage error, before any work
    assert f"error: argument {option}: " in capsys.readouterr().err


def test_a_paused_boot_records_no_empty_episode(tmp_path, capsys):
    """The car booted paused and stopped without driving: nothing to list, nothing to pull."""
    db, policy = tmp_path / "episodes.sqlite", make_policy_file(tmp_path)
    cmd = [sys.executable, "-m", "malpi", "drive", "--sim", "--mode", "paused", "--no-link"]
    cmd += ["--duration", "1.5", "--quiet", "--set", f'recording.path="{db}"']
    cmd += ["--set", f'policy.path="{policy}"', "--set", f"camera.width={SPEC.image_width}"]
    cmd += ["--set", f"camera.height={SPEC.image_height}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "recording: " in run.stderr  # it had a recorder
    assert main(["episodes", "list", "--db", str(db)]) == 0
    assert capsys.readouterr().out == f"no episodes in {db}\n"


def test_push_to_a_name_that_does_not_resolve_says_unknown_host(tmp_path, capsys):
    # RFC 6761: .invalid never resolves. Said so, rather than waited for as a silent robot.
    assert main(["push", "nosuchhost.invalid", str(make_policy_file(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert "malpi: error: unknown host 'nosuchhost.invalid'" in err
    assert "no reply" not in err


# Runs malpi as an install without LiteRT (and TensorFlow: the `sim` extra alone) would.
WITHOUT_LITERT = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("ai_edge_litert", "tensorflow"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from malpi.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_drive_without_litert_says_what_to_install():
    cmd = [sys.executable, "-c", WITHOUT_LITERT, "drive", "--sim", "--duration", "2"]
    run = subprocess.run(cmd + ["--no-link", "--no-record", "--quiet"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0, run.stderr
    assert "LiteRT is not installed" in run.stderr
    assert "pip install -e '.[robot]'" in run.stderr and "ai-edge-litert" in run.stderr
    assert "does not fit" not in run.stderr  # the shipped policy is fine; the install is not


def test_a_child_process_log_record_clears_the_status_line(tmp_path):
    """The link process logs on the same terminal: its records start on a line of their own."""
    from malpi.operator.client import RobotClient, RobotError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = make_policy_file(tmp_path)
    cmd = [sys.executable, "-m", "malpi", "drive", "--sim", "--duration", "8", "--no-record"]
    cmd += ["--set", f'policy.path="{policy}"', "--set", f"camera.width={SPEC.image_width}"]
    cmd += ["--set", f"camera.height={SPEC.image_height}"]
    cmd += ["--set", f'link.command="tcp://127.0.0.1:{port}"']
    cmd += ["--set", f'link.telemetry="tcp://127.0.0.1:{port + 1}"']
    env = {**os.environ, "MALPI_STATUS_LINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        with RobotClient(f"127.0.0.1:{port}", insecure=True, timeout=1.0) as robot:
            for _ in range(30):  # until the link answers and a status line has been drawn
                try:
                    if robot.status().step > 30:
                        break
                except TimeoutError:
                    pass
                time.sleep(0.2)
            with pytest.raises(RobotError):
                robot.load_policy(b"not a bundle")  # the link process logs the rejection
        _, raw = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = raw.decode()
    assert proc.returncode == 0, err[-3000:]
    (rejected,) = [line for line in screen(err) if "policy_rejected" in line]
    assert TIMESTAMP.match(rejected) and "[link]" in rejected, err
