"""``malpi bench loop | link | stress | ipc | web | scale``: the daemon measured as it runs, what it
rests on, and ``malpi eval`` spread over Ray."""

from __future__ import annotations

import argparse


def register(commands, bench) -> None:  # noqa: ARG001 - benchmarks only
    b = bench.add_parser(
        "loop",
        help="malpi drive on the simulator: missed periods, stage latency, frame to motor "
        "(frame-synchronous and fixed-timer loops side by side)",
    )
    b.add_argument("--rate", type=float, default=30.0, help="control rate in Hz (default 30)")
    b.add_argument("--seconds", type=float, default=60.0, help="how long to drive each way")
    b.add_argument(
        "--trigger",
        choices=("frame", "timer", "both"),
        default="both",
        help="which loop timing to measure (default both)",
    )
    _busy(b)
    b.add_argument(
        "--config", metavar="FILE", help="base configuration (camera/drivetrain are forced to sim)"
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench_loop)

    b = bench.add_parser(
        "link", help="command round trip (plain, CURVE), telemetry throughput, reload stall, pull"
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.add_argument("--rate", type=float, default=30.0, help="control rate in Hz (default 30)")
    b.add_argument("--requests", type=int, default=2000, help="round trips per case")
    b.add_argument("--reloads", type=int, default=5, help="bundles loaded while driving")
    b.add_argument("--policy", metavar="FILE", help="drive and reload this bundle")
    b.add_argument(
        "--no-seed", action="store_true", help="skip the 5.9 M-parameter seed-size bundle"
    )
    _busy(b)
    b.set_defaults(func=cmd_bench_link)

    b = bench.add_parser(
        "stress",
        help="the daemon under attack: CPU hogs, a request flood, 1,100 idle connections, "
        "hot loads, a zip bomb and a pull, all at once",
    )
    b.add_argument("--rate", type=float, default=30.0, help="control rate in Hz (default 30)")
    b.add_argument("--seconds", type=float, default=60.0, help="how long the attack lasts")
    b.add_argument("--connections", type=int, default=1100, help="idle TCP connections")
    b.add_argument("--loads", type=int, default=10, help="seed-size bundles hot-loaded")
    b.add_argument("--hogs", type=int, default=2, help="CPU hog processes")
    b.add_argument(
        "--small", action="store_true", help="load the default-size bundle (no TensorFlow needed)"
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench_stress)

    b = bench.add_parser(
        "ipc", help="ways to move a control period's step between processes (what it costs)"
    )
    b.add_argument("--messages", type=int, default=3000, help="messages as fast as possible")
    b.add_argument("--paced", type=int, default=300, help="messages at the control rate")
    b.add_argument("--rate", type=float, default=30.0, help="control rate in Hz (default 30)")
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench_ipc)

    b = bench.add_parser(
        "web",
        help="the browser console: video and control latency in headless Chromium (3 pages "
        "watching, 1 driving), missed periods; quiet and with a CPU hog",
    )
    b.add_argument("--seconds", type=float, default=60.0, help="how long each condition lasts")
    b.add_argument("--rate", type=float, default=30.0, help="control rate in Hz (default 30)")
    b.add_argument(
        "--condition",
        choices=("quiet", "busy", "both"),
        default="both",
        help="quiet, beside a CPU hog (busy), or both side by side (default)",
    )
    b.add_argument("--hogs", type=int, default=1, help="CPU hogs when busy (default 1)")
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench_web)

    b = bench.add_parser(
        "scale",
        help="malpi eval of the shipped policy on the 100 held-out tracks: in one process vs "
        "on a local Ray of 2 workers, same results; quiet and with a CPU hog",
    )
    b.add_argument(
        "--load",
        choices=("quiet", "busy", "both"),
        default="both",
        help="quiet, beside a CPU hog (busy), or both side by side (default)",
    )
    b.add_argument("--hogs", type=int, default=1, help="CPU hogs when busy (default 1)")
    b.add_argument(
        "--repeat", type=int, default=1, help="runs of each mode per condition, the best kept"
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    # For the tests: fewer tracks and laps (the figures then say nothing of the target).
    b.add_argument("--tracks", type=_track_seeds, default=None, help=argparse.SUPPRESS)
    b.add_argument("--laps", type=int, default=3, help=argparse.SUPPRESS)
    b.set_defaults(func=cmd_bench_scale)


def _track_seeds(text: str) -> list[int]:
    from malpi.sim.cli import seeds_arg

    return seeds_arg(text)


def _busy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="run N CPU hogs beside the daemon (the Pi is never idle; default 0)",
    )


def cmd_bench_loop(args: argparse.Namespace) -> int:
    from malpi.bench import loop as bench

    triggers = ("frame", "timer") if args.trigger == "both" else (args.trigger,)
    bench.run(
        rate_hz=args.rate,
        seconds=args.seconds,
        json_path=args.json,
        config_path=args.config,
        busy=args.busy,
        triggers=triggers,
    )
    return 0


def cmd_bench_link(args: argparse.Namespace) -> int:
    from malpi.bench import link as bench

    bench.run(
        rate_hz=args.rate,
        requests=args.requests,
        reloads=args.reloads,
        json_path=args.json,
        seed_size=not args.no_seed,
        policy=args.policy,
        busy=args.busy,
    )
    return 0


def cmd_bench_stress(args: argparse.Namespace) -> int:
    from malpi.bench import stress

    result = stress.run(
        rate_hz=args.rate,
        seconds=args.seconds,
        connections=args.connections,
        loads=args.loads,
        hogs=args.hogs,
        seed_size=not args.small,
        json_path=args.json,
    )
    return 0 if result["targets_met"] else 1


def cmd_bench_ipc(args: argparse.Namespace) -> int:
    from malpi.bench import ipc

    ipc.run(messages=args.messages, paced=args.paced, rate_hz=args.rate, json_path=args.json)
    return 0


def cmd_bench_web(args: argparse.Namespace) -> int:
    from malpi.bench import web

    conditions = web.CONDITIONS if args.condition == "both" else (args.condition,)
    result = web.run(
        seconds=args.seconds,
        rate_hz=args.rate,
        json_path=args.json,
        conditions=conditions,
        busy=args.hogs,
    )
    return 0 if result["targets_met"] else 1


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from malpi.bench import scale

    conditions = scale.CONDITIONS if args.load == "both" else (args.load,)
    result = scale.run(
        tracks=args.tracks,
        laps=args.laps,
        conditions=conditions,
        hogs=args.hogs,
        json_path=args.json,
        repeat=args.repeat,
    )
    return 0 if result["same_results"] else 1
