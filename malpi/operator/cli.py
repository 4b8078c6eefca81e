"""The operator's commands: ``malpi teleop``, ``telemetry``, ``status``, ``push`` and ``pull``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPLY_TIMEOUT = 2.0  # s, the default wait for a reply
LOAD_TIMEOUT = 120.0  # s, for load_policy / rollback_policy: a big bundle takes seconds on a Pi


def register(commands, bench) -> None:  # noqa: ARG001 - no benchmarks here
    t = commands.add_parser("teleop", help="watch and drive the robot in a window (pygame)")
    _connection_args(t, telemetry=True)
    t.add_argument("--size", default="640x480", help="video size in the window (default 640x480)")
    t.add_argument(
        "--drive-hz", type=float, default=20.0, help="drive commands per second while held (>= 10)"
    )
    t.add_argument("--seconds", type=float, help="close the window after this many seconds")
    t.add_argument("--screenshot", metavar="PNG", help="save a screenshot when the window closes")
    t.set_defaults(func=cmd_teleop)

    m = commands.add_parser(
        "telemetry", help="print the robot's telemetry, one JSON object per line"
    )
    _connection_args(m, telemetry=True)
    m.add_argument(
        "--topic",
        action="append",
        choices=("step", "frame", "status", "event"),
        help="a topic to print (repeatable; default: step, status, event)",
    )
    m.add_argument("--count", type=int, help="stop after this many messages")
    m.add_argument("--seconds", type=float, help="stop after this many seconds")
    m.add_argument("--frame-data", action="store_true", help="include frames' JPEG bytes (base64)")
    m.set_defaults(func=cmd_telemetry)

    st = commands.add_parser(
        "status", help="the robot's mode, faults, and which policy runs and which boots"
    )
    _connection_args(st)
    st.add_argument("--json", action="store_true", help="print the status reply as JSON")
    st.set_defaults(func=cmd_status)

    p = commands.add_parser(
        "push",
        help="run a policy bundle on the robot now (--keep: and boot it from now on)",
        description="Run a policy bundle on the robot now. It boots only if kept: --keep with "
        "the bundle keeps it at once; --keep alone keeps the policy running now (push, watch "
        "it drive, then keep it). --rollback returns to the boot policy from one not kept, "
        "or from the boot policy to the one kept before it.",
    )
    _connection_args(p)
    p.add_argument("bundle", nargs="?", help="the .malpi bundle file")
    p.add_argument(
        "--keep",
        action="store_true",
        help="make it the boot policy (without a bundle: the policy running now)",
    )
    p.add_argument("--rollback", action="store_true", help="return to the previous policy instead")
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=cmd_push)

    pl = commands.add_parser(
        "pull", help="copy the robot's recorded episodes into a local episode database"
    )
    _connection_args(pl)
    pl.add_argument("--out", metavar="FILE.sqlite", help="the local database (created if missing)")
    pl.add_argument(
        "--episodes", metavar="IDS", help="robot episode ids, e.g. 3,5-9 (default: all)"
    )
    pl.add_argument(
        "--since", type=int, default=0, help="only episodes with a larger id (without --episodes)"
    )
    pl.add_argument("--list", action="store_true", help="list the robot's episodes, copy nothing")
    pl.add_argument("--json", action="store_true", help="print the result as JSON")
    pl.set_defaults(func=cmd_pull)


def _connection_args(p: argparse.ArgumentParser, telemetry: bool = False) -> None:
    p.add_argument("host", help="the robot: HOST, HOST:PORT (command port) or tcp://HOST:PORT")
    if telemetry:
        p.add_argument(
            "--telemetry-port",
            type=int,
            help="the robot's telemetry port (default: the command port + 1, 5556)",
        )
    p.add_argument("--server-key", metavar="FILE", help="the robot's public key (server.key)")
    p.add_argument("--client-key", metavar="FILE", help="this client's key_secret file")
    p.add_argument(
        "--keys-dir", metavar="DIR", help="CURVE key directory (default: ~/.config/malpi/keys)"
    )
    p.add_argument("--insecure", action="store_true", help="no CURVE, even if a key is known")
    p.add_argument(
        "--timeout",
        type=float,
        help=f"seconds to wait for a reply (default {REPLY_TIMEOUT:g}; a policy load "
        f"{LOAD_TIMEOUT:g})",
    )


def _client(args):
    from malpi.operator.client import RobotClient

    return RobotClient(
        args.host,
        telemetry=_telemetry(args) if getattr(args, "telemetry_port", None) else None,
        server_key=args.server_key,
        client_key=args.client_key,
        keys=args.keys_dir,
        insecure=args.insecure,
        timeout=args.timeout or REPLY_TIMEOUT,
    )


def _telemetry(args) -> str:
    from malpi.protocol.address import endpoints_for

    return endpoints_for(args.host, telemetry_port=args.telemetry_port)[1]


def cmd_teleop(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from malpi.operator.teleop import Teleop

    w, _, h = args.size.partition("x")
    with _client(args) as client:
        ui = Teleop(
            client, size=(int(w), int(h)), drive_hz=args.drive_hz, title=f"MaLPi - {args.host}"
        )
        return ui.run(seconds=args.seconds, screenshot=args.screenshot)


def cmd_telemetry(args: argparse.Namespace) -> int:
    import msgspec

    topics = args.topic or ["step", "status", "event"]
    out = sys.stdout
    received = 0
    with _client(args) as client:
        # Telemetry alone cannot tell a silent robot from none (or a CURVE mismatch): ask first.
        client.ping()
        try:
            stream = client.telemetry(topics, seconds=args.seconds, count=args.count, idle=5.0)
            for item in stream:
                if item is None:
                    print("no telemetry for 5 s: robot stopped, or link lost?", file=sys.stderr)
                    continue
                topic, msg = item
                received += 1
                d = msgspec.to_builtins(msg)
                if topic == "frame" and not args.frame_data:
                    d["data"] = None
                    d["bytes"] = len(msg.data)
                out.write(msgspec.json.encode({"topic": topic, **d}).decode() + "\n")
                out.flush()
        except BrokenPipeError:  # `malpi telemetry ... | head`
            return 0
    if not received and args.seconds:
        print(f"no {', '.join(topics)} messages in {args.seconds:g} s", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import msgspec

    from malpi.operator.client import RobotError

    with _client(args) as client:
        try:
            s = client.status()
        except RobotError as exc:
            print(f"malpi status: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(msgspec.json.encode(s).decode())
        return 0
    print(f"mode      {s.mode}, episode {s.episode} step {s.step}, {s.rate_hz:.1f} Hz")
    print(f"faults    {', '.join(f'{k} ({v})' for k, v in s.faults.items()) or 'none'}")
    note = f" ({s.recording_note})" if s.recording_note else ""
    print(f"recording {'on' if s.recording else 'off'}{note}")
    print(f"policy    {s.policy_version or 'none'} ({s.policy_source or 'unknown'})")
    print(f"boots     {_boots(s)}")
    return 0


def _boots(s) -> str:
    """What the robot boots, as `malpi status` says it (an older robot does not say)."""
    if s.boot_policy_source is None:
        return "unknown (this robot does not say)"
    same = s.boot_policy_sha256 is not None and s.boot_policy_sha256 == s.policy_sha256
    if same or (s.boot_policy_sha256 is None and s.boot_policy_version == s.policy_version):
        return "the same"
    return f"{s.boot_policy_version or 'no policy'} ({s.boot_policy_source})"


def cmd_push(args: argparse.Namespace) -> int:
    import msgspec

    from malpi.operator.client import RobotError
    from malpi.protocol.schema import KeepReply

    if args.rollback and (args.bundle or args.keep):
        raise ValueError("malpi push: --rollback takes no BUNDLE and no --keep")
    if not args.rollback and not args.bundle and not args.keep:
        raise ValueError(
            "malpi push: give a BUNDLE file, --keep (the running policy) or --rollback"
        )
    data = Path(args.bundle).read_bytes() if args.bundle else None
    with _client(args) as client:
        client.ping()  # a robot that is not there fails now, not after the load's long wait
        timeout = args.timeout or LOAD_TIMEOUT
        try:
            if args.rollback:
                reply = client.rollback_policy(timeout)
            elif data is None:
                reply = client.keep_policy(timeout)
            else:
                print(f"sending {args.bundle} ({len(data) / 1e6:.1f} MB)...", file=sys.stderr)
                reply = client.load_policy(data, timeout, keep=args.keep)
        except RobotError as exc:
            if args.json:
                print(
                    msgspec.json.encode(
                        {"type": "error", "code": exc.code, "message": exc.message}
                    ).decode()
                )
            else:
                print(f"refused ({exc.code}): {exc.message}")
                if args.keep and exc.code in ("invalid", "unknown_type") and "keep" in exc.message:
                    print("(this robot's daemon predates keeping: it keeps every push)")
            return 1
    if args.json:
        print(msgspec.json.encode(reply).decode())
        return 0
    if isinstance(reply, KeepReply):
        if reply.changed:
            print(f"kept {reply.boot_policy_version}: the car boots it from now on")
            print(f"(it booted {reply.previous_boot or 'no policy'} before)")
        else:
            print(f"{reply.boot_policy_version} is the boot policy already: nothing changed")
        print(f"boots: {reply.boot_policy_version} ({reply.boot_policy_source})")
        return 0
    if not args.rollback and reply.previous == reply.version:
        print(f"{reply.version} runs already (episode {reply.episode} goes on)")
    else:
        verb = "rolled back to" if args.rollback else "running"
        print(f"{verb} {reply.version} (was {reply.previous}); episode {reply.episode}")
        print(f"validated and built in {reply.load_ms:.0f} ms off the control loop")
    # The robot's note says what boots and why (a policy that runs is not always kept).
    print(reply.note or ("the car boots it" if reply.persisted else "NOT kept for the next boot"))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    import msgspec

    from malpi.operator.client import RobotError
    from malpi.operator.pull import PullError, list_all, pull_episodes
    from malpi.sim.cli import parse_seeds

    if not args.list and not args.out:
        raise ValueError("malpi pull: give --out FILE.sqlite (or --list)")
    try:
        ids = parse_seeds(args.episodes) if args.episodes else None
    except ValueError as exc:
        raise ValueError(f"malpi pull: --episodes {args.episodes!r}: {exc}") from None
    with _client(args) as client:
        try:
            if args.list:
                episodes = list_all(client, args.since)
                if args.json:
                    print(msgspec.json.encode(episodes).decode())
                for e in [] if args.json else episodes:
                    print(
                        f"{e.id:>6}  {e.outcome:<11} {e.steps:>6} steps  "
                        f"{e.policy_version or '-':<14} {e.uuid}"
                    )
                return 0
            result = pull_episodes(
                client,
                args.out,
                ids=ids,
                since=args.since,
                progress=lambda p: print(
                    f"episode {p.robot_id}: {p.steps} steps, {p.bytes / 1e6:.1f} MB "
                    f"-> local episode {p.local_id}",
                    file=sys.stderr,
                ),
            )
        except (RobotError, PullError) as exc:
            print(f"malpi pull: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(msgspec.json.encode(result).decode())
        return 0
    mb = sum(p.bytes for p in result.pulled) / 1e6
    print(
        f"pulled {len(result.pulled)} episodes ({sum(p.steps for p in result.pulled)} steps, "
        f"{mb:.1f} MB) into {args.out} in {result.seconds:.1f} s"
    )
    if result.already_here:
        print(f"already there: {len(result.already_here)} episodes")
    if result.running:
        print(f"still being recorded, not copied: episodes {result.running}")
    return 0
