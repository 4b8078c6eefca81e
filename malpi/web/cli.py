"""``malpi web``: serve the browser console; ``malpi web --set-password``: choose its password."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from malpi.config import Config, ConfigError, add_config_args, config_from_args

log = logging.getLogger(__name__)


def register(commands, bench) -> None:  # noqa: ARG001 - `malpi bench web` is in malpi.bench
    w = commands.add_parser(
        "web",
        help="the browser console: drive, watch, curate, deploy and calibrate from any browser",
        description="Serve the browser console ([web] in the configuration; docs/web.md). "
        "Without ROBOT it connects to this machine's daemon as the configuration's [link] "
        "says (on the robot, with the key <link.keys_dir>/web.key_secret when link.curve is "
        "on); with ROBOT it connects there like malpi teleop.",
    )
    w.add_argument("robot", nargs="?", help="HOST, HOST:PORT or tcp://HOST:PORT (default: here)")
    add_config_args(w)
    w.add_argument("--listen", metavar="HOST:PORT", help="serve here (default: web.listen)")
    w.add_argument("--tls", action="store_true", help="serve HTTPS (default: web.tls)")
    w.add_argument(
        "--no-login", action="store_true", help="no password (refused unless on loopback)"
    )
    w.add_argument(
        "--set-password",
        action="store_true",
        help="ask for a new password (or read one line from stdin), store its hash, and exit",
    )
    w.add_argument("--server-key", metavar="FILE", help="the robot's public key (server.key)")
    w.add_argument("--client-key", metavar="FILE", help="this console's key_secret file")
    w.add_argument("--keys-dir", metavar="DIR", help="CURVE key directory")
    w.add_argument("--insecure", action="store_true", help="no CURVE, even if a key is known")
    w.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace) -> int:
    overrides = {}
    if args.listen:
        overrides["web.listen"] = args.listen
    if args.tls:
        overrides["web.tls"] = True
    if args.no_login:
        overrides["web.login"] = False
    args.set = [*(args.set or []), *(f"{k}={_toml(v)}" for k, v in overrides.items())]
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"malpi web: {exc}", file=sys.stderr)
        return 2
    password_file = Path(config.web.password_file).expanduser()
    if args.set_password:
        return _set_password(password_file)
    from malpi.web.serve import PasswordError, serve

    try:
        return serve(config, connect_args(config, args))
    except (PasswordError, ValueError, OSError) as exc:
        print(f"malpi web: {exc}", file=sys.stderr)
        return 2


def connect_args(config: Config, args: argparse.Namespace) -> dict:
    """RobotClient's arguments for the robot this console serves."""
    from malpi.protocol.address import split_tcp

    if args.robot:
        return {
            "host": args.robot,
            "server_key": args.server_key,
            "client_key": args.client_key,
            "keys": args.keys_dir,
            "insecure": args.insecure,
        }
    link = config.link

    def here(endpoint: str) -> str:  # a bound wildcard is reached on loopback
        host, port = split_tcp(endpoint) or ("", "")
        return f"tcp://127.0.0.1:{port}" if host in ("*", "0.0.0.0", "", "::") else endpoint

    kw: dict = {"command": here(link.command), "telemetry": here(link.telemetry)}
    keys = Path(args.keys_dir or link.keys_dir).expanduser()
    if link.curve and not args.insecure:
        kw["server_key"] = args.server_key or keys / "server.key"
        kw["client_key"] = args.client_key or keys / "web.key_secret"
    else:
        kw["insecure"] = True
    return kw


def _set_password(path: Path) -> int:
    from malpi.web.auth import PasswordError, write_password_file

    if sys.stdin.isatty():
        first = getpass.getpass("New console password: ")
        if getpass.getpass("Again: ") != first:
            print("malpi web: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    try:
        write_password_file(path, first)
    except (PasswordError, OSError) as exc:
        print(f"malpi web: {exc}", file=sys.stderr)
        return 1
    print(f"password hash written to {path}; sessions open now stay open until they expire")
    return 0


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else f'"{value}"'
