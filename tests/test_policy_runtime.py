"""The robot's step runtime: backend parity, int8 agreement, resets, sampling, no TensorFlow on LiteRT."""

import subprocess
import sys
import textwrap

import make_fixtures
import numpy as np
import pytest
from extras import needs_tf
from policy_helpers import TINY_SPEC

from malpi.actions import DEFAULT_ACTIONS, NO_ACTION, one_hot
from malpi.policy.bundle import PolicyBundle
from malpi.policy.runtime import PolicyOutputError, StepPolicy
from malpi.policy.spec import random_observation

STEPS = 60
SPEC = make_fixtures.SPEC  # the tiny policies of tests/data/ (no TensorFlow needed)


@pytest.fixture(scope="module")
def net():
    from malpi.policy.model import build_policy

    return build_policy(TINY_SPEC, seed=11)


@pytest.fixture(scope="module")
def made(net):
    """A bundle made from ``net`` here, to compare with the Keras model it came from."""
    from malpi.policy.export import make_bundle

    return make_bundle(net, DEFAULT_ACTIONS)


@pytest.fixture(scope="module")
def bundle():
    return PolicyBundle.from_bytes(make_fixtures.read("a"))


def observations(n, seed=0, spec=SPEC):
    rng = np.random.default_rng(seed)
    return [random_observation(spec, rng) for _ in range(n)]


def keras_episode(net, obs, prev_actions):
    u, n = TINY_SPEC.lstm_units, TINY_SPEC.num_actions
    h = c = np.zeros((1, u), np.float32)
    rows = []
    for o, p in zip(obs, prev_actions, strict=True):
        out = net.step_model([o[None], one_hot([p], n), h, c])
        h, c = np.asarray(out["h"]), np.asarray(out["c"])
        rows.append((np.asarray(out["probs"])[0], float(np.asarray(out["value"])[0, 0]), h, c))
    return rows


@needs_tf
@pytest.mark.parametrize("backend", ["litert_float", "tf"])
def test_backend_matches_keras_on_every_output(net, made, backend):
    obs = observations(STEPS, spec=TINY_SPEC)
    policy = StepPolicy(made, backend=backend)
    prev, prevs, got = NO_ACTION, [], []
    for o in obs:
        prevs.append(prev)
        r = policy.step(o, prev)
        got.append((r.probs, r.value, policy.h.copy(), policy.c.copy()))
        prev = r.action
    want = keras_episode(net, obs, prevs)
    worst = max(
        max(
            np.abs(g[0] - w[0]).max(),
            abs(g[1] - w[1]),
            np.abs(g[2] - w[2]).max(),
            np.abs(g[3] - w[3]).max(),
        )
        for g, w in zip(got, want, strict=True)
    )
    assert worst <= 1e-4


@pytest.mark.parametrize("backend", ["litert_dynamic", "litert_int8"])
def test_int8_agrees_on_the_argmax_of_a_sharpened_model(backend):
    b = PolicyBundle.from_bytes(make_fixtures.read("b"))  # sharpened: decides like a trained one
    f32, i8 = StepPolicy(b, backend="litert_float"), StepPolicy(b, backend=backend)
    agree, actions_taken = 0, []
    obs = observations(300, seed=5)
    prev = NO_ACTION
    for o in obs:
        a, q = f32.step(o, prev), i8.step(o, prev)
        agree += a.action == q.action
        actions_taken.append(a.action)
        prev = a.action  # both fed the same history
    counts = np.bincount(list(actions_taken), minlength=SPEC.num_actions)
    assert np.sort(counts)[-2] >= 30, "the test needs a policy whose decisions vary"
    assert agree / len(obs) >= 0.97


def test_reset_zeroes_the_state_and_repeats_the_episode(bundle):
    policy = StepPolicy(bundle, backend="litert_float")
    obs = observations(10, seed=2)

    def run():
        prev, out = NO_ACTION, []
        for o in obs:
            r = policy.step(o, prev)
            out.append(r.probs)
            prev = r.action
        return np.array(out)

    first = run()
    assert np.abs(policy.h).max() > 0
    policy.reset()
    assert not policy.h.any() and not policy.c.any()
    np.testing.assert_array_equal(run(), first)
    # Without the reset, the carried state changes the outputs.
    assert np.abs(run() - first).max() > 1e-4


def test_sampling_follows_the_probabilities_and_is_seeded(bundle):
    o = observations(1, seed=9)[0]
    a = StepPolicy(bundle, backend="litert_float", sample=True, seed=42)
    b = StepPolicy(bundle, backend="litert_float", sample=True, seed=42)
    counts = np.zeros(SPEC.num_actions)
    probs = None
    for _ in range(3000):
        a.reset()
        b.reset()
        r, s = a.step(o, NO_ACTION), b.step(o, NO_ACTION)
        assert r.action == s.action
        counts[r.action] += 1
        probs = r.probs
    np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.03)


def test_non_finite_output_raises_and_keeps_the_state(bundle):
    class NaNBackend:  # a numerical blow-up inside the model, injected at the backend boundary
        def run(self, obs, prev, h, c):
            return np.full(SPEC.num_actions, np.nan, np.float32), 0.0, h + 1, c + 1

    policy = StepPolicy(bundle, backend="litert_float")
    policy._backend = NaNBackend()
    with pytest.raises(PolicyOutputError, match="non-finite"):
        policy.step(observations(1)[0], NO_ACTION)
    assert not policy.h.any() and not policy.c.any()  # the bad step was not applied


def test_bad_inputs_are_refused(bundle):
    policy = StepPolicy(bundle, backend="litert_float")
    with pytest.raises(ValueError, match="shape"):
        policy.step(np.zeros((10, 10, 3), np.uint8), NO_ACTION)
    with pytest.raises(ValueError, match="outside the action table"):
        policy.step(observations(1)[0], 5)
    with pytest.raises(ValueError, match="unknown policy backend"):
        StepPolicy(bundle, backend="onnx")


def test_litert_runtime_never_imports_tensorflow(bundle, tmp_path):
    path = bundle.save(tmp_path / "p.malpi")
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from malpi.policy.bundle import PolicyBundle
        from malpi.policy.runtime import StepPolicy
        b = PolicyBundle.load({str(path)!r})
        for backend in ("litert_float", "litert_dynamic", "litert_int8"):
            p = StepPolicy(b, backend=backend)
            r = p.step(np.zeros({SPEC.observation_shape}, np.uint8), -1)
        bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        print("IMPORTED", bad)
        assert not bad, bad
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "IMPORTED []" in out.stdout


def test_an_integer_model_that_computes_something_else_here_is_not_driven(caplog):
    """As on a CPU whose int8 kernels are wrong: the integer model is checked against the float
    one before it drives; auto falls back to dynamic-range, an explicit litert_int8 is refused."""
    from malpi.policy.runtime import resolve_backend

    a = PolicyBundle.from_bytes(make_fixtures.read("a"))
    b = PolicyBundle.from_bytes(make_fixtures.read("b"))
    assert resolve_backend(a, "auto") == "litert_int8"
    wrong = a.with_integer_model(b.tflite_integer, {"note": "another policy's integer model"})
    with caplog.at_level("WARNING"):
        assert resolve_backend(wrong, "auto") == "litert_dynamic"
    assert "integer model does not compute on this CPU what its float model does" in caplog.text
    assert StepPolicy(wrong).backend_name == "litert_dynamic"
    with pytest.raises(ValueError, match='argmax agreement .*policy.backend = "litert_dynamic"'):
        StepPolicy(wrong, backend="litert_int8")
