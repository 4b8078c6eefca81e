"""``malpi bench loop``: the daemon on the simulator, recording and telemetry on, timed stage by stage."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STAGES = ("capture_wait", "preprocess", "inference", "actuation", "record", "publish")


def run(
    rate_hz: float = 30.0,
    seconds: float = 60.0,
    json_path: str | None = None,
    config_path: str | None = None,
) -> dict[str, Any]:
    from malpi.config import load_config
    from malpi.daemon.control.build import build_robot

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            config_path,
            {
                "camera.backend": "sim",
                "drivetrain.backend": "sim",
                "loop.rate_hz": rate_hz,
                "camera.fps": max(30.0, rate_hz),
                "recording.enabled": True,
                "recording.path": str(Path(tmp) / "bench.sqlite"),
            },
        )
        history: list[dict[str, float]] = []
        robot = build_robot(config, stage_history=history)
        publisher = _telemetry_publisher(robot, config)
        try:
            robot.loop.set_mode("auto")
            timer = threading.Timer(seconds, robot.loop.request_stop, args=("bench over",))
            timer.start()
            robot.loop.run(install_signal_handlers=False)
            timer.cancel()
            stats = robot.recorder.stats if robot.recorder else None
        finally:
            if publisher is not None:
                publisher.close()
            robot.close()
    result = summarise(history, rate_hz, robot.loop.stats.missed_periods)
    result["policy"] = robot.loop.policy.version if robot.loop.policy else None
    result["telemetry"] = "zeromq" if publisher is not None else "in-process"
    if stats is not None:
        result["recorded_steps"] = stats.steps_written
        result["dropped_steps"] = stats.steps_dropped
    print(format_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def _telemetry_publisher(robot, config):
    """The link's real ZeroMQ publisher when the link is installed, so its cost is measured."""
    try:
        from malpi.daemon.link.server import TelemetryPublisher
    except ImportError:
        return None
    import dataclasses

    # Any free port: a daemon already serving the configured one must not stop the bench.
    publisher = TelemetryPublisher(dataclasses.replace(config.link, telemetry="tcp://127.0.0.1:*"))
    robot.telemetry.add_sink(publisher.sink)
    return publisher


def summarise(history: list[dict[str, float]], rate_hz: float, missed: int) -> dict[str, Any]:
    warm = history[int(rate_hz) :] or history  # skip the first second (start-up)
    starts = np.array([h["start"] for h in warm])
    intervals = np.diff(starts) * 1000.0
    period_ms = 1000.0 / rate_hz

    def pct(values, q):
        return round(float(np.percentile(values, q)), 3) if len(values) else None

    stages = {
        s: {"median_ms": pct([h[s] for h in warm], 50), "p99_ms": pct([h[s] for h in warm], 99)}
        for s in STAGES
    }
    overhead = [sum(h[s] for s in STAGES if s != "inference") for h in warm]
    f2m = [h["frame_to_motor"] for h in warm if "frame_to_motor" in h]
    return {
        "rate_hz": round(len(intervals) / (starts[-1] - starts[0]), 3) if len(starts) > 1 else 0.0,
        "target_rate_hz": rate_hz,
        "periods": len(history),
        "missed_periods": missed,
        "jitter_p99_ms": pct(np.abs(intervals - period_ms), 99),
        "jitter_median_ms": pct(np.abs(intervals - period_ms), 50),
        "overhead_median_ms": pct(overhead, 50),
        "overhead_p99_ms": pct(overhead, 99),
        "frame_to_motor_median_ms": pct(f2m, 50),
        "frame_to_motor_p99_ms": pct(f2m, 99),
        "stages": stages,
    }


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"Control loop on the simulator: {r['periods']} periods at {r['rate_hz']} Hz "
        f"(target {r['target_rate_hz']} Hz), missed periods: {r['missed_periods']}",
        f"policy {r['policy']}, telemetry {r['telemetry']}, recorded {r.get('recorded_steps')} steps "
        f"(dropped {r.get('dropped_steps')})",
        f"{'stage':<22}{'median ms':>12}{'p99 ms':>10}",
    ]
    for s in STAGES:
        lines.append(
            f"{s:<22}{r['stages'][s]['median_ms']:>12.3f}{r['stages'][s]['p99_ms']:>10.3f}"
        )
    lines.append(
        f"{'overhead (all but inference)':<22}{r['overhead_median_ms']:>6.3f}{r['overhead_p99_ms']:>10.3f}"
    )
    lines.append(
        f"{'frame to motor':<22}{r['frame_to_motor_median_ms']:>12.3f}{r['frame_to_motor_p99_ms']:>10.3f}"
    )
    lines.append(f"{'period jitter':<22}{r['jitter_median_ms']:>12.3f}{r['jitter_p99_ms']:>10.3f}")
    return "\n".join(lines)
