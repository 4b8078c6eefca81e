"""``malpi bench policy``: per-step latency of the policy, algorithm × runtime, default vs seed.

The same weights are run by each *algorithm* on each *runtime*, one thread everywhere:

- algorithms: the explicit-state step (one frame in, h and c carried: MaLPi's way), and
  re-running a window of the last T = 3 / T = 10 frames from a zero state every step
  (DonkeyCar's way), through the sequence model at that fixed T;
- runtimes: LiteRT float32, the Keras model under ``tf.function`` (TensorFlow), and LiteRT's
  quantised models: dynamic-range (int8 weights, float activations) for both algorithms, the
  integer model (int8 weights and activations, LSTM cell in float) for the step. The window
  is not measured as an integer model: TensorFlow's converter crashes (segfault) calibrating
  the sequence model's WHILE loop.

So the figures separate what the algorithm costs (window / step, same runtime) from what the
runtime costs (TensorFlow / LiteRT, same algorithm) and from what quantisation buys (float /
quantised, same algorithm and runtime; it depends on the CPU's int8 dot-product instructions).
The seed post's way, a stateful Keras model called with ``predict()`` every step, is kept and
labelled as such: it differs from the step under ``tf.function`` by ``predict()``'s per-call
overhead, not by algorithm.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from malpi.actions import DEFAULT_ACTIONS, NO_ACTION, one_hot
from malpi.policy.spec import DEFAULT_SPEC, SEED_SPEC, PolicySpec

log = logging.getLogger(__name__)

ARCHITECTURES = {"default": DEFAULT_SPEC, "seed": SEED_SPEC}
WINDOWS = (3, 10)
ALGORITHMS = ("step", *(f"window_t{t}" for t in WINDOWS))
RUNTIMES = ("litert_float", "litert_dynamic", "litert_int8", "tf_function")
# What each (algorithm, runtime) cell measures; the integer window is not (module docstring).
MEASURED = {
    "step": RUNTIMES,
    **{f"window_t{t}": ("litert_float", "litert_dynamic", "tf_function") for t in WINDOWS},
}
RUNTIME_LABELS = {
    "litert_float": "LiteRT float",
    "litert_dynamic": "LiteRT dyn-range",
    "litert_int8": "LiteRT integer",
    "tf_function": "TF tf.function",
}
ALGORITHM_LABELS = {
    "step": "explicit-state step",
    **{f"window_t{t}": f"window T={t} re-run" for t in WINDOWS},
}
SHORT_LABELS = {"step": "step", **{f"window_t{t}": f"window T={t}" for t in WINDOWS}}
SEED_WAY_LABEL = "seed's way (Keras predict per step)"
CALIBRATION_FRAMES = 64  # the scales do not change the speed
LATE_STEPS = 2000
# int8 dot-product instructions: x86 AVX-VNNI / AVX512-VNNI, Arm's SDOT/UDOT (asimddp) and i8mm.
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp", "i8mm")
CPU_NOTE = (
    "int8 vs float depends on the CPU: quantised kernels gain where it has int8 dot-product\n"
    "instructions (x86 AVX-VNNI/AVX512-VNNI, Arm asimddp); measure on the car's CPU"
)


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The CPU's model name, machine and which int8 dot-product instruction sets it has."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    # x86 names the CPU in "model name" and lists "flags"; a Pi names the board in "Model"
    # and lists "Features" (on aarch64 there is no "model name").
    name = fields.get("model name") or fields.get("model") or platform.processor() or "unknown"
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return {
        "model": name,
        "machine": platform.machine(),
        "int8_dot_product": [f for f in DOT_PRODUCT_FLAGS if f in flags],
    }


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


def _ratio(num: float, den: float) -> float:
    return round(num / den, 2)


WINDOW_INPUTS = ("frames", "prev_actions", "episode_starts", "h0", "c0")


def window_function(net, window: int):
    """The sequence model at a fixed window (batch 1) under ``tf.function``: frames (1, T, ...),
    previous actions (1, T, N), episode starts (1, T), h0 and c0 (1, U) in; the last step's
    probabilities (1, N) and value (1, 1) out. TensorFlow runs it; LiteRT runs its conversion."""
    import tensorflow as tf

    spec = net.spec
    n, u = spec.num_actions, spec.lstm_units
    obs_dtype = tf.uint8 if spec.is_image else tf.float32
    model = net.sequence_model

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, window, *spec.observation_shape), obs_dtype),
            tf.TensorSpec((1, window, n), tf.float32),
            tf.TensorSpec((1, window), tf.float32),
            tf.TensorSpec((1, u), tf.float32),
            tf.TensorSpec((1, u), tf.float32),
        ]
    )
    def run(frames, prev_actions, episode_starts, h0, c0):
        out = model(
            {
                "frames": frames,
                "prev_actions": prev_actions,
                "episode_starts": episode_starts,
                "h0": h0,
                "c0": c0,
            }
        )
        return tf.nn.softmax(out["logits"][:, -1]), out["value"][:, -1]

    return run


def window_tflite(fn, dynamic: bool) -> bytes:
    """``fn`` (:func:`window_function`) for LiteRT, builtin ops only: the RNN converts to a
    WHILE op, no Flex delegate needed. ``dynamic``: dynamic-range quantised weights."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        # With the function as the trackable object the weights are folded into constants
        # (with the Keras model they stay variables, which the WHILE body cannot read).
        [fn.get_concrete_function()],
        fn,
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if dynamic:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


class _Window:
    """DonkeyCar's way, state kept outside the model: the last T frames and previous actions,
    slid along by one every step, run from a zero state."""

    def __init__(self, spec: PolicySpec, window: int, frames: list[np.ndarray]):
        n, u = spec.num_actions, spec.lstm_units
        self.frames = frames
        self.buf = np.stack([frames[i % len(frames)] for i in range(window)])[None]
        self.prev = one_hot(np.zeros((1, window), np.int64), n).astype(np.float32)
        self.onehot = one_hot(np.arange(n), n).astype(np.float32)
        self.starts = np.zeros((1, window), np.float32)
        self.h0 = np.zeros((1, u), np.float32)
        self.c0 = np.zeros((1, u), np.float32)
        self.action = 0

    def slide(self, i: int) -> None:
        self.buf[0, :-1] = self.buf[0, 1:]  # drop the oldest frame and previous action
        self.buf[0, -1] = self.frames[i % len(self.frames)]
        self.prev[0, :-1] = self.prev[0, 1:]
        self.prev[0, -1] = self.onehot[self.action]

    def inputs(self) -> list[np.ndarray]:
        return [self.buf, self.prev, self.starts, self.h0, self.c0]


class _LiteRTWindow:
    """A converted window function in a one-thread LiteRT interpreter."""

    def __init__(self, model: bytes):
        from malpi.policy.litert import interpreter_class
        from malpi.quiet import filtered_stderr

        with filtered_stderr():
            self.interp = interpreter_class()(model_content=model, num_threads=1)
            self.interp.allocate_tensors()
        # No signature: inputs by argument name, outputs in order (Identity, Identity_1).
        by_name = {d["name"]: d["index"] for d in self.interp.get_input_details()}
        self.inputs = [by_name[k] for k in WINDOW_INPUTS]
        outs = sorted(self.interp.get_output_details(), key=lambda d: d["name"])
        self.probs, self.value = (d["index"] for d in outs)

    def run(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, float]:
        for index, value in zip(self.inputs, inputs, strict=True):
            self.interp.set_tensor(index, value)
        self.interp.invoke()
        return self.interp.get_tensor(self.probs)[0], float(
            self.interp.get_tensor(self.value)[0, 0]
        )


def _window_step(run: Callable, win: _Window) -> Callable[[int], None]:
    def step(i: int) -> None:
        win.slide(i)
        probs, _ = run(win.inputs())
        win.action = int(np.argmax(probs))

    return step


def _tf_run(fn) -> Callable:
    def run(inputs: list[np.ndarray]) -> tuple[np.ndarray, float]:
        probs, value = fn(*inputs)
        return probs.numpy()[0], float(value.numpy()[0, 0])

    return run


def _seed_way(net, spec: PolicySpec, frames: list[np.ndarray], steps: int, warmup: int) -> list:
    """A stateful Keras model (the same weights) called with ``predict()`` every step."""
    import keras

    n, u = spec.num_actions, spec.lstm_units
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
    return _time_steps(
        lambda i: stateful.predict([frames[i % len(frames)][None, None], prev_onehot], verbose=0),
        steps,
        min(warmup, 10),
    )


def bench_architecture(spec: PolicySpec, steps: int, warmup: int) -> dict:
    """Measure every (algorithm, runtime) cell for one architecture; its JSON object."""
    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy
    from malpi.policy.quantize import calibration_samples, integer_model
    from malpi.policy.runtime import StepPolicy
    from malpi.policy.spec import random_observation

    name = spec_name(spec)
    net = build_policy(spec, seed=0)
    bundle = make_bundle(net, DEFAULT_ACTIONS, check_parity=False)
    rng = np.random.default_rng(0)
    calib = np.stack([random_observation(spec, rng) for _ in range(CALIBRATION_FRAMES)])
    taken = rng.integers(0, spec.num_actions, CALIBRATION_FRAMES)
    samples = calibration_samples(bundle, [(calib, taken)], limit=CALIBRATION_FRAMES)
    bundle = bundle.with_integer_model(integer_model(net, samples), {"note": "bench"})
    frames = [random_observation(spec, rng) for _ in range(16)]
    latency: dict[str, dict] = {a: {} for a in ALGORITHMS}
    result: dict = {
        "params": spec.params,
        "macs_per_step": spec.macs_per_step,
        "weight_bytes": spec.params * 4,
        "model_bytes": {
            "litert_float": len(bundle.tflite_float),
            "litert_dynamic": len(bundle.tflite_dynamic),
            "litert_int8": len(bundle.tflite_integer),
        },
        "latency": latency,
    }

    # The explicit-state step, on every runtime.
    for runtime in MEASURED["step"]:
        policy = StepPolicy(bundle, backend="tf" if runtime == "tf_function" else runtime)
        prev = [NO_ACTION]

        def step(i: int, policy=policy, prev=prev) -> None:
            prev[0] = policy.step(frames[i % len(frames)], prev[0]).action

        latency["step"][runtime] = _summary(_time_steps(step, steps, warmup))
        log.info("%s step %s: %s", name, runtime, latency["step"][runtime])

    # Cost independent of episode length: the LiteRT float step again, deep into an episode.
    policy = StepPolicy(bundle, backend="litert_float")
    for i in range(LATE_STEPS):
        policy.step(frames[i % len(frames)], NO_ACTION if i == 0 else 0)
    late = _time_steps(lambda i: policy.step(frames[i % len(frames)], 0), steps, 0)
    result["step_litert_float_after_2000_steps_median_ms"] = _summary(late)["median_ms"]

    # DonkeyCar's way: the sequence model at a fixed window, the same function on each runtime.
    for window in WINDOWS:
        key = f"window_t{window}"
        fn = window_function(net, window)
        runs = {
            "litert_float": _LiteRTWindow(window_tflite(fn, False)).run,
            "litert_dynamic": _LiteRTWindow(window_tflite(fn, True)).run,
            "tf_function": _tf_run(fn),
        }
        # The conversion computes what TensorFlow does (and its outputs were found in order).
        check = _Window(spec, window, frames).inputs()
        want, got = runs["tf_function"](check), runs["litert_float"](check)
        if not (np.allclose(want[0], got[0], atol=1e-4) and abs(want[1] - got[1]) < 1e-4):
            raise RuntimeError(f"LiteRT's T={window} window disagrees with TensorFlow's")
        for runtime in MEASURED[key]:
            step = _window_step(runs[runtime], _Window(spec, window, frames))
            latency[key][runtime] = _summary(_time_steps(step, steps, warmup))
            log.info("%s %s %s: %s", name, key, runtime, latency[key][runtime])

    result["seed_way_keras_predict"] = _summary(_seed_way(net, spec, frames, steps, warmup))
    log.info("%s seed's way: %s", name, result["seed_way_keras_predict"])
    result["ratios"] = ratios(result)
    return result


def ratios(result: dict) -> dict:
    """The comparisons, each of two medians that differ in one thing only."""
    med = {
        a: {r: v["median_ms"] for r, v in cells.items()} for a, cells in result["latency"].items()
    }
    step = med["step"]
    out: dict = {}
    for window in WINDOWS:
        key = f"window_t{window}"
        # Algorithm: the window re-run / the explicit-state step, on the same runtime.
        out[f"algorithmic_{key}_over_step"] = {
            r: _ratio(med[key][r], step[r]) for r in med[key] if r in step
        }
    # Runtime: TensorFlow / LiteRT float, for the same algorithm.
    out["runtime_tf_over_litert_float"] = {
        a: _ratio(med[a]["tf_function"], med[a]["litert_float"]) for a in ALGORITHMS
    }
    # Quantisation: float / quantised on LiteRT, same algorithm (> 1: the quantised is faster).
    out["quantisation_float_over_dynamic"] = {
        a: _ratio(med[a]["litert_float"], med[a]["litert_dynamic"]) for a in ALGORITHMS
    }
    out["quantisation_float_over_integer"] = {
        "step": _ratio(step["litert_float"], step["litert_int8"])
    }
    # The seed's way against the same step algorithm on the same runtime: predict()'s overhead.
    out["seed_way_over_tf_function_step"] = _ratio(
        result["seed_way_keras_predict"]["median_ms"], step["tf_function"]
    )
    return out


def spec_name(spec: PolicySpec) -> str:
    return "default" if spec == DEFAULT_SPEC else "seed" if spec == SEED_SPEC else "custom"


def run(
    steps: int = 300,
    warmup: int = 50,
    architectures: tuple[str, ...] = ("default", "seed"),
    json_path: str | None = None,
) -> dict:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    # One thread everywhere: the comparison is per-step cost, not parallelism.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    results = {
        "cpu": cpu_info(),
        "threads": 1,
        "steps": steps,
        "warmup": warmup,
        "cpu_note": CPU_NOTE.replace("\n", " "),
        "architectures": {
            a: bench_architecture(ARCHITECTURES[a], steps, warmup) for a in architectures
        },
    }
    print(format_table(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def _cell(cell: dict | None) -> str:
    if cell is None:
        return f"{'-':>19}"
    return f"{cell['median_ms']:>10.3f} ({cell['p99_ms']:>6.2f})"


def _x(value: float | None) -> str:
    return f"{'-':>18}" if value is None else f"{value:>17.2f}x"


def format_table(results: dict) -> str:
    cpu = results["cpu"]
    dot = ", ".join(cpu["int8_dot_product"]) or "none"
    lines = [
        f"Per-step policy latency, {results['threads']} thread, median ms (p99), "
        f"{results['steps']} steps after {results['warmup']}",
        f"CPU: {cpu['model']} ({cpu['machine']}; int8 dot-product instructions: {dot})",
    ]
    window_runtimes = MEASURED[ALGORITHMS[-1]]
    for arch, r in results["architectures"].items():
        lat, rt, mb = r["latency"], r["ratios"], r["model_bytes"]
        seed_way = r["seed_way_keras_predict"]
        lines += [
            "",
            f"{arch} architecture: {r['params']:,} parameters, {r['macs_per_step']:,} "
            f"multiply-adds/step; LiteRT step models: float {mb['litert_float']:,} B, "
            f"dyn-range {mb['litert_dynamic']:,} B, integer {mb['litert_int8']:,} B",
            f"{'algorithm':<22}" + "".join(f"{RUNTIME_LABELS[x]:>20}" for x in RUNTIMES),
        ]
        for a in ALGORITHMS:
            cells = "".join(f" {_cell(lat[a].get(x))}" for x in RUNTIMES)
            lines.append(f"{ALGORITHM_LABELS[a]:<22}{cells}")
        lines += [
            f"{SEED_WAY_LABEL}: {seed_way['median_ms']:.3f} ({seed_way['p99_ms']:.2f}), "
            f"{rt['seed_way_over_tf_function_step']:.2f}x the same step under tf.function "
            "(predict()'s per-call overhead)",
            f"LiteRT float step after {LATE_STEPS:,} steps: "
            f"{r['step_litert_float_after_2000_steps_median_ms']:.3f} "
            "(episode length does not matter)",
            "",
            f"{'algorithm, same runtime':<40}"
            + "".join(f"{RUNTIME_LABELS[x]:>18}" for x in window_runtimes),
        ]
        for t in WINDOWS:
            alg = rt[f"algorithmic_window_t{t}_over_step"]
            label = f"  window T={t} / step"
            lines.append(f"{label:<40}" + "".join(_x(alg[x]) for x in window_runtimes))
        lines.append(
            f"{'runtime and quantisation, same algorithm':<40}"
            + "".join(f"{SHORT_LABELS[a]:>18}" for a in ALGORITHMS)
        )
        for label, row in (
            ("  TF tf.function / LiteRT float", rt["runtime_tf_over_litert_float"]),
            ("  LiteRT float / dyn-range", rt["quantisation_float_over_dynamic"]),
            ("  LiteRT float / integer", rt["quantisation_float_over_integer"]),
        ):
            lines.append(f"{label:<40}" + "".join(_x(row.get(a)) for a in ALGORITHMS))
    lines += ["", "LiteRT float / quantised > 1: the quantised model is faster.", CPU_NOTE + "."]
    return "\n".join(lines)
