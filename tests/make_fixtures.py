"""The tiny policy bundles the daemon, link and bundle tests drive, committed in tests/data/.

The robot install (``pip install -e '.[robot,dev]'``) has no TensorFlow, so it cannot make a
policy; with these files it runs those tests on the same model as the full install. Remake them
after changing the spec below, the model or the bundle format (needs TensorFlow, the train extra)::

    python tests/make_fixtures.py

``test_fixtures.py`` checks, wherever TensorFlow is installed, that the committed files are still
what this script makes: the same manifest but for its creation time, the same weights, and LiteRT
models that compute the same outputs. Reading them needs no TensorFlow.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from malpi.actions import DEFAULT_ACTIONS
from malpi.policy.bundle import PolicyBundle
from malpi.policy.spec import ConvLayer, PolicySpec

DATA = Path(__file__).resolve().parent / "data"

# Sized to the camera the daemon tests configure (48 x 64), with every part of the real policy
# (convolutions, bottleneck, LSTM, both heads), and small: about 90 KB a bundle.
SPEC = PolicySpec(
    image_height=48,
    image_width=64,
    conv=(ConvLayer(8, 5, 3), ConvLayer(16, 3, 2), ConvLayer(16, 3, 2)),
    bottleneck=16,
    lstm_units=16,
    num_actions=5,
)

# name: (seed, sharpened). "b" is another policy than "a" (another label, other decisions).
RECIPES = {"a": (2, False), "b": (7, True)}


def path(name: str) -> Path:
    return DATA / f"tiny-{name}.malpi"


@functools.cache
def read(name: str) -> bytes:
    """The committed bundle ``name`` ("a" or "b")."""
    return path(name).read_bytes()


def make(name: str) -> PolicyBundle:
    """Build bundle ``name`` afresh (TensorFlow)."""
    from policy_helpers import sharpen

    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy
    from malpi.policy.quantize import calibration_samples, integer_model

    seed, sharpened = RECIPES[name]
    net = build_policy(SPEC, seed=seed)
    if sharpened:
        sharpen(net)
    provenance = {"made_by": "tests/make_fixtures.py", "seed": seed, "sharpened": sharpened}
    bundle = make_bundle(net, DEFAULT_ACTIONS, provenance=provenance)
    # An integer model too, so that the robot install's tests run the backend a Pi runs;
    # calibrated on random frames (no simulator here), which is all a test policy sees.
    samples = calibration_samples(bundle, random_episodes(seed), limit=100)
    return bundle.with_integer_model(
        integer_model(net, samples), {"calibration": "random frames (a test fixture)"}
    )


def random_episodes(seed: int, episodes: int = 3, steps: int = 40):
    """(frames, actions) of random smooth images and random actions."""
    import numpy as np

    from malpi.policy.spec import random_observation

    rng = np.random.default_rng(seed)
    return [
        (
            np.stack([random_observation(SPEC, rng) for _ in range(steps)]),
            rng.integers(0, SPEC.num_actions, steps),
        )
        for _ in range(episodes)
    ]


def main() -> int:
    for name in RECIPES:
        bundle = make(name)
        bundle.save(path(name))
        print(f"{path(name)}: {bundle.label}, {len(bundle.to_bytes())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
