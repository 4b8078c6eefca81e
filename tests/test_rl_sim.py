"""Fine-tuning an image policy in the simulator: the reward, the critic warm-up, the new bundle."""

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import numpy as np
from policy_helpers import TINY_SPEC

from malpi.actions import DEFAULT_ACTIONS
from malpi.policy.export import make_bundle
from malpi.policy.model import build_policy
from malpi.rl.sim import SimFineTuneConfig, env_fns, fine_tune


@pytest.fixture(scope="module")
def start():
    return make_bundle(build_policy(TINY_SPEC, seed=3), DEFAULT_ACTIONS, version=4)


def test_driving_reward_adds_time_and_departure_terms(start):
    cfg = SimFineTuneConfig(num_envs=1, time_reward=-0.05, departure_penalty=-7.0, max_steps=400)
    env = env_fns(start, cfg)[0]()
    env.reset(seed=0)
    rewards = []
    while True:  # straight on: a closed track bends away, the car leaves the road
        _, r, terminated, truncated, _ = env.step(2)
        rewards.append(r)
        if terminated or truncated:
            break
    assert terminated and len(rewards) < 400
    assert rewards[-1] < -6.0 and all(r > -1.0 for r in rewards[:-1])


def test_value_warm_up_trains_only_the_value_head_and_versions_follow(start):
    cfg = SimFineTuneConfig(
        total_steps=128,
        num_envs=2,
        num_steps=32,
        seq_len=16,
        epochs=1,
        minibatches=1,
        value_warmup=2,
        max_steps=50,
    )
    new = fine_tune(start, cfg)
    assert new.version == 5 and new.manifest["parent"] == start.id
    assert new.manifest["provenance"]["from"] == start.label
    changed = {k for k in start.weights if not np.array_equal(start.weights[k], new.weights[k])}
    assert changed == {"value/kernel", "value/bias"}
