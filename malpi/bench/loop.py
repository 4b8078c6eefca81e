"""``malpi bench loop``: ``malpi drive`` on the simulator, recording and telemetry on, timed stage by stage.

The daemon runs as the robot runs it (its three processes, ``Nice=-5``, real-time scheduling
where permitted) and is measured from its own telemetry: every step message carries the
period's stage times, frame-to-motor latency and period length. Both ways of timing the loop
are measured side by side: frame-synchronous (a period starts when a new frame arrives, the
default) and on a fixed timer. ``busy`` CPU hogs run beside it when asked: the Pi is never idle.

The stages time the loop thread only, in wall time. The whole cost of a period is its CPU time:
the control process's (all its threads: the loop, the camera's capture and resize, the
simulator), per status interval from its ``status`` telemetry, and each process's (control,
recorder: JPEG encoding and SQLite, link: telemetry and frames) over the run from ``/proc``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from malpi.bench.daemon import (
    OVERHEAD_STAGES,
    BenchDaemon,
    Watcher,
    cpu_figures,
    cpu_seconds,
    hogs,
    summarise_steps,
)

log = logging.getLogger(__name__)

TRIGGERS = ("frame", "timer")
WARM_UP = 3.0  # s after start-up before measuring
ROLES = ("control", "recorder", "link")  # the daemon's processes


def daemon_overrides(tmp: str | Path, rate_hz: float) -> dict[str, Any]:
    """The simulator, recording to ``tmp``, the link on free loopback ports."""
    return {
        "camera.backend": "sim",
        "drivetrain.backend": "sim",
        "loop.rate_hz": rate_hz,
        "camera.fps": rate_hz,  # a period per frame: evenly spaced
        "recording.enabled": True,
        "recording.path": str(Path(tmp) / "bench.sqlite"),
        "policy.store": str(Path(tmp) / "store"),
        # The shipped policy learnt 20 Hz; this measures timing, not driving.
        "policy.allow_rate_mismatch": True,
        "link.command": "tcp://127.0.0.1:*",
        "link.telemetry": "tcp://127.0.0.1:*",
    }


def run(
    rate_hz: float = 30.0,
    seconds: float = 60.0,
    json_path: str | None = None,
    config_path: str | None = None,
    busy: int = 0,
    triggers: tuple[str, ...] = TRIGGERS,
) -> dict[str, Any]:
    result: dict[str, Any] = {"target_rate_hz": rate_hz, "seconds": seconds, "busy": busy}
    with hogs(busy):
        for trigger in triggers:
            result[trigger] = measure(rate_hz, seconds, trigger, config_path)
    result["policy"] = next(
        (result[t]["policy"] for t in triggers if result[t].get("policy")), None
    )
    print(format_table(result, triggers))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def measure(
    rate_hz: float, seconds: float, trigger: str, config_path: str | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {**daemon_overrides(tmp, rate_hz), "loop.trigger": trigger}
        daemon = BenchDaemon(overrides, config=config_path)
        try:
            watcher = Watcher(daemon).start()
            time.sleep(WARM_UP)
            pids = daemon.pids()
            with daemon.client() as c:
                before = c.status()
            cpu0 = {role: cpu_seconds(pids[role]) if role in pids else None for role in ROLES}
            t0 = time.monotonic()
            time.sleep(seconds)
            t1 = time.monotonic()
            cpu1 = {role: cpu_seconds(pids[role]) if role in pids else None for role in ROLES}
            with daemon.client() as c:
                after = c.status()
            watcher.stop()
        finally:
            daemon.stop()
    r = summarise_steps(watcher.window(t0, t1), rate_hz)
    periods = after.periods - before.periods
    r["cpu"] = cpu_figures(watcher.status_window(t0, t1), cpu0, cpu1, periods, t1 - t0)
    r.update(
        rate_hz=round(periods / (t1 - t0), 3),
        periods=periods,
        missed_periods=after.missed_periods - before.missed_periods,
        recorded_steps=after.recorder.written if after.recorder else None,
        dropped_steps=after.recorder.dropped if after.recorder else None,
        policy=after.policy_version,
    )
    return r


def format_table(r: dict[str, Any], triggers: tuple[str, ...] = TRIGGERS) -> str:
    def f(v):
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    def pair(m, k):
        return f"{f(m.get(k + '_median_ms'))} / {f(m.get(k + '_p99_ms'))}"

    def stage(m, k):
        return f"{f(m['stages'][k]['median_ms'])} / {f(m['stages'][k]['p99_ms'])}"

    def windows(m, k):
        w = m["cpu"][k]
        return f"{f(w['median'])} / {f(w['p99'])}"

    def proc(m, k):
        ms, share = m["cpu"]["process_ms_per_period"], m["cpu"]["process_share_pct"]
        return f"{f(ms[k])} ({share[k]:.1f}%)" if k in ms else "-"

    names = {"frame": "frame-synchronous", "timer": "fixed timer"}
    lines = [
        f"malpi drive on the simulator at {r['target_rate_hz']:g} Hz, {r['seconds']:g} s per way, "
        f"{r['busy']} CPU hog(s) beside it, policy {r.get('policy')}",
        f"{'':<36}" + "".join(f"{names[t]:>24}" for t in triggers),
    ]
    rows = [
        ("periods (rate Hz)", lambda m: f"{m['periods']} ({f(m['rate_hz'])})"),
        ("missed periods", lambda m: f(m["missed_periods"])),
        ("loop thread, wall, median / p99 ms", lambda m: pair(m, "loop_wall")),
        ("  of which inference", lambda m: stage(m, "inference")),
        ("  the rest (overhead)", lambda m: pair(m, "overhead")),
        ("frame to motor median / p99 ms", lambda m: pair(m, "frame_to_motor")),
        ("period jitter median / p99 ms", lambda m: pair(m, "jitter")),
        ("longest period ms", lambda m: f(m["period_max_ms"])),
        (
            "steps recorded since start (dropped)",
            lambda m: f"{m['recorded_steps']} ({m['dropped_steps']})",
        ),
    ]
    for label, cell in rows:
        lines.append(f"{label:<36}" + "".join(f"{cell(r[t]):>24}" for t in triggers))
    lines.append(f"  (overhead: {' + '.join(OVERHEAD_STAGES)})")
    lines.append("CPU ms per period, median / p99 of ~1 s windows:")
    for label, key in (
        ("loop thread", "loop_thread_ms_per_period"),
        ("control process, all threads", "control_ms_per_period"),
    ):
        lines.append(f"  {label:<34}" + "".join(f"{windows(r[t], key):>24}" for t in triggers))
    lines.append("CPU ms per period over the run (% of one core):")
    for label, key in (
        ("control process", "control"),
        ("recorder process", "recorder"),
        ("link process", "link"),
        ("the daemon, all processes", "all"),
    ):
        lines.append(f"  {label:<34}" + "".join(f"{proc(r[t], key):>24}" for t in triggers))
    lines.append("loop thread stages, median / p99 ms:")
    for name in r[triggers[0]]["stages"]:
        lines.append(f"  {name:<34}" + "".join(f"{stage(r[t], name):>24}" for t in triggers))
    return "\n".join(lines)
