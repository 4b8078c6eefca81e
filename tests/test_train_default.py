"""The default policy shipped in the package loads as the daemon loads it and drives."""

from __future__ import annotations

import pytest
from extras import NEEDS_GYM

pytest.importorskip("gymnasium", reason=NEEDS_GYM)

from malpi.config import Config
from malpi.policy.bundle import PolicyBundle
from malpi.policy.runtime import StepPolicy
from malpi.policy.store import shipped_policy
from malpi.train.evaluate import drive_track

SHIPPED = shipped_policy()


def test_the_shipped_default_policy_loads_and_drives_an_eval_track_without_leaving_it():
    config = Config()
    data = SHIPPED.read_bytes()
    assert len(data) <= 5 * 1024 * 1024
    bundle = PolicyBundle.from_bytes(
        data,
        expected_actions=config.action_table,
        expected_image=(config.camera.height, config.camera.width),
    )
    assert bundle.manifest["provenance"]["car"] == config.sim.car
    assert bundle.manifest["provenance"]["integer"]["argmax_agreement"] >= 0.99
    policy = StepPolicy(bundle, backend=config.policy.backend)  # auto: the integer model
    assert policy.backend_name == "litert_int8"
    drive = drive_track(policy, 1000, laps=1, car=config.sim.car)
    assert drive.laps >= 1 and not drive.left_track
    assert drive.mean_cte < 0.5 * drive.half_width
