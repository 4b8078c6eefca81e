"""The daemon's side of the link: the command ROUTER socket, with the telemetry publisher.

:class:`LinkServer` runs both sockets for a control loop (the PUB side is
:mod:`malpi.daemon.link.publisher`). One thread owns the ROUTER socket, so several
clients can talk at once. It decodes and validates each request, answers
``ping``, ``status`` and ``drive`` at once, and hands the rest to the control
loop (or, for policy loads and episode reads, to worker threads) without
waiting: their replies come back through a queue when done. Malformed input gets an error
reply and changes nothing.

Security: without CURVE the daemon refuses to bind anything but loopback
(unless ``link.allow_insecure_remote``); with CURVE both sockets are CURVE
servers and a ZAP authenticator admits only the keys in the authorised-keys
directory. An unauthorised client never completes the handshake: no reply,
no telemetry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from malpi.config import Config
from malpi.daemon.control.loop import DaemonStopped
from malpi.daemon.link.publisher import (  # noqa: F401 - TelemetryPublisher: `malpi bench loop` uses it
    LinkError,
    TelemetryPublisher,
    bind,
    check_bind,
)
from malpi.protocol import schema
from malpi.protocol.keys import ServerSecurity
from malpi.protocol.schema import ProtocolError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 5.0  # s: a loop command not done by then gets a "timeout" error
LOAD_TIMEOUT = 300.0  # s: validating a big bundle on a Pi takes seconds, not minutes


@dataclass
class _Pending:
    envelope: list[bytes]
    request: Any
    deadline: float
    reply: Callable[[Any], schema.Reply]  # the future's result -> the reply


class LinkServer:
    """The command socket and the telemetry publisher for one running control loop."""

    def __init__(self, config: Config, loop, camera=None, telemetry=None, policy_source: str = ""):
        from malpi.daemon.link.episodes import EpisodeServer
        from malpi.daemon.link.reload import PolicyManager

        link = config.link
        check_bind(link)  # before any key is read or socket bound
        self.config = config
        self.loop = loop
        self.telemetry = telemetry if telemetry is not None else loop.telemetry
        self.policies = PolicyManager(config, loop, policy_source)
        recorder = getattr(loop, "recorder", None)
        self.episodes = EpisodeServer(recorder.path if recorder is not None else None)
        self._ctx = zmq.Context()
        self._security: ServerSecurity | None = None
        self.publisher: TelemetryPublisher | None = None
        self._router: zmq.Socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[int, _Pending] = {}
        self._tokens = 0
        self._loading = False
        self._load_token: int | None = None
        self._stop = threading.Event()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="malpi-link-load")
        self.stats = {"requests": 0, "errors": 0}
        try:
            if link.curve:
                self._security = ServerSecurity(link.keys_dir, link.authorized_keys)
                self._security.start(self._ctx)  # before binding: CURVE without ZAP admits anyone
            self.publisher = TelemetryPublisher(
                link, context=self._ctx, security=self._security, camera=camera
            )
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.MAXMSGSIZE, link.max_message_bytes)
            if self._security is not None:
                self._security.apply(router)
            self._router = router
            self.command_endpoint = bind(router, link.command, "link.command")
        except BaseException:
            self._teardown()
            raise
        self.telemetry_endpoint = self.publisher.endpoint
        self.telemetry.add_sink(self.publisher.sink)
        self._thread = threading.Thread(target=self._serve, name="malpi-link", daemon=True)
        self._thread.start()
        security = "CURVE" if link.curve else "no encryption"
        log.info(
            "link: commands on %s, telemetry on %s (%s)",
            self.command_endpoint,
            self.telemetry_endpoint,
            security,
        )

    @classmethod
    def for_robot(cls, robot) -> LinkServer:
        return cls(
            robot.config,
            robot.loop,
            camera=robot.camera,
            telemetry=robot.telemetry,
            policy_source=getattr(robot, "policy_source", ""),
        )

    # -- the server thread ------------------------------------------------------------

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(100))
            if self._router in ready:
                for _ in range(100):  # bounded, so finished replies are not starved
                    try:
                        # Zero-copy: a 50 MB bundle is not copied under the GIL here.
                        frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(frames)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            self._finish_done()
            self._expire()

    def _handle(self, frames: list[zmq.Frame]) -> None:
        self.stats["requests"] += 1
        envelope, body = _split(frames)
        if body is None:
            self._error(
                envelope,
                "malformed",
                f"expected one body frame after the envelope, got {len(frames) - len(envelope)}",
            )
            return
        try:
            request = schema.decode_request(body)
        except ProtocolError as exc:
            self._error(envelope, exc.code, exc.message, _peek_id(body))
            return
        except Exception as exc:  # decoding must never end this thread (that stops the car)
            log.exception("link: undecodable request")
            self._error(envelope, "malformed", f"{type(exc).__name__}: {exc}")
            return
        try:
            self._dispatch(envelope, request)
        except ProtocolError as exc:
            self._error(envelope, exc.code, exc.message, request.id)
        except Exception as exc:  # a bug: say so, and keep serving
            log.exception("link: %s failed", type(request).__name__)
            self._error(envelope, "internal", f"{type(exc).__name__}: {exc}", request.id)

    def _dispatch(self, envelope: list[bytes], req: Any) -> None:
        loop = self.loop
        if isinstance(req, schema.Ping):
            self._send(envelope, schema.Pong(id=req.id, server_time=time.time()))
        elif isinstance(req, schema.GetStatus):
            self._send(envelope, self._status(req.id))
        elif isinstance(req, schema.Drive):
            try:
                r = loop.drive(req.action, req.seq)
            except ValueError as exc:
                raise ProtocolError("invalid", str(exc)) from exc
            self._send(
                envelope,
                schema.DriveReply(
                    id=req.id, accepted=r["accepted"], mode=r["mode"], reason=r.get("reason")
                ),
            )
        elif isinstance(req, schema.SetMode):
            self._later(
                envelope,
                req,
                loop.set_mode(req.mode),
                lambda r: schema.ModeReply(
                    mode=r["mode"], previous=r["previous"], rearmed=r["rearmed"]
                ),
            )
        elif isinstance(req, schema.ResetEpisode):
            self._later(
                envelope,
                req,
                loop.reset_episode(),
                lambda r: schema.EpisodeReply(episode=r["episode"]),
            )
        elif isinstance(req, schema.EndEpisode):
            self._later(
                envelope,
                req,
                loop.end_episode(req.outcome, req.final_reward),
                lambda r: schema.EndEpisodeReply(
                    episode=r["episode"], ended=r.get("ended"), outcome=req.outcome
                ),
            )
        elif isinstance(req, schema.Record):
            self._later(
                envelope,
                req,
                loop.set_recording(req.on),
                lambda r: schema.RecordReply(recording=r["recording"], episode=r["episode"]),
            )
        elif isinstance(req, schema.LoadPolicy | schema.RollbackPolicy):
            if self._loading:
                raise ProtocolError("busy", "a policy load or rollback is already running")
            job = (
                (lambda: self.policies.load(req.bundle))
                if isinstance(req, schema.LoadPolicy)
                else self.policies.rollback
            )
            self._loading = True
            self._load_token = self._later(
                envelope, req, self._loader.submit(job), lambda r: r, LOAD_TIMEOUT
            )
        elif isinstance(req, schema.ListEpisodes | schema.GetEpisode):
            job = self.episodes.submit(req)  # ProtocolError("busy") when too many are waiting
            self._later(envelope, req, job, lambda r: r, schema.EPISODE_TIMEOUT)
        else:  # pragma: no cover - every request type is handled above
            raise ProtocolError("unknown_type", f"unhandled request {type(req).__name__}")

    def _status(self, request_id: int) -> schema.StatusReply:
        s = self.loop.status()
        rec = None
        if self.loop.recorder is not None:
            r = self.loop.recorder.stats
            rec = schema.RecorderInfo(
                written=r.steps_written, dropped=r.steps_dropped, queue=r.queue_depth
            )
        return schema.StatusReply(
            id=request_id,
            mode=s["mode"],
            episode=s["episode"],
            step=s["step"],
            recording=s["recording"],
            policy_version=s["policy_version"],
            policy_source=self.policies.source or None,
            rate_hz=s["rate_hz"],
            periods=s["periods"],
            missed_periods=s["missed_periods"],
            faults=s["faults"],
            actions=[schema.ActionInfo(**a) for a in self.loop.actions.to_list()],
            recorder=rec,
            cpu_temp_c=self.publisher.cpu_temp_c if self.publisher else None,
            curve=self.config.link.curve,
            server_time=time.time(),
        )

    # -- replies that come later (loop commands, policy loads) -----------------------

    def _later(self, envelope, req, future: Future, reply, timeout: float = COMMAND_TIMEOUT) -> int:
        """Answer when ``future`` is done (or with a timeout error); returns its token."""
        self._tokens += 1
        token = self._tokens
        self._pending[token] = _Pending(envelope, req, time.monotonic() + timeout, reply)

        def done(f: Future, token=token) -> None:  # on the loop or load thread: hand over only
            self._done.put((token, f))
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

        future.add_done_callback(done)
        return token

    def _finish_done(self) -> None:
        while True:
            try:
                token, future = self._done.get_nowait()
            except queue.Empty:
                return
            if token == self._load_token:  # the load worker is free again (even after a timeout)
                self._loading, self._load_token = False, None
            pending = self._pending.pop(token, None)
            if pending is not None:  # else it was already answered with a timeout
                self._reply_from(pending, future)

    def _reply_from(self, pending: _Pending, future: Future) -> None:
        req = pending.request
        try:
            result = future.result()
        except ProtocolError as exc:
            self._error(pending.envelope, exc.code, exc.message, req.id)
            return
        except DaemonStopped as exc:
            self._error(pending.envelope, "stopped", str(exc), req.id)
            return
        except RuntimeError as exc:  # the loop refusing (e.g. recording not configured)
            self._error(pending.envelope, "refused", str(exc), req.id)
            return
        except ValueError as exc:
            self._error(pending.envelope, "invalid", str(exc), req.id)
            return
        except Exception as exc:
            log.exception("link: %s failed", type(req).__name__)
            self._error(pending.envelope, "internal", f"{type(exc).__name__}: {exc}", req.id)
            return
        reply = pending.reply(result)
        reply.id = req.id
        self._send(pending.envelope, reply)

    def _expire(self) -> None:
        now = time.monotonic()
        for token, p in list(self._pending.items()):
            if now > p.deadline:
                del self._pending[token]
                name = type(p.request).__struct_config__.tag
                self._error(
                    p.envelope,
                    "timeout",
                    f"{name} was not carried out in time (it may still take effect)",
                    p.request.id,
                )

    # -- sending ------------------------------------------------------------------------

    def _send(self, envelope: list[bytes], reply: schema.Reply) -> None:
        self._send_raw(envelope, schema.encode(reply))

    def _error(self, envelope, code: str, message: str, request_id: int = 0) -> None:
        self.stats["errors"] += 1
        log.debug("link: error reply %s: %s", code, message)
        self._send_raw(envelope, schema.error_reply(code, message, request_id))

    def _send_raw(self, envelope: list[bytes], body: bytes) -> None:
        try:
            self._router.send_multipart([*envelope, body], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client went away or its queue is full: drop
            log.debug("link: reply dropped: %s", exc)

    # -- shutting down ----------------------------------------------------------------

    def close(self) -> None:
        """Stop serving (the loop may still be running: its telemetry sink is removed first)."""
        if self.publisher is not None:
            self.telemetry.remove_sink(self.publisher.sink)
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if getattr(self, "_thread", None) is not None:
            self._thread.join(5)
        self._loader.shutdown(wait=True, cancel_futures=True)
        self.episodes.close()
        self._teardown()

    def _teardown(self) -> None:
        if self._router is not None:
            self._router.close(0)
            self._router = None
        if self.publisher is not None:
            self.publisher.close()
        if self._security is not None:
            self._security.stop()
            self._security = None
        self._ctx.term()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _split(frames: list) -> tuple[list[bytes], memoryview | None]:
    """(envelope to echo, body): the envelope is the identity up to and including an empty
    delimiter frame (REQ clients send one; DEALER clients may). Exactly one body frame follows.
    ``frames`` are zmq.Frame (or bytes); the body is returned as a zero-copy memoryview."""
    empty = [len(f) == 0 for f in frames]
    try:
        cut = empty.index(True, 1) + 1
    except ValueError:
        cut = 1
    envelope = [f.bytes if isinstance(f, zmq.Frame) else f for f in frames[:cut]]
    if len(frames) - cut != 1:
        return envelope, None
    body = frames[cut]
    return envelope, body.buffer if isinstance(body, zmq.Frame) else memoryview(body)


def _peek_id(body: bytes) -> int:
    """The id of a request that failed to decode, when it has a usable one."""
    try:
        raw = msgspec.msgpack.decode(body) if len(body) <= schema.MAX_COMMAND_BYTES else None
    except Exception:
        return 0
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63:
            return rid
    return 0


def start_link(robot) -> LinkServer | None:
    """The daemon's link, when ``link.enabled``; raises LinkError on a refused or failed bind."""
    if not robot.config.link.enabled:
        log.info("link disabled (link.enabled = false)")
        return None
    return LinkServer.for_robot(robot)
