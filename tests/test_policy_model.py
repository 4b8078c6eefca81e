"""The sequence and step views of the policy: shapes, spec arithmetic, exact equivalence, resets."""

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import numpy as np
from policy_helpers import TINY_SPEC, scale_weights

from malpi.actions import NO_ACTION, one_hot
from malpi.policy.model import build_policy
from malpi.policy.spec import DEFAULT_SPEC, SEED_SPEC, PolicySpec, SpecError

T = 60
RESET_AT = 31


@pytest.fixture(scope="module")
def net():
    net = build_policy(TINY_SPEC, seed=3)
    scale_weights(net, 2.5)
    return net


@pytest.fixture(scope="module")
def episode():
    rng = np.random.default_rng(7)
    spec = TINY_SPEC
    frames = rng.integers(0, 256, (1, T, spec.image_height, spec.image_width, 3), dtype=np.uint8)
    actions = rng.integers(0, spec.num_actions, T)
    prev = np.concatenate([[NO_ACTION], actions[:-1]])
    prev[RESET_AT] = NO_ACTION  # a new episode starts here: no previous action
    starts = np.zeros((1, T), np.float32)
    starts[0, 0] = starts[0, RESET_AT] = 1.0
    return frames, prev, starts


def run_sequence(net, frames, prev, starts):
    u = net.spec.lstm_units
    z = np.zeros((frames.shape[0], u), np.float32)
    out = net.sequence_model(
        {
            "frames": frames,
            "prev_actions": one_hot(prev, net.spec.num_actions)[None],
            "episode_starts": starts,
            "h0": z,
            "c0": z,
        }
    )
    logits = np.asarray(out["logits"])[0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True), np.asarray(out["value"])[0, :, 0]


def run_steps(net, frames, prev, reset_at):
    u, n = net.spec.lstm_units, net.spec.num_actions
    h = c = np.zeros((1, u), np.float32)
    probs, values = [], []
    for t in range(frames.shape[1]):
        if t in reset_at:
            h = c = np.zeros((1, u), np.float32)
        out = net.step_model([frames[:, t], one_hot([prev[t]], n), h, c])
        h, c = np.asarray(out["h"]), np.asarray(out["c"])
        probs.append(np.asarray(out["probs"])[0])
        values.append(float(np.asarray(out["value"])[0, 0]))
    return np.array(probs), np.array(values)


def test_step_model_matches_sequence_model_with_a_reset_inside(net, episode):
    frames, prev, starts = episode
    seq_p, seq_v = run_sequence(net, frames, prev, starts)
    step_p, step_v = run_steps(net, frames, prev, reset_at={0, RESET_AT})
    assert np.abs(seq_p - step_p).max() <= 1e-5
    assert np.abs(seq_v - step_v).max() <= 1e-5
    # The outputs really move: this is not two constant functions agreeing.
    assert step_p.max(axis=1).std() > 0.02 and step_v.std() > 0.05


def test_missing_reset_is_caught(net, episode):
    frames, prev, starts = episode
    seq_p, seq_v = run_sequence(net, frames, prev, starts)
    step_p, step_v = run_steps(net, frames, prev, reset_at={0})  # forgot the reset
    assert np.abs(seq_p[:RESET_AT] - step_p[:RESET_AT]).max() <= 1e-5
    after = max(
        np.abs(seq_p[RESET_AT:] - step_p[RESET_AT:]).max(),
        np.abs(seq_v[RESET_AT:] - step_v[RESET_AT:]).max(),
    )
    assert after > 1e-3


def test_reset_inside_sequence_equals_two_separate_sequences(net, episode):
    frames, prev, starts = episode
    whole_p, _ = run_sequence(net, frames, prev, starts)
    first_p, _ = run_sequence(net, frames[:, :RESET_AT], prev[:RESET_AT], starts[:, :RESET_AT])
    second_starts = starts[:, RESET_AT:]
    second_p, _ = run_sequence(net, frames[:, RESET_AT:], prev[RESET_AT:], second_starts)
    assert np.abs(whole_p - np.concatenate([first_p, second_p])).max() <= 1e-5


def test_sequence_model_trains_with_fit_on_varying_time_lengths(net):
    import keras
    import tensorflow as tf

    fresh = build_policy(TINY_SPEC, seed=5)
    seq = fresh.sequence_model
    trainer = keras.Model(seq.input, seq.output["logits"])
    trainer.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    spec, u = TINY_SPEC, TINY_SPEC.lstm_units
    rng = np.random.default_rng(0)

    def batches():
        for t_len in (3, 7, 5, 7, 3, 5) * 4:
            frames = rng.integers(
                0, 256, (2, t_len, spec.image_height, spec.image_width, 3), dtype=np.uint8
            )
            # Target: the action is a function of the frame's brightness, learnable per step.
            target = (frames.mean(axis=(2, 3, 4)) > 127.5).astype(np.int64)
            x = {
                "frames": frames,
                "prev_actions": np.zeros((2, t_len, spec.num_actions), np.float32),
                "episode_starts": np.zeros((2, t_len), np.float32),
                "h0": np.zeros((2, u), np.float32),
                "c0": np.zeros((2, u), np.float32),
            }
            yield x, target

    sig = (
        {
            "frames": tf.TensorSpec((None, None, spec.image_height, spec.image_width, 3), tf.uint8),
            "prev_actions": tf.TensorSpec((None, None, spec.num_actions), tf.float32),
            "episode_starts": tf.TensorSpec((None, None), tf.float32),
            "h0": tf.TensorSpec((None, u), tf.float32),
            "c0": tf.TensorSpec((None, u), tf.float32),
        },
        tf.TensorSpec((None, None), tf.int64),
    )
    ds = tf.data.Dataset.from_generator(batches, output_signature=sig)
    history = trainer.fit(ds, epochs=1, steps_per_epoch=24, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Traced with an unknown time axis, the model still computes T steps (not batch-size steps).
    x, _ = next(batches())
    traced = tf.function(lambda inp: seq(inp)["logits"])(x)
    assert traced.shape[:2] == (2, x["frames"].shape[1])
    np.testing.assert_allclose(np.asarray(traced), np.asarray(seq(x)["logits"]), atol=1e-5)


@pytest.mark.parametrize(
    "spec", [DEFAULT_SPEC, SEED_SPEC, TINY_SPEC], ids=["default", "seed", "tiny"]
)
def test_spec_predicts_keras_weight_shapes(spec):
    net = build_policy(spec)
    assert [w.shape for w in net.weight_arrays()] == [s for _, s in spec.weight_shapes()]
    assert net.step_model.count_params() == spec.params == net.sequence_model.count_params()


def test_default_fits_in_a_pi_cache_and_seed_does_not():
    assert DEFAULT_SPEC.params <= 1_000_000  # int8: one byte per weight, ~1 MB or less
    assert SEED_SPEC.params > 5_800_000
    assert SEED_SPEC.macs_per_step == pytest.approx(14.5e6, rel=0.01)


def test_spec_round_trip_and_errors():
    assert PolicySpec.from_dict(DEFAULT_SPEC.to_dict()) == DEFAULT_SPEC
    with pytest.raises(SpecError, match="lstm_units"):
        PolicySpec(lstm_units=0)
    with pytest.raises(SpecError, match="unknown field"):
        PolicySpec.from_dict({"lstm_unit": 3})
    with pytest.raises(SpecError, match=r"conv\[1\]"):
        PolicySpec(image_height=10, image_width=10)
