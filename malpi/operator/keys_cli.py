"""``malpi keys``: CURVE key pairs, the robot's authorised clients, the robots an operator trusts.

The same command serves both ends: ``init --server`` and ``authorize`` on the
robot, ``init`` and ``trust`` on an operator's machine.
"""

from __future__ import annotations

import argparse

from malpi.config import add_config_args


def register(commands, bench) -> None:  # noqa: ARG001 - no benchmarks here
    k = commands.add_parser("keys", help="CURVE keys: the robot's, its clients', trusted robots")
    sub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create a key pair (a client's, or the daemon's --server)")
    init.add_argument(
        "--server", action="store_true", help="the daemon's key pair, in link.keys_dir"
    )
    init.add_argument("--name", help="key name (default: client, or server with --server)")
    init.add_argument("--dir", help="key directory (default: link.keys_dir)")
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    add_config_args(init)
    init.set_defaults(func=cmd_keys_init)
    auth = sub.add_parser("authorize", help="let a client in: add its public key")
    auth.add_argument("key", help="the client's .key file, or its 40-character public key")
    auth.add_argument("--name", help="name to keep it under (default: the file's name)")
    auth.add_argument("--dir", help="authorised-keys directory (default: from the config)")
    add_config_args(auth)
    auth.set_defaults(func=cmd_keys_authorize)
    rev = sub.add_parser("revoke", help="remove an authorised client key")
    rev.add_argument("name", help="the client's name (as malpi keys list shows it)")
    rev.add_argument("--dir", help="authorised-keys directory (default: from the config)")
    add_config_args(rev)
    rev.set_defaults(func=cmd_keys_revoke)
    lst = sub.add_parser("list", help="list key pairs, authorised clients and trusted robots")
    lst.add_argument("--dir", help="key directory (default: link.keys_dir)")
    add_config_args(lst)
    lst.set_defaults(func=cmd_keys_list)
    tr = sub.add_parser("trust", help="remember a robot's public key (client side)")
    tr.add_argument("host", help="the robot's host name or address, as given to malpi teleop")
    tr.add_argument("key", help="the robot's server.key file, or its 40-character public key")
    tr.add_argument("--dir", help="key directory (default: ~/.config/malpi/keys)")
    tr.set_defaults(func=cmd_keys_trust)


def _link_config(args):
    from malpi.config import config_from_args

    return config_from_args(args).link


def cmd_keys_init(args: argparse.Namespace) -> int:
    from malpi.protocol.keys import CLIENT, DEFAULT_KEYS_DIR, SERVER, init_keys

    name = args.name or (SERVER if args.server else CLIENT)
    directory = args.dir or (_link_config(args).keys_dir if args.server else DEFAULT_KEYS_DIR)
    info = init_keys(directory, name, force=args.force)
    print(f"created {info.path} (public) and {info.path}_secret (keep it private)")
    print(f"public key: {info.public}")
    if args.server:
        print("next: set link.curve = true; copy this server.key to each operator's machine")
        print("      (malpi keys trust ROBOT server.key) and authorise their client.key here")
        print("      (malpi keys authorize client.key --name laptop)")
    else:
        print("next: authorise it on the robot:  malpi keys authorize client.key --name NAME")
        print("      and trust the robot here:   malpi keys trust ROBOT server.key")
    return 0


def _authorized(args) -> str:
    from malpi.protocol.keys import authorized_dir

    if args.dir:
        return args.dir
    link = _link_config(args)
    return str(authorized_dir(link.keys_dir, link.authorized_keys))


def cmd_keys_authorize(args: argparse.Namespace) -> int:
    from malpi.protocol.keys import authorize

    info = authorize(args.key, _authorized(args), args.name)
    print(f"authorised {info.name}: {info.public} ({info.path})")
    print("it can connect from its next connection on; no restart needed")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from malpi.protocol.keys import revoke

    path = revoke(args.name, _authorized(args))
    print(f"revoked {args.name} ({path} removed); it is refused from its next connection")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from malpi.protocol.keys import authorized_dir, keys_dir, list_keys

    link = _link_config(args)
    d = keys_dir(args.dir or link.keys_dir)
    auth = authorized_dir(d, None if args.dir else link.authorized_keys)
    sections = [
        ("key pairs", d),
        ("authorised clients", auth),
        ("trusted robots", d / "servers"),
    ]
    for title, directory in sections:
        keys = list_keys(directory)
        print(f"{title} ({directory}): {len(keys) or 'none'}")
        for k in keys:
            secret = "  + secret" if k.has_secret else ""
            print(f"  {k.name:<20} {k.public}{secret}")
    return 0


def cmd_keys_trust(args: argparse.Namespace) -> int:
    from malpi.protocol.keys import DEFAULT_KEYS_DIR, trust

    info = trust(args.host, args.key, args.dir or DEFAULT_KEYS_DIR)
    print(f"trusting {args.host}: {info.public} ({info.path}); clients now connect with CURVE")
    return 0
