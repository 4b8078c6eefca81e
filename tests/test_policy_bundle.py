"""Policy bundles: round trip, atomic save, and rejection of every kind of bad bundle."""

import io
import os
import zipfile

import make_fixtures
import numpy as np
import pytest
from extras import needs_tf
from policy_helpers import edit_weights, rezip

from malpi.actions import DEFAULT_ACTIONS, ActionTable
from malpi.policy.bundle import BundleError, PolicyBundle
from malpi.policy.spec import PolicySpec

SPEC = make_fixtures.SPEC  # the tiny policy of tests/data/


@pytest.fixture(scope="module")
def bundle():
    """A new bundle of the tiny policy's weights and LiteRT models (made as make_bundle makes one,
    less the conversion, which needs TensorFlow)."""
    tiny = PolicyBundle.from_bytes(make_fixtures.read("a"))
    return PolicyBundle.create(
        spec=tiny.spec,
        actions=tiny.actions,
        weights=tiny.weights,
        tflite_float=tiny.tflite_float,
        tflite_dynamic=tiny.tflite_dynamic,
        tflite_integer=tiny.tflite_integer,
        provenance={"test": True},
    )


@pytest.fixture(scope="module")
def data(bundle):
    return bundle.to_bytes()


def test_round_trip_keeps_everything(bundle, data, tmp_path):
    path = bundle.save(tmp_path / "p.malpi")
    loaded = PolicyBundle.load(path)
    assert loaded.manifest == bundle.manifest
    assert loaded.spec == SPEC and loaded.actions == DEFAULT_ACTIONS
    assert loaded.models == bundle.models and set(loaded.models) == {
        "litert_float",
        "litert_dynamic",
        "litert_int8",
    }
    for name, w in bundle.weights.items():
        np.testing.assert_array_equal(loaded.weights[name], w)
    m = loaded.manifest
    assert m["format_version"] == 2 and m["provenance"] == {"test": True} and m["created"]
    assert set(m["payloads"]) == {
        "weights.npz",
        "float.tflite",
        "dynamic_range.tflite",
        "integer.tflite",
    }
    assert all(len(p["sha256"]) == 64 for p in m["payloads"].values())


def test_save_is_atomic_and_leaves_no_temp_files(bundle, tmp_path):
    path = tmp_path / "p.malpi"
    path.write_bytes(b"old")
    bundle.save(path)
    assert os.listdir(tmp_path) == ["p.malpi"]
    PolicyBundle.load(path)


def test_truncated_file_is_rejected(data):
    for cut in (len(data) // 2, len(data) - 10, 100):
        with pytest.raises(BundleError, match="truncated or corrupt"):
            PolicyBundle.from_bytes(data[:cut])


def test_flipped_byte_is_rejected(data):
    rng = np.random.default_rng(0)
    for pos in rng.integers(0, len(data), 25):
        corrupt = bytearray(data)
        corrupt[pos] ^= 0x5A
        with pytest.raises(BundleError):
            PolicyBundle.from_bytes(bytes(corrupt))


def flip_middle(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def test_payload_not_matching_its_checksum_is_rejected(data):
    bad = rezip(
        data,
        payload_edit=lambda f: f.update({"integer.tflite": flip_middle(f["integer.tflite"])}),
        fix_checksums=False,
    )
    with pytest.raises(BundleError, match="integer.tflite"):
        PolicyBundle.from_bytes(bad)


def test_wrong_action_count_is_rejected(data):
    bad = rezip(data, manifest_edit=lambda m: m.update(actions=m["actions"][:4]))
    with pytest.raises(BundleError, match="wrong action count: the action table has 4 actions"):
        PolicyBundle.from_bytes(bad)
    # A consistent bundle for another action table than the robot's is refused too.
    other = ActionTable.from_list([{**a, "throttle": 0.1} for a in DEFAULT_ACTIONS.to_list()])
    with pytest.raises(BundleError, match="action table mismatch"):
        PolicyBundle.from_bytes(data, expected_actions=other)


def test_wrong_image_size_is_rejected(data):
    with pytest.raises(BundleError, match="image size mismatch: the policy takes 48x64"):
        PolicyBundle.from_bytes(data, expected_image=(120, 160))
    # A manifest that lies about the image size does not fit its own weights.
    bad = rezip(data, manifest_edit=lambda m: m["spec"].update(image_height=60, image_width=80))
    with pytest.raises(BundleError, match="bottleneck/kernel has shape"):
        PolicyBundle.from_bytes(bad)


def test_nan_weight_is_rejected(data):
    def poison(w):
        w["lstm/kernel"][3, 7] = np.nan

    bad = rezip(data, payload_edit=lambda f: edit_weights(f, poison))
    with pytest.raises(BundleError, match="lstm/kernel has non-finite values"):
        PolicyBundle.from_bytes(bad)


def test_manifest_schema_is_enforced(data):
    with pytest.raises(BundleError, match="missing 'spec'"):
        PolicyBundle.from_bytes(rezip(data, manifest_edit=lambda m: m.pop("spec")))
    with pytest.raises(BundleError, match="'version' has the wrong type"):
        PolicyBundle.from_bytes(rezip(data, manifest_edit=lambda m: m.update(version="3")))
    with pytest.raises(BundleError, match="unknown field"):
        PolicyBundle.from_bytes(rezip(data, manifest_edit=lambda m: m.update(colour="red")))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    files["manifest.json"] = b"{not json"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    with pytest.raises(BundleError, match="not valid JSON"):
        PolicyBundle.from_bytes(buf.getvalue())


@needs_tf
def test_model_that_does_not_fit_the_spec_is_rejected(data):
    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy

    other = make_bundle(
        build_policy(PolicySpec(**{**SPEC.__dict__, "lstm_units": 8})),
        DEFAULT_ACTIONS,
        check_parity=False,
    )
    bad = rezip(data, payload_edit=lambda f: f.update({"float.tflite": other.tflite_float}))
    with pytest.raises(
        BundleError, match="float.tflite failed its test step: model input . has shape"
    ):
        PolicyBundle.from_bytes(bad)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(BundleError, match="nope.malpi"):
        PolicyBundle.load(tmp_path / "nope.malpi")


def test_a_bundle_knows_its_control_rate_and_a_robot_at_another_refuses_it(data):
    """Issue 12.5: a policy's LSTM has learnt a control period; driving it at another is refused
    unless asked for. A bundle that does not know its rate (made before, or untrained) passes."""
    at_20 = rezip(data, manifest_edit=lambda m: m.update(control_hz=20.0))
    assert PolicyBundle.from_bytes(at_20, expected_control_hz=20.0).control_hz == 20.0
    with pytest.raises(BundleError, match="trained at 20 Hz, the robot's loop runs at 30 Hz"):
        PolicyBundle.from_bytes(at_20, expected_control_hz=30.0)
    assert PolicyBundle.from_bytes(at_20).control_hz == 20.0  # nothing expected: fine
    unknown = rezip(data, manifest_edit=lambda m: m.pop("control_hz"))
    assert PolicyBundle.from_bytes(unknown, expected_control_hz=30.0).control_hz is None
    with pytest.raises(BundleError, match="control_hz must be in"):
        PolicyBundle.from_bytes(rezip(data, manifest_edit=lambda m: m.update(control_hz=-5)))
    with pytest.raises(BundleError, match="'control_hz' has the wrong type"):
        PolicyBundle.from_bytes(rezip(data, manifest_edit=lambda m: m.update(control_hz="20")))


def test_the_daemon_refuses_a_policy_trained_at_another_rate(tmp_path, data):
    from malpi.config import load_config
    from malpi.daemon.control.build import load_policy_bundle

    path = tmp_path / "p.malpi"
    path.write_bytes(rezip(data, manifest_edit=lambda m: m.update(control_hz=20.0)))
    size = {"camera.height": SPEC.image_height, "camera.width": SPEC.image_width}
    at_30 = {"policy.path": str(path), "loop.rate_hz": 30.0, "camera.fps": 30.0, **size}
    with pytest.raises(BundleError, match="policy.allow_rate_mismatch"):
        load_policy_bundle(load_config(None, at_30))
    bundle, _ = load_policy_bundle(load_config(None, {**at_30, "policy.allow_rate_mismatch": True}))
    assert bundle.control_hz == 20.0


def test_the_shipped_default_was_trained_at_the_simulators_20_hz():
    from malpi.policy.store import shipped_policy
    from malpi.sim import DEFAULT_DT

    shipped = PolicyBundle.from_bytes(shipped_policy().read_bytes(), check_models=False)
    assert shipped.control_hz == 1 / DEFAULT_DT == 20.0


# -- format versions and the optional integer model --------------------------------------------


def relayout(data: bytes, version: int, payloads) -> bytes:
    """The bundle with its payloads edited by ``payloads(files)`` and its manifest saying
    ``version`` and listing what is left, with true checksums."""
    import hashlib

    edited = {}

    def edit(files):
        payloads(files)
        edited.update(files)

    def manifest(m):
        m["format_version"] = version
        m["payloads"] = {
            n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}
            for n, b in edited.items()
            if n != "manifest.json"
        }

    return rezip(data, manifest_edit=manifest, payload_edit=edit, fix_checksums=False)


def as_format_1(data: bytes) -> bytes:
    """The bundle as format 1 wrote it: no integer model, the dynamic-range one as int8.tflite."""

    def payloads(f):
        f.pop("integer.tflite")
        f["int8.tflite"] = f.pop("dynamic_range.tflite")

    return relayout(data, 1, payloads)


def test_a_format_1_bundle_still_loads_and_runs_dynamic_range(bundle, data):
    from malpi.policy.runtime import StepPolicy, resolve_backend

    old = PolicyBundle.from_bytes(as_format_1(data))
    assert old.manifest["format_version"] == 1 and old.tflite_integer is None
    assert old.tflite_dynamic == bundle.tflite_dynamic
    assert resolve_backend(old, "auto") == "litert_dynamic"
    assert StepPolicy(old).backend_name == "litert_dynamic"
    with pytest.raises(ValueError, match="has no integer model.*malpi train quantize"):
        StepPolicy(old, backend="litert_int8")


def test_auto_runs_the_integer_model_when_there_is_one(bundle):
    from malpi.policy.runtime import resolve_backend

    assert resolve_backend(bundle, "auto") == "litert_int8"
    with pytest.raises(ValueError, match="unknown policy backend 'int4'"):
        resolve_backend(bundle, "int4")


def test_the_integer_model_is_optional_in_format_2(data):
    without = relayout(data, 2, lambda f: f.pop("integer.tflite"))
    assert PolicyBundle.from_bytes(without).tflite_integer is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=1), "format version 1: missing \\['int8.tflite'\\]"),
        (lambda m: m.update(format_version=3), "unknown bundle format version 3"),
        (lambda m: m.update(format_version=True), "unknown bundle format version True"),
    ],
)
def test_a_layout_that_is_not_its_format_versions_is_rejected(data, edit, message):
    with pytest.raises(BundleError, match=message):
        PolicyBundle.from_bytes(rezip(data, manifest_edit=edit))


def test_a_broken_integer_model_is_rejected_by_name(data):
    bad = rezip(
        data, payload_edit=lambda f: f.update({"integer.tflite": f["integer.tflite"][:4096]})
    )
    with pytest.raises(BundleError, match="integer.tflite failed its test step"):
        PolicyBundle.from_bytes(bad)
