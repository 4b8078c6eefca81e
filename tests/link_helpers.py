"""A daemon with its link on loopback (free ports), clients for it, and the bundles the tests push."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import zmq
from daemon_helpers import SPEC, robot_config, running_robot
from policy_helpers import sharpen

from malpi.actions import DEFAULT_ACTIONS
from malpi.daemon.link.server import LinkServer
from malpi.operator.client import RobotClient
from malpi.protocol import schema

LOOPBACK = {
    "link.command": "tcp://127.0.0.1:*",
    "link.telemetry": "tcp://127.0.0.1:*",
    "link.frame_rate_hz": 20.0,
}


@functools.cache
def bundles() -> dict[str, bytes]:
    """Two good bundles for the test camera, built once per test process (TensorFlow)."""
    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy

    out = {}
    for name, seed in (("a", 2), ("b", 7)):
        net = build_policy(SPEC, seed=seed)
        if name == "b":
            sharpen(net)  # decides differently from "a"
        out[name] = make_bundle(net, DEFAULT_ACTIONS).to_bytes()
    return out


def policy_file(tmp: Path, name: str = "a") -> Path:
    path = tmp / f"{name}.malpi"
    path.write_bytes(bundles()[name])
    return path


def link_config(tmp: Path, policy: Path | None = None, **overrides):
    policy = policy or policy_file(tmp)
    return robot_config(
        tmp, policy, **{**LOOPBACK, "policy.store": str(tmp / "store"), **overrides}
    )


@dataclass
class Daemon:
    robot: object
    factory: object
    events: object
    link: LinkServer

    def client(self, **kw) -> RobotClient:
        kw.setdefault("insecure", True)
        return RobotClient(
            command=self.link.command_endpoint, telemetry=self.link.telemetry_endpoint, **kw
        )


@contextlib.contextmanager
def running_link(config):
    with running_robot(config) as (robot, factory, events, _):
        link = LinkServer.for_robot(robot)
        try:
            yield Daemon(robot, factory, events, link)
        finally:
            link.close()


def raw_request(sock: zmq.Socket, frames: list[bytes], timeout: float = 2.0):
    """Send raw frames from a DEALER; the decoded reply, or None without one in time."""
    sock.send_multipart(frames)
    if not sock.poll(timeout * 1000):
        return None
    return schema.decode_reply(sock.recv_multipart()[-1])


def request_bytes(**fields) -> bytes:
    import msgspec

    return msgspec.msgpack.encode({"v": schema.PROTOCOL_VERSION, **fields})
