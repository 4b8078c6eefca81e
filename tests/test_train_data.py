"""Trainer data: reading episodes, the split by episode, sequence plans, the tf.data pipeline,
augmentation, weights."""

from __future__ import annotations

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import numpy as np
from train_helpers import IMAGE, operator_recording, synthetic_episode, tiny_demos

from malpi.actions import DEFAULT_ACTIONS, ActionTable
from malpi.train.augment import NO_AUGMENTATION, Augmentation, augment_frames
from malpi.train.data import (
    FrameTable,
    SequenceConfig,
    StateTable,
    lane_plan,
    make_dataset,
    num_window_slots,
    window_plan,
)
from malpi.train.episodes import (
    DataError,
    StepWeights,
    class_weights,
    load_episodes,
    split_episodes,
)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "demos.sqlite"
    tiny_demos(path, tracks=(0, 1, 2), steps=40)
    return path


def test_no_episode_is_in_both_train_and_validation():
    episodes = [synthetic_episode(f"ep-{i}", 30 + i, seed=i) for i in range(60)]
    train, val = split_episodes(episodes, 0.2)
    assert {e.key for e in train}.isdisjoint({e.key for e in val})
    assert len(train) + len(val) == 60 and 4 <= len(val) <= 24
    # Adding episodes (DAgger) never moves an episode to the other side.
    more = episodes + [synthetic_episode(f"new-{i}", 20, seed=100 + i) for i in range(40)]
    train2, val2 = split_episodes(more, 0.2)
    assert {e.key for e in val} <= {e.key for e in val2}
    assert {e.key for e in train} <= {e.key for e in train2}


def test_a_tiny_data_set_still_gets_one_validation_episode():
    train, val = split_episodes([synthetic_episode("a", 5), synthetic_episode("b", 5)], 0.1)
    assert len(train) == 1 and len(val) == 1


def test_demonstrations_are_read_with_expert_labels(demos):
    episodes = load_episodes([demos], DEFAULT_ACTIONS, IMAGE)
    assert len(episodes) == 3
    for ep in episodes:
        assert ep.labelled and len(ep.jpegs) == len(ep) == len(ep.targets)
        assert ep.prev_actions[0] == -1 and (ep.prev_actions[1:] == ep.actions[:-1]).all()
        assert (ep.weights == 1).all()
        assert ep.info["track_seed"] in (0, 1, 2)
    # perturbations: somewhere the action taken differs from the expert's label
    assert any((ep.actions != ep.targets).any() for ep in episodes)


def test_operator_recordings_weight_interventions_and_ignore_the_policys_own_steps(tmp_path):
    path = tmp_path / "car.sqlite"
    operator_recording(path)
    episodes = load_episodes([path], DEFAULT_ACTIONS, IMAGE, StepWeights(intervention=4.0))
    ep = episodes[0]
    assert not ep.labelled and (ep.targets == ep.actions).all()
    assert set(ep.weights[ep.sources == "intervention"]) == {4.0}
    assert set(ep.weights[ep.sources == "policy"]) == {0.0}


def test_a_recording_with_another_action_table_or_image_size_is_refused(demos, tmp_path):
    other = ActionTable.from_list(
        [{"name": f"a{i}", "steering": 0.0, "throttle": 0.5} for i in range(5)]
    )
    with pytest.raises(DataError, match="recorded with actions"):
        load_episodes([demos], other)
    with pytest.raises(DataError, match="frames"):
        load_episodes([demos], DEFAULT_ACTIONS, (120, 160))


def test_class_weights_lift_rare_actions():
    ep = synthetic_episode("x", 100)
    ep.targets[:] = 2
    ep.targets[:5] = 0
    w = class_weights([ep], 5, power=1.0, clip=10.0)
    assert w[0] > 1 > w[2]
    assert np.isclose((w[ep.targets]).mean(), 1.0)
    assert (class_weights([ep], 5, power=0.0) == 1).all()


def test_window_plan_covers_every_step_once_a_loss_is_counted(demos):
    episodes = load_episodes([demos], DEFAULT_ACTIONS, IMAGE)
    table = FrameTable(episodes, IMAGE)
    config = SequenceConfig("burnin", length=10, stride=7, burn_in=3)
    plan = window_plan(table, config, batch=1, rng=np.random.default_rng(0))
    trained = np.zeros(len(table) + 1)
    for idx, mask in zip(plan.index, plan.mask, strict=True):
        np.add.at(trained, idx, mask * (idx != table.blank))
    assert (trained[: len(table)] >= 1).all()
    # every window lies inside one episode (padding aside)
    for idx in plan.index:
        real = idx[idx != table.blank]
        assert len(np.unique(np.searchsorted(table.offsets, real, side="right"))) == 1
    assert plan.slot.max() < num_window_slots(table, config)


def test_lane_plan_lays_each_episode_whole_and_in_order_on_one_lane(demos):
    episodes = load_episodes([demos], DEFAULT_ACTIONS, IMAGE)
    table = FrameTable(episodes, IMAGE)
    plan = lane_plan(table, length=8, lanes=2, rng=np.random.default_rng(1))
    lanes = plan.index.reshape(plan.steps, 2, 8).transpose(1, 0, 2).reshape(2, -1)
    seen = np.concatenate([lane[lane != table.blank] for lane in lanes])
    assert sorted(seen) == list(range(len(table)))  # every step exactly once
    for lane in lanes:
        real = lane[lane != table.blank]
        starts = table.starts[real]
        # consecutive indices except where a new episode starts
        jumps = np.nonzero(np.diff(real) != 1)[0] + 1
        assert all(starts[j] == 1 for j in jumps)


def test_the_dataset_gives_decoded_frames_one_hot_previous_actions_and_masks(demos):
    episodes = load_episodes([demos], DEFAULT_ACTIONS, IMAGE)
    table = FrameTable(episodes, IMAGE)
    plan = lane_plan(table, length=8, lanes=2, rng=None)
    batch = next(iter(make_dataset(table, plan, 5, 2)))
    assert batch["frames"].shape == (2, 8, *IMAGE, 3) and batch["frames"].dtype.name == "uint8"
    assert batch["prev_actions"].shape == (2, 8, 5)
    prev = batch["prev_actions"].numpy()
    starts = batch["episode_starts"].numpy()
    assert (prev[starts == 1].sum(-1) == 0).all()  # no previous action at an episode start
    assert (prev[starts == 0].sum(-1) == 1).all()
    # the first frame decodes to what was recorded (JPEG tolerance)
    from malpi.recorder.codec import decode_jpeg

    first = decode_jpeg(table.jpegs[plan.index[0, 0]])
    assert (
        np.abs(batch["frames"][0, 0].numpy().astype(int) - first.astype(int)).mean() == 0
    )  # same decoder as the recorder


def test_burn_in_windows_start_from_the_stored_state(demos):
    episodes = load_episodes([demos], DEFAULT_ACTIONS, IMAGE)
    table = FrameTable(episodes, IMAGE)
    config = SequenceConfig("burnin", length=8, stride=6, burn_in=2)
    plan = window_plan(table, config, batch=2, rng=None)
    states = StateTable(num_window_slots(table, config), 4)
    states.write(np.array([1]), np.full((1, 4), 7.0), np.full((1, 4), -7.0))
    rows = list(make_dataset(table, plan, 5, 1, states=states, augmentation=NO_AUGMENTATION))
    assert rows[0]["h0"].numpy().sum() == 0  # the episode's first window: zero state
    assert (rows[1]["h0"].numpy() == 7).all() and (rows[1]["c0"].numpy() == -7).all()
    assert (rows[1]["weights"].numpy()[0, :2] == 0).all()  # burn-in steps carry no loss


def test_augmentation_is_seeded_consistent_and_bounded():
    rng = np.random.default_rng(0)
    frames = rng.integers(40, 200, (4, *IMAGE, 3), dtype=np.uint8)
    aug = Augmentation(brightness=0.3, contrast=0.2, colour=0.1, noise=6, shift=2)
    a = augment_frames(frames, np.array([1, 2]), aug)
    b = augment_frames(frames, np.array([1, 2]), aug)
    c = augment_frames(frames, np.array([1, 3]), aug)
    assert a.dtype == np.uint8 and a.shape == frames.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 < np.abs(a.astype(int) - frames.astype(int)).mean() < 60
    # fresh noise every frame: identical input frames come out different
    same = np.repeat(frames[:1], 3, axis=0)
    out = augment_frames(same, np.array([5, 5]), Augmentation(0, 0, 0, noise=6, shift=0))
    assert not np.array_equal(out[0], out[1])
    assert augment_frames(frames, np.array([1, 2]), NO_AUGMENTATION) is frames
