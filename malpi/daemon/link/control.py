"""The link process's end of its channel to the control process.

The server thread owns the socket: it sends what the other threads queue
(:meth:`ControlChannel.call` is thread-safe and returns a Future), and hands
what arrives (telemetry, frames, state, replies) to the server. Replies
resolve their futures; an error reply raises :class:`ProtocolError` with the
control process's code.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import zmq

from malpi.daemon import ipc
from malpi.protocol.schema import ProtocolError

log = logging.getLogger(__name__)


class ControlChannel:
    def __init__(self, context: zmq.Context, endpoint: str):
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.setsockopt(zmq.RCVHWM, 1000)
        self.sock.connect(endpoint)
        self.state: ipc.State | None = None
        self.last_heard = 0.0
        self._tokens = itertools.count(1)
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def wake_fd(self) -> int:
        """Readable when another thread has queued something for the server thread to send."""
        return self._wake_r

    # -- any thread -------------------------------------------------------------------

    def call(self, kind: str, **args: Any) -> Future:
        """Ask the control loop to do something; the Future holds its result dict."""
        token = next(self._tokens)
        future: Future = Future()
        with self._lock:
            self._futures[token] = future
        self._outbox.put(ipc.Command(token=token, kind=kind, args=args))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")
        return future

    def forget(self, future: Future) -> None:
        """A caller that gave up waiting: its late reply is dropped."""
        with self._lock:
            for token, f in list(self._futures.items()):
                if f is future:
                    del self._futures[token]

    # -- the server thread ------------------------------------------------------------

    def send(self, msg: Any) -> None:
        try:
            self.sock.send(ipc.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("the control process is not reading: %s dropped", type(msg).__name__)

    def flush(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                self.send(self._outbox.get_nowait())
            except queue.Empty:
                return

    def receive(self, limit: int = 500) -> list[tuple[Any, list]]:
        """Messages from the control process with their extra frames (replies are handled here,
        state is also kept here); at most ``limit`` per call so that requests are not starved."""
        out = []
        for _ in range(limit):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = ipc.decode("to_link", frames[0].buffer)
            except ValueError as exc:
                log.error("bad message from the control process: %s", exc)
                continue
            self.last_heard = time.monotonic()
            if isinstance(msg, ipc.State):
                self.state = msg
                out.append((msg, []))
            elif isinstance(msg, ipc.Reply):
                self._resolve(msg)
            else:
                out.append((msg, frames[1:]))
        return out

    def _resolve(self, reply: ipc.Reply) -> None:
        with self._lock:
            future = self._futures.pop(reply.token, None)
        if future is None or not future.set_running_or_notify_cancel():
            return
        if reply.code:
            future.set_exception(ProtocolError(reply.code, reply.message))
        else:
            future.set_result(reply.result or {})

    def close(self) -> None:
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
        for f in futures:
            if f.set_running_or_notify_cancel():
                f.set_exception(ProtocolError("stopped", "the link is closing"))
        self.sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
