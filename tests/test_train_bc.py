"""Behaviour cloning: the loss falls, the bundle runs in the step runtime with parity,
an interrupted run resumes from its checkpoint, every state mode trains, logs are written."""

from __future__ import annotations

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import json

import numpy as np
from policy_helpers import TINY_SPEC
from train_helpers import IMAGE, tiny_config, tiny_demos

from malpi.actions import DEFAULT_ACTIONS, NO_ACTION
from malpi.policy.bundle import PolicyBundle
from malpi.policy.runtime import StepPolicy
from malpi.train.bc import Trainer, export_bundle
from malpi.train.episodes import load_episodes, split_episodes
from malpi.train.tblog import read_scalars


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    path = tmp_path_factory.mktemp("bc") / "demos.sqlite"
    tiny_demos(path, tracks=(0, 1, 2, 3, 4), steps=48)
    return split_episodes(load_episodes([path], DEFAULT_ACTIONS, IMAGE), 0.2)


@pytest.fixture(scope="module")
def trained(episodes, tmp_path_factory):
    train, val = episodes
    workdir = tmp_path_factory.mktemp("run")
    trainer = Trainer(TINY_SPEC, DEFAULT_ACTIONS, tiny_config(epochs=4), workdir)
    before = trainer.validate(_table(val))
    progress = trainer.fit(train, val)
    return trainer, progress, before, workdir


def _table(episodes):
    from malpi.train.data import FrameTable

    return FrameTable(episodes, IMAGE)


def test_a_tiny_run_reduces_the_loss(trained):
    _, progress, before, _ = trained
    history = progress.history
    assert len(history) == 4 and progress.global_step > 0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (
        progress.best_val_nll < before["nll"]
    )  # better than the untrained network on held-out episodes


def test_the_bundle_loads_in_the_step_runtime_with_parity(trained, episodes, tmp_path):
    trainer, *_ = trained
    out = tmp_path / "tiny.malpi"
    bundle = export_bundle(trainer.weights(), TINY_SPEC, DEFAULT_ACTIONS, out, {"test": True})
    loaded = PolicyBundle.load(out, expected_actions=DEFAULT_ACTIONS, expected_image=IMAGE)
    assert loaded.id == bundle.id and loaded.manifest["provenance"]["test"] is True
    # One validation episode through the step runtime (LiteRT float) vs the sequence model.
    from malpi.recorder.codec import decode_jpeg

    ep = episodes[1][0]
    frames = np.stack([decode_jpeg(j) for j in ep.jpegs])
    runtime = StepPolicy(loaded, backend="litert_float")
    probs = []
    for t in range(len(ep)):
        probs.append(runtime.step(frames[t], int(ep.prev_actions[t])).probs)
    from malpi.actions import one_hot

    out_seq = trainer.net.sequence_model(
        {
            "frames": frames[None],
            "prev_actions": one_hot(ep.prev_actions, 5)[None],
            "episode_starts": np.eye(1, len(ep), dtype=np.float32),
            "h0": np.zeros((1, TINY_SPEC.lstm_units), np.float32),
            "c0": np.zeros((1, TINY_SPEC.lstm_units), np.float32),
        }
    )
    expected = np.asarray(out_seq["logits"])[0]
    expected = np.exp(expected - expected.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert np.abs(np.stack(probs) - expected).max() < 1e-4
    dynamic = StepPolicy(loaded, backend="litert_dynamic")
    assert 0 <= dynamic.step(frames[0], NO_ACTION).action < 5


def test_training_writes_history_checkpoints_and_tensorboard_logs(trained):
    _, progress, _, workdir = trained
    history = json.loads((workdir / "history.json").read_text())
    assert len(history["history"]) == 4 and history["curve"]
    assert (workdir / "best.npz").exists()
    assert (workdir / "curves.png").exists() and (workdir / "confusion.png").exists()
    assert (workdir / "checkpoints" / "latest").exists()
    scalars = read_scalars(workdir / "logs" / "train")
    assert "loss" in scalars and scalars["loss"][-1][0] <= progress.global_step
    assert "accuracy" in read_scalars(workdir / "logs" / "val")


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint(episodes, tmp_path, monkeypatch):
    """Killed mid-epoch, a rerun continues from the checkpoint (weights, optimizer, the
    position in the epoch and each TBPTT lane's carried state) and ends exactly where an
    uninterrupted run does."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    train, val = episodes
    config = tiny_config(epochs=2, checkpoint_every=3)
    straight = Trainer(TINY_SPEC, DEFAULT_ACTIONS, config, tmp_path / "straight")
    straight.fit(train, val)

    original = Trainer.save_checkpoint

    def crash_after_checkpoint(self):
        original(self)
        raise Interrupted

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_after_checkpoint)
    first = Trainer(TINY_SPEC, DEFAULT_ACTIONS, config, tmp_path / "resumed")
    with pytest.raises(Interrupted):
        first.fit(train, val)
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    assert (first.progress.epoch, first.progress.step) == (0, 3)  # mid-epoch
    assert np.abs(first._lanes[0]).sum() > 0  # lanes carry state into the next chunk

    second = Trainer(TINY_SPEC, DEFAULT_ACTIONS, config, tmp_path / "resumed")
    progress = second.fit(train, val)
    assert progress.epoch == 2 and len(progress.history) == 2
    assert progress.global_step == straight.progress.global_step
    for k, v in straight.weights().items():
        np.testing.assert_allclose(second.weights()[k], v, atol=1e-5, err_msg=k)


def test_burn_in_trains_and_refreshes_the_stored_states(episodes, tmp_path):
    train, val = episodes
    trainer = Trainer(TINY_SPEC, DEFAULT_ACTIONS, tiny_config("burnin", epochs=2), tmp_path)
    progress = trainer.fit(train, val)
    assert progress.history[-1]["train_loss"] < progress.history[0]["train_loss"] + 0.05
    assert np.isfinite(progress.best_val_nll)
    assert np.abs(trainer._states.h).sum() > 0  # written back from the training passes
