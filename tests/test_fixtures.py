"""The committed tiny bundles (tests/data/) are valid, and still what tests/make_fixtures.py makes."""

import make_fixtures
import numpy as np
import pytest
from extras import needs_tf

from malpi.actions import DEFAULT_ACTIONS, NO_ACTION
from malpi.policy.bundle import PolicyBundle
from malpi.policy.runtime import StepPolicy
from malpi.policy.spec import random_observation

NAMES = sorted(make_fixtures.RECIPES)
STALE = "is stale: remake it with `python tests/make_fixtures.py` (needs TensorFlow)"


def committed(name: str) -> PolicyBundle:
    return PolicyBundle.from_bytes(
        make_fixtures.read(name),
        expected_actions=DEFAULT_ACTIONS,
        expected_image=(make_fixtures.SPEC.image_height, make_fixtures.SPEC.image_width),
    )


def episode(bundle: PolicyBundle, backend: str, steps: int = 30) -> list[tuple]:
    """Every output of a short episode on smooth random frames, each fed the same history."""
    rng = np.random.default_rng(0)
    policy = StepPolicy(bundle, backend=backend)
    rows = []
    for i in range(steps):
        r = policy.step(random_observation(bundle.spec, rng), NO_ACTION if i == 0 else i % 5)
        rows.append((r.probs.copy(), r.value, policy.h.copy(), policy.c.copy()))
    return rows


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_bundles_are_valid_small_and_distinct(name):
    bundle = committed(name)  # validates everything, with a test step of both LiteRT models
    assert bundle.spec == make_fixtures.SPEC
    assert len(make_fixtures.read(name)) <= 200 * 1024
    others = [committed(n).label for n in NAMES if n != name]
    assert bundle.label not in others


@needs_tf
@pytest.mark.parametrize("name", NAMES)
def test_the_committed_bundles_are_what_the_script_makes(name):
    fresh, kept = make_fixtures.make(name), committed(name)
    where = make_fixtures.path(name).relative_to(make_fixtures.DATA.parent.parent)
    # Everything but the creation time and the LiteRT files' bytes (a converter writes other
    # bytes for the same model), which are judged by what they compute below.
    same = {k: v for k, v in fresh.manifest.items() if k not in ("created", "payloads")}
    assert {k: kept.manifest[k] for k in same} == same, f"{where} {STALE}"
    assert set(kept.manifest) == set(fresh.manifest), f"{where} {STALE}"
    assert kept.manifest["payloads"]["weights.npz"] == fresh.manifest["payloads"]["weights.npz"]
    for key, w in fresh.weights.items():
        np.testing.assert_array_equal(kept.weights[key], w, err_msg=f"{where} {STALE}")
    for backend in ("litert_float", "litert_dynamic", "litert_int8"):
        for got, want in zip(episode(kept, backend), episode(fresh, backend), strict=True):
            worst = max(
                float(np.abs(np.subtract(g, w)).max()) for g, w in zip(got, want, strict=True)
            )
            assert worst <= 1e-5, f"{where}: {backend} outputs differ by {worst:.2e}; {STALE}"
