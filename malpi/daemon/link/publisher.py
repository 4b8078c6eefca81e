"""The telemetry PUB socket, and the bind rules both link sockets follow.

The link's server thread publishes what the control process sends it: each
message is encoded with the public schema and handed to ZeroMQ without
blocking (PUB drops for a subscriber whose queue of ``link.telemetry_hwm``
messages is full, so a slow or dead subscriber costs nothing), and camera
frames are JPEG-encoded here, in the link process, at ``link.frame_rate_hz``.

Without CURVE nothing but loopback (or ipc://) may be bound, unless
``link.allow_insecure_remote``: :func:`check_bind` refuses before any socket exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from malpi.config import LinkConfig
from malpi.daemon.link.security import ServerSecurity
from malpi.protocol import schema
from malpi.protocol.address import is_local

log = logging.getLogger(__name__)

CPU_TEMP = Path("/sys/class/thermal/thermal_zone0/temp")


class LinkError(RuntimeError):
    """The link cannot start (a refused or failed bind, missing keys)."""


def check_bind(link: LinkConfig) -> None:
    """Refuse, before anything binds, to expose an unencrypted link beyond this machine."""
    if link.curve or link.allow_insecure_remote:
        return
    for key, addr in (("link.command", link.command), ("link.telemetry", link.telemetry)):
        if not is_local(addr):
            raise LinkError(
                f"{key}: refusing to bind {addr} without CURVE: anyone on the network could "
                "drive the car. Set link.curve = true (malpi keys init --server), or "
                "link.allow_insecure_remote = true on a closed bench network."
            )


def bind(sock: zmq.Socket, address: str, key: str) -> str:
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        raise LinkError(f"{key}: cannot bind {address}: {exc}") from exc
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def read_cpu_temp(path: Path = CPU_TEMP) -> float | None:
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


class TelemetryPublisher:
    """The PUB socket. Used from one thread (the link's server thread); never blocks."""

    def __init__(
        self,
        link: LinkConfig,
        *,
        context: zmq.Context | None = None,
        security: ServerSecurity | None = None,
    ):
        check_bind(link)
        self.link = link
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._security = security
        if security is None and link.curve and self._own_context:
            self._security = ServerSecurity(link.keys_dir, link.authorized_keys)
            self._security.start(self._ctx)
        self._closed = False
        self.sent = 0
        self.dropped = 0
        self.frames = 0
        self.cpu_temp_c: float | None = read_cpu_temp()
        self._last_temp = time.monotonic()
        sock = self._ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, link.telemetry_hwm)
        sock.setsockopt(zmq.LINGER, 200)  # ms: let the final "stopped" event out on close
        sock.setsockopt(zmq.HANDSHAKE_IVL, link.handshake_timeout_ms)
        if self._security is not None:
            self._security.apply(sock)
        try:
            self.endpoint = bind(sock, link.telemetry, "link.telemetry")
        except BaseException:
            sock.close(0)
            self._cleanup()
            raise
        self._sock = sock
        self._encode_jpeg = self._jpeg_encoder() if link.frame_rate_hz > 0 else None

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """One of the control loop's telemetry messages, encoded with the public schema."""
        now = time.monotonic()
        if now - self._last_temp >= 2.0:
            self.cpu_temp_c, self._last_temp = read_cpu_temp(), now
        try:
            body = schema.encode_telemetry(topic, payload, cpu_temp_c=self.cpu_temp_c)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("telemetry %s message not encodable, skipped: %r", topic, exc)
            return
        self._send(topic.encode(), body)

    def publish_frame(self, head: Any, image: Any) -> None:
        """A camera frame (RGB pixels) as JPEG on the ``frame`` topic."""
        if self._encode_jpeg is None:
            return
        try:
            data = self._encode_jpeg(image, self.link.frame_jpeg_quality)
        except Exception as exc:  # a bad frame is skipped, never fatal
            log.warning("frame %d not encodable: %s", head.index, exc)
            return
        msg = schema.FrameMsg(
            v=schema.PROTOCOL_VERSION,
            t=head.t,
            index=head.index,
            episode=head.episode,
            step=head.step,
            width=head.width,
            height=head.height,
            encoding="jpeg",
            data=data,
        )
        self._send(b"frame", schema.encode(msg))
        self.frames += 1

    def _send(self, topic: bytes, body: bytes) -> None:
        if self._closed:
            return
        try:
            self._sock.send_multipart((topic, body), flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
        except zmq.ZMQError as exc:
            self.dropped += 1
            log.debug("telemetry send failed: %s", exc)

    def _jpeg_encoder(self) -> Callable | None:
        try:
            import cv2  # noqa: F401 - the recorder's JPEG codec uses OpenCV
        except ImportError as exc:
            log.warning("no frame telemetry (OpenCV is not installed): %s", exc)
            return None
        from malpi.recorder.codec import encode_jpeg

        return encode_jpeg

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._own_context:
            if self._security is not None:
                self._security.stop()
            self._ctx.term()
