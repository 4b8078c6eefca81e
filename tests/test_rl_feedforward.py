"""The feed-forward control (``PolicySpec(recurrent=False)``): same views, no memory, valid bundles."""

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import numpy as np
from policy_helpers import TINY_SPEC

from malpi.actions import ActionTable
from malpi.policy.bundle import PolicyBundle
from malpi.policy.export import make_bundle
from malpi.policy.model import build_policy
from malpi.policy.runtime import StepPolicy
from malpi.policy.spec import DEFAULT_SPEC, PolicySpec, SpecError

VECTOR_FF = PolicySpec(obs_dim=3, bottleneck=8, lstm_units=16, num_actions=2, recurrent=False)
TWO_ACTIONS = ActionTable.from_list(
    [
        {"name": "left", "steering": -1.0, "throttle": 0.0},
        {"name": "right", "steering": 1.0, "throttle": 0.0},
    ]
)


@pytest.mark.parametrize(
    "spec",
    [VECTOR_FF, PolicySpec(**{**TINY_SPEC.__dict__, "recurrent": False})],
    ids=["vector", "image"],
)
def test_spec_predicts_weight_shapes_params_and_macs(spec):
    net = build_policy(spec, seed=0)
    assert [w.shape for w in net.weight_arrays()] == [s for _, s in spec.weight_shapes()]
    assert net.step_model.count_params() == spec.params == net.sequence_model.count_params()
    recurrent = PolicySpec(**{**spec.__dict__, "recurrent": True})
    u, n = spec.lstm_units, spec.num_actions
    # The LSTM's four gates and recurrent kernel against one Dense layer.
    assert recurrent.params - spec.params == 3 * u * (spec.feature_size + n) + 4 * u * u + 3 * u
    assert (
        recurrent.macs_per_step - spec.macs_per_step == 3 * u * (spec.feature_size + n) + 4 * u * u
    )


def test_recurrent_is_validated_and_omitted_from_default_manifests():
    with pytest.raises(SpecError, match="recurrent"):
        PolicySpec(recurrent=1)
    assert "recurrent" not in DEFAULT_SPEC.to_dict()  # manifests of LSTM policies unchanged
    assert PolicySpec.from_dict(VECTOR_FF.to_dict()) == VECTOR_FF


def test_outputs_do_not_depend_on_history_or_state():
    net = build_policy(VECTOR_FF, seed=1)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(1, 6, 3)).astype(np.float32)
    prev = np.zeros((1, 6, 2), np.float32)
    prev[0, 1:, 0] = 1.0
    z = np.zeros((1, 16), np.float32)
    out = net.sequence_model(
        {"frames": obs, "prev_actions": prev, "episode_starts": np.zeros((1, 6)), "h0": z, "c0": z}
    )
    # The last step alone, from a random state: the same output as after five steps of history.
    last = net.sequence_model(
        {
            "frames": obs[:, -1:],
            "prev_actions": prev[:, -1:],
            "episode_starts": np.zeros((1, 1)),
            "h0": rng.normal(size=(1, 16)).astype(np.float32),
            "c0": rng.normal(size=(1, 16)).astype(np.float32),
        }
    )
    np.testing.assert_allclose(
        np.asarray(out["logits"])[0, -1], np.asarray(last["logits"])[0, 0], atol=1e-6
    )
    assert np.asarray(out["logits"]).std(axis=1).max() > 1e-3  # it does react to the observation


def test_bundle_validates_and_runs_on_litert():
    net = build_policy(VECTOR_FF, seed=2)
    bundle = PolicyBundle.from_bytes(make_bundle(net, TWO_ACTIONS).to_bytes())
    assert bundle.spec == VECTOR_FF and "feedforward/kernel" in bundle.weights
    policy = StepPolicy(bundle, backend="litert_float")
    obs = np.array([0.1, -0.2, 0.3], np.float32)
    first = policy.step(obs, -1)
    for _ in range(3):
        policy.step(np.ones(3, np.float32), 1)
    again = policy.step(obs, -1)  # no reset: a memoryless policy answers the same anyway
    np.testing.assert_allclose(first.probs, again.probs, atol=1e-6)


def test_policy_info_shows_only_the_layers_a_vector_policy_has(tmp_path, capsys):
    from malpi.cli import main

    path = tmp_path / "ff.malpi"
    make_bundle(build_policy(VECTOR_FF, seed=3), TWO_ACTIONS).save(path)
    assert main(["policy", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "input       vector of 3" in out and "conv" not in out
    assert "feedforward=16" in out and "lstm=" not in out
