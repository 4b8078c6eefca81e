"""A daemon with its link on loopback (free ports), clients for it, and the bundles the tests push."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import make_fixtures
import zmq
from daemon_helpers import robot_config, running_robot

from malpi.config import config_from_dict
from malpi.operator.client import RobotClient
from malpi.protocol import schema

LOOPBACK = {
    "link.enabled": True,
    "link.command": "tcp://127.0.0.1:*",
    "link.telemetry": "tcp://127.0.0.1:*",
    "link.frame_rate_hz": 20.0,
}


def bundles() -> dict[str, bytes]:
    """Two good bundles for the test camera ("b" is another policy than "a"), from tests/data/."""
    return {name: make_fixtures.read(name) for name in make_fixtures.RECIPES}


def policy_file(tmp: Path, name: str = "a") -> Path:
    path = tmp / f"{name}.malpi"
    path.write_bytes(bundles()[name])
    return path


def link_config(tmp: Path, policy: Path | None = None, **overrides):
    policy = policy or policy_file(tmp)
    return robot_config(
        tmp, policy, **{**LOOPBACK, "policy.store": str(tmp / "store"), **overrides}
    )


class LinkView:
    """What a test sees of the link process: where it serves, and its counters."""

    def __init__(self, robot):
        self.robot = robot

    @property
    def command_endpoint(self) -> str:
        return self.robot.command_endpoint

    @property
    def telemetry_endpoint(self) -> str:
        return self.robot.telemetry_endpoint

    @property
    def stats(self) -> dict:
        return self.robot.link.stats  # from the link process's heartbeats (4 a second)

    @property
    def pid(self) -> int | None:
        hello = self.robot.link.hello
        return hello.pid if hello is not None else None  # None while it restarts


@dataclass
class Daemon:
    robot: object
    factory: object
    events: object
    link: LinkView

    def client(self, **kw) -> RobotClient:
        kw.setdefault("insecure", True)
        return RobotClient(
            command=self.link.command_endpoint, telemetry=self.link.telemetry_endpoint, **kw
        )


class ThreadLink(LinkView):
    """The link run as a thread of the test process (the same code as the link process), for
    tests that reach into it: a failing disk under its policy store, a slow or buggy step."""

    def __init__(self, robot, process):
        super().__init__(robot)
        self.process = process

    @property
    def server(self):
        return self.process.server

    @property
    def policies(self):
        return self.server.policies


@contextlib.contextmanager
def running_link(config, in_process: bool = False):
    if not in_process:
        with running_robot(config) as (robot, factory, events, _):
            yield Daemon(robot, factory, events, LinkView(robot))
        return
    from malpi.daemon.child import ChildContext
    from malpi.daemon.control.children import ChildProcess
    from malpi.daemon.link.main import LinkProcess

    made: dict = {}
    real_spawn, real_exit, real_stop = ChildProcess.spawn, ChildProcess.exit_code, ChildProcess.stop

    def spawn(self):
        if self.role != "link":
            return real_spawn(self)
        ctx = ChildContext(
            "link",
            config_from_dict(self.settings["config"]),
            self.settings["endpoint"],
            Path(self.settings["runtime_dir"]),
        )
        process = LinkProcess(ctx)
        thread = threading.Thread(target=process.run, name="link-in-process", daemon=True)
        made.update(ctx=ctx, process=process, thread=thread)
        thread.start()

    def exit_code(self):
        if self.role != "link":
            return real_exit(self)
        return None if made["thread"].is_alive() else 0

    def stop(self, timeout=10.0):
        if self.role != "link":
            return real_stop(self, timeout)
        made["ctx"].stop.set()
        made["thread"].join(timeout)

    with (
        mock.patch.object(ChildProcess, "spawn", spawn),
        mock.patch.object(ChildProcess, "exit_code", exit_code),
        mock.patch.object(ChildProcess, "stop", stop),
        mock.patch.object(ChildProcess, "pid", property(lambda self: os.getpid())),
        running_robot(config) as (robot, factory, events, _),
    ):
        yield Daemon(robot, factory, events, ThreadLink(robot, made["process"]))


def raw_request(sock: zmq.Socket, frames: list[bytes], timeout: float = 2.0):
    """Send raw frames from a DEALER; the decoded reply, or None without one in time."""
    sock.send_multipart(frames)
    if not sock.poll(timeout * 1000):
        return None
    return schema.decode_reply(sock.recv_multipart()[-1])


def request_bytes(**fields) -> bytes:
    import msgspec

    return msgspec.msgpack.encode({"v": schema.PROTOCOL_VERSION, **fields})
