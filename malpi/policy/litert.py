"""The LiteRT step model: an interpreter with its tensors checked against the spec.

Below both the bundle (whose validation test-steps its models) and the
runtime (which drives with them); imports nothing of TensorFlow.
"""

from __future__ import annotations

import numpy as np

from malpi.policy.spec import PolicySpec

INSTALL_HINT = (
    "Install it: pip install -e '.[robot]' in a MaLPi checkout (the robot's extra), "
    "or pip install ai-edge-litert"
)


class MissingRuntime(ImportError):
    """LiteRT is not installed: no bundle can be test-stepped or driven (not the bundle's fault)."""


def interpreter_class() -> type:
    """LiteRT's ``Interpreter``; :class:`MissingRuntime` with what to install when it is absent."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise MissingRuntime(
            f"LiteRT is not installed ({exc}), and MaLPi runs every policy with it. {INSTALL_HINT}"
        ) from exc
    return Interpreter


class LiteRTStep:
    """A LiteRT interpreter for the step model, its tensors resolved once by signature name."""

    def __init__(
        self, model: bytes | None, spec: PolicySpec, num_threads: int = 1, path: str | None = None
    ):
        from malpi.quiet import filtered_stderr

        Interpreter = interpreter_class()  # noqa: N806 - the class, under its own name

        with filtered_stderr():  # LiteRT's "Created ... XNNPACK delegate" INFO line, on fd 2
            # From a file the model is memory-mapped: nothing is copied while holding the GIL.
            self._interp = Interpreter(
                model_content=model, model_path=path, num_threads=num_threads
            )
            self._interp.allocate_tensors()
        runner = self._interp.get_signature_runner()
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        u, n = spec.lstm_units, spec.num_actions
        obs_dtype = np.uint8 if spec.is_image else np.float32
        want_in = {
            "frame": ((1, *spec.observation_shape), obs_dtype),
            "prev_action": ((1, n), np.float32),
            "h": ((1, u), np.float32),
            "c": ((1, u), np.float32),
        }
        want_out = {"probs": (1, n), "value": (1, 1), "h": (1, u), "c": (1, u)}
        _check_tensors("input", inputs, {k: v[0] for k, v in want_in.items()})
        _check_tensors("output", outputs, want_out)
        for name, (_, dtype) in want_in.items():
            if inputs[name]["dtype"] != dtype:
                raise ValueError(
                    f"input {name} has dtype {inputs[name]['dtype'].__name__}, expected {dtype.__name__}"
                )
        self._in = {k: inputs[k]["index"] for k in want_in}
        self._out = {k: outputs[k]["index"] for k in want_out}

    def run(self, obs, prev, h, c):
        it = self._interp
        it.set_tensor(self._in["frame"], obs[None])
        it.set_tensor(self._in["prev_action"], prev)
        it.set_tensor(self._in["h"], h)
        it.set_tensor(self._in["c"], c)
        it.invoke()
        get = it.get_tensor
        return (
            get(self._out["probs"])[0],
            float(get(self._out["value"])[0, 0]),
            get(self._out["h"]),
            get(self._out["c"]),
        )


def _check_tensors(kind: str, details: dict, want: dict[str, tuple[int, ...]]) -> None:
    if set(details) != set(want):
        raise ValueError(f"model {kind}s are {sorted(details)}, expected {sorted(want)}")
    for name, shape in want.items():
        got = tuple(int(d) for d in details[name]["shape"])
        if got != shape:
            raise ValueError(f"model {kind} {name} has shape {got}, the spec needs {shape}")


def check_model(model: bytes, spec: PolicySpec) -> None:
    """Load a LiteRT step model, check its tensors against the spec and run two test steps."""
    backend = LiteRTStep(model, spec)
    rng = np.random.default_rng(0)
    if spec.is_image:
        obs = rng.integers(0, 256, spec.observation_shape, dtype=np.uint8)
    else:
        obs = rng.normal(size=spec.observation_shape).astype(np.float32)
    u, n = spec.lstm_units, spec.num_actions
    h = np.zeros((1, u), np.float32)
    c = np.zeros((1, u), np.float32)
    prev = np.zeros((1, n), np.float32)
    for _ in range(2):
        probs, value, h, c = backend.run(obs, prev, h, c)
        if not (np.isfinite(probs).all() and np.isfinite(value) and np.isfinite(h).all()):
            raise ValueError("the test step produced non-finite outputs")
        if abs(float(probs.sum()) - 1.0) > 1e-3:
            raise ValueError(
                f"the test step's probabilities sum to {float(probs.sum()):.4f}, not 1"
            )
