"""DAgger: roll-outs of the policy are labelled by the expert, recorded, and aggregated."""

from __future__ import annotations

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import numpy as np
from policy_helpers import TINY_SPEC
from train_helpers import IMAGE, TINY_SIM, operator_recording, tiny_config, tiny_demos

from malpi.actions import DEFAULT_ACTIONS
from malpi.policy.model import build_policy
from malpi.recorder import EpisodeStore
from malpi.train.dagger import DaggerConfig, PolicyDriver, dagger
from malpi.train.episodes import LABELS_KEY, load_episodes, split_episodes


def test_dagger_adds_labelled_data_and_retrains(tmp_path):
    demos = tmp_path / "demos.sqlite"
    tiny_demos(demos, tracks=(0, 1, 2), steps=40)
    car = tmp_path / "car.sqlite"
    operator_recording(car, episodes=1, steps=20)  # a real car's corrections join in
    before = load_episodes([demos, car], DEFAULT_ACTIONS, IMAGE)
    weights = build_policy(TINY_SPEC, seed=3).named_weights()
    config = DaggerConfig(
        iterations=1, seeds=(700, 701, 702), episodes=3, steps=40, beta=0.2, sim=TINY_SIM
    )

    def run_dagger():
        return dagger(
            TINY_SPEC,
            DEFAULT_ACTIONS,
            weights,
            [demos],
            tmp_path / "dagger",
            config,
            tiny_config(epochs=1),
            extra_data=[car],
        )

    new_weights, record = run_dagger()
    rollouts = tmp_path / "dagger" / "rollouts.sqlite"
    with EpisodeStore(rollouts, readonly=True) as store:
        infos = store.episodes()
        assert len(infos) == 3
        for info in infos:
            labels = info.config[LABELS_KEY]
            assert len(labels) == info.step_count  # every visited state has the expert's label
            assert info.config["simulator"]["track_seed"] in (700, 701, 702)
            assert info.policy_version is None or info.policy_version.startswith("v")
        data = store.load_episode(infos[0].id, decode=False)
        assert "policy" in set(data.sources)  # the policy drove
        assert not np.isnan(data.probs[data.sources == "policy"]).any()  # its probabilities kept
    after = load_episodes([demos, rollouts, car], DEFAULT_ACTIONS, IMAGE)
    added = [e for e in after if e.key not in {b.key for b in before}]
    assert len(added) == 3 and all(e.labelled for e in added)
    assert sum(e.trained_steps for e in after) > sum(e.trained_steps for e in before)
    row = record[0]
    assert row["rollouts"]["episodes"] == 3 and row["train_steps"] > 0
    # the car's interventions were part of the aggregate the policy was retrained on (the
    # split by episode key is a hash of random UUIDs: compute it rather than guess its size)
    train, _ = split_episodes(after, 0.1)
    assert row["train_episodes"] == len(train) and len(after) == 7
    assert any(not np.array_equal(new_weights[k], weights[k]) for k in weights)
    # a rerun finds the iteration done and does not roll out again
    again, _ = run_dagger()
    with EpisodeStore(rollouts, readonly=True) as store:
        assert len(store.episodes()) == 3
    for k in new_weights:
        np.testing.assert_array_equal(again[k], new_weights[k])


class _Stub:
    """A policy that always steers hard left."""

    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1

    def step(self, obs, prev):
        from malpi.policy.runtime import StepResult

        return StepResult(0, np.eye(5, dtype=np.float32)[0], 0.0)


def test_the_expert_takes_over_near_the_edge_and_hands_back():
    driver = PolicyDriver(
        _Stub(), beta=0.0, rng=np.random.default_rng(0), takeover=0.7, release=0.25
    )
    obs = np.zeros((*IMAGE, 3), np.uint8)
    info = {"half_width": 0.4}
    assert driver(obs, -1, 2, 0, {**info, "cte": 0.1}).source == "policy"
    assert driver(obs, 0, 2, 1, {**info, "cte": 0.3}).source == "intervention"  # 0.75 > 0.7
    assert driver(obs, 2, 2, 2, {**info, "cte": 0.2}).source == "intervention"  # not back yet
    back = driver(obs, 2, 3, 3, {**info, "cte": 0.05})
    assert back.source == "policy" and back.action == 0
    assert driver.policy.resets == 1
