"""``malpi eval`` and ``malpi train quantize``: judging a bundle, and giving it an integer model.

Registration imports nothing heavy; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from malpi.workers import add_ray_argument

log = logging.getLogger(__name__)

# The same as malpi.policy.runtime.BACKENDS: spelled out here because registering a command must
# not import the policy runtime.
BACKENDS = ("auto", "litert_int8", "litert_dynamic", "litert_float", "tf")
CARS = ("differential", "steering")
CAR_NOISE = "scale of the simulated car's trim, gain, speed and yaw noise (0: exact kinematics)"


def track_seeds(text: str) -> list[int]:
    """Track seeds (``1000-1009``, ``3,7,9``) as an argparse ``type``."""
    from malpi.sim.cli import seeds_arg

    return seeds_arg(text)


def register(commands, train) -> None:
    """``malpi eval`` among ``commands``, ``quantize`` among ``train``'s sub-commands."""
    e = commands.add_parser(
        "eval", help="evaluate a policy bundle in the simulator (closed loop, LiteRT)"
    )
    e.add_argument("bundle", help="the policy bundle (.malpi) to evaluate")
    e.add_argument(
        "--json",
        metavar="FILE",
        help="write the whole report as JSON to FILE ('-': print it instead of the summary)",
    )
    e.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how to run the policy (default auto, the daemon's: litert_int8 when the bundle "
        "has an integer model, else litert_dynamic)",
    )
    e.add_argument(
        "--tracks",
        type=track_seeds,
        default="1000-1009",
        help="evaluation track seeds, e.g. 1000-1009 or 3,7,9 (default: the standard set)",
    )
    e.add_argument("--laps", type=int, default=3, help="laps to complete on each track")
    e.add_argument(
        "--max-steps", type=int, default=3000, help="control steps before a track is given up"
    )
    e.add_argument(
        "--car",
        choices=CARS,
        default=None,
        help="the simulated car (default: the bundle's, else differential)",
    )
    e.add_argument("--car-noise", type=float, default=1.0, help=CAR_NOISE)
    e.add_argument(
        "--data",
        nargs="*",
        help="held-out episodes for next-action accuracy (default: expert drives on the tracks)",
    )
    e.add_argument(
        "--pictures", metavar="DIR", help="write trajectories.png and confusion.png here"
    )
    e.add_argument("--seed", type=int, default=0, help="car noise seed")
    add_ray_argument(e)
    e.set_defaults(func=cmd_eval)

    q = train.add_parser(
        "quantize",
        help="add an integer model (int8 weights and activations) to a bundle, calibrated on "
        "simulated drives and recordings, if it agrees with float on held-out frames",
    )
    q.add_argument("bundle", help="the policy bundle (.malpi)")
    q.add_argument("--out", help="bundle to write (default: none, only measure)")
    q.add_argument(
        "--data", nargs="*", default=[], help="the car's recordings (.sqlite) to calibrate on too"
    )
    q.add_argument(
        "--car", choices=CARS, default=None, help="the simulated car (default: the bundle's)"
    )
    q.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="argmax agreement with float on held-out frames below which it is not kept",
    )
    q.add_argument(
        "--all-integer",
        action="store_true",
        help="measure an all-integer model (the LSTM cell in int8 too); never written",
    )
    q.set_defaults(func=cmd_quantize)


def cmd_eval(args: argparse.Namespace) -> int:
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.policy.bundle import PolicyBundle
    from malpi.train.evaluate import DEFAULT_CAR, evaluate_bundle, held_out_from_episodes
    from malpi.workers import Workers

    workers = Workers(args.ray)  # first: a cluster that cannot be joined fails before any work
    bundle = PolicyBundle.load(args.bundle)
    car = args.car or bundle.manifest["provenance"].get("car") or DEFAULT_CAR
    held_out = None
    if args.data:
        from malpi.train.episodes import load_episodes

        spec = bundle.spec
        held_out = held_out_from_episodes(
            load_episodes(
                args.data, bundle.actions or DEFAULT_ACTIONS, (spec.image_height, spec.image_width)
            )
        )
    report, drives = evaluate_bundle(
        bundle,
        backend=args.backend,
        seeds=args.tracks,
        laps=args.laps,
        max_steps=args.max_steps,
        car=car,
        car_noise=args.car_noise,
        held_out=held_out,
        seed=args.seed,
        workers=workers,
    )
    if args.pictures:
        from malpi.train.pictures import write_evaluation_pictures

        for path in write_evaluation_pictures(args.pictures, report, drives):
            log.info("wrote %s", path)
    if args.json == "-":
        print(json.dumps(report, indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(eval_summary(report)))
    if args.json:
        print(f"\nthe whole report: {args.json}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from malpi.policy.bundle import PolicyBundle
    from malpi.train.evaluate import DEFAULT_CAR
    from malpi.train.quantize import quantize

    bundle = PolicyBundle.load(args.bundle)
    car = args.car or bundle.manifest["provenance"].get("car") or DEFAULT_CAR
    new, report = quantize(bundle, car, args.data, args.all_integer, args.min_agreement)
    what = "all-integer model" if args.all_integer else "integer model"
    print(
        f"{what}: argmax agrees with float on {100 * report['argmax_agreement']:.2f} % of "
        f"{report['steps']:,} held-out steps (largest probability difference "
        f"{report['max_prob_diff']:.3f})"
    )
    if args.all_integer:
        return 0
    print(f"dynamic-range model: {100 * report['dynamic_range_agreement']:.2f} % of the same steps")
    if not report["kept"]:
        print(f"not kept: under the {100 * args.min_agreement:.0f} % required; nothing written")
        return 1
    if args.out:
        new.save(args.out)
        size = len(new.tflite_integer or b"")
        print(f"wrote {args.out} ({new.label}, integer model {size:,} bytes)")
    return 0


def eval_summary(report: dict[str, Any]) -> list[str]:
    """``malpi eval``'s report for a person: the headline figures, each track, the confusion."""
    from malpi.textout import fields, table

    def num(value: float | None, fmt: str, unit: str = "") -> str:
        return "-" if value is None else f"{value:{fmt}}{unit}"

    laps = report["laps_target"]
    lines = fields(
        [
            ("policy", f"{report['bundle']} ({report['backend']}, {report['car']} car)"),
            (
                "tracks",
                f"{report['tracks']}, {laps} lap{'s' * (laps != 1)} each ({report['seconds']:g} s)",
            ),
            ("completed", f"{report['completed_tracks']} of {report['tracks']} tracks"),
            ("left the track", f"on {report['offtrack_episodes']} tracks"),
            ("laps", f"mean {report['laps_mean']:.2f}"),
            ("cross-track", f"mean {num(report['mean_cte_m'], '.3f', ' m')}"),
            ("speed", f"mean {num(report['mean_speed_mps'], '.2f', ' m/s')}"),
            (
                "next action",
                f"accuracy {num(report['next_action_accuracy'], '.3f')}, log-likelihood "
                f"{num(report['log_likelihood_per_step'], '.3f')} per step "
                f"({report['held_out_steps']} held-out expert steps)",
            ),
        ]
    )
    if report["per_track"]:
        lines += ["", "per track"]
        lines += table(
            ("track", "laps", "left it", "steps", "time (s)", "mean |cte| (m)", "max |cte|", "m/s"),
            (
                (t["track"], t["laps"], t["left_track"], t["steps"], f"{t['time_s']:.1f}",
                 f"{t['mean_cte_m']:.3f}", f"{t['max_cte_m']:.3f}", f"{t['mean_speed_mps']:.2f}")
                for t in report["per_track"]
            ),
            indent="  ",
        )  # fmt: skip
    if report.get("confusion"):
        names = report["actions"]
        lines += ["", "next action: the expert's (rows) against the policy's (columns), steps"]
        lines += table(
            ("", *names),
            (
                (name, *(f"{v:.0f}" for v in row))
                for name, row in zip(names, report["confusion"], strict=True)
            ),
            indent="  ",
        )
    return lines
