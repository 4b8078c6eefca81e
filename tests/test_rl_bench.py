"""``malpi bench rl`` on a tiny budget: every method runs, the report has its keys and sane figures;
the sb3 peer is configured as rl-zoo publishes it."""

import math

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import json

import numpy as np

from malpi.cli import main
from malpi.rl.bench import (
    RL_ZOO_CARTPOLE_NOVEL,
    RL_ZOO_SOURCE,
    format_table,
    rlzoo_cartpole_novel,
    sb3_available,
)

NEEDS_SB3 = "sb3-contrib is not installed (the rl-compare extra; torch's CPU wheel first)"
needs_sb3 = pytest.mark.skipif(not sb3_available(), reason=NEEDS_SB3)

SUMMARY_KEYS = {
    "seeds",
    "reached",
    "steps_to_475",
    "steps_to_475_median",
    "wall_s",
    "best_eval_mean",
    "final_eval_mean",
    "runs",
}
RUN_KEYS = {
    "method",
    "seed",
    "steps_to_475",
    "wall_s",
    "train_wall_s",
    "steps",
    "best_eval",
    "final_eval",
    "curve",
}


def _bench(tmp_path, methods: str) -> dict:
    out = tmp_path / "rl.json"
    argv = ["bench", "rl", "--json", str(out), "--seeds", "0", "--steps", "1024"]
    argv += ["--eval-every", "512", "--episodes", "2", "--methods", methods]
    assert main(argv) == 0
    return json.loads(out.read_text())


def _check_method(report: dict, method: str) -> None:
    m = report["methods"][method]
    assert set(m) == SUMMARY_KEYS
    assert m["seeds"] == [0] and m["reached"] in ("0/1", "1/1")
    for key in ("best_eval_mean", "final_eval_mean"):
        assert isinstance(m[key], float) and 1.0 <= m[key] <= 500.0
    (run,) = m["runs"]
    assert set(run) == RUN_KEYS and run["method"] == method and run["seed"] == 0
    assert isinstance(run["steps"], int) and run["steps"] == 1024
    assert isinstance(run["train_wall_s"], float) and 0.0 < run["train_wall_s"] < 600.0
    for key in ("best_eval", "final_eval"):
        assert isinstance(run[key], float) and math.isfinite(run[key]) and 1.0 <= run[key] <= 500.0
    assert [s for s, _ in run["curve"]] == [512, 1024]
    assert all(isinstance(s, int) and isinstance(r, float) for s, r in run["curve"])
    assert run["best_eval"] == max(r for _, r in run["curve"])
    assert run["final_eval"] == run["curve"][-1][1]
    if run["steps_to_475"] is None:  # 1,024 steps are far too few: reported, not invented
        assert run["wall_s"] is None and m["steps_to_475"] is None and m["wall_s"] is None
    else:
        assert isinstance(run["steps_to_475"], int) and isinstance(run["wall_s"], float)


def test_bench_rl_cli_reports_every_method(tmp_path, capsys):
    report = _bench(tmp_path, "ppo_lstm,ppo_feedforward,drqn")
    assert report["target_return"] == 475.0 and report["eval_episodes"] == 2
    assert report["eval_every_steps"] == 512 and report["budget_steps"] == 1024
    assert report["stop_at_target"] is True
    assert list(report["methods"]) == ["ppo_lstm", "ppo_feedforward", "drqn"]
    for method in report["methods"]:
        _check_method(report, method)
    assert report["steps_to_475_per_seed"] == [
        report["methods"]["ppo_lstm"]["runs"][0]["steps_to_475"]
    ]
    assert report["steps_to_475"] == report["methods"]["ppo_lstm"]["steps_to_475"]
    assert report["feedforward"] == report["methods"]["ppo_feedforward"]
    assert report["drqn"] == report["methods"]["drqn"]
    assert "sb3_steps_to_475" not in report and "sb3_config" not in report  # not asked for
    out = capsys.readouterr().out
    assert "ppo_feedforward" in out and "drqn" in out and "steps to 475" in out


@needs_sb3
def test_bench_rl_cli_runs_the_sb3_peer(tmp_path, capsys):
    report = _bench(tmp_path, "sb3_recurrent_ppo")
    _check_method(report, "sb3_recurrent_ppo")
    assert report["sb3_steps_to_475"] == report["methods"]["sb3_recurrent_ppo"]["steps_to_475"]
    assert report["sb3_wall_s"] == report["methods"]["sb3_recurrent_ppo"]["wall_s"]
    assert report["sb3_config"] == {"source": RL_ZOO_SOURCE, "hyperparams": RL_ZOO_CARTPOLE_NOVEL}
    assert "steps_to_475" not in report  # ppo_lstm was not asked for
    assert "sb3_recurrent_ppo" in capsys.readouterr().out
    assert "sb3_recurrent_ppo" in format_table(report)


def test_the_peers_environment_is_rl_zoos_cartpole_novel():
    env = rlzoo_cartpole_novel()
    obs, _ = env.reset(seed=3)
    state = np.asarray(env.unwrapped.state, np.float32)
    assert env.spec.max_episode_steps == 500 and obs.shape == (4,)
    # Velocities zeroed (not removed), position and angle unscaled: VecNormalize does the rest.
    np.testing.assert_array_equal(obs, state * np.array([1, 0, 1, 0], np.float32))
    obs, *_ = env.step(1)
    assert obs[1] == 0.0 and obs[3] == 0.0 and obs[0] == np.float32(env.unwrapped.state[0])


@needs_sb3
def test_the_sb3_peer_is_configured_as_rl_zoo_publishes():
    import torch
    from stable_baselines3.common.vec_env import VecNormalize

    from malpi.rl.bench import make_sb3

    hp = RL_ZOO_CARTPOLE_NOVEL
    assert "22e3ff2450fd92033f7f032915e1f64894a09584" in RL_ZOO_SOURCE
    model, venv, eval_norm = make_sb3(seed=0)
    # normalize: True -> VecNormalize of observations and rewards, with the algorithm's gamma.
    assert isinstance(venv, VecNormalize) and model.get_vec_normalize_env() is venv
    assert venv.norm_obs and venv.norm_reward and venv.training
    assert venv.gamma == hp["gamma"] == model.gamma == 0.98
    assert (venv.clip_obs, venv.clip_reward, venv.epsilon) == (10.0, 10.0, 1e-8)  # defaults
    # Evaluation as rl-zoo's: rewards not normalised, statistics frozen (synced before each one).
    assert not eval_norm.norm_reward and not eval_norm.training and eval_norm.norm_obs
    assert eval_norm.gamma == hp["gamma"]
    # The hyper-parameters.
    assert venv.num_envs == model.n_envs == hp["n_envs"] == 8
    assert venv.observation_space.shape == (4,)
    assert (model.n_steps, model.batch_size, model.n_epochs) == (32, 256, 20)
    assert (model.gae_lambda, model.ent_coef) == (hp["gae_lambda"], hp["ent_coef"]) == (0.8, 0.0)
    # lin_0.001 and lin_0.2: progress_remaining * initial value, down to zero.
    for progress in (1.0, 0.5, 0.0):
        assert model.lr_schedule(progress) == pytest.approx(1e-3 * progress)
        assert model.clip_range(progress) == pytest.approx(0.2 * progress)
    policy = model.policy
    assert policy.lstm_actor.hidden_size == 64 and policy.lstm_critic is not None
    assert policy.lstm_critic.hidden_size == 64  # enable_critic_lstm=True
    assert policy.ortho_init is False and policy.activation_fn is torch.nn.ReLU
    assert policy.net_arch == dict(pi=[64], vf=[64])
