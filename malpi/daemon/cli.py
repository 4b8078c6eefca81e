"""``malpi drive`` (the daemon) and ``malpi config show``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from malpi.config import add_config_args, config_from_args, find_config

log = logging.getLogger(__name__)

NO_CONFIG = """malpi drive: no configuration found ($MALPI_CONFIG, ~/.config/malpi/malpi.toml and
/etc/malpi/malpi.toml do not exist), so nothing says which motors and camera this car has.
  On the car:   malpi setup         tests the motors and the camera and writes one
  No car:       malpi drive --sim   drives the built-in simulator
  A config:     malpi drive --config FILE"""


def register(commands, bench) -> None:
    d = commands.add_parser("drive", help="run the robot daemon (on the simulator with --sim)")
    add_config_args(d)
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

    m = commands.add_parser(
        "motors", help="the drivetrain on its own (systemd runs 'motors off' after the daemon)"
    )
    msub = m.add_subparsers(dest="motors_command", required=True, metavar="ACTION")
    off = msub.add_parser(
        "off",
        help="claim the drivetrain's outputs and drive them to stop (safe after any daemon death)",
    )
    add_config_args(off)
    off.set_defaults(func=cmd_motors_off)

    c = commands.add_parser("config", help="show the effective configuration")
    sub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="validate and print the effective configuration as TOML")
    add_config_args(show)
    show.add_argument("--sim", action="store_true", help="as malpi drive --sim would run")
    show.set_defaults(func=cmd_config_show)


def cmd_config_show(args: argparse.Namespace) -> int:
    from malpi.calibration import apply_overlay, overlay_path
    from malpi.config import to_toml

    config = config_from_args(args)
    overlay = overlay_path(config)
    config, calibrated = apply_overlay(config, overlay)  # as malpi drive boots it
    if calibrated:
        sys.stdout.write(f"# with the calibration kept in {overlay}: {', '.join(calibrated)}\n")
    sys.stdout.write(to_toml(config))
    return 0


def cmd_drive(args: argparse.Namespace) -> int:
    from malpi.daemon import realtime
    from malpi.daemon.control.build import build_robot
    from malpi.daemon.control.notify import Notifier

    if not args.sim and find_config(args.config) is None and not _names_drivetrain(args.set):
        # The built-in defaults drive the simulator: on a car that would look like a dead robot.
        print(NO_CONFIG, file=sys.stderr)
        return 2
    config = config_from_args(args)  # fails here, before any GPIO, on a bad config
    if args.no_record:
        # Not just enabled = false (that boots with recording off, the operator may start it):
        # no recorder, so a second daemon can run beside one that records.
        config = _replace(config, "recording", enabled=False, path="")
    if args.no_link:
        config = _replace(config, "link", enabled=False)
    notifier = Notifier()
    child_cpus = None
    if config.realtime.enabled:  # before any thread exists: they inherit it
        child_cpus, got = realtime.prepare(config.realtime.priority, config.realtime.cpu)
        log.info("real-time: %s", got)
    # Binds now (in the link process): a refused or busy address stops here, motors stopped.
    robot = build_robot(config, notifier=notifier, debug=args.verbose, child_cpus=child_cpus)
    loop = robot.loop
    status_line: StatusLine | None = None
    try:
        if robot.command_endpoint:
            log.info(
                "link: commands on %s, telemetry on %s",
                robot.command_endpoint,
                robot.telemetry_endpoint,
            )
        if not args.quiet and sys.stderr.isatty() or os.environ.get("MALPI_STATUS_LINE"):
            status_line = StatusLine(robot)
            status_line.attach()
        mode = args.mode or ("auto" if args.sim else "paused")
        if mode != "paused":
            loop.set_mode(mode)
        if args.duration:
            import threading

            timer = threading.Timer(args.duration, loop.request_stop, args=("duration reached",))
            timer.daemon = True
            timer.start()
        if config.realtime.enabled:  # last: threads started after this would inherit it
            log.info("control thread: %s", realtime.raise_control_thread(config.realtime.priority))
        return loop.run()
    finally:
        if status_line is not None:  # first: what closing logs goes to plain stderr
            status_line.close()
        robot.close()
        notifier.close()
        status = loop.status()
        log.info(
            "stopped after %d periods (%d missed); %d episodes",
            status["periods"],
            status["missed_periods"],
            status["episode"],
        )
        if robot.recorder is not None:
            log.info("recording: %s", Path(config.recording.path).expanduser())


def cmd_motors_off(args: argparse.Namespace) -> int:
    """What the systemd unit runs after the daemon, however it ended (``ExecStopPost=``): a
    killed or crashed process runs no ``stop()``, and a GPIO line keeps its last level."""
    from malpi.drivetrain.factory import drivetrain_from_config

    config = config_from_args(args)
    if config.drivetrain.backend == "sim":
        print("the simulated drivetrain has no outputs to stop")
        return 0
    drivetrain = drivetrain_from_config(config)
    try:
        drivetrain.stop()
    finally:
        drivetrain.close()
    print(f"{config.drivetrain.backend} drivetrain outputs driven to stop and released")
    return 0


def _names_drivetrain(settings: list[str]) -> bool:
    return any(item.partition("=")[0].strip() == "drivetrain.backend" for item in settings)


def _replace(config, section: str, **changes):
    import dataclasses

    return dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **changes)}
    )


class StatusLine:
    """A one-line live view on stderr, refreshed from status and step telemetry.

    The line is drawn with ``\\r`` and no newline. While it shows, the root logger's stderr
    handlers write through :meth:`write`, which clears the line before a record and redraws it
    after, so a log record never lands glued to the end of the line. Events are not printed
    here: :meth:`Telemetry.event` logs each one already.
    """

    def __init__(self, robot, stream: TextIO | None = None) -> None:
        self.robot = robot
        self.stream = stream if stream is not None else sys.stderr
        self.last_step: dict[str, Any] = {}
        self._line = ""  # the latest status text, redrawn after each log record
        self._showing = False  # the line is on screen (the cursor is at its end)
        self._lock = threading.Lock()  # the loop thread draws, any thread logs
        self._handlers: list[logging.StreamHandler] = []

    def attach(self) -> None:
        """Route the root logger's handlers on this stream through the line; start drawing."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.setStream(self)  # type: ignore[arg-type]  # write/flush is all it uses
                self._handlers.append(handler)
        self.robot.telemetry.add_sink(self.sink)

    def close(self) -> None:
        """Stop drawing; the last status stays on screen, ended with a newline."""
        self.robot.telemetry.remove_sink(self.sink)
        for handler in self._handlers:
            handler.setStream(self.stream)
        self._handlers = []
        with self._lock:
            if self._showing:
                self.stream.write("\n")
                self.stream.flush()
                self._showing = False

    def write(self, text: str) -> int:
        """A log handler's write: clear the line, write the record, redraw the line."""
        with self._lock:
            if self._showing:
                self.stream.write("\r\033[K")
                self._showing = False
            self.stream.write(text)
            if text.endswith("\n") and self._line:
                self.stream.write(self._line)
                self._showing = True
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def sink(self, topic: str, payload: dict[str, Any]) -> None:
        if topic == "step":
            self.last_step = payload
        elif topic == "status":
            self._draw(self._format(payload))

    def _format(self, s: dict[str, Any]) -> str:
        step = self.last_step
        action = step.get("action")
        name = self.robot.loop.actions[action].name if action is not None else "-"
        lat = step.get("latency_ms", {}).get("inference", 0.0)
        extra = ""
        if self.robot.sim_world is not None:
            info = self.robot.sim_world.info()
            extra = f" laps {info.get('laps', 0)} speed {info.get('speed', 0):.2f} m/s"
        faults = ",".join(s["faults"]) or "ok"
        return (
            f"{s['mode']:<6} ep {s['episode']} step {s['step']:<5} {s['rate_hz']:5.1f} Hz "
            f"action {name:<10} infer {lat:.2f} ms rec {'on' if s['recording'] else 'off'}"
            f"{extra} [{faults}]"
        )

    def _draw(self, line: str) -> None:
        with self._lock:
            self._line = line
            self.stream.write(f"\r\033[K{line}")
            self.stream.flush()
            self._showing = True
