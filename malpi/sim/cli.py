"""``malpi sim map|view|expert|demo`` and ``malpi bench sim``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands, bench) -> None:
    p = commands.add_parser(
        "sim", help="the built-in simulator: pictures, expert runs, demonstrations"
    )
    sub = p.add_subparsers(dest="sim_command", required=True, metavar="ACTION")

    m = sub.add_parser("map", help="draw a track from above (PNG), optionally with a driven path")
    m.add_argument("--seed", type=int, required=True, help="track seed")
    m.add_argument("--out", required=True, help="PNG file to write")
    m.add_argument(
        "--trajectory", help="path to draw: .csv with x,y columns or .npy (N, 2) in metres"
    )
    m.add_argument(
        "--drive-expert", action="store_true", help="let the expert drive and draw its path"
    )
    m.add_argument("--laps", type=int, default=1, help="laps the expert drives (default 1)")
    m.add_argument(
        "--save-trajectory", metavar="FILE", help="write the expert's path (.csv or .npy)"
    )
    m.add_argument("--size", type=int, default=800, help="longest side of the picture in pixels")
    _car_args(m)
    m.set_defaults(func=cmd_map)

    v = sub.add_parser("view", help="a strip of camera frames along an expert drive (PNG)")
    v.add_argument("--seed", type=int, required=True, help="track seed")
    v.add_argument("--out", required=True, help="PNG file to write")
    v.add_argument("--frames", type=int, default=8, help="number of frames (default 8)")
    v.add_argument(
        "--every", type=int, default=20, help="control steps between frames (default 20)"
    )
    v.add_argument("--cols", type=int, default=4, help="frames per row (default 4)")
    v.add_argument("--scale", type=int, default=2, help="enlarge each frame this many times")
    v.add_argument("--randomize", action="store_true", help="randomise lighting/colour/blur/noise")
    _car_args(v)
    v.set_defaults(func=cmd_view)

    e = sub.add_parser("expert", help="run the expert on tracks without rendering; a table of laps")
    e.add_argument(
        "--seeds",
        type=seeds_arg,
        default="1000-1009",
        help="track seeds, e.g. 1000-1009 or 3,7,9 (default: the standard evaluation set)",
    )
    e.add_argument("--laps", type=int, default=3, help="laps the expert drives on each track")
    _car_args(e)
    e.set_defaults(func=cmd_expert)

    d = sub.add_parser(
        "demo", help="record an expert demonstration (frames, actions, rewards) as .npz"
    )
    d.add_argument("--seed", type=int, required=True, help="track seed")
    d.add_argument("--out", required=True, help=".npz file to write")
    d.add_argument("--steps", type=int, default=1000, help="control steps to record")
    d.add_argument("--noise", type=float, default=0.0, help="chance of a random action per step")
    d.add_argument("--randomize", action="store_true", help="randomise lighting/colour/blur/noise")
    _car_args(d)
    d.set_defaults(func=cmd_demo)

    b = bench.add_parser(
        "sim",
        help="simulator steps/s on one core: the training env, one cached track, CarRacing-v3",
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    b.add_argument("--no-carracing", action="store_true", help="skip the CarRacing-v3 comparison")
    b.set_defaults(func=cmd_bench)


def _car_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--drivetrain",
        choices=("steering", "differential"),
        default="steering",
        help="the simulated car's kinematics",
    )


def parse_seeds(text: str) -> list[int]:
    """'1000-1009', '3,7,9' or a mix ('1-3,8')."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            seeds.extend(range(int(a), int(b) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def seeds_arg(text: str) -> list[int]:
    """:func:`parse_seeds` as an argparse ``type``: the error names the option."""
    try:
        return parse_seeds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of track seeds: e.g. 1000-1009, 3,7,9 or 1-3,8"
        ) from None


def _world(seed: int, drivetrain: str):
    import numpy as np

    from malpi.sim.car import CarParams
    from malpi.sim.world import World

    return World(seed, CarParams(drivetrain=drivetrain), rng=np.random.default_rng(seed))


def cmd_map(args: argparse.Namespace) -> int:
    import numpy as np

    from malpi.sim.expert import Expert
    from malpi.sim.pictures import load_trajectory, save_image, save_trajectory, track_map

    world = _world(args.seed, args.drivetrain)
    path = load_trajectory(args.trajectory) if args.trajectory else None
    if args.drive_expert:
        expert, rows = Expert(), []
        limit = int(args.laps * world.track.length / 0.3 / 0.05) + 100
        while world.laps < args.laps and world.on_track and len(rows) < limit:
            st = world.car.state
            rows.append((world.time, st.x, st.y, st.heading, st.speed))
            world.step(expert.actions.command(expert.act(world)), 0.05)
        st = world.car.state
        rows.append((world.time, st.x, st.y, st.heading, st.speed))
        table = np.array(rows)
        if args.save_trajectory:
            save_trajectory(args.save_trajectory, table, ("t", "x", "y", "heading", "speed"))
        drive = table[:, 1:3]
        path = drive if path is None else np.concatenate([path, drive])
        print(f"expert drove {world.laps} lap(s) in {world.time:.1f} s, on track: {world.on_track}")
    save_image(args.out, track_map(world.track, path, max_px=args.size))
    print(
        f"wrote {args.out}: track {args.seed}, {world.track.length:.1f} m, width {world.track.width:.2f} m"
    )
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from malpi.sim.demo import demonstrate
    from malpi.sim.pictures import camera_strip, save_image

    steps = args.frames * args.every
    demo = demonstrate(args.seed, steps, drivetrain=args.drivetrain, randomize=args.randomize)
    picks = list(range(0, len(demo), args.every))[: args.frames]
    names = [f"t={i * 0.05:.1f}s {demo.speed[i]:.1f}m/s" for i in picks]
    strip = camera_strip([demo.frames[i] for i in picks], names, args.cols, args.scale)
    save_image(args.out, strip)
    print(f"wrote {args.out}: {len(picks)} camera frames from track {args.seed}")
    return 0


def cmd_expert(args: argparse.Namespace) -> int:
    from malpi.sim.expert import drive_laps

    failed = 0
    print(
        f"{'seed':>6} {'length':>7} {'width':>6} {'laps':>5} {'time':>7} {'speed':>6} {'max|cte|':>9}"
    )
    for seed in args.seeds:
        world = _world(seed, args.drivetrain)
        r = drive_laps(world, laps=args.laps)
        ok = r["laps"] >= args.laps and r["on_track"]
        failed += not ok
        print(
            f"{seed:>6} {world.track.length:>6.1f}m {world.track.width:>5.2f}m {r['laps']:>5}"
            f" {r['time_s']:>6.1f}s {r['mean_speed']:>5.2f} {r['max_cte_m']:>8.3f}m {'' if ok else 'FAILED'}"
        )
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from malpi.sim.demo import demonstrate

    demo = demonstrate(
        args.seed,
        args.steps,
        noise_prob=args.noise,
        drivetrain=args.drivetrain,
        randomize=args.randomize,
    )
    demo.save(args.out)
    print(
        f"wrote {args.out}: {len(demo)} steps, {demo.laps} lap(s), "
        f"{'left the track' if demo.terminated else 'stayed on track'}"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from malpi.sim.bench import bench_sim, table

    result = bench_sim(args.seconds, carracing=not args.no_carracing)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
