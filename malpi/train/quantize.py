"""Frames for the integer model: calibration and a held-out check, from the simulator and the car.

Calibration drives the expert on training tracks (never the evaluation set) and,
when given, takes the car's own recordings; the check against float uses the
expert on the held-out evaluation tracks and, when given, the recordings held
out from calibration (every fifth episode).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from malpi.policy.bundle import PolicyBundle

log = logging.getLogger(__name__)

CALIBRATION_TRACKS = range(0, 8)  # training tracks: no evaluation track calibrates
CHECK_TRACKS = range(1000, 1010)  # the standard evaluation set
CALIBRATION_STEPS = 300
CHECK_STEPS = 600

Episodes = list[tuple[np.ndarray, np.ndarray]]


def integer_data(
    bundle: PolicyBundle,
    car: str,
    recordings: Sequence[str] = (),
    calibration_tracks: Sequence[int] = CALIBRATION_TRACKS,
    check_tracks: Sequence[int] = CHECK_TRACKS,
) -> tuple[Episodes, Episodes, dict[str, Any]]:
    """(calibration episodes, held-out episodes, where they came from) for ``bundle``."""
    from malpi.train.evaluate import expert_drives

    def drives(tracks: Sequence[int], steps: int) -> Episodes:
        return [(d.frames, d.actions) for d in expert_drives(bundle, tracks, steps, car)]

    calibration = drives(calibration_tracks, CALIBRATION_STEPS)
    check = drives(check_tracks, CHECK_STEPS)
    sources: dict[str, Any] = {
        "sim_tracks": _span(calibration_tracks),
        "held_out_sim_tracks": _span(check_tracks),
    }
    if recordings:
        from malpi.actions import DEFAULT_ACTIONS
        from malpi.train.episodes import load_episodes
        from malpi.train.evaluate import held_out_from_episodes

        spec = bundle.spec
        episodes = held_out_from_episodes(
            load_episodes(
                recordings, bundle.actions or DEFAULT_ACTIONS, (spec.image_height, spec.image_width)
            )
        )
        for i, ep in enumerate(episodes):
            (check if i % 5 == 4 else calibration).append((ep.frames, ep.actions))
        sources["recorded_episodes"] = len(episodes)
    return calibration, check, sources


def quantize(
    bundle: PolicyBundle,
    car: str,
    recordings: Sequence[str] = (),
    all_integer: bool = False,
    min_agreement: float | None = None,
) -> tuple[PolicyBundle, dict[str, Any]]:
    """``bundle`` with an integer model (see :func:`malpi.policy.quantize.add_integer_model`)."""
    from malpi.policy import quantize as q
    from malpi.policy.model import build_policy

    net = build_policy(bundle.spec)
    net.set_named_weights(bundle.weights)
    calibration, check, sources = integer_data(bundle, car, recordings)
    if all_integer:  # the comparison the module's note quotes: measured, never kept
        samples = q.calibration_samples(bundle, calibration)
        model = q.integer_model(net, samples, all_integer=True)
        return bundle, {"all_integer": True, **q.agreement(bundle, model, check)}
    return q.add_integer_model(
        net, bundle, calibration, check, sources, min_agreement or q.MIN_AGREEMENT
    )


def _span(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}-{seeds[-1]}" if contiguous else ",".join(map(str, seeds))
