"""Which way of handling the LSTM state trains the better policy? Measured, at equal compute.

Each mode in ``modes`` (``zero``, ``tbptt``, ``burnin``; see :mod:`malpi.train.data`)
trains a policy from the same initial weights on the same episodes with the same
number of batches of the same size (so the same frames go through the network:
every mode gets as many batches per epoch as TBPTT needs for one pass), and is
then scored the same ways:

- validation log-likelihood and next-action accuracy on held-out episodes run
  whole, from a zero state, as the robot runs them;
- closed-loop driving through LiteRT on the evaluation tracks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from malpi.train.bc import TrainConfig

log = logging.getLogger(__name__)


def compare_state_modes(
    data: Sequence[str | os.PathLike[str]],
    workdir: str | os.PathLike[str],
    modes: Sequence[str],
    config: TrainConfig,
    tracks: Sequence[int],
    val_fraction: float = 0.1,
    strategy_kind: str = "default",
    backend: str = "litert_float",
) -> dict[str, Any]:
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.policy.spec import DEFAULT_SPEC
    from malpi.train.bc import Trainer, export_bundle
    from malpi.train.data import FrameTable, lane_plan
    from malpi.train.distribute import make_strategy
    from malpi.train.episodes import data_control_hz, load_episodes, split_episodes
    from malpi.train.evaluate import evaluate_bundle

    spec, actions = DEFAULT_SPEC, DEFAULT_ACTIONS
    workdir = Path(workdir)
    episodes = load_episodes(data, actions, (spec.image_height, spec.image_width))
    train, val = split_episodes(episodes, val_fraction)
    # The common budget: batches per epoch of one TBPTT pass over the training episodes.
    table = FrameTable(train, (spec.image_height, spec.image_width))
    budget = lane_plan(table, config.sequence.length, config.batch_size, None).steps
    if config.steps_per_epoch:
        budget = min(budget, config.steps_per_epoch)
    strategy = make_strategy(strategy_kind)
    rows: dict[str, Any] = {}
    for mode in modes:
        cfg = replace(
            config,
            sequence=replace(config.sequence, mode=mode),
            steps_per_epoch=budget,
            patience=0,  # the same number of updates for every mode
        )
        started = time.monotonic()
        trainer = Trainer(spec, actions, cfg, workdir / mode, strategy)
        progress = trainer.fit(train, val)
        seconds = time.monotonic() - started
        final = progress.history[-1] if progress.history else {}
        bundle = export_bundle(
            trainer.weights(),
            spec,
            actions,
            workdir / mode / "policy.malpi",
            {"mode": mode},
            control_hz=data_control_hz(episodes),
        )
        report, _ = evaluate_bundle(bundle, backend=backend, seeds=tracks, held_out=[])
        rows[mode] = {
            "val_nll": final.get("val_nll"),
            "val_accuracy": final.get("val_accuracy"),
            "best_val_nll": progress.best_val_nll,
            "completed_tracks": report["completed_tracks"],
            "laps_mean": report["laps_mean"],
            "offtrack_episodes": report["offtrack_episodes"],
            "mean_cte_m": report["mean_cte_m"],
            "train_seconds": round(seconds, 1),
            "batches": progress.global_step,
        }
        log.info("%s: %s", mode, rows[mode])
    return {
        "batches_per_epoch": budget,
        "epochs": config.epochs,
        "batch": config.batch_size,
        "length": config.sequence.length,
        "train_episodes": len(train),
        "val_episodes": len(val),
        "tracks": list(tracks),
        "backend": backend,
        "modes": rows,
    }
