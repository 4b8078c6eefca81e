"""``malpi eval`` on Ray reports what the local run reports, track for track, to the last bit."""

from __future__ import annotations

import pytest
from extras import NEEDS_GYM

pytest.importorskip("gymnasium", reason=NEEDS_GYM)

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from malpi.cli import main
from malpi.policy.bundle import PolicyBundle
from malpi.train.evaluate import evaluate_bundle
from malpi.workers import Workers

TINY_BUNDLE = Path(__file__).resolve().parent / "data" / "tiny-a.malpi"
TRACKS = [1000, 1001, 1002, 1003]


def without_time(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "seconds"}


def test_evaluate_bundle_on_ray_equals_the_local_run(local_ray):
    bundle = PolicyBundle.load(TINY_BUNDLE)
    here, here_drives = evaluate_bundle(bundle, seeds=TRACKS, laps=1, max_steps=150)
    there, there_drives = evaluate_bundle(
        bundle, seeds=TRACKS, laps=1, max_steps=150, workers=Workers("auto")
    )
    assert without_time(there) == without_time(here)
    for a, b in zip(here_drives, there_drives, strict=True):
        assert np.array_equal(a.trajectory, b.trajectory)
    # what was compared is the real thing: every track in order, driven, the expert's drives scored
    assert [t["track"] for t in here["per_track"]] == TRACKS
    assert all(t["steps"] > 0 for t in here["per_track"])
    assert here["held_out_steps"] > 0 and 0 <= here["next_action_accuracy"] <= 1
    assert sum(map(sum, here["confusion"])) == here["held_out_steps"]


def test_given_held_out_episodes_are_scored_the_same_on_ray(local_ray):
    from malpi.train.evaluate import expert_drives

    bundle = PolicyBundle.load(TINY_BUNDLE)
    held_out = expert_drives(bundle, TRACKS[:2], steps=100)
    on_ray = expert_drives(bundle, TRACKS[:2], steps=100, workers=Workers("auto"))
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(held_out, on_ray, strict=True))
    here, _ = evaluate_bundle(bundle, seeds=TRACKS[:2], laps=1, max_steps=100, held_out=held_out)
    there, _ = evaluate_bundle(
        bundle, seeds=TRACKS[:2], laps=1, max_steps=100, held_out=held_out, workers=Workers("auto")
    )
    assert without_time(there) == without_time(here)
    assert here["held_out_steps"] == 200


def test_malpi_eval_with_ray_writes_the_local_report(local_ray, tmp_path, capsys):
    common = ["eval", str(TINY_BUNDLE), "--tracks", "1000-1002", "--laps", "1"]
    common += ["--max-steps", "120"]
    assert main([*common, "--json", str(tmp_path / "here.json")]) == 0
    assert main([*common, "--json", str(tmp_path / "ray.json"), "--ray", "auto"]) == 0
    here = json.loads((tmp_path / "here.json").read_text())
    there = json.loads((tmp_path / "ray.json").read_text())
    assert without_time(there) == without_time(here)
    assert [t["track"] for t in there["per_track"]] == [1000, 1001, 1002]
    assert "per track" in capsys.readouterr().out  # the summary for a person too


def _run_eval_cli(*extra: str) -> subprocess.CompletedProcess:
    """``malpi eval`` in a fresh interpreter, which then says whether Ray was imported."""
    args = ["eval", str(TINY_BUNDLE), "--tracks", "1000", "--laps", "1", "--max-steps", "50"]
    code = (
        "import sys; from malpi.cli import main; rc = main(sys.argv[1:]); "
        "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args, *extra], capture_output=True, text=True, timeout=120
    )


def test_eval_without_ray_never_imports_it():
    result = _run_eval_cli()
    assert result.returncode == 0, result.stderr
    assert "ray imported: False" in result.stdout
    assert "completed" in result.stdout  # it did evaluate


def test_a_cluster_that_does_not_answer_is_a_clear_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = _run_eval_cli("--ray", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"malpi: error: no Ray cluster answers at 127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 60  # not Ray's minutes of retries
    assert "per track" not in result.stdout  # failed before evaluating anything


def test_bench_scale_reports_the_same_results_both_ways(tmp_path):
    """The benchmark on a tiny setting (its own Ray, in a subprocess): the keys, and equality.
    Its timings on four one-lap tracks say nothing of the target."""
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, "-m", "malpi", "bench", "scale", "--tracks", "1000-1003", "--laps", "1"]
        + ["--load", "quiet", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in ("sequential_s", "ray_s", "speedup", "ray_startup_s", "tracks", "cpus"):
        assert key in figures
    assert figures["same_results"] is True and figures["tracks"] == 4
    quiet = figures["conditions"]["quiet"]
    assert quiet["completed_tracks"] == {"sequential": 4, "ray": 4}  # the shipped policy laps
    assert figures["speedup"] == pytest.approx(figures["sequential_s"] / figures["ray_s"], 0.01)
    assert "same per-track results" in result.stdout
