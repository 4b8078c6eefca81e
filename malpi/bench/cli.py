"""``malpi bench loop`` and ``malpi bench link``: the daemon measured as it runs."""

from __future__ import annotations

import argparse


def register(commands, bench) -> None:  # noqa: ARG001 - benchmarks only
    b = bench.add_parser(
        "loop", help="the daemon on the simulator: period jitter and per-stage latency"
    )
    b.add_argument("--rate", type=float, default=30.0, help="control rate in Hz (default 30)")
    b.add_argument("--seconds", type=float, default=60.0, help="how long to drive (default 60)")
    b.add_argument(
        "--config", metavar="FILE", help="base configuration (camera/drivetrain are forced to sim)"
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench_loop)
    b = bench.add_parser(
        "link", help="command round trip (plain, CURVE), telemetry throughput, reload stall"
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.add_argument("--rate", type=float, default=30.0, help="control rate in Hz (default 30)")
    b.add_argument("--requests", type=int, default=2000, help="round trips per case")
    b.add_argument("--reloads", type=int, default=5, help="bundles loaded while driving")
    b.add_argument("--policy", metavar="FILE", help="drive and reload this bundle")
    b.add_argument(
        "--no-seed", action="store_true", help="skip the 5.9 M-parameter seed-size bundle"
    )
    b.set_defaults(func=cmd_bench_link)


def cmd_bench_link(args: argparse.Namespace) -> int:
    from malpi.bench import link as bench

    bench.run(
        rate_hz=args.rate,
        requests=args.requests,
        reloads=args.reloads,
        json_path=args.json,
        seed_size=not args.no_seed,
        policy=args.policy,
    )
    return 0


def cmd_bench_loop(args: argparse.Namespace) -> int:
    from malpi.bench import loop as bench

    bench.run(rate_hz=args.rate, seconds=args.seconds, json_path=args.json, config_path=args.config)
    return 0
