"""Smoke tests of ``malpi bench link``, ``stress``, ``ipc`` and ``sim``: each benchmark run for
real but briefly, in a process of its own (as from the command line; a benchmark moves its
process between cores), its JSON report checked for its keys, every figure finite, and the facts
that hold on any machine however loaded: counts are what was asked, a median is no more than
its p99. The figures themselves are not judged, so none can break silently without failing CI.

``bench link`` goes through ``run()`` because its drive before the pull (20 s) has no flag.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from extras import needs_gym


def nonfinite(report: Any, path: str = "") -> list[str]:
    """Where ``report`` holds a number that is not finite (NaN, inf), as key paths."""
    if isinstance(report, dict):
        return [p for k, v in report.items() for p in nonfinite(v, f"{path}.{k}")]
    if isinstance(report, list):
        return [p for i, v in enumerate(report) for p in nonfinite(v, f"{path}[{i}]")]
    if isinstance(report, float) and not math.isfinite(report):
        return [path]
    return []


def figures(report: dict[str, Any], keys: list[str]) -> None:
    """Every key is there with a number (not None), and nothing in the report is NaN or inf."""
    missing = [k for k in keys if not isinstance(report.get(k), int | float)]
    assert not missing, f"no figure for {missing}"
    assert not nonfinite(report), f"not finite: {nonfinite(report)}"


def test_nonfinite_finds_nan_and_inf_anywhere():
    assert nonfinite({"a": 1, "b": [0.5, {"c": float("nan")}], "d": None, "e": "x"}) == [".b[1].c"]
    assert nonfinite([float("inf"), True, -2]) == ["[0]"]


def test_the_stress_zip_bomb_is_a_real_zip_of_zeros():
    """``bench stress`` writes its zip bomb by hand: a valid archive that inflates as stated."""
    import io
    import zipfile

    from malpi.bench.attacks import zip_bomb_bundle

    for size in (0, 5, (3 << 20) + 7):
        with zipfile.ZipFile(io.BytesIO(zip_bomb_bundle(size))) as z:
            assert z.testzip() is None  # every member's CRC checks
            assert z.read("weights.npz") == bytes(size)
            assert z.getinfo("weights.npz").compress_size < size // 500 + 16
    with zipfile.ZipFile(io.BytesIO(zip_bomb_bundle())) as z:
        assert z.getinfo("weights.npz").file_size == 512 << 20


def bench(tmp_path: Path, *args: str, returncodes: tuple[int, ...] = (0,)) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "malpi", "bench", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode in returncodes, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_bench_link_smoke(tmp_path):
    code = (
        "from malpi.bench.link import run; "
        f"run(rate_hz=30, requests=30, reloads=2, json_path={str(tmp_path / 'link.json')!r}, "
        "seed_size=False, pull_drive_s=1.0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    r = json.loads((tmp_path / "link.json").read_text())
    rtt = [
        f"{p}_{cmd}_{q}_ms"
        for p in ("rtt", "rtt_curve")
        for cmd in ("ping", "drive")
        for q in ("median", "p99")
    ]
    telemetry = [
        f"telemetry_{kind}_{f}"
        for kind in ("step", "frame")
        for f in ("msgs_per_s", "mb_per_s", "bytes")
    ]
    reload = ["reloads", "reload_missed_periods", "reload_max_period_ms", "reload_period_p99_ms"]
    quiet = ["quiet_max_period_ms", "quiet_missed_periods", "quiet_seconds"]
    pull = [f"pull_{f}" for f in ("episodes", "steps", "steps_per_s", "mb_per_s")]
    pull += ["pull_missed_periods", "pull_max_period_ms"]
    figures(r, ["rate_hz", "busy", *rtt, *telemetry, *reload, *quiet, *pull])
    assert r["rate_hz"] == 30 and r["busy"] == 0
    for p in ("rtt", "rtt_curve"):
        for cmd in ("ping", "drive"):
            assert 0 < r[f"{p}_{cmd}_median_ms"] <= r[f"{p}_{cmd}_p99_ms"]
    for kind in ("step", "frame"):
        assert r[f"telemetry_{kind}_msgs_per_s"] > 0 and r[f"telemetry_{kind}_bytes"] > 0
    # one bundle (no seed-size one), loaded twice, each load a swap
    assert r["reloads"] == 2 and list(r["reload_bundles"]) == ["default"]
    bundle = r["reload_bundles"]["default"]
    figures(bundle, ["bytes", "load_ms_median", "max_period_ms"])
    assert bundle["bytes"] > 0 and bundle["load_ms_median"] > 0
    assert 0 < r["reload_period_p99_ms"] <= r["reload_max_period_ms"]
    for missed in ("reload_missed_periods", "quiet_missed_periods", "pull_missed_periods"):
        assert isinstance(r[missed], int) and r[missed] >= 0
    # the boot episode, ended by the pull's own, is pulled at least
    assert r["pull_episodes"] >= 1 and r["pull_steps"] > 0 and r["pull_steps_per_s"] > 0
    assert isinstance(r["policy"], str) and r["policy"]
    assert "hot reload while driving" in done.stdout


def test_bench_stress_smoke(tmp_path):
    # loads=4: the zip bomb goes in after the second load, the huge manifest after the fourth
    args = ["--seconds", "3", "--connections", "20", "--loads", "4", "--hogs", "0", "--small"]
    r, out = bench(tmp_path, "stress", *args, returncodes=(0, 1))
    targets = list(r["targets"])
    assert set(targets) >= {"missed_periods", "frame_to_motor_p99_ms", "operator_ping_p99_ms"}
    figures(
        r,
        [
            *targets,
            "rate_hz",
            "seconds",
            "hogs",
            "periods",
            "overhead_median_ms",
            "frame_to_motor_median_ms",
            "period_max_ms",
            "operator_pings",
            "operator_ping_max_ms",
            "idle_connections",
            "idle_connections_dropped_by_the_robot",
            "bundle_bytes",
        ],
    )
    assert r["hogs"] == 0 and r["idle_connections"] == 20 and r["bundle"] == "default"
    assert r["seconds"] >= 3 and r["periods"] > 0 and r["missed_periods"] >= 0
    assert r["overhead_median_ms"] <= r["overhead_p99_ms"]
    assert r["frame_to_motor_median_ms"] <= r["frame_to_motor_p99_ms"]
    assert 0 < r["operator_ping_p99_ms"] <= r["operator_ping_max_ms"]
    assert r["max_rss_mb"] == max(r["max_rss_by_process_mb"].values())
    loads = r["loads"]
    assert loads["swaps"] == 4 and loads["load_ms_median"] > 0
    # whatever the machine, the robot refuses both hostile bundles
    assert set(loads["rejected"]) == {"zip_bomb", "huge_manifest"}
    assert all(v.startswith("rejected:") for v in loads["rejected"].values()), loads
    assert r["flood"]["sent"] > 0 and 0 <= r["flood"]["replies"] <= r["flood"]["sent"]
    assert r["pull"].get("episodes", 0) >= 1, r["pull"]
    met = all(r[k] <= v for k, v in r["targets"].items())
    assert r["targets_met"] is met
    assert ("all targets met" if met else "TARGETS MISSED") in out


def test_bench_ipc_smoke(tmp_path):
    r, out = bench(tmp_path, "ipc", "--messages", "100", "--paced", "10", "--rate", "100")
    assert r["frame_bytes"] == 120 * 160 * 3
    assert (r["messages"], r["paced"], r["rate_hz"]) == (100, 10, 100.0)
    assert list(r["results"]) == ["zmq_ipc", "zmq_ipc_zerocopy", "pipe", "shm_ring"]
    for kind, modes in r["results"].items():
        assert list(modes) == ["burst", "paced"]
        for mode, m in modes.items():
            where = f"{kind} {mode}"
            figures(
                m,
                [
                    "send_us_median",
                    "send_us_p99",
                    "send_us_max",
                    "latency_us_median",
                    "latency_us_p99",
                    "received",
                    "dropped",
                    "sent",
                ],
            )
            assert m["sent"] == (100 if mode == "burst" else 10), where
            assert 0 <= m["dropped"] <= m["sent"], where
            assert 1 <= m["received"] <= m["sent"] - m["dropped"], where
            assert 0 < m["send_us_median"] <= m["send_us_p99"] <= m["send_us_max"], where
            assert 0 < m["latency_us_median"] <= m["latency_us_p99"], where
    assert "shm_ring" in out


@needs_gym
def test_bench_sims_training_env_is_the_one_training_drives():
    """``bench sim`` builds its own copy (malpi.sim may not import malpi.rl or malpi.train):
    the same env as ``malpi rl sim``'s, the car and camera of ``malpi train``'s recordings."""
    from malpi.policy.bundle import PolicyBundle
    from malpi.policy.store import shipped_policy
    from malpi.rl.sim import SimFineTuneConfig, env_fns
    from malpi.sim import bench
    from malpi.train.demos import SimSetup

    ours = bench.training_env()
    rl = env_fns(PolicyBundle.from_bytes(shipped_policy().read_bytes()), SimFineTuneConfig())
    theirs = rl[0]().unwrapped
    for attr in (
        "track_seeds",
        "car_params",
        "camera_spec",
        "dt",
        "max_steps",
        "random_start",
        "random_direction",
        "randomization",
    ):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert [a.command for a in ours.actions] == [a.command for a in theirs.actions]
    demos = SimSetup().make_env(1, bench.TRAINING_MAX_STEPS, False, ours.actions)
    assert (demos.car_params, demos.camera_spec, demos.dt) == (
        ours.car_params,
        ours.camera_spec,
        ours.dt,
    )


@needs_gym
def test_bench_sim_smoke(tmp_path):
    from malpi.rl.sim import SimFineTuneConfig

    r, out = bench(tmp_path, "sim", "--seconds", "0.3")
    assert r["seconds_per_measurement"] == 0.3
    figures(
        r["parts"],
        ["render_us", "dynamics_us", "expert_us", "new_track_reset_ms", "materials_once_s"],
    )
    assert all(v > 0 for v in r["parts"].values())
    assert not nonfinite(r)
    # the training env first: the ratios are against it
    assert list(r["envs"]) == ["training", "training_random", "one_track", "carracing"]
    training = r["envs"]["training"]
    assert training["driver"] == "expert" and training["x_training"] == 1.0
    assert training["max_episode_steps"] == SimFineTuneConfig().max_steps
    assert r["envs"]["one_track"]["max_episode_steps"] == 1000
    carracing = r["envs"]["carracing"]
    measured = "skipped" not in carracing
    for name, row in r["envs"].items():
        assert row["label"] and row["what"]
        if name == "carracing" and not measured:
            assert "bench" in row["skipped"]  # says which extra to install
            continue
        figures(row, ["steps_per_s", "wall_steps_per_s", "core_share", "x_training"])
        assert row["steps_per_s"] > 0 and 0 < row["core_share"] <= 1.05, name
        assert row["resolution"] == ([96, 96] if name == "carracing" else [120, 160])
        if row["mean_episode_steps"] is not None:
            assert 0 < row["mean_episode_steps"] <= row["max_episode_steps"], name
        if measured:
            assert row["x_carracing"] > 0
        else:
            assert row["x_carracing"] is None
    if measured:
        assert carracing["settings"] == {
            "continuous": True,
            "domain_randomize": False,
            "lap_complete_percent": 0.95,
        }
    assert "training env, expert driving" in out and "steps/s" in out
