"""Smoke test of ``malpi bench web``: the real benchmark (the daemon, ``malpi web`` and headless
Chromium, each a process of its own) run briefly and quietly only, its JSON report checked for
its keys, every figure finite, the counts what was asked and each p50 no more than its p99. The
figures themselves are not judged (a loaded CI machine may miss a target): the exit code may be
1. Skipped, saying why, without Playwright or Debian's Chromium, as the browser tests are."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_bench_smoke import nonfinite
from web_helpers import CHROMIUM, NEEDS_CHROMIUM

SECONDS = 4


def test_bench_web_smoke(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="no Playwright: pip install -e '.[dev]'")
    if not os.path.exists(CHROMIUM):
        pytest.skip(NEEDS_CHROMIUM)
    out = tmp_path / "web.json"
    args = ["web", "--seconds", str(SECONDS), "--condition", "quiet", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "malpi", "bench", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "MALPI_CHROMIUM": CHROMIUM},
    )
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert not nonfinite(r), f"not finite: {nonfinite(r)}"
    assert r["conditions"] == ["quiet"] and "busy" not in r
    assert r["pages"] == {"watching": 3, "driving": 1}
    assert set(r["targets"]) == {"video_p99_ms", "control_p99_ms", "missed_periods"}
    assert isinstance(r["targets_met"], bool) and set(r["method"]) >= {"video", "control"}
    m = r["quiet"]
    assert set(m["targets_met"]) == set(r["targets"])
    assert m["all_targets_met"] == all(m["targets_met"].values()) == r["targets_met"]
    assert SECONDS <= m["seconds"] < SECONDS + 3
    video, control = m["video"], m["control"]
    # every page, the three watching and the driving one, decoded frames all along
    assert len(video["frames_per_page"]) == 4 and min(video["frames_per_page"]) >= SECONDS
    assert video["frames"] == sum(video["frames_per_page"])
    assert 0 < video["p50_ms"] <= video["p99_ms"] <= video["max_ms"]
    # each press of the key cycle changed the action; each is matched, lost or already there
    assert control["presses"] >= 4
    assert (
        control["matched"] + control["lost"] + control["already_on_the_motors"]
        == (control["presses"])
    )
    assert control["matched"] >= 1
    assert 0 < control["p50_ms"] <= control["p99_ms"] <= control["max_ms"]
    assert isinstance(m["missed_periods"], int) and m["missed_periods"] >= 0
    assert m["periods"] > 0
    cpu = m["control_cpu_ms_per_period"]
    assert cpu["median"] is None or 0 <= cpu["median"] <= cpu["p99"]
    assert "video latency p50 / p99 ms" in done.stdout and "control latency" in done.stdout


def test_presses_are_matched_to_the_first_motor_command_that_carries_them_out():
    from malpi.bench.web import match_presses

    steps = [(t / 100, a) for t, a in enumerate([None] * 10 + [2] * 10 + [1] * 10 + [None] * 10)]
    # motors: stopped until 0.10 s, straight (2) from 0.10, left (1) from 0.20, stopped from 0.30.
    # Straight asked at 0.08 and left at 0.165 are matched; hard left (0) at 0.25 never reached
    # the motors before the next press (lost); the stop at 0.27 reached them at 0.30; a stop
    # asked at 0.35 found them stopped already.
    presses = [(0.08, 2), (0.165, 1), (0.25, 0), (0.27, None), (0.35, None)]
    got = match_presses(presses, steps)
    assert got["latencies_ms"] == [20.0, 35.0, 30.0]
    assert (got["presses"], got["matched"], got["lost"], got["already_on_the_motors"]) == (
        5,
        3,
        1,
        1,
    )
