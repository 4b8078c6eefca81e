"""The integer model: int8 weights and activations, calibrated on what the policy will see.

Dynamic-range quantisation (the bundle's ``dynamic_range.tflite``) stores int8
weights but computes in float. The integer model runs the convolutions, the
bottleneck and the heads (98 % of the default policy's multiply-adds) on int8
weights *and* int8 activations, which is where a Pi's integer kernels are fast.
Activation scales come from calibration: real frames fed in driving order with
the LSTM state carried, so that h and c take the values they take on the road.

The LSTM cell stays in float (its matmuls, gates and state update: 1.5 % of the
multiply-adds). Its cell state c spans about ±27 in the default policy while
most of it sits near zero; one int8 scale for all of it steps by 0.2, and an
all-integer model agrees with float on only ~96 % of held-out steps
(``malpi train quantize --all-integer`` measures it). With the cell in float
the agreement is above 99 %, better than dynamic-range's.

TensorFlow is imported by the functions that convert, not with the module.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from malpi.actions import NO_ACTION, one_hot
from malpi.policy.bundle import PolicyBundle

if TYPE_CHECKING:
    from malpi.policy.model import PolicyNetwork

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99  # argmax agreement with float below which an integer model is not kept
CALIBRATION_SAMPLES = 500
# Op kinds that occur only in the recurrent cell and the softmax (the encoder is casts,
# convolutions, reshapes and fully-connected layers): kept in float with the cell's matmuls.
FLOAT_OPS = ("ADD", "MUL", "LOGISTIC", "TANH", "SPLIT", "SOFTMAX")
INPUTS = ("frame", "prev_action", "h", "c")

Sequences = Sequence[tuple[np.ndarray, np.ndarray]]  # (frames (T, ...), actions taken (T,))


def calibration_samples(
    bundle: PolicyBundle, sequences: Sequences, limit: int = CALIBRATION_SAMPLES, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """The step model's inputs while driving ``sequences``: frames in order, the actions taken
    as the previous action, h and c carried by the float model; ``limit`` of them, at random."""
    from malpi.policy.runtime import StepPolicy

    policy = StepPolicy(bundle, backend="litert_float")
    n = bundle.spec.num_actions
    samples = []
    for frames, actions in sequences:
        policy.reset()
        prev = NO_ACTION
        for frame, action in zip(frames, actions, strict=True):
            samples.append(
                {
                    "frame": frame[None],
                    "prev_action": one_hot([prev], n).astype(np.float32),
                    "h": policy.h,
                    "c": policy.c,
                }
            )
            policy.step(frame, prev)
            prev = int(action)
    if not samples:
        raise ValueError("no calibration frames: the integer model needs some to set its scales")
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(samples), min(limit, len(samples)), replace=False)
    return [samples[i] for i in sorted(keep)]


def integer_model(
    net: PolicyNetwork, samples: Sequence[dict[str, np.ndarray]], all_integer: bool = False
) -> bytes:
    """Convert the step model with int8 weights and activations, scales set by ``samples``.

    ``all_integer``: the LSTM cell in int8 too (for comparison; see the module's note)."""
    import tensorflow as tf

    def dataset():
        for s in samples:
            yield {k: s[k] for k in INPUTS}

    converter = tf.lite.TFLiteConverter.from_keras_model(net.step_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    if all_integer:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with _quiet():
            return converter.convert()
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    with _quiet():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(FLOAT_OPS),
                denylisted_nodes=_cell_matmuls(converter, net.cell.name),
            ),
        )
        return debugger.get_nondebug_quantized_model()


@contextlib.contextmanager
def _quiet():
    """The converter prints its artefact paths, its calibrator a line on fd 2, and the debugger
    warns that it uses TensorFlow's own (deprecated) interpreter: none of it is news."""
    from malpi.quiet import filtered_stderr

    with (
        contextlib.redirect_stdout(io.StringIO()),
        filtered_stderr(),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", module=r"tensorflow\.lite")
        yield


def _cell_matmuls(converter: Any, cell: str) -> list[str]:
    """The names of the recurrent cell's fully-connected ops in the all-int8 conversion."""
    from malpi.policy.litert import interpreter_class

    model = converter.convert()
    interp = interpreter_class()(model_content=model)
    tensors = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    in_cell = re.compile(rf"/{re.escape(cell)}(_\d+)?/")
    names = [
        tensors[i]
        for op in interp._get_ops_details()  # noqa: SLF001 - the only way to list a model's ops
        if op["op_name"] == "FULLY_CONNECTED"
        for i in op["outputs"]
        if in_cell.search(tensors.get(i, ""))
    ]
    if not names:
        raise RuntimeError(f"found no fully-connected ops of the cell {cell!r} to keep in float")
    return names


def agreement(bundle: PolicyBundle, model: bytes, sequences: Sequences) -> dict[str, Any]:
    """How often ``model`` picks the float model's action on held-out ``sequences``.

    Both run each sequence in order, each carrying its own LSTM state, fed the same
    frames and previous actions (those taken)."""
    from malpi.policy.litert import LiteRTStep
    from malpi.policy.runtime import StepPolicy

    ref = StepPolicy(bundle, backend="litert_float")
    test = LiteRTStep(model, bundle.spec)
    n, u = bundle.spec.num_actions, bundle.spec.lstm_units
    same = steps = 0
    worst = 0.0
    for frames, actions in sequences:
        ref.reset()
        h = np.zeros((1, u), np.float32)
        c = np.zeros((1, u), np.float32)
        prev = NO_ACTION
        for frame, action in zip(frames, actions, strict=True):
            want = ref.step(frame, prev)
            probs, _, h, c = test.run(frame, one_hot([prev], n).astype(np.float32), h, c)
            same += int(np.argmax(probs)) == want.action
            worst = max(worst, float(np.abs(probs - want.probs).max()))
            steps += 1
            prev = int(action)
    return {
        "argmax_agreement": round(same / max(steps, 1), 4),
        "steps": steps,
        "max_prob_diff": round(worst, 4),
    }


def add_integer_model(
    net: PolicyNetwork,
    bundle: PolicyBundle,
    calibration: Sequences,
    held_out: Sequences,
    sources: dict[str, Any],
    min_agreement: float = MIN_AGREEMENT,
) -> tuple[PolicyBundle, dict[str, Any]]:
    """``bundle`` with an integer model calibrated on ``calibration``, if it agrees with float
    on ``held_out`` at least ``min_agreement`` of the time; else without one.

    Returns the bundle and the report, which its provenance also carries as ``integer``."""
    samples = calibration_samples(bundle, calibration)
    model = integer_model(net, samples)
    report = {
        "calibration": {**sources, "samples": len(samples)},
        **agreement(bundle, model, held_out),
        "min_agreement": min_agreement,
        # The same measure of the model that runs without it, for comparison.
        "dynamic_range_agreement": agreement(bundle, bundle.tflite_dynamic, held_out)[
            "argmax_agreement"
        ],
    }
    if not report["steps"]:
        raise ValueError("no held-out frames to check the integer model against")
    report["kept"] = report["argmax_agreement"] >= min_agreement
    if not report["kept"]:
        log.warning(
            "integer model not kept: it agrees with float on %.2f %% of %d held-out steps, "
            "under %.0f %%; the bundle runs dynamic-range on auto",
            100 * report["argmax_agreement"],
            report["steps"],
            100 * min_agreement,
        )
    return bundle.with_integer_model(model if report["kept"] else None, report), report
