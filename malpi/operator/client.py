"""A Python client for the robot's link, shared by ``malpi teleop``, ``telemetry`` and ``push``.

    with RobotClient("robot.local") as robot:
        print(robot.status().mode)
        robot.set_mode("manual")
        robot.drive(2)                       # an index into robot.status().actions
        for topic, msg in robot.telemetry(["step", "event"], seconds=5):
            ...

Commands go over a DEALER socket (one outstanding request at a time per
client; a late reply to an earlier, timed-out request is discarded by id).
Telemetry comes from a SUB socket opened on first use.

Security: CURVE is used when the robot's public key is known (``server_key``,
or ``<keys_dir>/servers/HOST.key``, or this machine's own daemon key
``<keys_dir>/server.key``), with this client's key pair
``<keys_dir>/client.key_secret``; otherwise the link is plain, which a
robot with CURVE simply never answers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import zmq

from malpi.protocol import schema
from malpi.protocol.address import endpoints_for, split_tcp
from malpi.protocol.keys import CLIENT, apply_client_curve, keys_dir, load_public, server_key_for

log = logging.getLogger(__name__)


class RobotError(RuntimeError):
    """The robot answered with an error reply."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class LinkTimeout(TimeoutError):
    """No reply in time: the robot is down, or (with CURVE) this client is not authorised."""


class UnknownHost(ConnectionError):
    """The robot's name does not resolve: nothing to connect to (ZeroMQ would just wait)."""


class RobotClient:
    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        command: str | None = None,
        telemetry: str | None = None,
        server_key: str | os.PathLike | bytes | None = None,
        client_key: str | os.PathLike | None = None,
        keys: str | os.PathLike | None = None,
        insecure: bool = False,
        timeout: float = 2.0,
        context: zmq.Context | None = None,
    ):
        default_cmd, default_tel = endpoints_for(host)
        self.command_endpoint = command or default_cmd
        self.telemetry_endpoint = telemetry or default_tel
        _check_resolves(self.command_endpoint)
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._curve = None if insecure else _curve_keys(host, server_key, client_key, keys)
        self._lock = threading.Lock()
        self._next_id = 0
        self._last_seq = 0
        self._sub: zmq.Socket | None = None
        self._sock = self._socket(zmq.DEALER)
        self._sock.connect(self.command_endpoint)

    @property
    def curve(self) -> bool:
        return self._curve is not None

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            server_public, secret_file = self._curve
            apply_client_curve(sock, server_public, secret_file)
        return sock

    # -- commands ------------------------------------------------------------------

    def request(self, msg: schema.Request, timeout: float | None = None) -> Any:
        """Send one command and return its reply; RobotError for an error reply."""
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            self._next_id += 1
            msg.id = self._next_id
            deadline = time.monotonic() + timeout
            # A DEALER with no connected peer (robot down, handshake refused) would block in
            # send: wait for room, within the same deadline, instead.
            if not self._sock.poll(timeout * 1000, zmq.POLLOUT):
                raise self._timeout(timeout)
            try:
                self._sock.send(schema.encode(msg), zmq.NOBLOCK)
            except zmq.Again:
                raise self._timeout(timeout) from None
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sock.poll(remaining * 1000, zmq.POLLIN):
                    self._reconnect()
                    raise self._timeout(timeout)
                frames = self._sock.recv_multipart()
                try:
                    reply = schema.decode_reply(frames[-1])
                except Exception as exc:
                    log.warning("undecodable reply ignored: %s", exc)
                    continue
                if reply.id != msg.id:
                    continue  # a late reply to an earlier request that timed out
                if isinstance(reply, schema.ErrorReply):
                    raise RobotError(reply.code, reply.message)
                return reply

    def _reconnect(self) -> None:
        """A fresh socket: what the old one still queued (drive commands given long ago) is
        dropped, not delivered when the link comes back."""
        self._sock.close(0)
        self._sock = self._socket(zmq.DEALER)
        self._sock.connect(self.command_endpoint)

    def _timeout(self, timeout: float) -> LinkTimeout:
        where = self.command_endpoint.removeprefix("tcp://")
        why = "is malpi drive running there, with the link on?"
        if self.curve:
            why += " Is this client's key authorised there (malpi keys authorize)?"
        else:
            why += " If it uses CURVE, give --server-key or run malpi keys trust first."
        return LinkTimeout(f"no reply from {where} within {timeout:g} s ({why})")

    def ping(self) -> schema.Pong:
        return self.request(schema.Ping(v=schema.PROTOCOL_VERSION))

    def status(self) -> schema.StatusReply:
        return self.request(schema.GetStatus(v=schema.PROTOCOL_VERSION))

    def set_mode(self, mode: str) -> schema.ModeReply:
        return self.request(schema.SetMode(v=schema.PROTOCOL_VERSION, mode=mode))

    def drive(
        self, action: int | None, seq: int | None = None, timeout: float | None = None
    ) -> schema.DriveReply:
        """Drive with an action index (None = stop). Repeat at >= 10 Hz: the deadman stops the car.

        Sequence numbers count up from 1 on this client's connection (the robot orders each
        connection's commands on its own; no clock is involved). A stop is never refused. A
        refused drive comes back with ``accepted`` false and the reason.
        """
        if seq is None:
            seq = self._last_seq + 1
        self._last_seq = max(seq, self._last_seq)
        drive = schema.Drive(v=schema.PROTOCOL_VERSION, action=action, seq=seq)
        drive.sent = time.monotonic()  # a drive queued through a dropped link arrives refused
        return self.request(drive, timeout)

    def reset_episode(self) -> schema.EpisodeReply:
        return self.request(schema.ResetEpisode(v=schema.PROTOCOL_VERSION))

    def end_episode(
        self, outcome: str = "failed", final_reward: float | None = None
    ) -> schema.EndEpisodeReply:
        return self.request(
            schema.EndEpisode(v=schema.PROTOCOL_VERSION, outcome=outcome, final_reward=final_reward)
        )

    def record(self, on: bool) -> schema.RecordReply:
        return self.request(schema.Record(v=schema.PROTOCOL_VERSION, on=on))

    def load_policy(
        self, bundle: bytes | str | os.PathLike, timeout: float = 120.0, keep: bool = False
    ) -> schema.PolicyReply:
        """Push a bundle (its bytes or its file); the robot's reply once it runs. It becomes the
        boot policy only with ``keep``. One over ``schema.PART_BYTES`` goes in parts, so that
        no message holds up the robot's link."""
        data = bundle if isinstance(bundle, bytes) else Path(bundle).read_bytes()
        v = schema.PROTOCOL_VERSION
        if len(data) <= schema.PART_BYTES:
            return self.request(schema.LoadPolicy(v=v, bundle=data, keep=keep), timeout)
        view, step = memoryview(data), schema.PART_BYTES
        for offset in range(0, len(data), step):
            part = view[offset : offset + step]
            reply = self.request(
                schema.LoadPolicy(v=v, bundle=part, offset=offset, total=len(data), keep=keep),
                timeout,
            )
        return reply

    def keep_policy(self, timeout: float = 120.0) -> schema.KeepReply:
        """Make the running policy the one the robot boots with."""
        return self.request(schema.KeepPolicy(v=schema.PROTOCOL_VERSION), timeout)

    def rollback_policy(self, timeout: float = 120.0) -> schema.RollbackReply:
        return self.request(schema.RollbackPolicy(v=schema.PROTOCOL_VERSION), timeout)

    def list_episodes(self, since: int = 0, limit: int = schema.MAX_LIST_EPISODES):
        return self.request(
            schema.ListEpisodes(v=schema.PROTOCOL_VERSION, since=since, limit=limit)
        )

    def get_episode(self, episode: int, from_step: int = 0, max_steps: int = 256):
        return self.request(
            schema.GetEpisode(
                v=schema.PROTOCOL_VERSION, episode=episode, from_step=from_step, max_steps=max_steps
            ),
            # Longer than the robot's own limit, so that its "timeout" reply arrives first.
            max(self.timeout, schema.EPISODE_TIMEOUT + 5.0),
        )

    # -- curating the recording, and the policies kept ----------------------------------

    def delete_episode(self, episode: int) -> schema.DeleteReply:
        """Delete an ended episode (its steps and frames) from the robot's recording."""
        return self.request(
            schema.DeleteEpisode(v=schema.PROTOCOL_VERSION, episode=episode),
            max(self.timeout, schema.EPISODE_TIMEOUT + 5.0),
        )

    def cut_episode(self, episode: int, from_step: int, to_step: int) -> schema.CutReply:
        """Remove steps from_step <= step < to_step of an ended episode; the reply says what is
        left (the episode, and after a cut in the middle the new episode of the steps after it)."""
        return self.request(
            schema.CutEpisode(
                v=schema.PROTOCOL_VERSION, episode=episode, from_step=from_step, to_step=to_step
            ),
            max(self.timeout, schema.EPISODE_TIMEOUT + 5.0),
        )

    def set_outcome(
        self, episode: int, outcome: str, final_reward: float | None = None
    ) -> schema.OutcomeReply:
        """Mark an ended episode's outcome (and final reward; None keeps the one it has)."""
        return self.request(
            schema.SetOutcome(
                v=schema.PROTOCOL_VERSION,
                episode=episode,
                outcome=outcome,
                final_reward=final_reward,
            ),
            max(self.timeout, schema.EPISODE_TIMEOUT + 5.0),
        )

    def list_policies(self) -> schema.PolicyList:
        """What runs, what boots, the policy store's history (newest first), the shipped one."""
        return self.request(
            schema.ListPolicies(v=schema.PROTOCOL_VERSION),
            max(self.timeout, schema.EPISODE_TIMEOUT + 5.0),
        )

    # -- calibration: malpi setup's motor test and calibration, on the running car -------

    def calibration(self) -> schema.CalibrationReply:
        """What can be tested and adjusted, and the values now."""
        return self.request(schema.GetCalibration(v=schema.PROTOCOL_VERSION))

    def motor_test(
        self, output: str, power: float = 0.3, seconds: float = 1.0
    ) -> schema.MotorTestReply:
        """Run one output (paused only; wheels off the ground unless it is on_floor); the reply
        comes when it has ended."""
        return self.request(
            schema.MotorTest(
                v=schema.PROTOCOL_VERSION, output=output, power=power, seconds=seconds
            ),
            # The test's own time, and longer than the robot's limit so that its reply comes first.
            max(self.timeout, seconds) + 6.0,
        )

    def set_calibration(self, key: str, value: float) -> schema.SetCalibrationReply:
        """Change one calibration value (paused only): in force at once, kept for the next boot."""
        return self.request(
            schema.SetCalibration(v=schema.PROTOCOL_VERSION, key=key, value=value),
            max(self.timeout, 6.0),
        )

    # -- telemetry -------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str] = schema.TOPICS) -> None:
        """Open the telemetry socket (once) and subscribe to ``topics``."""
        if self._sub is None:
            self._sub = self._socket(zmq.SUB)
            self._sub.setsockopt(zmq.RCVHWM, 100)
            self._sub.connect(self.telemetry_endpoint)
        for t in topics:
            if t not in schema.TOPICS:
                raise ValueError(f"unknown topic {t!r}; topics: {', '.join(schema.TOPICS)}")
            self._sub.setsockopt(zmq.SUBSCRIBE, t.encode())

    def receive(self, timeout: float = 0.0) -> tuple[str, Any] | None:
        """The next telemetry message as (topic, decoded message), or None within ``timeout``."""
        if self._sub is None:
            self.subscribe()
        if not self._sub.poll(timeout * 1000, zmq.POLLIN):
            return None
        frames = self._sub.recv_multipart()
        if len(frames) != 2:
            log.warning("telemetry message of %d frames ignored", len(frames))
            return None
        topic = frames[0].decode("ascii", "replace")
        try:
            return topic, schema.decode_telemetry(topic, frames[1])
        except Exception as exc:
            log.warning("undecodable %s message ignored: %s", topic, exc)
            return None

    def telemetry(
        self,
        topics: Iterable[str] = schema.TOPICS,
        seconds: float | None = None,
        count: int | None = None,
        idle: float | None = None,
    ) -> Iterator[tuple[str, Any] | None]:
        """Telemetry messages as they arrive, for ``seconds`` or ``count`` messages (else forever).

        ``idle``: also yield None after every ``idle`` seconds without a message (the robot
        stopped, or the link was lost), so that a caller can say so.
        """
        self.subscribe(topics)
        end = None if seconds is None else time.monotonic() + seconds
        n = 0
        last = time.monotonic()
        while (end is None or time.monotonic() < end) and (count is None or n < count):
            wait = 0.2 if end is None else max(0.0, min(0.2, end - time.monotonic()))
            msg = self.receive(wait)
            if msg is not None:
                n += 1
                last = time.monotonic()
                yield msg
            elif idle is not None and time.monotonic() - last >= idle:
                last = time.monotonic()
                yield None

    def close(self) -> None:
        self._sock.close(0)
        if self._sub is not None:
            self._sub.close(0)

    def __enter__(self) -> RobotClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_resolves(endpoint: str) -> None:
    """Raise :class:`UnknownHost` when a tcp:// endpoint's host name does not resolve."""
    parts = split_tcp(endpoint)
    if parts is None or parts[0] in ("", "*"):
        return
    try:
        socket.getaddrinfo(parts[0], None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnknownHost(f"unknown host {parts[0]!r} ({exc.strerror})") from None
    except UnicodeError:
        raise UnknownHost(f"unknown host {parts[0]!r} (not a valid host name)") from None


def _curve_keys(host, server_key, client_key, keys) -> tuple[bytes, Path] | None:
    """(server public key, client secret file) when CURVE is to be used, else None."""
    d = keys_dir(keys)
    if isinstance(server_key, bytes):
        server_public = server_key
    else:
        path = Path(server_key).expanduser() if server_key else server_key_for(_host(host), d)
        if path is None:
            return None
        server_public = load_public(path)
    secret = Path(client_key).expanduser() if client_key else d / f"{CLIENT}.key_secret"
    return server_public, secret


def _host(host: str) -> str:
    """The host part of HOST, HOST:PORT or tcp://HOST:PORT (the name of its key file)."""
    cmd, _ = endpoints_for(host)
    return cmd[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
