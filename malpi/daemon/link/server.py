"""The link process's server: the command ROUTER socket and the telemetry publisher.

One thread owns the network sockets and the channel to the control process.
It decodes and validates each request (bounded: see
:func:`malpi.protocol.schema.decode_request`), answers ``ping``, ``status``
and ``drive`` at once from what the control process last told it, forwards
the loop's commands as small internal messages, and hands policy loads and
episode reads to worker threads. Replies that come later (from the control
process or a worker) go out when they are ready. Malformed input gets an
error reply and changes nothing; nothing a client sends can reach the control
process except a validated command.

Connections are bounded: a TCP connection that has not completed the ZeroMQ
handshake within ``link.handshake_timeout_ms`` is dropped, so idle or
half-open connections cannot pile up; each connection may have only a few
requests queued (the bundle-sized ones are what costs memory); and the process
raises its file-descriptor limit so that a crowd of connections does not lock
an authorised operator out.

Security: without CURVE the link refuses to bind anything but loopback
(unless ``link.allow_insecure_remote``); with CURVE both sockets are CURVE
servers and a ZAP authenticator admits only the keys in the authorised-keys
directory (``link.authorized_keys``, by default ``<keys_dir>/authorized``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from malpi.config import Config
from malpi.daemon import ipc
from malpi.daemon.link.control import ControlChannel
from malpi.daemon.link.publisher import LinkError, TelemetryPublisher, bind, check_bind
from malpi.daemon.link.security import ServerSecurity
from malpi.daemon.link.transit import TransitDelay
from malpi.protocol import schema
from malpi.protocol.schema import ProtocolError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 5.0  # s: a loop command not done by then gets a "timeout" error
LOAD_TIMEOUT = 300.0  # s: validating a big bundle on a Pi takes seconds, not minutes
RCVHWM = 4  # requests queued per connection before ZeroMQ stops reading it
MAX_CLIENTS = 1024  # drive sequence numbers remembered (the least recently used are forgotten)
LIVE = ("mode", "episode", "step", "periods", "missed_periods")


@dataclass
class _Pending:
    envelope: list[bytes]
    request: Any
    deadline: float
    reply: Callable[[Any], schema.Reply]  # the future's result -> the reply
    future: Future


class LinkServer:
    """The command socket and the telemetry publisher, serving for the control process."""

    def __init__(
        self, config: Config, control: ControlChannel, runtime_dir: Path, context: zmq.Context
    ):
        from malpi.daemon.link.episodes import EpisodeServer
        from malpi.daemon.link.policies import PolicyLister
        from malpi.daemon.link.reload import PolicyManager
        from malpi.daemon.link.upload import Uploads

        link = config.link
        check_bind(link)  # before any key is read or socket bound
        self.config = config
        self.control = control
        self.policies = PolicyManager(config, control, runtime_dir / "models", self._event)
        recording = config.recording.path
        self.uploads = Uploads()
        self.episodes = EpisodeServer(
            Path(recording).expanduser() if recording else None, self._reserve_episode_id
        )
        self.policy_list = PolicyLister(config, control)
        self._ctx = context
        self._security: ServerSecurity | None = None
        self.publisher: TelemetryPublisher | None = None
        self._router: zmq.Socket | None = None
        self._pending: dict[int, _Pending] = {}
        self._tokens = 0
        self._loading = False
        self._load_token: int | None = None
        self._done: list[tuple[int, Future]] = []
        self._done_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._clients: OrderedDict[bytes, int] = OrderedDict()  # routing id -> last drive seq
        self._transit = TransitDelay()
        # A drive older than the deadman would move the car on a command given that long ago.
        self._max_drive_delay = config.safety.deadman_ms / 1000
        # The loop's mode, episode, step and period counts, from its step messages and its
        # state, whichever came last: status and drive replies are as fresh as can be.
        self._live: dict[str, Any] = {}
        self._stop = threading.Event()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="malpi-link-load")
        self.stats = {"requests": 0, "errors": 0, "drives_refused": 0}
        try:
            if link.curve:
                self._security = ServerSecurity(link.keys_dir, link.authorized_keys)
                self._security.start(self._ctx)  # before binding: CURVE without ZAP admits anyone
            self.publisher = TelemetryPublisher(link, context=self._ctx, security=self._security)
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.MAXMSGSIZE, link.max_message_bytes)
            router.setsockopt(zmq.RCVHWM, RCVHWM)
            router.setsockopt(zmq.HANDSHAKE_IVL, link.handshake_timeout_ms)
            if self._security is not None:
                self._security.apply(router)
            self._router = router
            self.command_endpoint = bind(router, link.command, "link.command")
        except BaseException:
            self._teardown()
            raise
        self.telemetry_endpoint = self.publisher.endpoint
        log.info(
            "link: commands on %s, telemetry on %s (%s)",
            self.command_endpoint,
            self.telemetry_endpoint,
            "CURVE" if link.curve else "no encryption",
        )

    # -- the server thread ------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; every piece of housekeeping survives its own bugs."""
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self.control.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self.control.wake_fd, zmq.POLLIN)
        last_beat = 0.0
        while not stop.is_set() and not self._stop.is_set():
            try:
                ready = dict(poller.poll(100))
                if self.control.sock in ready:
                    self._from_control()
                if self._router in ready:
                    self._requests()
                self.control.flush()
                self._finish_done()
                self._expire()
                now = time.monotonic()
                if now - last_beat >= ipc.HEARTBEAT:
                    last_beat = now
                    self.control.send(ipc.Heartbeat(stats=self.stats))
            except Exception:  # a bug in here must not end the only way to stop the car
                log.exception("link: serving failed; going on")
                time.sleep(0.01)
        if self.control.sock.poll(300):  # the control process's last words (its "stopped" event)
            self._from_control()

    def _requests(self) -> None:
        for _ in range(100):  # bounded, so that the control channel and replies are not starved
            try:
                # Zero-copy: a 50 MB bundle is not copied to be decoded.
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)

    def _from_control(self) -> None:
        for msg, extra in self.control.receive():
            if isinstance(msg, ipc.State):
                self._live.update(mode=msg.mode, episode=msg.episode, step=msg.step)
            elif isinstance(msg, ipc.Telemetry):
                if msg.topic == "step":
                    p = msg.payload
                    self._live.update({k: p[k] for k in LIVE if k in p})
                self.publisher.publish(msg.topic, msg.payload)
            elif isinstance(msg, ipc.FrameHead) and extra:
                try:
                    pixels = ipc.frame_pixels(extra[0].buffer, msg.height, msg.width)
                except ValueError as exc:
                    log.error("bad frame from the control process: %s", exc)
                    continue
                self.publisher.publish_frame(msg, pixels)

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
            self._error(envelope, exc.code, exc.message, exc.request_id)
            return
        except Exception as exc:  # decoding must never end this thread
            log.exception("link: undecodable request")
            self._error(envelope, "malformed", f"{type(exc).__name__}: {exc}")
            return
        del frames, body  # a bundle's frame is not kept alive by this function
        try:
            self._dispatch(envelope, request)
        except ProtocolError as exc:
            self._error(envelope, exc.code, exc.message, request.id)
        except Exception as exc:  # a bug: say so, and keep serving
            log.exception("link: %s failed", type(request).__name__)
            self._error(envelope, "internal", f"{type(exc).__name__}: {exc}", request.id)

    def _dispatch(self, envelope: list[bytes], req: Any) -> None:
        call = self.control.call
        if isinstance(req, schema.Ping):
            self._send(envelope, schema.Pong(id=req.id, server_time=time.time()))
        elif isinstance(req, schema.GetStatus):
            self._send(envelope, self._status(req.id))
        elif isinstance(req, schema.Drive):
            self._drive(envelope, req)
        elif isinstance(req, schema.SetMode):
            self._later(
                envelope,
                req,
                call("set_mode", mode=req.mode),
                lambda r: schema.ModeReply(
                    mode=r["mode"], previous=r["previous"], rearmed=r["rearmed"]
                ),
            )
        elif isinstance(req, schema.ResetEpisode):
            self._later(
                envelope,
                req,
                call("reset_episode"),
                lambda r: schema.EpisodeReply(episode=r["episode"]),
            )
        elif isinstance(req, schema.EndEpisode):
            self._later(
                envelope,
                req,
                call("end_episode", outcome=req.outcome, final_reward=req.final_reward),
                lambda r: schema.EndEpisodeReply(
                    episode=r["episode"], ended=r.get("ended"), outcome=req.outcome
                ),
            )
        elif isinstance(req, schema.Record):
            self._later(
                envelope,
                req,
                call("record", on=req.on),
                lambda r: schema.RecordReply(recording=r["recording"], episode=r["episode"]),
            )
        elif isinstance(req, schema.LoadPolicy | schema.RollbackPolicy | schema.KeepPolicy):
            if self._loading:
                raise ProtocolError("busy", "a policy load, keep or rollback is already running")
            if isinstance(req, schema.LoadPolicy) and req.total is not None:
                data, received = self.uploads.add(envelope[0], req, time.monotonic())
                req.bundle = memoryview(b"")
                if data is None:
                    reply = schema.PolicyPartReply(received=received, total=req.total)
                    reply.id = req.id
                    self._send(envelope, reply)
                    return
                job = lambda: self.policies.load(data, req.keep)  # noqa: E731
            elif isinstance(req, schema.LoadPolicy):
                # The received frame itself (the view keeps it alive until the load is done):
                # copying 50 MB here would hold the GIL, and every request waiting, for ~40 ms.
                data, req.bundle = req.bundle, memoryview(b"")
                job = lambda: self.policies.load(data, req.keep)  # noqa: E731
            elif isinstance(req, schema.KeepPolicy):
                job = self.policies.keep
            else:
                job = self.policies.rollback
            self._loading = True
            self._load_token = self._later(
                envelope, req, self._loader.submit(job), lambda r: r, LOAD_TIMEOUT
            )
        elif isinstance(req, schema.EPISODE_TYPES):
            job = self.episodes.submit(req)  # ProtocolError("busy") when too many are waiting
            self._later(envelope, req, job, lambda r: r, schema.EPISODE_TIMEOUT)
        elif isinstance(req, schema.ListPolicies):
            job = self.policy_list.submit(req)
            self._later(envelope, req, job, lambda r: r, schema.EPISODE_TIMEOUT)
        elif isinstance(req, schema.CALIBRATION_TYPES):
            self._calibrate(envelope, req)
        else:  # pragma: no cover - every request type is handled above
            raise ProtocolError("unknown_type", f"unhandled request {type(req).__name__}")

    def _calibrate(self, envelope: list[bytes], req: Any) -> None:
        """calibration, motor_test, set_calibration: carried out by the control loop (a motor
        test is answered when it ends, so it may take its seconds and a period more)."""
        call = self.control.call
        if isinstance(req, schema.GetCalibration):
            self._later(envelope, req, call("calibration"), _calibration_reply)
        elif isinstance(req, schema.MotorTest):
            future = call("motor_test", output=req.output, power=req.power, seconds=req.seconds)
            reply = lambda r: schema.MotorTestReply(**r)  # noqa: E731
            self._later(envelope, req, future, reply, schema.MAX_TEST_SECONDS + COMMAND_TIMEOUT)
        else:
            future = call("set_calibration", key=req.key, value=req.value)
            self._later(envelope, req, future, lambda r: schema.SetCalibrationReply(**r))

    def _drive(self, envelope: list[bytes], req: schema.Drive) -> None:
        """Accepted at once and forwarded. A stop is never refused; a drive whose sequence
        number is not above this client's (this connection's) last one is refused, and says so."""
        n = len(self.control.state.actions) if self.control.state else 0
        if req.action is not None and not req.action < n:
            raise ProtocolError("invalid", f"action {req.action} is outside the table of {n}")
        client = envelope[0]
        last = self._clients.get(client)
        delay = self._transit.delay(client, req.sent)
        reason = None
        if req.action is not None and delay > self._max_drive_delay:
            reason = (
                f"held up in transit: arrived {delay * 1000:.0f} ms later than this client's "
                "drives do (a link that dropped and came back)"
            )
        elif req.action is not None and last is not None and req.seq <= last:
            reason = f"stale sequence number {req.seq} (this client's last was {last})"
        if reason is not None:
            self.stats["drives_refused"] += 1
            reply = schema.DriveReply(id=req.id, accepted=False, mode=self._mode(), reason=reason)
            self._send(envelope, reply)
            return
        self._clients[client] = max(req.seq, last or 0)
        self._clients.move_to_end(client)
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        self.control.send(ipc.Drive(action=req.action, client=client.hex()))
        self._send(envelope, schema.DriveReply(id=req.id, accepted=True, mode=self._mode()))

    def _reserve_episode_id(self) -> int:
        """An episode id the control process will not give an episode (the episode worker's,
        for the new episode a cut makes): it chooses ids, the recorder only writes them."""
        future = self.control.call("reserve_episode")
        try:
            return int(future.result(COMMAND_TIMEOUT)["episode"])
        except FutureTimeout:
            self.control.forget(future)
            raise ProtocolError(
                "timeout", "the control loop did not give the cut's new episode an id in time"
            ) from None

    def _mode(self) -> str:
        return self._live.get("mode", "paused")

    def _status(self, request_id: int) -> schema.StatusReply:
        s = self.control.state
        if s is None:
            raise ProtocolError("refused", "the control loop has not reported yet; ask again")
        step = self._live
        return schema.StatusReply(
            id=request_id,
            mode=step.get("mode", s.mode),
            episode=step.get("episode", s.episode),
            step=step.get("step", s.step),
            recording=s.recording,
            recording_note=s.recording_note,
            policy_version=s.policy_version,
            policy_sha256=s.policy_sha256,
            policy_source=s.policy_source or None,
            rate_hz=s.rate_hz,
            periods=step.get("periods", s.periods),
            missed_periods=step.get("missed_periods", s.missed_periods),
            faults=s.faults,
            actions=[schema.ActionInfo(**a) for a in s.actions],
            recorder=schema.RecorderInfo(**s.recorder) if s.recorder else None,
            cpu_temp_c=self.publisher.cpu_temp_c if self.publisher else None,
            curve=self.config.link.curve,
            started_at=s.started_at,
            server_time=time.time(),
            boot_policy_version=s.boot_policy_version,
            boot_policy_source=s.boot_policy_source or None,
            boot_policy_sha256=s.boot_policy_sha256,
        )

    def _event(self, kind: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
        """An event of the link's own (a rejected policy): logged and published. Any thread."""
        log.log(level, "%s: %s", kind, message)
        payload = {"t": time.time(), "kind": kind, "message": message, **fields}
        self._hand_over(lambda: self.publisher.publish("event", payload))

    # -- replies that come later (loop commands, policy loads) -----------------------

    def _later(self, envelope, req, future: Future, reply, timeout: float = COMMAND_TIMEOUT) -> int:
        """Answer when ``future`` is done (or with a timeout error); returns its token."""
        self._tokens += 1
        token = self._tokens
        self._pending[token] = _Pending(envelope, req, time.monotonic() + timeout, reply, future)
        future.add_done_callback(lambda f, token=token: self._hand_over(token, f))
        return token

    def _hand_over(self, *item: Any) -> None:
        """From any thread to the server thread: (token, future) or a callable."""
        with self._done_lock:
            self._done.append(item)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _finish_done(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._wake_r, 4096)
        with self._done_lock:
            done, self._done = self._done, []
        for item in done:
            if len(item) == 1:
                item[0]()
                continue
            token, future = item
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
                self.control.forget(p.future)
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
        self._stop.set()
        self._loader.shutdown(wait=True, cancel_futures=True)
        self.episodes.close()
        self.policy_list.close()
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
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _calibration_reply(r: dict[str, Any]) -> schema.CalibrationReply:
    return schema.CalibrationReply(
        **{
            **r,
            "adjustments": [schema.Adjustment(**a) for a in r["adjustments"]],
            "outputs": [schema.TestOutput(**o) for o in r["outputs"]],
        }
    )


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


__all__ = ["LinkError", "LinkServer"]
