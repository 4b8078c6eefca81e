"""ZeroMQ endpoints: which ones are reachable only from this machine, and host/port helpers.

Kept free of ZeroMQ imports: the configuration validates addresses with it.
"""

from __future__ import annotations

import ipaddress

DEFAULT_COMMAND_PORT = 5555
DEFAULT_TELEMETRY_PORT = 5556


def split_tcp(address: str) -> tuple[str, str] | None:
    """``tcp://HOST:PORT`` -> (HOST, PORT) with IPv6 brackets removed; None for other transports."""
    if not address.startswith("tcp://"):
        return None
    rest = address[len("tcp://") :]
    if ";" in rest:  # "source;destination" form (connect only): judge the destination
        rest = rest.rsplit(";", 1)[1]
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def is_local(address: str) -> bool:
    """True if binding ``address`` exposes nothing beyond this machine.

    ipc:// and inproc:// are local; tcp:// is local only on a loopback address
    (127.0.0.0/8, ::1, ``localhost``, or the loopback interface ``lo``). A
    wildcard (``*``, 0.0.0.0, ::) or any other interface name or address is not.
    """
    if address.startswith(("ipc://", "inproc://")):
        return True
    parts = split_tcp(address)
    if parts is None:
        return False
    host = parts[0]
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoints_for(host: str, command_port: int | None = None, telemetry_port: int | None = None):
    """The command and telemetry endpoints of a robot named ``HOST`` or ``HOST:PORT``.

    A port given with the host is the command port; telemetry defaults to the
    next port up. A full ``tcp://`` address is taken as the command endpoint.
    """
    if host.startswith("tcp://"):
        h, p = split_tcp(host) or ("", "")
        host = f"[{h}]" if ":" in h else h
        command_port = command_port or int(p)
    elif host.startswith("[") and "]:" in host:  # [::1]:5555
        host, _, p = host.rpartition(":")
        command_port = command_port or int(p)
    elif host.count(":") == 1:
        host, _, p = host.partition(":")
        command_port = command_port or int(p)
    elif ":" in host:  # a bare IPv6 address
        host = f"[{host}]"
    cmd = command_port or DEFAULT_COMMAND_PORT
    tel = telemetry_port or (cmd + 1 if command_port else DEFAULT_TELEMETRY_PORT)
    return f"tcp://{host}:{cmd}", f"tcp://{host}:{tel}"
