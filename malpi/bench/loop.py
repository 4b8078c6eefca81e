"""``malpi bench loop``: ``malpi drive`` on the simulator, recording and telemetry on, timed stage by stage.

The daemon runs as the robot runs it (its three processes, ``Nice=-5``, real-time scheduling
where permitted) and is measured from its own telemetry: every step message carries the
period's stage times, frame-to-motor latency and period length. Both ways of timing the loop
are measured side by side: frame-synchronous (a period starts when a new frame arrives, the
default) and on a fixed timer. ``busy`` CPU hogs run beside it when asked: the Pi is never idle.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from malpi.bench.daemon import BenchDaemon, Watcher, hogs, summarise_steps

log = logging.getLogger(__name__)

TRIGGERS = ("frame", "timer")
WARM_UP = 3.0  # s after start-up before measuring


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
            with daemon.client() as c:
                before = c.status()
            t0 = time.monotonic()
            time.sleep(seconds)
            t1 = time.monotonic()
            with daemon.client() as c:
                after = c.status()
            watcher.stop()
        finally:
            daemon.stop()
    r = summarise_steps(watcher.window(t0, t1), rate_hz)
    periods = after.periods - before.periods
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

    names = {"frame": "frame-synchronous", "timer": "fixed timer"}
    lines = [
        f"malpi drive on the simulator at {r['target_rate_hz']:g} Hz, {r['seconds']:g} s per way, "
        f"{r['busy']} CPU hog(s) beside it, policy {r.get('policy')}",
        f"{'':<32}" + "".join(f"{names[t]:>24}" for t in triggers),
    ]
    rows = [
        ("periods (rate Hz)", lambda m: f"{m['periods']} ({f(m['rate_hz'])})"),
        ("missed periods", lambda m: f(m["missed_periods"])),
        ("overhead median / p99 ms", lambda m: pair(m, "overhead")),
        ("inference median / p99 ms", lambda m: stage(m, "inference")),
        ("frame to motor median / p99 ms", lambda m: pair(m, "frame_to_motor")),
        ("period jitter median / p99 ms", lambda m: pair(m, "jitter")),
        ("longest period ms", lambda m: f(m["period_max_ms"])),
        ("recorded steps (dropped)", lambda m: f"{m['recorded_steps']} ({m['dropped_steps']})"),
    ]
    for label, cell in rows:
        lines.append(f"{label:<32}" + "".join(f"{cell(r[t]):>24}" for t in triggers))
    lines.append("stages of a period, median / p99 ms:")
    for name in r[triggers[0]]["stages"]:
        lines.append(f"  {name:<30}" + "".join(f"{stage(r[t], name):>24}" for t in triggers))
    return "\n".join(lines)
