"""``malpi bench policy``: per-step latency of the same weights run six ways, default vs seed architecture.

The ways: LiteRT float and int8 explicit-state steps, the Keras step model under
``tf.function``, a stateful Keras model called with ``predict()`` every step (the
seed post's way), and re-running a window of the last T = 3 / T = 10 frames
every step (DonkeyCar's way). All on one thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import numpy as np

from malpi.actions import DEFAULT_ACTIONS, NO_ACTION, one_hot
from malpi.policy.spec import DEFAULT_SPEC, SEED_SPEC, PolicySpec

log = logging.getLogger(__name__)

WAYS = ("litert_float", "litert_int8", "tf_function", "keras_predict", "window_t3", "window_t10")


def _time_steps(step: Callable[[int], None], steps: int, warmup: int) -> list[float]:
    for i in range(warmup):
        step(i)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(warmup + i)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _summary(times_ms: list[float]) -> dict[str, float]:
    a = np.asarray(times_ms)
    return {
        "median_ms": round(float(np.median(a)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
    }


def bench_architecture(spec: PolicySpec, steps: int, warmup: int, slow_steps: int) -> dict:
    """Measure every way for one architecture; returns the JSON object for it."""
    import keras
    import tensorflow as tf

    from malpi.policy.export import make_bundle, random_observation
    from malpi.policy.model import build_policy
    from malpi.policy.runtime import StepPolicy

    net = build_policy(spec, seed=0)
    bundle = make_bundle(net, DEFAULT_ACTIONS, check_parity=False)
    rng = np.random.default_rng(0)
    frames = [random_observation(spec, rng) for _ in range(16)]
    n, u = spec.num_actions, spec.lstm_units
    result: dict = {
        "params": spec.params,
        "macs_per_step": spec.macs_per_step,
        "weight_bytes": spec.params * 4,
        "int8_model_bytes": len(bundle.tflite_int8),
    }

    def step_policy_way(backend: str) -> list[float]:
        policy = StepPolicy(bundle, backend=backend)
        prev = [NO_ACTION]

        def step(i: int) -> None:
            prev[0] = policy.step(frames[i % len(frames)], prev[0]).action

        return _time_steps(step, steps, warmup)

    for way, backend in (
        ("litert_float", "litert_float"),
        ("litert_int8", "litert_int8"),
        ("tf_function", "tf"),
    ):
        result[way] = _summary(step_policy_way(backend))
        log.info("%s %s: %s", spec_name(spec), way, result[way])

    # Cost independent of episode length: the LiteRT step, measured again deep into an episode.
    policy = StepPolicy(bundle, backend="litert_float")
    for i in range(2000):
        policy.step(frames[i % len(frames)], NO_ACTION if i == 0 else 0)
    late = _time_steps(lambda i: policy.step(frames[i % len(frames)], 0), steps, 0)
    result["litert_float"]["after_2000_steps_median_ms"] = _summary(late)["median_ms"]

    # The seed's way: a stateful Keras model (same weights), predict() every step.
    frames_in = keras.Input(batch_shape=(1, 1, *spec.observation_shape), dtype="uint8")
    prev_in = keras.Input(batch_shape=(1, 1, n))
    features = keras.layers.TimeDistributed(net.encoder)(frames_in)
    x = keras.layers.Concatenate()([features, prev_in])
    lstm = keras.layers.LSTM(u, return_sequences=True, stateful=True)
    seq = lstm(x)
    stateful = keras.Model(
        [frames_in, prev_in], [keras.layers.Softmax()(net.policy_head(seq)), net.value_head(seq)]
    )
    lstm.set_weights(net.cell.get_weights())
    prev_onehot = one_hot([[0]], n)
    predict_times = _time_steps(
        lambda i: stateful.predict([frames[i % len(frames)][None, None], prev_onehot], verbose=0),
        slow_steps,
        min(warmup, 10),
    )
    result["keras_predict"] = _summary(predict_times)
    log.info("%s keras_predict: %s", spec_name(spec), result["keras_predict"])

    # DonkeyCar's way: the last T frames through the sequence model from a zero state, every step.
    seq_model = net.sequence_model
    zeros = tf.zeros((1, u))
    for window in (3, 10):
        fn = tf.function(
            lambda f, p, s: seq_model(
                {"frames": f, "prev_actions": p, "episode_starts": s, "h0": zeros, "c0": zeros}
            )["logits"],
            input_signature=[
                tf.TensorSpec((1, window, *spec.observation_shape), tf.uint8),
                tf.TensorSpec((1, window, n), tf.float32),
                tf.TensorSpec((1, window), tf.float32),
            ],
        )
        buf = np.stack([frames[i % len(frames)] for i in range(window)])[None]
        prevs = one_hot(np.zeros((1, window), np.int64), n)
        starts = np.zeros((1, window), np.float32)

        def step(i: int, buf=buf, fn=fn, prevs=prevs, starts=starts) -> None:
            buf[0, :-1] = buf[0, 1:]  # slide the window: drop the oldest frame
            buf[0, -1] = frames[i % len(frames)]
            fn(buf, prevs, starts)

        result[f"window_t{window}"] = _summary(_time_steps(step, steps, warmup))
        log.info("%s window_t%d: %s", spec_name(spec), window, result[f"window_t{window}"])
    return result


def spec_name(spec: PolicySpec) -> str:
    return "default" if spec == DEFAULT_SPEC else "seed" if spec == SEED_SPEC else "custom"


def run(
    steps: int = 300, warmup: int = 50, slow_steps: int = 300, json_path: str | None = None
) -> dict:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    # One thread everywhere: the comparison is per-step cost, not parallelism.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    results = {
        "default": bench_architecture(DEFAULT_SPEC, steps, warmup, slow_steps),
        "seed": bench_architecture(SEED_SPEC, steps, warmup, slow_steps),
    }
    d = results["default"]
    results["default_speedups"] = {
        "litert_float_vs_keras_predict": round(
            d["keras_predict"]["median_ms"] / d["litert_float"]["median_ms"], 1
        ),
        "litert_float_vs_window_t10": round(
            d["window_t10"]["median_ms"] / d["litert_float"]["median_ms"], 1
        ),
    }
    print(format_table(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def format_table(results: dict) -> str:
    lines = [
        "Per-step policy latency, one thread (ms)",
        f"{'way':<16}{'default median':>16}{'p99':>10}{'seed median':>14}{'p99':>10}",
    ]
    for way in WAYS:
        d, s = results["default"][way], results["seed"][way]
        lines.append(
            f"{way:<16}{d['median_ms']:>16.3f}{d['p99_ms']:>10.3f}{s['median_ms']:>14.3f}{s['p99_ms']:>10.3f}"
        )
    for key, label in (
        ("params", "parameters"),
        ("macs_per_step", "multiply-adds/step"),
        ("weight_bytes", "float weight bytes"),
        ("int8_model_bytes", "int8 model bytes"),
    ):
        lines.append(f"{label:<22}{results['default'][key]:>10,}{results['seed'][key]:>24,}")
    late = results["default"]["litert_float"]["after_2000_steps_median_ms"]
    sp = results["default_speedups"]
    lines.append(
        f"default LiteRT float after 2,000 steps: {late:.3f} ms (episode length does not matter)"
    )
    lines.append(
        f"default LiteRT float is {sp['litert_float_vs_keras_predict']}x faster than predict() per step "
        f"and {sp['litert_float_vs_window_t10']}x faster than the T=10 window"
    )
    return "\n".join(lines)
