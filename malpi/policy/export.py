"""Turn a Keras policy into a bundle: LiteRT float and dynamic-range step models, after a
parity check (the integer model, which needs calibration frames: :mod:`malpi.policy.quantize`).

TensorFlow is imported where a model is converted, not with this module."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from malpi.actions import ActionTable, one_hot
from malpi.policy.bundle import PolicyBundle
from malpi.policy.spec import random_observation

if TYPE_CHECKING:
    from malpi.policy.model import PolicyNetwork

log = logging.getLogger(__name__)

FLOAT_PARITY_TOL = 1e-4


def to_tflite(net: PolicyNetwork, int8: bool) -> bytes:
    """Convert the step model to LiteRT. ``int8``: dynamic-range quantised weights (float
    activations; the integer model is :func:`malpi.policy.quantize.integer_model`).

    ``from_keras_model`` on the explicit-state step model converts to builtin ops
    only (no Flex delegate needed, which the robot's LiteRT does not have).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(net.step_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its artefact paths
        return converter.convert()


def make_bundle(
    net: PolicyNetwork,
    actions: ActionTable,
    provenance: dict[str, Any] | None = None,
    version: int = 1,
    parent: str | None = None,
    check_parity: bool = True,
    control_hz: float | None = None,
) -> PolicyBundle:
    """A complete bundle for ``net``; raises if LiteRT float disagrees with Keras.

    ``control_hz``: the control rate the training data ran at (None: unknown, e.g. untrained);
    the robot refuses to drive it at another rate unless told to."""
    if len(actions) != net.spec.num_actions:
        raise ValueError(
            f"the action table has {len(actions)} actions but the policy outputs {net.spec.num_actions}"
        )
    bundle = PolicyBundle.create(
        spec=net.spec,
        actions=actions,
        weights=net.named_weights(),
        tflite_float=to_tflite(net, int8=False),
        tflite_dynamic=to_tflite(net, int8=True),
        provenance=provenance or {},
        version=version,
        parent=parent,
        control_hz=control_hz,
    )
    if check_parity:
        diff = float_parity(net, bundle)
        if diff > FLOAT_PARITY_TOL:
            raise RuntimeError(
                f"LiteRT float differs from Keras by {diff:.2e} > {FLOAT_PARITY_TOL}"
            )
        log.info("parity: LiteRT float vs Keras max |diff| = %.2e", diff)
    return bundle


def float_parity(net: PolicyNetwork, bundle: PolicyBundle, steps: int = 20, seed: int = 0) -> float:
    """Max |LiteRT float - Keras| over every output of a short random episode."""
    from malpi.policy.runtime import StepPolicy

    rng = np.random.default_rng(seed)
    spec = net.spec
    runtime = StepPolicy(bundle, backend="litert_float")
    u = spec.lstm_units
    h = np.zeros((1, u), np.float32)
    c = np.zeros((1, u), np.float32)
    prev = -1
    worst = 0.0
    for _ in range(steps):
        obs = random_observation(spec, rng)
        result = runtime.step(obs, prev)
        out = net.step_model([obs[None], one_hot([prev], spec.num_actions), h, c])
        h, c = np.asarray(out["h"]), np.asarray(out["c"])
        worst = max(
            worst,
            float(np.abs(result.probs - np.asarray(out["probs"])[0]).max()),
            float(abs(result.value - float(np.asarray(out["value"])[0, 0]))),
            float(np.abs(runtime.h - h).max()),
            float(np.abs(runtime.c - c).max()),
        )
        prev = result.action
    return worst
