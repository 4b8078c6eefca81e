"""Demonstrations and DAgger roll-outs on Ray store what the local run stores, given the seed."""

from __future__ import annotations

import pytest
from extras import NEEDS_GYM

pytest.importorskip("gymnasium", reason=NEEDS_GYM)

import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from malpi.actions import DEFAULT_ACTIONS
from malpi.policy.bundle import PolicyBundle
from malpi.train.dagger import DaggerConfig, roll_out
from malpi.train.demos import DemoConfig, SimSetup, record_demos
from malpi.train.episodes import LABELS_KEY
from malpi.workers import Workers

TINY_BUNDLE = Path(__file__).resolve().parent / "data" / "tiny-a.malpi"
SIM = SimSetup(image=(48, 64), randomize=0.5)  # the tiny bundle's input
DEMOS = DemoConfig(seeds=(0, 1, 2, 3), steps=60, perturb_prob=0.1, sim=SIM)


def stored(path: Path) -> tuple[list[tuple], list[tuple]]:
    """Every stored column but the wall and monotonic times (and the episode's random UUID)."""
    with sqlite3.connect(path) as db:
        episodes = db.execute(
            "SELECT id, outcome, final_reward, config, action_table, policy_version, notes "
            "FROM episodes ORDER BY id"
        ).fetchall()
        steps = db.execute(
            "SELECT episode_id, step, action, source, probs, value, reward, done, "
            "policy_version, frame FROM steps ORDER BY episode_id, step"
        ).fetchall()
    return episodes, steps


def configs(episodes: list[tuple]) -> list[dict]:
    return [json.loads(e[3]) for e in episodes]


def timed(what: str, fn):
    started = time.monotonic()
    result = fn()
    print(f"{what}: {time.monotonic() - started:.1f} s")
    return result


def test_demos_on_ray_store_what_the_local_run_stores(local_ray, tmp_path):
    here, there = tmp_path / "here.sqlite", tmp_path / "ray.sqlite"
    local = timed("demos here", lambda: record_demos(here, DEMOS, DEFAULT_ACTIONS, seed=5))
    remote = timed(
        "demos on Ray",
        lambda: record_demos(there, DEMOS, DEFAULT_ACTIONS, seed=5, workers=Workers("auto")),
    )
    assert {k: v for k, v in local.items() if k != "seconds"} == {
        k: v for k, v in remote.items() if k != "seconds"
    }
    episodes, steps = stored(here)
    assert (episodes, steps) == stored(there)
    # what was compared is the real thing: four episodes in track order, labelled, perturbed
    config = configs(episodes)
    assert [c["simulator"]["track_seed"] for c in config] == [0, 1, 2, 3]
    labels = [label for c in config for label in c[LABELS_KEY]]
    assert len(labels) == len(steps) == local["steps"]
    assert any(label != s[2] for label, s in zip(labels, steps, strict=True))  # perturbations
    assert all(s[9][:2] == b"\xff\xd8" for s in steps)  # JPEG frames


def test_a_demo_episode_depends_only_on_its_own_track_and_the_seed(tmp_path):
    """Each episode draws from its own generator: recording fewer tracks changes no episode."""
    all_tracks, two = tmp_path / "all.sqlite", tmp_path / "two.sqlite"
    record_demos(all_tracks, DEMOS, DEFAULT_ACTIONS, seed=5)
    record_demos(two, DemoConfig(seeds=(2, 3), steps=60, perturb_prob=0.1, sim=SIM), seed=5)
    (a_episodes, a_steps), (b_episodes, b_steps) = stored(all_tracks), stored(two)
    assert configs(a_episodes)[2:] == configs(b_episodes)
    first_two = sum(1 for s in a_steps if s[0] <= a_episodes[1][0])
    assert [s[2:] for s in a_steps[first_two:]] == [s[2:] for s in b_steps]


def test_a_dagger_roll_out_on_ray_stores_what_the_local_one_stores(local_ray, tmp_path):
    bundle = PolicyBundle.load(TINY_BUNDLE)
    config = DaggerConfig(seeds=(700, 701, 702), episodes=3, steps=60, beta=0.3, sim=SIM)
    here, there = tmp_path / "here.sqlite", tmp_path / "ray.sqlite"

    def run(path: Path, workers: Workers | None = None) -> dict:
        return roll_out(bundle, path, config.seeds, config, 0.3, 2, 1, workers)

    local = timed("roll-out here", lambda: run(here))
    remote = timed("roll-out on Ray", lambda: run(there, Workers("auto")))
    assert {k: v for k, v in local.items() if k != "seconds"} == {
        k: v for k, v in remote.items() if k != "seconds"
    }
    episodes, steps = stored(here)
    assert (episodes, steps) == stored(there)
    assert [c["simulator"]["track_seed"] for c in configs(episodes)] == [700, 701, 702]
    assert all(e[5] == bundle.label for e in episodes)
    sources = {s[3] for s in steps}
    assert "policy" in sources and "human" in sources  # the policy drove, the expert mixed in
    assert all(s[4] is not None for s in steps)  # the policy's probabilities, every step


def _run_demos_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``malpi train demos`` in a fresh interpreter, which then says whether Ray was imported."""
    args = ["train", "demos", "--out", str(tmp_path / "demos.sqlite"), "--tracks", "0"]
    args += ["--steps", "20", "--image", "48x64", *extra]
    code = (
        "import sys; from malpi.cli import main; rc = main(sys.argv[1:]); "
        "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_demos_without_ray_never_import_it(tmp_path):
    result = _run_demos_cli(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ray imported: False" in result.stdout
    assert (tmp_path / "demos.sqlite").exists()


def test_a_cluster_that_does_not_answer_is_a_clear_error_and_nothing_is_written(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = _run_demos_cli(tmp_path, "--ray", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"malpi: error: no Ray cluster answers at 127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 60  # not Ray's minutes of retries
    assert list(tmp_path.iterdir()) == []
