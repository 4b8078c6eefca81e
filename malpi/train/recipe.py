"""The default policy: how the bundle shipped in ``malpi/data/default.malpi`` is trained.

One command (``malpi train default``) runs every stage in a work directory and
can be rerun after an interruption (finished stages are kept, training resumes
from its last checkpoint):

1. expert demonstrations on training tracks (with perturbations), recorded;
2. behaviour cloning on them (stored state + burn-in: measured to train the
   better driver, see docs/trainer.md);
3. DAgger: roll-outs of the current policy through LiteRT with the expert
   labelling every state and taking over near the edge, then retraining on
   everything gathered, a few times;
4. export (float and int8 LiteRT, parity-checked);
5. evaluation on the held-out standard tracks through LiteRT int8 (the
   daemon's backend) and float, pictures, and a report with the wall time of
   each stage.

Tracks: demonstrations use seeds 0-59 and roll-outs 500-589, all in the
training range (0-999); evaluation uses 1000-1009, which nothing trains on.

With ``--ray`` the simulator work of stages 1, 3 and 5 (demonstrations,
roll-outs, evaluation drives) runs as Ray tasks and the training here; the
results are the same as without it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from malpi.workers import Workers

log = logging.getLogger(__name__)


def _bc_config():
    from malpi.train.augment import Augmentation
    from malpi.train.bc import TrainConfig
    from malpi.train.data import SequenceConfig

    return TrainConfig(
        sequence=SequenceConfig(mode="burnin", length=32, stride=24, burn_in=8),
        batch_size=16,
        epochs=3,
        learning_rate=1e-3,
        class_weight_power=0.5,
        patience=0,
        # half the sequences: the simulator already randomises the looks of half the episodes
        augmentation=Augmentation(prob=0.5),
        checkpoint_every=50,
    )


def _dagger_train_config():
    return replace(_bc_config(), epochs=1, learning_rate=5e-4)


@dataclass(frozen=True)
class Recipe:
    demo_seeds: tuple[int, ...] = tuple(range(0, 60))
    demo_steps: int = 600
    perturb_prob: float = 0.04
    perturb_steps: int = 3
    car: str = "differential"  # the daemon's simulated car
    randomize: float = 0.5
    bc: Any = field(default_factory=_bc_config)
    dagger_iterations: int = 3
    dagger_seeds: tuple[int, ...] = tuple(range(500, 1000))
    dagger_episodes: int = 30
    dagger_steps: int = 600
    dagger_beta: float = 0.3
    dagger_train: Any = field(default_factory=_dagger_train_config)
    val_fraction: float = 0.1
    eval_backends: tuple[str, ...] = ("litert_int8", "litert_dynamic", "litert_float")
    picture_track: int = 1004
    seed: int = 0


DEFAULT_RECIPE = Recipe()


class _Stages:
    """Wall time per stage, kept in the work directory across reruns."""

    def __init__(self, path: Path):
        self.path = path
        self.times: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, fn):
        started = time.monotonic()
        result = fn()
        self.times[name] = round(self.times.get(name, 0.0) + time.monotonic() - started, 1)
        self.path.write_text(json.dumps(self.times, indent=1))
        return result


def run_recipe(
    recipe: Recipe,
    workdir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    picture: str | os.PathLike[str] | None = None,
    strategy_kind: str = "auto",
    progress: bool = False,
    workers: Workers | None = None,
) -> dict[str, Any]:
    """Train, export to ``out``, evaluate; returns the report (also in WORKDIR/report.json).

    ``workers`` (a :class:`malpi.workers.Workers`; here by default) runs the simulator drives."""
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.policy.spec import DEFAULT_SPEC
    from malpi.train.bc import Trainer, export_bundle, load_weights, save_weights
    from malpi.train.dagger import DaggerConfig, dagger
    from malpi.train.demos import DemoConfig, SimSetup, record_demos
    from malpi.train.distribute import make_strategy
    from malpi.train.episodes import load_episodes, split_episodes

    started = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stages = _Stages(workdir / "stage_seconds.json")
    spec, actions = DEFAULT_SPEC, DEFAULT_ACTIONS
    image = (spec.image_height, spec.image_width)
    sim = SimSetup(car=recipe.car, randomize=recipe.randomize, image=image)
    bc_cfg = replace(recipe.bc, progress=progress, seed=recipe.seed)
    dagger_cfg = replace(recipe.dagger_train, progress=progress, seed=recipe.seed)
    strategy = make_strategy(strategy_kind)

    # 1. demonstrations
    demos = workdir / "demos.sqlite"
    demos_done = workdir / "demos.json"
    if not demos_done.exists():
        for stale in workdir.glob("demos.sqlite*"):  # a half-written run: start the stage again
            stale.unlink()
        config = DemoConfig(
            seeds=recipe.demo_seeds,
            steps=recipe.demo_steps,
            perturb_prob=recipe.perturb_prob,
            perturb_steps=recipe.perturb_steps,
            sim=sim,
        )
        stats = stages.run(
            "demos", lambda: record_demos(demos, config, actions, recipe.seed, workers)
        )
        demos_done.write_text(json.dumps(stats))

    # 2. behaviour cloning
    bc_weights = workdir / "bc.npz"
    if not bc_weights.exists():

        def clone():
            episodes = load_episodes([demos], actions, image)
            train, val = split_episodes(episodes, recipe.val_fraction)
            trainer = Trainer(spec, actions, bc_cfg, workdir / "bc", strategy)
            trainer.fit(train, val)
            save_weights(bc_weights, trainer.weights())

        stages.run("behaviour_cloning", clone)

    # 3. DAgger
    final = workdir / "final.npz"
    if not final.exists():
        config = DaggerConfig(
            iterations=recipe.dagger_iterations,
            seeds=recipe.dagger_seeds,
            episodes=recipe.dagger_episodes,
            steps=recipe.dagger_steps,
            beta=recipe.dagger_beta,
            sim=sim,
        )

        def aggregate():
            weights, record = dagger(
                spec,
                actions,
                load_weights(bc_weights),
                [demos],
                workdir / "dagger",
                config,
                dagger_cfg,
                val_fraction=recipe.val_fraction,
                strategy=strategy,
                seed=recipe.seed,
                workers=workers,
            )
            save_weights(final, weights)
            return record

        stages.run("dagger", aggregate)
    record = [
        json.loads(p.read_text()) for p in sorted((workdir / "dagger").glob("iter-*/done.json"))
    ]

    # 4. export
    provenance = {
        "trainer": "malpi.train.recipe (malpi train default)",
        "car": recipe.car,
        "demonstrations": json.loads(demos_done.read_text()),
        "dagger": [{k: v for k, v in r.items() if k != "history"} for r in record],
        "train_seconds": round(sum(stages.times.values()), 1),
    }
    bundle = stages.run(
        "export",
        lambda: export_bundle(
            load_weights(final),
            spec,
            actions,
            out,
            provenance,
            control_hz=1.0 / sim.dt,
            integer_car=recipe.car,
        ),
    )

    # 5. evaluation
    report = {
        "bundle": str(out),
        "label": bundle.label,
        "bytes": Path(out).stat().st_size,
        "stage_seconds": stages.times,
        "train_wall_seconds": round(
            sum(v for k, v in stages.times.items() if k != "evaluation"), 1
        ),
        "evaluations": {},
    }
    report["evaluations"] = stages.run(
        "evaluation", lambda: _evaluate(bundle, recipe, workdir, picture, workers)
    )
    report["stage_seconds"] = stages.times
    report["this_run_seconds"] = round(time.monotonic() - started, 1)
    (workdir / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _evaluate(
    bundle: Any, recipe: Recipe, workdir: Path, picture: Any, workers: Workers | None
) -> dict[str, Any]:
    from malpi.train.evaluate import evaluate_bundle
    from malpi.train.pictures import save_png, trajectory_picture, write_evaluation_pictures

    out = {}
    for backend in recipe.eval_backends:
        if backend not in bundle.models and backend != "tf":
            log.warning("no %s evaluation: the bundle has no model for it", backend)
            continue
        report, drives = evaluate_bundle(
            bundle,
            backend=backend,
            car=recipe.car,
            seed=recipe.seed,
            workers=workers,  # each track's job drives it and the expert, and scores the policy
        )
        (workdir / f"eval-{backend}.json").write_text(json.dumps(report, indent=1))
        write_evaluation_pictures(workdir / f"eval-{backend}", report, drives)
        out[backend] = {k: v for k, v in report.items() if k not in ("confusion",)}
        if picture and backend == next(iter(out)):
            drive = next((d for d in drives if d.track_seed == recipe.picture_track), drives[0])
            save_png(picture, trajectory_picture(drive, report["laps_target"], max_px=360))
    return out
