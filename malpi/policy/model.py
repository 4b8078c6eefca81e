"""The recurrent policy in Keras: one set of layers, two views of the same weights.

- The *sequence* model, for training: frames (B, T, H, W, 3), previous actions
  (B, T, A), episode-start flags (B, T) and an initial state (h0, c0) in; logits
  and values at every time step and the final state out. T may be any length.
- The *step* model, for the robot: [frame, previous action, h, c] in;
  probabilities, value, h' and c' out. The state is explicit, so LiteRT can run
  it and an episode reset on the robot is "set h and c to zero".

The CNN is applied to every frame by folding time into the batch axis, not by
``TimeDistributed``: with an unknown time axis inside a traced function Keras 3's
TimeDistributed silently runs batch-size steps (see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from malpi.policy.spec import PolicySpec


class TimeFold(keras.layers.Layer):
    """Applies a per-frame encoder to (B, T, ...) by reshaping to (B*T, ...) and back."""

    def __init__(self, encoder: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def call(self, x):
        shape = keras.ops.shape(x)
        flat = keras.ops.reshape(x, (-1, *x.shape[2:]))
        features = self.encoder(flat)
        return keras.ops.reshape(features, (shape[0], shape[1], features.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.encoder.output_shape[-1])


class ResetLSTMCell(keras.layers.Layer):
    """An LSTMCell whose last input column is an episode-start flag.

    The state is multiplied by (1 - start) before the step, so an episode that
    begins inside a training sequence starts from zero exactly as on the robot.
    """

    def __init__(self, cell: keras.layers.LSTMCell, **kwargs):
        super().__init__(**kwargs)
        self.cell = cell
        self.state_size = cell.state_size
        self.output_size = cell.output_size

    def build(self, input_shape):
        if not self.cell.built:
            self.cell.build((*input_shape[:-1], input_shape[-1] - 1))
        self.built = True

    def call(self, inputs, states, training=None):
        keep = 1.0 - inputs[:, -1:]
        return self.cell(inputs[:, :-1], [s * keep for s in states], training=training)


class FeedForwardCell(keras.layers.Layer):
    """The memoryless control for the LSTM: one tanh Dense layer with an RNN cell's interface.

    It takes and returns the same (h, c) state as the LSTM cell, so the sequence
    model, the step model, bundles and runtimes are unchanged; its output never
    depends on the state (h' is the output, c' is zero).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = [units, units]
        self.output_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
        self.built = True

    def call(self, inputs, states, training=None):
        out = keras.ops.tanh(keras.ops.matmul(inputs, self.kernel) + self.bias)
        return out, [out, keras.ops.zeros_like(states[1])]


@dataclass
class PolicyNetwork:
    """The shared layers and the two models built on them."""

    spec: PolicySpec
    encoder: keras.Model
    cell: keras.layers.LSTMCell | FeedForwardCell
    policy_head: keras.layers.Dense
    value_head: keras.layers.Dense
    sequence_model: keras.Model
    step_model: keras.Model

    def weight_arrays(self) -> list[np.ndarray]:
        """All weights in the spec's canonical order (``spec.weight_shapes()``)."""
        arrays = [np.asarray(w) for w in self.encoder.get_weights()]
        arrays += [np.asarray(w) for w in self.cell.get_weights()]
        arrays += [np.asarray(w) for w in self.policy_head.get_weights()]
        arrays += [np.asarray(w) for w in self.value_head.get_weights()]
        return arrays

    def named_weights(self) -> dict[str, np.ndarray]:
        return {
            name: w
            for (name, _), w in zip(self.spec.weight_shapes(), self.weight_arrays(), strict=True)
        }

    def set_named_weights(self, weights: dict[str, np.ndarray]) -> None:
        arrays = [weights[name] for name, _ in self.spec.weight_shapes()]
        n_enc = len(self.encoder.weights)
        n_cell = len(self.cell.weights)
        self.encoder.set_weights(arrays[:n_enc])
        self.cell.set_weights(arrays[n_enc : n_enc + n_cell])
        self.policy_head.set_weights(arrays[n_enc + n_cell : n_enc + n_cell + 2])
        self.value_head.set_weights(arrays[n_enc + n_cell + 2 :])


def build_encoder(spec: PolicySpec) -> keras.Model:
    """Per-frame feature extractor: uint8 image (or float vector) -> feature vector."""
    if spec.is_image:
        frame = keras.Input(spec.observation_shape, dtype="uint8", name="frame")
        # Normalised inside the model so every runtime is fed raw camera bytes.
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(keras.ops.cast(frame, "float32"))
        for i, layer in enumerate(spec.conv):
            x = keras.layers.Conv2D(
                layer.filters,
                layer.kernel,
                strides=layer.stride,
                activation="relu",
                name=f"conv{i}",
            )(x)
        x = keras.layers.Flatten()(x)
    else:
        frame = keras.Input(spec.observation_shape, dtype="float32", name="obs")
        x = frame
    if spec.bottleneck:
        x = keras.layers.Dense(spec.bottleneck, activation="relu", name="bottleneck")(x)
    return keras.Model(frame, x, name="encoder")


def build_policy(spec: PolicySpec, seed: int | None = None) -> PolicyNetwork:
    """Build both views of a fresh policy (random weights, reproducible with ``seed``)."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    encoder = build_encoder(spec)
    if spec.recurrent:
        cell = keras.layers.LSTMCell(spec.lstm_units, name="lstm")
    else:
        cell = FeedForwardCell(spec.lstm_units, name="feedforward")
    policy_head = keras.layers.Dense(spec.num_actions, name="policy")
    value_head = keras.layers.Dense(1, name="value")
    n, u = spec.num_actions, spec.lstm_units
    obs_dtype = "uint8" if spec.is_image else "float32"

    # Sequence view.
    frames = keras.Input((None, *spec.observation_shape), dtype=obs_dtype, name="frames")
    prev = keras.Input((None, n), name="prev_actions")
    starts = keras.Input((None,), name="episode_starts")
    h0 = keras.Input((u,), name="h0")
    c0 = keras.Input((u,), name="c0")
    features = TimeFold(encoder, name="fold_encoder")(frames)
    x = keras.layers.Concatenate(name="lstm_input")(
        [features, prev, keras.ops.expand_dims(starts, -1)]
    )
    seq, h, c = keras.layers.RNN(
        ResetLSTMCell(cell), return_sequences=True, return_state=True, name="rnn"
    )(x, initial_state=[h0, c0])
    sequence_model = keras.Model(
        {"frames": frames, "prev_actions": prev, "episode_starts": starts, "h0": h0, "c0": c0},
        {"logits": policy_head(seq), "value": value_head(seq), "h": h, "c": c},
        name="sequence_model",
    )

    # Step view: same layer objects, so the same variables.
    frame = keras.Input(spec.observation_shape, dtype=obs_dtype, name="frame")
    prev1 = keras.Input((n,), name="prev_action")
    h_in = keras.Input((u,), name="h")
    c_in = keras.Input((u,), name="c")
    x1 = keras.layers.Concatenate(name="step_input")([encoder(frame), prev1])
    out, (h1, c1) = cell(x1, [h_in, c_in])
    step_model = keras.Model(
        # A list, not a dict: the LiteRT converter traces Keras 3 models with positional inputs.
        [frame, prev1, h_in, c_in],
        {
            "probs": keras.layers.Softmax(name="probs")(policy_head(out)),
            "value": value_head(out),
            "h": h1,
            "c": c1,
        },
        name="step_model",
    )
    return PolicyNetwork(spec, encoder, cell, policy_head, value_head, sequence_model, step_model)
