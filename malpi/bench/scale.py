"""``malpi bench scale``: ``malpi eval`` of the shipped policy on the 100 held-out tracks, in this
process one track after another (as ``malpi eval`` runs without ``--ray``), then on a local Ray
of two workers (``--ray``), with the per-track results compared.

Each mode runs :func:`~malpi.train.evaluate.evaluate_bundle` with ``malpi eval``'s defaults
(3 laps, 3000 steps at most, the bundle's car, car noise 1, seed 0, the expert's 600-step
held-out drive of every track scored), its step runtime built afresh, as a new ``malpi eval``
would. The Ray is started by the benchmark (``ray.init(num_cpus=2)``) for each condition and
shut down after it: the start-up is timed on its own, and the Ray time runs from the cluster
being up to the last track's result here, the workers' imports and their step runtimes
included.

Quiet, and beside a CPU hog (a process busy on a core, free to run on any): the target applies
to the quiet figure; the busy one says what is left when something else shares the machine.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TARGET_SPEEDUP = 1.7
RAY_CPUS = 2
CONDITIONS = ("quiet", "busy")
EVAL_TRACK_WARM_UP = 999  # a training track, not one of those timed


def run(
    tracks: Sequence[int] | None = None,
    laps: int = 3,
    conditions: Sequence[str] = CONDITIONS,
    hogs: int = 1,
    json_path: str | None = None,
    repeat: int = 1,
) -> dict[str, Any]:
    """Both modes under each condition; the figures (printed as a table, and to ``json_path``)."""
    from malpi.bench.daemon import hogs as cpu_hogs
    from malpi.policy.bundle import PolicyBundle
    from malpi.policy.store import shipped_policy
    from malpi.sim.track import EVAL_SEEDS

    tracks = [int(t) for t in (EVAL_SEEDS if tracks is None else tracks)]
    bundle = PolicyBundle.from_bytes(shipped_policy().read_bytes())
    result: dict[str, Any] = {
        "policy": bundle.label,
        "tracks": len(tracks),
        "track_seeds": [tracks[0], tracks[-1]],
        "laps": laps,
        "cpus": os.cpu_count(),
        "ray_workers": RAY_CPUS,
        "hogs_when_busy": hogs,
        "target_speedup": TARGET_SPEEDUP,
        "repeat": repeat,
        "conditions": {},
    }
    warm_up(bundle)
    reports = []
    for name in conditions:
        with cpu_hogs(hogs if name == "busy" else 0):
            figures, runs = measure(bundle, tracks, laps, repeat)
        result["conditions"][name] = figures
        reports += runs
    # Every run, sequential or Ray, quiet or busy, gave the same report (its time aside).
    result["same_results"] = all(same(reports[0], r) for r in reports[1:])
    main = result["conditions"][conditions[0]]
    result.update({k: main[k] for k in ("sequential_s", "ray_s", "ray_startup_s", "speedup")})
    result["target_met"] = bool(
        "quiet" in result["conditions"]
        and result["conditions"]["quiet"]["speedup"] >= TARGET_SPEEDUP
        and result["same_results"]
    )
    print(format_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def measure(
    bundle: Any, tracks: list[int], laps: int, repeat: int = 1
) -> tuple[dict[str, Any], list[Any]]:
    """One condition: sequential, then on a fresh local Ray, ``repeat`` times; the best of each
    (the machine is a VM whose neighbours come and go: a slow run says more of them than of us)."""
    import ray

    seq_times, ray_times, startups, runs = [], [], [], []
    for _ in range(repeat):
        sequential, seq_s = timed_eval(bundle, tracks, laps, None)
        ray_startup_s, workers = start_ray()
        try:
            on_ray, ray_s = timed_eval(bundle, tracks, laps, workers)
            nice = ray.get(ray.remote(worker_nice).remote())
        finally:
            ray.shutdown()
        seq_times.append(seq_s)
        ray_times.append(ray_s)
        startups.append(ray_startup_s)
        runs += [sequential, on_ray]
    seq_s, ray_s = min(seq_times), min(ray_times)
    figures = {
        "sequential_s": round(seq_s, 2),
        "ray_s": round(ray_s, 2),
        "ray_startup_s": round(min(startups), 2),
        "speedup": round(seq_s / ray_s, 3),
        "speedup_with_startup": round(seq_s / (ray_s + min(startups)), 3),
        "sequential_runs_s": [round(t, 2) for t in seq_times],
        "ray_runs_s": [round(t, 2) for t in ray_times],
        "sequential_s_per_track": round(seq_s / len(tracks), 3),
        "completed_tracks": {
            "sequential": runs[0][0]["completed_tracks"],
            "ray": runs[1][0]["completed_tracks"],
        },
        "same_results": all(same(runs[0], r) for r in runs[1:]),
        "ray_worker_nice": nice,
        "load_average": round(os.getloadavg()[0], 2),
    }
    return figures, runs


def worker_nice() -> int:
    """A Ray worker's niceness (Ray's default: 15, below every ordinary process)."""
    return os.nice(0)


def warm_up(bundle: Any) -> None:
    """One short track here first, untimed: the sequential figure is then the evaluation's, not
    this process's imports and its one-off check of the integer model (a Ray worker's are in the
    Ray figure: each is a new process)."""
    from malpi.train import evaluate

    evaluate.evaluate_bundle(bundle, seeds=[EVAL_TRACK_WARM_UP], laps=1, max_steps=100)


def timed_eval(bundle: Any, tracks: list[int], laps: int, workers: Any) -> tuple[Any, float]:
    """``malpi eval``'s evaluation, its step runtime built anew; ((report, drives), seconds)."""
    from malpi.train import evaluate

    evaluate._policy_cache.clear()  # as a new `malpi eval` process: nothing built yet
    car = bundle.manifest["provenance"].get("car") or evaluate.DEFAULT_CAR
    started = time.perf_counter()
    out = evaluate.evaluate_bundle(bundle, seeds=tracks, laps=laps, car=car, workers=workers)
    return out, time.perf_counter() - started


def start_ray() -> tuple[float, Any]:
    """A Ray of this machine alone with two CPUs, up: (seconds it took, Workers on it)."""
    import ray

    from malpi.workers import Workers

    started = time.perf_counter()
    ray.init(
        address="local",  # a Ray of its own, even where another runs (a test's, a `ray start`)
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    return time.perf_counter() - started, Workers("auto")


def same(a: tuple[dict[str, Any], list[Any]], b: tuple[dict[str, Any], list[Any]]) -> bool:
    """Two evaluations agree: their reports (time aside) and every path driven, exactly."""
    (ra, da), (rb, db) = a, b
    strip = ("seconds",)
    if {k: v for k, v in ra.items() if k not in strip} != {
        k: v for k, v in rb.items() if k not in strip
    }:
        return False
    return len(da) == len(db) and all(
        np.array_equal(x.trajectory, y.trajectory) for x, y in zip(da, db, strict=True)
    )


def format_table(r: dict[str, Any]) -> str:
    from malpi.textout import table

    conds = list(r["conditions"])
    names = {"quiet": "quiet", "busy": f"{r['hogs_when_busy']} CPU hog(s)"}
    speedup = f">= {r['target_speedup']:g}"
    rows = [  # label, the cell of a condition's figures, the target
        ("sequential (malpi eval) s", lambda m: f"{m['sequential_s']:.1f}", ""),
        ("  each run s", lambda m: " ".join(f"{t:.1f}" for t in m["sequential_runs_s"]), ""),
        ("  per track s", lambda m: f"{m['sequential_s_per_track']:.2f}", ""),
        (f"Ray, {r['ray_workers']} workers s", lambda m: f"{m['ray_s']:.1f}", ""),
        ("  each run s", lambda m: " ".join(f"{t:.1f}" for t in m["ray_runs_s"]), ""),
        ("  Ray start-up s (not counted)", lambda m: f"{m['ray_startup_s']:.1f}", ""),
        ("speedup", lambda m: f"{m['speedup']:.2f}", speedup + " quiet"),
        ("  with the start-up", lambda m: f"{m['speedup_with_startup']:.2f}", ""),
        ("completed tracks seq / Ray", lambda m: "{sequential} / {ray}".format(
            **m["completed_tracks"]), ""),
        ("same per-track results", lambda m: "yes" if m["same_results"] else "NO", "yes"),
        ("Ray workers' niceness", lambda m: str(m["ray_worker_nice"]), ""),
        ("load average at the end", lambda m: f"{m['load_average']:.2f}", ""),
    ]  # fmt: skip
    lines = [
        f"malpi eval of the shipped policy {r['policy']} on {r['tracks']} held-out tracks "
        f"({r['track_seeds'][0]}-{r['track_seeds'][1]}), {r['laps']} laps each, {r['cpus']} CPUs:",
        "in this process one track after another, then as Ray tasks on a local Ray "
        f"(ray.init(num_cpus={r['ray_workers']}))",
    ]
    lines += table(
        ("", *(names[c] for c in conds), "target"),
        (
            (label, *(cell(r["conditions"][c]) for c in conds), target)
            for label, cell, target in rows
        ),
    )
    lines += [
        "the Ray time runs from the cluster being up to the last result (workers' imports and "
        "step runtimes included)",
        f"best of {r['repeat']} run(s) of each mode, each Ray run on a Ray started afresh",
        "same results: every run's report (its time aside) and every path driven, exactly equal"
        + (" (all runs)" if r["same_results"] else " -- NOT ALL EQUAL"),
        "target met (quiet speedup and same results)"
        if r["target_met"]
        else "the target applies to the quiet run, not measured here"
        if "quiet" not in conds
        else f"TARGET MISSED (speedup >= {r['target_speedup']:g} quiet, with the same results)",
    ]
    return "\n".join(lines)
