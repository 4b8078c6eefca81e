"""The link process: the robot's network face, in a process of its own.

Everything that touches what clients send runs here: ZeroMQ sockets and
CURVE, request decoding, bundle inflation and validation (LiteRT test steps
included), episode reads for ``malpi pull``, JPEG encoding of telemetry
frames. A decode bomb, a zip bomb or a crowd of connections costs this
process's memory and CPU, never the control loop's time; if it dies or
hangs, the control process stops the car and restarts it.
"""

from __future__ import annotations

import logging
import os
import resource

import zmq

from malpi.daemon import ipc
from malpi.daemon.child import ChildContext
from malpi.daemon.link.control import ControlChannel
from malpi.daemon.link.server import LinkServer

log = logging.getLogger(__name__)

IO_THREADS = 4


def raise_fd_limit() -> int:
    """As many file descriptors as allowed: a crowd of connections must not lock an operator out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("file-descriptor limit stays at %d: %s", soft, exc)
    return soft


class LinkProcess:
    """The link process's parts: its channel to the control process and its server."""

    def __init__(self, ctx: ChildContext):
        self.ctx = ctx
        self.fds = raise_fd_limit()
        # CURVE decrypts a whole message on the I/O thread its connection was given (a few ms
        # for a 4 MiB bundle part), while that thread's other connections wait: with four, an
        # operator's connection shares a pusher's thread one time in four.
        self.zctx = zmq.Context(io_threads=IO_THREADS)
        self.zctx.setsockopt(zmq.LINGER, 0)
        self.control = ControlChannel(self.zctx, ctx.endpoint)
        self.server: LinkServer | None = None

    def run(self) -> int:
        try:
            try:
                self.server = LinkServer(
                    self.ctx.config, self.control, self.ctx.runtime_dir, self.zctx
                )
            except Exception as exc:  # the daemon does not start: it says why
                self.control.send(ipc.Hello(role="link", pid=os.getpid(), error=str(exc)))
                return 2
            log.info("link process up (%d file descriptors allowed)", self.fds)
            self.control.send(
                ipc.Hello(
                    role="link",
                    pid=os.getpid(),
                    command_endpoint=self.server.command_endpoint,
                    telemetry_endpoint=self.server.telemetry_endpoint,
                )
            )
            try:
                self.server.serve(self.ctx.stop)
            finally:
                self.server.close()
            return 0
        finally:
            self.control.close()
            self.zctx.term()


def main(ctx: ChildContext) -> int:
    return LinkProcess(ctx).run()
