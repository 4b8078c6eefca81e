"""The loop's stage names as docs/protocol.md documents them, its CPU figures in ``status``, and
a short ``malpi bench loop`` (the real daemon, both triggers) and its report's keys."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from daemon_helpers import make_policy_file, robot_config, running_robot, wait_until

from malpi.bench.daemon import OVERHEAD_STAGES, STAGES
from malpi.protocol import schema

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def documented_latency_keys() -> set[str]:
    """The keys the `latency_ms` row of the step table names: each is written `name` (what)."""
    row = next(
        line for line in PROTOCOL.read_text().splitlines() if line.startswith("| `latency_ms`")
    )
    return set(re.findall(r"`(\w+)` \(", row))


def test_the_documented_stages_are_the_benchmarks_and_the_loops(tmp_path):
    documented = documented_latency_keys()
    assert documented == {*STAGES, "frame_to_motor", "period"}
    assert set(OVERHEAD_STAGES) == set(STAGES) - {"inference"}

    with running_robot(robot_config(tmp_path, make_policy_file(tmp_path))) as (
        robot,
        _,
        events,
        _r,
    ):
        robot.loop.set_mode("auto").result(2)
        # The second status carries CPU figures over a whole interval (~1 s).
        wait_until(
            lambda: sum(s.get("cpu_ms_per_period") is not None for s in events.of("status")) >= 2,
            timeout=5,
        )
        steps = [p for p in events.of("step") if p["source"] == "policy"]
        statuses = [s for s in events.of("status") if s.get("cpu_ms_per_period") is not None]
    assert len(steps) > 10
    for step in steps[1:]:  # the first period has no `period` or `publish`
        assert set(step["latency_ms"]) == documented
        assert all(math.isfinite(v) and v >= 0 for v in step["latency_ms"].values())
    assert any(s["latency_ms"]["inference"] > 0 for s in steps)
    assert any(s["latency_ms"]["record_handoff"] > 0 for s in steps)  # recording is on

    status = statuses[-1]
    cpu, loop_cpu = status["cpu_ms_per_period"], status["loop_cpu_ms_per_period"]
    # The loop runs in a thread of this process here: its CPU is part of the process's.
    assert 0 < loop_cpu <= cpu + 0.01
    wire = schema.decode_telemetry("status", schema.encode_telemetry("status", status))
    assert (wire.cpu_ms_per_period, wire.loop_cpu_ms_per_period) == (cpu, loop_cpu)


def test_bench_loop_quick(tmp_path, monkeypatch):
    """A short run each way (~7 s each): the report's keys, and figures that are finite and
    positive where they must be."""
    from malpi.bench import loop as bench

    monkeypatch.setattr(bench, "WARM_UP", 1.5)
    path = tmp_path / "loop.json"
    result = bench.run(rate_hz=30.0, seconds=2.5, json_path=str(path))
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(result))
    assert {"target_rate_hz", "seconds", "busy", "policy", *bench.TRIGGERS} <= set(saved)
    for trigger in bench.TRIGGERS:
        m = saved[trigger]
        assert m["missed_periods"] is not None and m["periods"] > 30 and m["steps"] > 30
        assert m["overhead_stages"] == list(OVERHEAD_STAGES)
        assert list(m["stages"]) == list(STAGES)
        for key in (
            "overhead_median_ms", "overhead_p99_ms", "loop_wall_median_ms", "loop_wall_p99_ms",
            "frame_to_motor_median_ms", "frame_to_motor_p99_ms", "period_max_ms", "rate_hz",
        ):  # fmt: skip
            assert math.isfinite(m[key]) and m[key] > 0, key
        assert m["loop_wall_median_ms"] >= m["stages"]["inference"]["median_ms"] > 0
        for stage in m["stages"].values():
            assert math.isfinite(stage["median_ms"]) and stage["p99_ms"] >= stage["median_ms"] >= 0
        assert m["recorded_steps"] > 0

        cpu = m["cpu"]
        assert cpu["status_windows"] >= 1
        for key in ("loop_thread_ms_per_period", "control_ms_per_period"):
            w = cpu[key]
            assert set(w) == {"mean", "median", "p99"}
            assert all(math.isfinite(v) and v > 0 for v in w.values()), key
        # The loop thread is one of the control process's threads.
        assert cpu["loop_thread_ms_per_period"]["median"] <= cpu["control_ms_per_period"]["median"]
        per, share = cpu["process_ms_per_period"], cpu["process_share_pct"]
        assert set(per) == set(share) == {"control", "recorder", "link", "all"}
        assert all(math.isfinite(v) and v >= 0 for v in (*per.values(), *share.values()))
        assert per["control"] > 0 and share["control"] > 0
        assert per["all"] >= per["control"] and share["all"] >= share["control"]
