"""The step policy the robot runs: one frame in, an action out, the LSTM state kept in numpy.

Backends, each named for what it runs:

- ``litert_int8``: LiteRT, the bundle's integer model (int8 weights and activations);
- ``litert_dynamic``: LiteRT, dynamic-range quantised (int8 weights, float activations);
- ``litert_float``: LiteRT, float32;
- ``auto``: ``litert_int8`` when the bundle carries an integer model, else ``litert_dynamic``;
- ``tf``: the Keras step model under ``tf.function`` (imports TensorFlow; the desktop's).

None of them calls ``predict()`` per step. An episode reset is ``reset()``: h and c
set to zero and the previous action to "none".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from malpi.actions import one_hot
from malpi.policy.bundle import PolicyBundle
from malpi.policy.litert import LiteRTStep
from malpi.policy.spec import PolicySpec, random_observation

log = logging.getLogger(__name__)

BACKENDS = ("auto", "litert_int8", "litert_dynamic", "litert_float", "tf")
LITERT_BACKENDS = ("litert_int8", "litert_dynamic", "litert_float")
BACKEND_NAMES = {
    "litert_int8": "LiteRT integer int8",
    "litert_dynamic": "LiteRT dynamic-range int8",
    "litert_float": "LiteRT float",
    "tf": "TensorFlow",
}


def resolve_backend(bundle: PolicyBundle, backend: str) -> str:
    """The backend that runs ``bundle``: ``auto`` resolved; an error if the bundle lacks its
    model, or if its integer model does not compute here what its float model does."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown policy backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in ("auto", "litert_int8"):
        return backend
    if bundle.tflite_integer is None:
        if backend == "auto":
            return "litert_dynamic"
        raise ValueError(
            f"policy {bundle.label} has no integer model (made before MaLPi made them, or without "
            "calibration frames): add one with `malpi train quantize`, or set "
            'policy.backend = "auto" to run its dynamic-range model'
        )
    problem = integer_problem(bundle)
    if problem is None:
        return "litert_int8"
    if backend == "litert_int8":
        raise ValueError(f'{problem}; set policy.backend = "litert_dynamic" on this machine')
    log.warning("%s; running its dynamic-range model instead", problem)
    return "litert_dynamic"


# Integer kernels are chosen per CPU (XNNPACK picks them by the instructions it finds), and one
# choice can be wrong where the others are right: on an emulated arm64 CPU with every feature
# QEMU has, the default policy's integer model agreed with float on 22 % of these frames, against
# 97 % on an emulated Pi 4 or Pi 5 (as on x86). So before it drives, the integer model is
# checked against the float one on this CPU: the same frames, each carrying its own state.
SELF_CHECK_STEPS = 16
SELF_CHECK_MIN_AGREEMENT = 0.8
SELF_CHECK_MAX_MEAN_DIFF = 0.1  # mean over the steps of the largest probability difference
_self_checked: dict[str, str | None] = {}


def integer_problem(bundle: PolicyBundle) -> str | None:
    """None if ``bundle``'s integer model computes on this CPU what its float model does (to
    quantisation's precision), else what is wrong. Checked once per bundle and process."""
    if bundle.sha256 in _self_checked:
        return _self_checked[bundle.sha256]
    spec, n = bundle.spec, bundle.spec.num_actions
    models = [LiteRTStep(m, spec) for m in (bundle.tflite_float, bundle.tflite_integer)]
    states = [[np.zeros((1, spec.lstm_units), np.float32)] * 2 for _ in models]
    rng = np.random.default_rng(0)
    same, diffs = 0, []
    for _ in range(SELF_CHECK_STEPS):
        obs = random_observation(spec, rng)
        prev = one_hot([int(rng.integers(-1, n))], n).astype(np.float32)
        probs = []
        for model, state in zip(models, states, strict=True):
            p, _, state[0], state[1] = model.run(obs, prev, *state)
            probs.append(p)
        same += int(np.argmax(probs[0]) == np.argmax(probs[1]))
        diffs.append(float(np.abs(probs[0] - probs[1]).max()))
    agreement, mean_diff = same / SELF_CHECK_STEPS, float(np.mean(diffs))
    problem = None
    if agreement < SELF_CHECK_MIN_AGREEMENT or mean_diff > SELF_CHECK_MAX_MEAN_DIFF:
        problem = (
            f"policy {bundle.label}'s integer model does not compute on this CPU what its float "
            f"model does (argmax agreement {agreement:.0%}, mean largest probability difference "
            f"{mean_diff:.2f} over {SELF_CHECK_STEPS} test frames): this CPU's int8 kernels "
            "are not to be trusted"
        )
    _self_checked[bundle.sha256] = problem
    return problem


class PolicyOutputError(RuntimeError):
    """The policy produced non-finite outputs; the caller must not act on them."""


@dataclass(frozen=True)
class StepResult:
    action: int
    probs: np.ndarray  # (num_actions,) float32
    value: float


class StepBackend(Protocol):
    def run(
        self, obs: np.ndarray, prev: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """(probs (N,), value, h' (1, U), c' (1, U)) for one step."""
        ...


class TFStep:
    """The Keras step model under ``tf.function`` (imports TensorFlow; desktop use)."""

    def __init__(self, bundle: PolicyBundle):
        import tensorflow as tf

        from malpi.policy.model import build_policy

        net = build_policy(bundle.spec)
        net.set_named_weights(bundle.weights)
        spec = bundle.spec
        u, n = spec.lstm_units, spec.num_actions
        obs_dtype = tf.uint8 if spec.is_image else tf.float32
        model = net.step_model

        @tf.function(
            input_signature=[
                tf.TensorSpec((1, *spec.observation_shape), obs_dtype),
                tf.TensorSpec((1, n), tf.float32),
                tf.TensorSpec((1, u), tf.float32),
                tf.TensorSpec((1, u), tf.float32),
            ]
        )
        def step(obs, prev, h, c):
            out = model([obs, prev, h, c])
            return out["probs"], out["value"], out["h"], out["c"]

        self._step = step
        self.network = net

    def run(self, obs, prev, h, c):
        probs, value, h2, c2 = self._step(obs[None], prev, h, c)
        return probs.numpy()[0], float(value.numpy()[0, 0]), h2.numpy(), c2.numpy()


def make_backend(bundle: PolicyBundle, backend: str, num_threads: int = 1) -> StepBackend:
    if resolve_backend(bundle, backend) == "tf":
        return TFStep(bundle)
    return LiteRTStep(make_backend_model(bundle, backend), bundle.spec, num_threads)


class StepPolicy:
    """Runs a bundle one step at a time, holding the LSTM state between steps.

    ``sample=False`` picks the most probable action; ``sample=True`` draws from
    the probabilities (seeded by ``seed``), as reinforcement learning needs.
    """

    def __init__(
        self,
        bundle: PolicyBundle,
        backend: str = "auto",
        sample: bool = False,
        seed: int | None = None,
        num_threads: int = 1,
    ):
        self.bundle: PolicyBundle | None = bundle
        backend = resolve_backend(bundle, backend)
        self._setup(bundle.spec, make_backend(bundle, backend, num_threads), backend, sample, seed)
        self.version = bundle.label
        self.sha256 = bundle.sha256

    @classmethod
    def from_model_file(
        cls,
        path: str | Path,
        spec: PolicySpec,
        version: str,
        sha256: str,
        backend: str = "litert_dynamic",
        sample: bool = False,
        seed: int | None = None,
        num_threads: int = 1,
    ) -> StepPolicy:
        """A policy from a step model already validated and written out (:func:`write_runtime_model`).

        This is how the robot's control process builds one: the model file is mapped, not
        read into Python, so building it costs the control loop little. For ``tf`` the file
        is the bundle itself. ``backend`` is the resolved one (:func:`resolve_backend`): it
        names what the file holds.
        """
        self = cls.__new__(cls)
        if backend == "tf":
            self.bundle = PolicyBundle.load(path, check_models=False)
            impl: StepBackend = TFStep(self.bundle)
        elif backend in LITERT_BACKENDS:
            self.bundle = None
            impl = LiteRTStep(None, spec, num_threads, path=str(path))
        else:
            raise ValueError(
                f"{backend!r} does not name a model file's kind; one of "
                f"{', '.join(LITERT_BACKENDS)} or tf"
            )
        self._setup(spec, impl, backend, sample, seed)
        self.version, self.sha256 = version, sha256
        return self

    def _setup(
        self, spec: PolicySpec, impl: StepBackend, backend: str, sample: bool, seed: int | None
    ) -> None:
        self.spec = spec
        self.backend_name = backend
        self.sample = sample
        self._backend = impl
        self._rng = np.random.default_rng(seed)
        self._onehot = one_hot(np.arange(-1, spec.num_actions), spec.num_actions)[:, None, :]
        self.reset()

    def reset(self) -> None:
        """Start a new episode: zero LSTM state."""
        u = self.spec.lstm_units
        self.h = np.zeros((1, u), np.float32)
        self.c = np.zeros((1, u), np.float32)

    def step(self, obs: np.ndarray, prev_action: int) -> StepResult:
        """One control step. ``prev_action`` is the action taken last step, or -1 at an episode start."""
        if obs.shape != self.spec.observation_shape:
            raise ValueError(
                f"observation has shape {obs.shape}, the policy takes {self.spec.observation_shape}"
            )
        if not -1 <= prev_action < self.spec.num_actions:
            raise ValueError(f"previous action {prev_action} is outside the action table")
        probs, value, h, c = self._backend.run(obs, self._onehot[prev_action + 1], self.h, self.c)
        if not (
            np.isfinite(probs).all()
            and np.isfinite(value)
            and np.isfinite(h).all()
            and np.isfinite(c).all()
        ):
            raise PolicyOutputError("policy produced non-finite outputs")
        self.h, self.c = h, c
        if self.sample:
            cdf = np.cumsum(probs, dtype=np.float64)
            action = int(
                min(
                    np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"), len(probs) - 1
                )
            )
        else:
            action = int(np.argmax(probs))
        return StepResult(action, probs, value)


def write_runtime_model(bundle: PolicyBundle, backend: str, directory: Path) -> Path:
    """Write what ``backend`` runs (a LiteRT model, or for ``tf`` the whole bundle) into
    ``directory``, named by its content, for :meth:`StepPolicy.from_model_file`."""
    import hashlib

    from malpi.policy.bundle import write_atomic

    if resolve_backend(bundle, backend) == "tf":
        data, suffix = bundle.to_bytes(), ".malpi"
    else:
        data, suffix = make_backend_model(bundle, backend), ".tflite"
    path = Path(directory) / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not path.exists():
        write_atomic(path, data)
    return path


def make_backend_model(bundle: PolicyBundle, backend: str) -> bytes:
    """The LiteRT model a backend runs."""
    backend = resolve_backend(bundle, backend)
    if backend not in LITERT_BACKENDS:
        raise ValueError(f"{backend!r} is not a LiteRT backend")
    return bundle.models[backend]
