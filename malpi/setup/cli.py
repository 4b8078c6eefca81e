"""``malpi setup`` (the whole bring-up), ``malpi setup motors`` and ``malpi setup camera``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from malpi.config import (
    ROBOT_CONFIG_PATH,
    USER_CONFIG_PATH,
    Config,
    add_config_args,
    find_config,
    load_config,
    set_overrides,
    to_toml,
)


def default_out() -> Path:
    """Where ``malpi drive`` looks: the robot's file as root, else the user's."""
    return ROBOT_CONFIG_PATH if os.geteuid() == 0 else USER_CONFIG_PATH.expanduser()


def register(commands, bench) -> None:
    p = commands.add_parser(
        "setup",
        help="bring up a car: test the motors, calibrate, check the camera, write the config",
        description="On the car, in a terminal: choose the drivetrain and pins, run each output "
        "briefly at low power with the wheels off the ground, calibrate with the arrow keys, "
        "check the camera and write a validated configuration. Every flag also answers its "
        "question, and --yes runs the same steps with no questions (for scripts).",
    )
    p.add_argument("--out", type=Path, help=f"configuration to write (default: {ROBOT_CONFIG_PATH} "
                   f"as root, else {USER_CONFIG_PATH}); an existing one is the starting point and "
                   "is kept as FILE.bak")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="start from this configuration instead")
    p.add_argument("--service", action="store_true", help="add what the systemd unit needs: "
                   "state in /var/lib/malpi, CURVE keys in /etc/malpi/keys, the link on all "
                   "interfaces (tools/install-pi.sh installs the unit)")  # fmt: skip
    p.add_argument("--drivetrain", choices=("differential", "servo"), help="the drivetrain")
    p.add_argument("--driver", choices=("in_in", "phase_enable"), help="the H-bridge's inputs")
    p.add_argument("--pin", action="append", default=[], metavar="NAME=BCM",
                   help="a pin, e.g. --pin left_forward=17 or --pin steering_pin=12")  # fmt: skip
    p.add_argument("--camera", choices=("picamera2", "opencv", "sim"), help="the camera backend")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other key, e.g. --set drivetrain.differential.min_speed=0.25")  # fmt: skip
    _test_args(p)
    p.add_argument("--yes", action="store_true", help="no questions: the flags and defaults "
                   "decide, and the wheels are taken to be off the ground")  # fmt: skip
    p.add_argument("--no-motors", action="store_true", help="skip the motor test and calibration")
    p.add_argument("--no-camera", action="store_true", help="skip the camera check")
    _camera_args(p)
    p.set_defaults(func=cmd_setup)
    sub = p.add_subparsers(dest="setup_command", metavar="STEP")

    m = sub.add_parser("motors", help="run each output of a configuration briefly, in turn")
    add_config_args(m)
    _test_args(m)
    m.add_argument("--yes", action="store_true", help="no questions (wheels off the ground)")
    m.set_defaults(func=cmd_motors)

    c = sub.add_parser("camera", help="measure the configured camera's frame rate, save a frame")
    add_config_args(c)
    _camera_args(c)
    c.set_defaults(func=cmd_camera)


def _test_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--power", type=float, default=0.3,
                   help="motor test power, at most 0.5 (default: %(default)s)")  # fmt: skip
    p.add_argument("--seconds", type=float, default=1.0,
                   help="motor test time per output, at most 3 (default: %(default)s)")  # fmt: skip


def _camera_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--camera-seconds", type=float, default=3.0,
                   help="how long to measure the camera (default: %(default)s)")  # fmt: skip
    p.add_argument("--frame", type=Path, default=Path("malpi-camera.jpg"),
                   help="where to save a frame as the policy sees it (default: %(default)s)")  # fmt: skip


def _terminal(yes: bool):
    from malpi.setup.terminal import Console, Defaults

    if yes:
        return Defaults()
    if not sys.stdin.isatty():
        raise SystemExit("malpi setup asks questions: run it in a terminal, or give --yes")
    return Console()


def _quiet_parts(args: argparse.Namespace) -> None:
    # Each test builds and closes a drivetrain, each logging it: the questions would drown.
    if not args.verbose:
        logging.getLogger("malpi").setLevel(logging.WARNING)


def cmd_setup(args: argparse.Namespace) -> int:
    from malpi.setup.wizard import SERVICE, Setup, run

    _quiet_parts(args)
    out = args.out or default_out()
    base = Path(args.config) if args.config else (out if out.is_file() else None)
    settings = dict(SERVICE) if args.service else {}
    if args.drivetrain:
        settings["drivetrain.backend"] = args.drivetrain
    if args.driver:
        settings["drivetrain.differential.driver"] = args.driver
    if args.camera:
        settings["camera.backend"] = args.camera
    backend = args.drivetrain or load_config(base).drivetrain.backend
    for item in args.pin:
        name, _, raw = item.partition("=")
        key = name if "." in name else f"drivetrain.{backend}.{name}"
        settings[key] = int(raw) if raw.lstrip("-").isdigit() else raw
    settings.update(set_overrides(args.set))
    setup = Setup(_terminal(args.yes), base, settings, power=args.power, seconds=args.seconds)
    overlay, kept = _calibration_kept(setup)
    config = run(
        setup,
        motors=not args.no_motors,
        camera=not args.no_camera,
        camera_seconds=args.camera_seconds,
        frame_path=args.frame,
    )
    if config is None:
        print("nothing written", file=sys.stderr)
        return 1
    write_config(config, out)
    print(f"wrote {out}")
    if kept:
        _remove_overlay(overlay, out)
    if args.service:
        print("next: sudo systemctl enable --now malpi   (journalctl -u malpi -f shows it)")
    elif find_config() == out:
        print("next: malpi drive   (it boots paused; choose a mode from malpi teleop)")
    else:
        print(f"next: malpi drive --config {out}")
    return 0


def _calibration_kept(setup) -> tuple[Path, dict]:
    """The calibration the daemon kept from the console (malpi.calibration): the starting point
    of the values the flags do not set, as it is what the car drives with now."""
    from malpi.calibration import overlay_path, read_overlay

    overlay = overlay_path(setup.config())
    kept = read_overlay(overlay)
    for key, value in kept.items():
        if key not in setup.settings and not setup.set(key, value):
            setup.term.say(f"  {overlay}: {key} = {value} left out")
    if kept:
        setup.term.say(f"Starting from the calibration set from the console ({overlay}).")
    return overlay, kept


def _remove_overlay(overlay: Path, out: Path) -> None:
    """The written configuration holds the console's calibration now: the overlay would only
    override later changes to it."""
    try:
        overlay.unlink()
        print(f"removed {overlay}: its calibration is in {out} now")
    except FileNotFoundError:
        pass
    except OSError as exc:
        print(f"note: {overlay} could not be removed ({exc.strerror}): the daemon applies it over "
              f"{out} at boot; remove it (sudo rm {overlay})", file=sys.stderr)  # fmt: skip


def cmd_motors(args: argparse.Namespace) -> int:
    from malpi.setup.wizard import Setup

    _quiet_parts(args)
    path = find_config(args.config)
    setup = Setup(_terminal(args.yes), path, set_overrides(args.set),
                  power=args.power, seconds=args.seconds)  # fmt: skip
    changed = dict(setup.settings)
    setup.test_outputs()
    if setup.settings != changed and path is not None and setup.term.confirm(f"Write to {path}?"):
        write_config(setup.config(), path)
        print(f"wrote {path}")
    return 0


def cmd_camera(args: argparse.Namespace) -> int:
    from malpi.config import config_from_args
    from malpi.setup.camera_check import check_camera

    config = config_from_args(args)
    report = check_camera(config, args.camera_seconds, args.frame)
    print(
        f"{config.camera.backend}: {report.fps:.1f} frames/s over {report.seconds:.1f} s "
        f"(camera.fps = {config.camera.fps:g}), {report.size[0]}x{report.size[1]}, "
        f"frame saved to {report.frame_path}"
    )
    return 0


def write_config(config: Config, path: Path) -> None:
    """Write atomically; an existing file is kept as ``FILE.bak``; the result is re-read."""
    text = to_toml(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if path.is_file():
        os.replace(path, path.with_name(path.name + ".bak"))
    os.replace(tmp, path)
    load_config(path)  # what drive will read
