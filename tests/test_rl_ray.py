"""``malpi rl sim --ray``: the environments in Ray actors step as the local ones do, and a
fine-tune gives the local run's weights and statistics, to the last bit."""

from __future__ import annotations

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from policy_helpers import TINY_SPEC

from malpi.actions import DEFAULT_ACTIONS
from malpi.policy.export import make_bundle
from malpi.policy.model import build_policy
from malpi.rl.common import vector_env
from malpi.rl.sim import SimFineTuneConfig, env_fns, fine_tune

TINY_BUNDLE = Path(__file__).resolve().parent / "data" / "tiny-a.malpi"


@pytest.fixture(scope="module")
def start():
    return make_bundle(build_policy(TINY_SPEC, seed=3), DEFAULT_ACTIONS, version=4)


def assert_same(a, b, where="info"):
    """Equal to the bit, recursively through dicts and object arrays (``final_obs``)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert b.dtype == object and a.shape == b.shape, where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b), where
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, where
        assert np.array_equal(a, b), where


def test_ray_vector_env_steps_as_sync_vector_env(start, local_ray):
    from malpi.rl.remote import ray_vector_env

    cfg = SimFineTuneConfig(num_envs=3, max_steps=40)  # short episodes: time limits and departures
    local = vector_env(env_fns(start, cfg))
    remote = ray_vector_env(env_fns(start, cfg))
    try:
        assert remote.actors == 2  # the CPUs, fewer than the environments: slices of 2 and 1
        assert remote.num_envs == local.num_envs == 3
        assert remote.single_observation_space == local.single_observation_space
        assert remote.single_action_space == local.single_action_space
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space

        obs_a, info_a = local.reset(seed=11)
        obs_b, info_b = remote.reset(seed=11)
        assert_same(obs_a, obs_b, "reset obs")
        assert_same(info_a, info_b, "reset info")
        rng = np.random.default_rng(0)
        ends = {"terminated": 0, "truncated": 0}
        for t in range(300):
            actions = rng.integers(0, len(DEFAULT_ACTIONS), size=3)
            a, b = local.step(actions), remote.step(actions)
            for name, x, y in zip(
                ("obs", "rewards", "terminated", "truncated"), a, b, strict=False
            ):
                assert_same(x, y, f"step {t} {name}")
            assert_same(a[4], b[4], f"step {t} info")
            ends["terminated"] += int(a[2].sum())
            ends["truncated"] += int(a[3].sum())
        assert ends["terminated"] > 0 and ends["truncated"] > 0, ends  # both kinds of ending met
    finally:
        local.close()
        remote.close()
    assert remote.closed


def test_fewer_environments_than_cpus_get_one_actor_each(start, local_ray):
    from malpi.rl.remote import ray_vector_env

    envs = ray_vector_env(env_fns(start, SimFineTuneConfig(num_envs=1)))
    try:
        assert envs.actors == 1
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (1, TINY_SPEC.image_height, TINY_SPEC.image_width, 3)
    finally:
        envs.close()


def _logged_updates(caplog) -> list[str]:
    """fine_tune's per-update lines without the time-dependent steps/s."""
    return [
        re.sub(r", [\d.]+ steps/s$", "", r.getMessage())
        for r in caplog.records
        if r.name == "malpi.rl.sim"
    ]


def test_fine_tune_on_ray_equals_the_local_run(start, local_ray, caplog):
    cfg = SimFineTuneConfig(
        total_steps=192,
        num_envs=3,
        num_steps=32,
        seq_len=16,
        epochs=1,
        minibatches=1,
        value_warmup=1,  # one critic warm-up, then two PPO updates of the whole network
        max_steps=30,
        seed=5,
    )
    with caplog.at_level(logging.INFO, logger="malpi.rl.sim"):
        here = fine_tune(start, cfg)
        local_lines = _logged_updates(caplog)
        caplog.clear()
        there = fine_tune(start, cfg, ray="auto")
        ray_lines = _logged_updates(caplog)
    assert len(local_lines) == 2 and local_lines == ray_lines
    assert "departures" in local_lines[-1]
    assert here.weights.keys() == there.weights.keys()
    assert all(np.array_equal(here.weights[k], there.weights[k]) for k in here.weights)
    changed = [k for k in start.weights if not np.array_equal(start.weights[k], here.weights[k])]
    assert len(changed) > 2  # PPO moved more than the value head: the comparison means something


def _run_sim_cli(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``malpi rl sim`` (tiny) in a fresh interpreter, which then says whether Ray was imported."""
    args = ["rl", "sim", "--policy", str(TINY_BUNDLE), "--out", str(out), "--steps", "32"]
    args += ["--envs", "1", "--rollout", "32", "--seq-len", "16", "--epochs", "1"]
    args += ["--minibatches", "1", "--max-steps", "20", "--value-warmup", "1"]
    code = (
        "import sys; from malpi.cli import main; rc = main(sys.argv[1:]); "
        "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args, *extra], capture_output=True, text=True, timeout=180
    )


def test_rl_sim_without_ray_never_imports_it(tmp_path):
    result = _run_sim_cli(tmp_path / "out.malpi")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ray imported: False" in result.stdout
    assert (tmp_path / "out.malpi").exists()  # it did fine-tune


def test_rl_sim_with_a_cluster_that_does_not_answer_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = _run_sim_cli(tmp_path / "out.malpi", "--ray", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"malpi: error: no Ray cluster answers at 127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 60  # not Ray's minutes of retries
    assert not (tmp_path / "out.malpi").exists()


def test_rl_sim_help_offers_ray_without_importing_it():
    code = (
        "import sys; from malpi.cli import main\n"
        "try:\n    main(['rl', 'sim', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('ray imported:', 'ray' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--ray auto|ADDRESS" in result.stdout
    assert "ray imported: False" in result.stdout
