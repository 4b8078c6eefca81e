"""The simulator's gymnasium environment and demonstrations (the sim extra)."""

from __future__ import annotations

import pytest
from extras import NEEDS_GYM

pytest.importorskip("gymnasium", reason=NEEDS_GYM)

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from malpi.actions import DEFAULT_ACTIONS, Action, ActionTable
from malpi.sim.demo import Demonstration, demonstrate
from malpi.sim.env import ENV_ID, EVAL_ENV_ID, TrackEnv

STRAIGHT = DEFAULT_ACTIONS.index("straight")
HARD_RIGHT = DEFAULT_ACTIONS.index("hard_right")


# -- gymnasium environment ----------------------------------------------------------------------


def test_env_passes_the_gymnasium_checker():
    check_env(gym.make(ENV_ID, max_steps=50).unwrapped)  # via make: render modes checked too
    env = gym.make(ENV_ID)
    assert env.observation_space == gym.spaces.Box(0, 255, (120, 160, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(len(DEFAULT_ACTIONS))
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    for key in ("laps", "cte", "speed", "on_track", "progress"):
        assert key in info
    view = gym.make(ENV_ID, render_mode="rgb_array")
    view.reset(seed=0)
    picture = view.render()
    assert picture.shape[2] == 3 and picture.dtype == np.uint8


def _rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out += [obs, r, term, trunc, info["cte"], info["speed"]]
        if term or trunc:
            break
    return out


@pytest.mark.parametrize("randomize", [False, True])
def test_env_is_deterministic_given_the_reset_seed(randomize):
    acts = [STRAIGHT, 1, STRAIGHT, 3, STRAIGHT] * 8
    a = _rollout(TrackEnv(randomize=randomize), 7, acts)
    b = _rollout(TrackEnv(randomize=randomize), 7, acts)
    c = _rollout(TrackEnv(randomize=randomize), 8, acts)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_leaving_the_track_ends_the_episode():
    env = TrackEnv(track_seeds=[1000], random_start=False, random_direction=False)
    env.reset(seed=0)
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(HARD_RIGHT)
        if terminated:
            break
    assert terminated and not truncated
    assert not info["on_track"] and abs(info["cte"]) > env.world.track.half_width


def test_step_limit_truncates():
    env = TrackEnv(track_seeds=[1000], random_start=False, max_steps=10)
    env.reset(seed=0)
    results = [env.step(STRAIGHT) for _ in range(10)]
    assert [r[3] for r in results] == [False] * 9 + [True]
    assert not any(r[2] for r in results)


def test_reward_is_progress_forwards_positive_backwards_negative():
    table = ActionTable([Action("forward", 0.0, 0.5), Action("reverse", 0.0, -0.5)])
    env = TrackEnv(track_seeds=[1001], actions=table, random_start=False, random_direction=False)
    env.reset(seed=0)
    forward = sum(env.step(0)[1] for _ in range(20))
    assert forward > 0.5 and env.world.travelled == pytest.approx(forward)
    for _ in range(20):
        env.step(1)  # brake and reverse
    backward = sum(env.step(1)[1] for _ in range(20))
    assert backward < -0.3


def test_eval_env_counts_laps_under_the_expert():
    env = gym.make(EVAL_ENV_ID).unwrapped
    env.reset(seed=0, options={"track_seed": 1000})
    info = {}
    for _ in range(600):
        _, _, term, trunc, info = env.step(env.expert_action())
        assert not term
        if info["laps"] >= 2:
            break
    assert info["laps"] == 2 and info["progress"] >= 2


# -- demonstrations ----------------------------------------------------------------------------


def test_demonstration_shapes_and_round_trip(tmp_path):
    d = demonstrate(1002, 40, noise_prob=0.3, seed=1)
    assert d.frames.shape == (40, 120, 160, 3) and d.frames.dtype == np.uint8
    assert len(d.actions) == len(d.expert_actions) == len(d.rewards) == 40
    assert (d.actions != d.expert_actions).any()  # some exploration happened
    assert d.rewards.sum() > 1.0
    d.save(tmp_path / "d.npz")
    e = Demonstration.load(tmp_path / "d.npz")
    assert np.array_equal(e.frames, d.frames) and e.track_seed == 1002 and e.laps == d.laps
