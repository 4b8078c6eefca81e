"""``malpi train demos|bc|dagger|default|compare|plot``; ``malpi eval`` and ``malpi train
quantize`` are :mod:`malpi.train.eval_cli`'s.

Registration imports nothing heavy; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from malpi.train import eval_cli
from malpi.train.eval_cli import CAR_NOISE, CARS
from malpi.train.eval_cli import track_seeds as _seeds
from malpi.workers import Workers, add_ray_argument

log = logging.getLogger(__name__)

# The same as train.data.STATE_MODES and train.distribute.STRATEGIES: spelled out here because
# registering a command must not import those (TensorFlow).
STATE_MODES = ("burnin", "tbptt", "zero")
STRATEGIES = ("auto", "default", "mirrored", "multiworker")


def _image(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` as an argparse ``type``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HEIGHTxWIDTH in pixels, e.g. 120x160"
        ) from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: both sizes must be positive")
    return h, w


def _state_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    wrong = [m for m in modes if m not in STATE_MODES]
    if wrong or not modes:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of {', '.join(STATE_MODES)}"
        )
    return modes


def register(commands, bench) -> None:
    p = commands.add_parser(
        "train",
        help="train policies: demonstrations, behaviour cloning, DAgger, the default policy",
    )
    sub = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")

    d = sub.add_parser("demos", help="record expert demonstrations in the simulator (SQLite)")
    d.add_argument("--out", required=True, help="episode database to write (appends)")
    d.add_argument(
        "--tracks", type=_seeds, default="0-59", help="training track seeds, e.g. 0-59 or 3,7,9"
    )
    d.add_argument("--steps", type=int, default=600, help="control steps per episode")
    d.add_argument(
        "--episodes-per-track", type=int, default=1, help="episodes recorded on each track"
    )
    d.add_argument("--perturb", type=float, default=0.04, help="chance per step of a perturbation")
    d.add_argument("--perturb-steps", type=int, default=3, help="a perturbation lasts 1..N steps")
    d.add_argument(
        "--image", type=_image, default="120x160", help="camera HEIGHTxWIDTH (the policy's input)"
    )
    _sim_args(d)
    d.add_argument("--seed", type=int, default=0, help="random seed (perturbations, looks)")
    add_ray_argument(d)
    d.set_defaults(func=cmd_demos)

    b = sub.add_parser("bc", help="behaviour cloning on recorded episodes -> a policy bundle")
    b.add_argument(
        "--data", nargs="+", required=True, help="episode databases (.sqlite) or sim demos (.npz)"
    )
    b.add_argument("--out", required=True, help="policy bundle to write")
    _train_args(b)
    b.set_defaults(func=cmd_bc)

    g = sub.add_parser("dagger", help="DAgger in the simulator from a policy -> a better bundle")
    g.add_argument(
        "--data", nargs="+", default=[], help="episodes to aggregate with (demos, car recordings)"
    )
    g.add_argument("--out", required=True, help="policy bundle to write")
    g.add_argument("--iterations", type=int, default=3, help="rounds of roll out, label, retrain")
    g.add_argument("--episodes", type=int, default=30, help="roll-outs per iteration")
    g.add_argument("--rollout-steps", type=int, default=600, help="control steps per roll-out")
    g.add_argument(
        "--tracks",
        type=_seeds,
        default="500-999",
        help="track seeds for roll-outs (used in order)",
    )
    g.add_argument(
        "--beta", type=float, default=0.3, help="chance the expert acts, first iteration"
    )
    g.add_argument(
        "--beta-decay", type=float, default=0.5, help="beta is multiplied by this each iteration"
    )
    g.add_argument(
        "--takeover",
        type=float,
        default=0.7,
        help="the expert takes over this far off the centre line (fraction of the half-width; 0 = never)",
    )
    _sim_args(g)
    _train_args(g)
    add_ray_argument(g)
    g.set_defaults(func=cmd_dagger)

    f = sub.add_parser(
        "default", help="train the shipped default policy (demos + BC + DAgger + export + eval)"
    )
    f.add_argument(
        "--out",
        required=True,
        help="bundle to write (the shipped one is malpi/data/default.malpi in a checkout)",
    )
    f.add_argument(
        "--workdir", default="/tmp/malpi-train/default", help="data, checkpoints, logs (resumable)"
    )
    f.add_argument("--picture", help="also write a trajectory PNG of one evaluation track here")
    f.add_argument(
        "--strategy", choices=STRATEGIES, default="auto", help="TensorFlow distribution strategy"
    )
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_argument(f)
    f.set_defaults(func=cmd_default)

    c = sub.add_parser("compare", help="measure TBPTT vs stored state + burn-in vs zero state")
    c.add_argument(
        "--data", nargs="+", required=True, help="episode databases (.sqlite) or sim demos (.npz)"
    )
    c.add_argument("--workdir", required=True, help="each mode's training goes in a directory here")
    c.add_argument(
        "--modes",
        type=_state_modes,
        default="zero,tbptt,burnin",
        help="LSTM state modes to train and compare",
    )
    c.add_argument("--json", metavar="FILE", help="write the table as JSON")
    c.add_argument(
        "--tracks",
        type=_seeds,
        default="1000-1009",
        help="closed-loop tracks (default: the standard set)",
    )
    _train_args(c, with_workdir=False, with_mode=False)
    c.set_defaults(func=cmd_compare)

    pl = sub.add_parser("plot", help="training curves (and confusion matrix) of a training workdir")
    pl.add_argument("workdir", help="a training workdir (holding history.json)")
    pl.add_argument("--out", help="PNG to write (default: WORKDIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    eval_cli.register(commands, sub)


def _sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--car",
        choices=CARS,
        default="differential",
        help="the simulated car (the daemon's: differential)",
    )
    p.add_argument("--car-noise", type=float, default=1.0, help=CAR_NOISE)
    p.add_argument(
        "--randomize", type=float, default=0.5, help="fraction of episodes with randomised looks"
    )


def _train_args(
    p: argparse.ArgumentParser, with_workdir: bool = True, with_mode: bool = True
) -> None:
    if with_workdir:
        p.add_argument(
            "--workdir",
            default=None,
            help="checkpoints, logs, history (default: OUT.d/); reruns resume",
        )
        p.add_argument(
            "--init", help="start from these weights (a bundle or .npz); its spec is kept"
        )
    if with_mode:  # not for compare, which trains every mode in --modes
        p.add_argument(
            "--mode", choices=STATE_MODES, default="burnin", help="LSTM state of long episodes"
        )
    p.add_argument("--length", type=int, default=32, help="steps per training sequence")
    p.add_argument(
        "--stride", type=int, default=None, help="burnin/zero: steps between windows (3/4 length)"
    )
    p.add_argument("--burn-in", type=int, default=None, help="burnin: warm-up steps (1/4 length)")
    p.add_argument("--batch", type=int, default=16, help="sequences per batch (global)")
    p.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="passes over the data (early stopping may end sooner)",
    )
    p.add_argument("--steps-per-epoch", type=int, default=0, help="cap on batches per epoch")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam)")
    p.add_argument("--class-weight-power", type=float, default=0.5, help="0 none .. 1 balanced")
    p.add_argument(
        "--intervention-weight",
        type=float,
        default=3.0,
        help="weight of the steps an operator took over from the policy",
    )
    p.add_argument(
        "--policy-weight",
        type=float,
        default=0.0,
        help="weight of the policy's own unlabelled steps",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of episodes held out to validate"
    )
    p.add_argument("--patience", type=int, default=3, help="early stopping (0 = off)")
    p.add_argument("--no-augment", action="store_true", help="no image augmentation")
    p.add_argument(
        "--no-integer",
        action="store_true",
        help="no integer model in the bundle (it costs a minute of simulated drives and "
        "calibration; without it the robot runs the dynamic-range model)",
    )
    p.add_argument(
        "--spec", help="JSON/TOML file with policy spec fields (default: the default spec)"
    )
    p.add_argument(
        "--strategy", choices=STRATEGIES, default="auto", help="TensorFlow distribution strategy"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed (weights, windows, augmentation)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_config(args: argparse.Namespace):
    from malpi.train.augment import NO_AUGMENTATION, Augmentation
    from malpi.train.bc import TrainConfig
    from malpi.train.data import SequenceConfig

    return TrainConfig(
        sequence=SequenceConfig(
            getattr(args, "mode", "burnin"),  # compare sets each mode itself
            args.length,
            args.stride if args.stride is not None else max(1, args.length * 3 // 4),
            args.burn_in if args.burn_in is not None else args.length // 4,
        ),
        batch_size=args.batch,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.lr,
        class_weight_power=args.class_weight_power,
        patience=args.patience,
        augmentation=NO_AUGMENTATION if args.no_augment else Augmentation(),
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def _spec_and_weights(args: argparse.Namespace):
    from malpi.policy.spec import DEFAULT_SPEC, PolicySpec

    init = getattr(args, "init", None)
    if init:
        from malpi.policy.bundle import PolicyBundle
        from malpi.train.bc import load_weights

        if init.endswith(".malpi"):
            bundle = PolicyBundle.load(init, check_models=False)
            return bundle.spec, bundle.weights, bundle
        weights = load_weights(init)
    else:
        weights = None
    if args.spec:
        from malpi.policy.cli import _read_table

        spec = PolicySpec.from_dict(_read_table(args.spec))
    else:
        spec = DEFAULT_SPEC
    return spec, weights, None


def _weights_config(args: argparse.Namespace):
    from malpi.train.episodes import StepWeights

    return StepWeights(intervention=args.intervention_weight, policy=args.policy_weight)


def _sim_setup(args: argparse.Namespace, image: tuple[int, int]):
    from malpi.train.demos import SimSetup

    return SimSetup(car=args.car, car_noise=args.car_noise, randomize=args.randomize, image=image)


def _print(data: dict[str, Any], path: str | None) -> None:
    text = json.dumps(data, indent=2)
    if path:
        Path(path).write_text(text + "\n")
    print(text)


# -- handlers ----------------------------------------------------------------------------------


def cmd_demos(args: argparse.Namespace) -> int:
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.train.demos import DemoConfig, record_demos

    workers = Workers(args.ray)  # first: a cluster that cannot be joined stops us before writing
    config = DemoConfig(
        seeds=args.tracks,
        steps=args.steps,
        episodes_per_track=args.episodes_per_track,
        perturb_prob=args.perturb,
        perturb_steps=args.perturb_steps,
        sim=_sim_setup(args, args.image),
    )
    _print(record_demos(args.out, config, DEFAULT_ACTIONS, seed=args.seed, workers=workers), None)
    return 0


def _train(args: argparse.Namespace, out: str) -> tuple[Any, Any, Path, dict]:
    """Shared by bc and dagger: spec, actions, workdir, base provenance."""
    spec, weights, parent = _spec_and_weights(args)
    workdir = Path(args.workdir or f"{out}.d")
    provenance = {
        "trainer": "malpi.train",
        "command": " ".join(sys.argv[1:]),
        "data": [str(p) for p in args.data],
        "train_config": _train_config(args).to_dict(),
    }
    return spec, weights, workdir, {"provenance": provenance, "parent": parent}


def cmd_bc(args: argparse.Namespace) -> int:
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.train.bc import Trainer, export_bundle
    from malpi.train.distribute import make_strategy
    from malpi.train.episodes import data_control_hz, load_episodes, split_episodes

    spec, weights, workdir, meta = _train(args, args.out)
    actions = meta["parent"].actions if meta["parent"] else DEFAULT_ACTIONS
    strategy = make_strategy(args.strategy)
    episodes = load_episodes(
        args.data, actions, (spec.image_height, spec.image_width), _weights_config(args)
    )
    train, val = split_episodes(episodes, args.val_fraction)
    trainer = Trainer(spec, actions, _train_config(args), workdir, strategy, init_weights=weights)
    progress = trainer.fit(train, val)
    if not trainer.chief:
        return 0
    parent = meta["parent"]
    bundle = export_bundle(
        trainer.weights(),
        spec,
        actions,
        args.out,
        {**meta["provenance"], "best_val_nll": progress.best_val_nll, "epochs": progress.epoch},
        version=parent.version + 1 if parent else 1,
        parent=parent.id if parent else None,
        control_hz=data_control_hz(episodes),
        integer_car=None if args.no_integer else "differential",
        recordings=args.data,
    )
    print(f"wrote {args.out} ({bundle.label})")
    return 0


def cmd_dagger(args: argparse.Namespace) -> int:
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.policy.model import build_policy
    from malpi.train.bc import export_bundle
    from malpi.train.dagger import DaggerConfig, dagger
    from malpi.train.distribute import make_strategy

    workers = Workers(args.ray)
    spec, weights, workdir, meta = _train(args, args.out)
    parent = meta["parent"]
    actions = parent.actions if parent else DEFAULT_ACTIONS
    if weights is None:
        weights = build_policy(spec, seed=args.seed).named_weights()
    config = DaggerConfig(
        iterations=args.iterations,
        seeds=args.tracks,
        episodes=args.episodes,
        steps=args.rollout_steps,
        beta=args.beta,
        beta_decay=args.beta_decay,
        takeover=args.takeover or None,
        sim=_sim_setup(args, (spec.image_height, spec.image_width)),
    )
    weights, record = dagger(
        spec,
        actions,
        weights,
        [],
        workdir,
        config,
        _train_config(args),
        extra_data=args.data,
        val_fraction=args.val_fraction,
        strategy=make_strategy(args.strategy),
        seed=args.seed,
        workers=workers,
    )
    bundle = export_bundle(
        weights,
        spec,
        actions,
        args.out,
        {
            **meta["provenance"],
            "dagger": [{k: v for k, v in r.items() if k != "history"} for r in record],
        },
        version=parent.version + 1 if parent else 1,
        parent=parent.id if parent else None,
        control_hz=1.0 / config.sim.dt,
        integer_car=None if args.no_integer else config.sim.car,
        recordings=args.data,
    )
    print(f"wrote {args.out} ({bundle.label})")
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    from malpi.train.recipe import DEFAULT_RECIPE, run_recipe

    workers = Workers(args.ray)
    report = run_recipe(
        DEFAULT_RECIPE,
        args.workdir,
        args.out,
        picture=args.picture,
        strategy_kind=args.strategy,
        progress=not args.no_progress and sys.stderr.isatty(),
        workers=workers,
    )
    _print(report, None)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from malpi.train.compare import compare_state_modes

    table = compare_state_modes(
        args.data,
        args.workdir,
        args.modes,
        _train_config(args),
        tracks=args.tracks,
        val_fraction=args.val_fraction,
        strategy_kind=args.strategy,
    )
    _print(table, args.json)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from malpi.train.pictures import save_png, training_curves, write_training_pictures

    workdir = Path(args.workdir)
    history = workdir / "history.json"
    if not history.exists():
        raise FileNotFoundError(f"{history} does not exist: not a training workdir")
    if args.out:
        save_png(args.out, training_curves(json.loads(history.read_text())))
    else:
        write_training_pictures(workdir)
    print(f"wrote {args.out or workdir / 'curves.png'}")
    return 0
