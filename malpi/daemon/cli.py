"""``malpi drive`` (the daemon) and ``malpi config show``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(commands, bench) -> None:
    d = commands.add_parser("drive", help="run the robot daemon (on the simulator with --sim)")
    _config_args(d)
    d.add_argument(
        "--sim", action="store_true", help="use the built-in simulator for camera and drivetrain"
    )
    d.add_argument(
        "--mode",
        choices=("paused", "manual", "auto"),
        help="mode to enter after start-up (default: auto with --sim, otherwise paused)",
    )
    d.add_argument(
        "--no-record",
        action="store_true",
        help='no recorder at all (recording.path = ""): nothing is recorded or locked',
    )
    d.add_argument("--no-link", action="store_true", help="do not serve the ZeroMQ link")
    d.add_argument("--duration", type=float, help="stop after this many seconds")
    d.add_argument("--quiet", action="store_true", help="no live status line")
    d.set_defaults(func=cmd_drive)

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

    c = commands.add_parser("config", help="show the effective configuration")
    sub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="validate and print the effective configuration as TOML")
    _config_args(show)
    show.add_argument("--sim", action="store_true", help="as malpi drive --sim would run")
    show.set_defaults(func=cmd_config_show)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (default: $MALPI_CONFIG, else /etc/malpi/malpi.toml if it exists, else built-in defaults)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set loop.rate_hz=30 (TOML value syntax)",
    )


def load_from_args(args: argparse.Namespace):
    import tomllib

    from malpi.config import ROBOT_CONFIG_PATH, ConfigError, load_config

    path = args.config or os.environ.get("MALPI_CONFIG")
    if path is None and ROBOT_CONFIG_PATH.exists():
        path = ROBOT_CONFIG_PATH
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = raw  # a bare word is a string
    if getattr(args, "sim", False):
        overrides.setdefault("camera.backend", "sim")
        overrides.setdefault("drivetrain.backend", "sim")
    return load_config(path, overrides)


def cmd_config_show(args: argparse.Namespace) -> int:
    from malpi.config import to_toml

    sys.stdout.write(to_toml(load_from_args(args)))
    return 0


def cmd_drive(args: argparse.Namespace) -> int:
    from malpi.daemon.build import build_robot
    from malpi.daemon.notify import Notifier

    config = load_from_args(args)  # fails here, before any GPIO, on a bad config
    if args.no_record:
        # Not just enabled = false (that boots with recording off, the operator may start it):
        # no recorder, so a second daemon can run beside one that records.
        config = _replace(config, "recording", enabled=False, path="")
    if args.no_link:
        config = _replace(config, "link", enabled=False)
    notifier = Notifier()
    robot = build_robot(config, notifier=notifier)
    loop = robot.loop
    link = None
    try:
        if config.link.enabled:  # binds now: a refused or busy address stops here, motors stopped
            try:
                from malpi.link.server import start_link
            except ImportError as exc:
                raise SystemExit(
                    f"malpi drive: the link needs pyzmq and msgspec ({exc}): "
                    "pip install 'malpi[robot]', or run with --no-link"
                ) from exc
            link = start_link(robot)
        if not args.quiet and sys.stderr.isatty() or os.environ.get("MALPI_STATUS_LINE"):
            robot.telemetry.add_sink(StatusLine(robot).sink)
        mode = args.mode or ("auto" if args.sim else "paused")
        if mode != "paused":
            loop.set_mode(mode)
        if args.duration:
            import threading

            timer = threading.Timer(args.duration, loop.request_stop, args=("duration reached",))
            timer.daemon = True
            timer.start()
        return loop.run()
    finally:
        if link is not None:
            link.close()
        robot.close()
        notifier.close()
        print(file=sys.stderr)
        status = loop.status()
        log.info(
            "stopped after %d periods (%d missed); %d episodes",
            status["periods"],
            status["missed_periods"],
            status["episode"],
        )
        if robot.recorder is not None:
            log.info("recording: %s", Path(config.recording.path).expanduser())


def _replace(config, section: str, **changes):
    import dataclasses

    return dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **changes)}
    )


class StatusLine:
    """A one-line live view on stderr, refreshed from status and step telemetry."""

    def __init__(self, robot) -> None:
        self.robot = robot
        self.last_step: dict[str, Any] = {}

    def sink(self, topic: str, payload: dict[str, Any]) -> None:
        if topic == "step":
            self.last_step = payload
        elif topic == "event":
            sys.stderr.write(f"\r\033[K{payload['kind']}: {payload['message']}\n")
        elif topic == "status":
            s, step = payload, self.last_step
            action = step.get("action")
            name = self.robot.loop.actions[action].name if action is not None else "-"
            lat = step.get("latency_ms", {}).get("inference", 0.0)
            extra = ""
            if self.robot.sim_world is not None:
                info = self.robot.sim_world.info()
                extra = f" laps {info.get('laps', 0)} speed {info.get('speed', 0):.2f} m/s"
            faults = ",".join(s["faults"]) or "ok"
            sys.stderr.write(
                f"\r\033[K{s['mode']:<6} ep {s['episode']} step {s['step']:<5} {s['rate_hz']:5.1f} Hz "
                f"action {name:<10} infer {lat:.2f} ms rec {'on' if s['recording'] else 'off'}{extra} [{faults}]"
            )
            sys.stderr.flush()


def cmd_bench_loop(args: argparse.Namespace) -> int:
    from malpi.daemon import bench

    bench.run(rate_hz=args.rate, seconds=args.seconds, json_path=args.json, config_path=args.config)
    return 0
