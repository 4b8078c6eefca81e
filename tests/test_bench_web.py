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
