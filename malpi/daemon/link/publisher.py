"""The telemetry PUB socket, and the bind rules both link sockets follow.

The control loop's sink encodes each message and hands it to ZeroMQ without
blocking: PUB drops for a subscriber whose queue of ``link.telemetry_hwm``
messages is full, so a slow or dead subscriber never stalls the loop. A
helper thread publishes the newest camera frame as JPEG at
``link.frame_rate_hz`` and reads the CPU temperature.

Without CURVE nothing but loopback (or ipc://) may be bound, unless
``link.allow_insecure_remote``: :func:`check_bind` refuses before any socket exists.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from malpi.config import LinkConfig
from malpi.protocol import schema
from malpi.protocol.address import is_local
from malpi.protocol.keys import ServerSecurity

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
    """The PUB socket: ``sink`` for the loop's telemetry, plus a JPEG ``frame`` thread.

    ``sink`` may be called from any thread (a lock serialises the socket), and
    never blocks: sends are NOBLOCK and PUB drops rather than queue past the
    high-water mark.
    """

    def __init__(
        self,
        link: LinkConfig,
        *,
        context: zmq.Context | None = None,
        security: ServerSecurity | None = None,
        camera: Any = None,
    ):
        check_bind(link)
        self.link = link
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._security = security
        if security is None and link.curve and self._own_context:
            self._security = ServerSecurity(link.keys_dir, link.authorized_keys)
            self._security.start(self._ctx)
        self._lock = threading.Lock()
        self._closed = False
        self.sent = 0
        self.dropped = 0
        self.frames = 0
        self.cpu_temp_c: float | None = read_cpu_temp()
        self._position = (0, 0)  # (episode, step) of the latest step message, for frames
        sock = self._ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, link.telemetry_hwm)
        sock.setsockopt(zmq.LINGER, 200)  # ms: let the final "stopped" event out on close
        if self._security is not None:
            self._security.apply(sock)
        try:
            self.endpoint = bind(sock, link.telemetry, "link.telemetry")
        except BaseException:
            sock.close(0)
            self._cleanup()
            raise
        self._sock = sock
        self._stop = threading.Event()
        self._camera = camera
        self._thread = threading.Thread(target=self._helper, name="malpi-link-frames", daemon=True)
        self._thread.start()

    def sink(self, topic: str, payload: dict[str, Any]) -> None:
        """A telemetry sink (called on the control thread): encode, hand over, never wait."""
        if topic == "step":
            self._position = (payload["episode"], payload["step"])
        try:
            body = schema.encode_telemetry(topic, payload, cpu_temp_c=self.cpu_temp_c)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("telemetry %s message not encodable, skipped: %r", topic, exc)
            return
        self._send(topic.encode(), body)

    def _send(self, topic: bytes, body: bytes) -> None:
        with self._lock:
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

    def _helper(self) -> None:
        """Frames at link.frame_rate_hz and the CPU temperature every few seconds."""
        rate = self.link.frame_rate_hz if self._camera is not None else 0.0
        period = 1.0 / rate if rate > 0 else 2.0
        encode = self._jpeg_encoder() if rate > 0 else None
        last_index, last_temp = -1, time.monotonic()
        next_tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_temp >= 2.0:
                self.cpu_temp_c, last_temp = read_cpu_temp(), now
            if encode is not None:
                frame = self._camera.latest()
                if frame is not None and frame.index != last_index:
                    last_index = frame.index
                    self._publish_frame(frame, encode)
            next_tick = max(next_tick + period, time.monotonic())
            self._stop.wait(next_tick - time.monotonic())

    def _jpeg_encoder(self) -> Callable | None:
        try:
            import cv2  # noqa: F401 - the recorder's JPEG codec uses OpenCV
        except ImportError as exc:
            log.warning("no frame telemetry (OpenCV is not installed): %s", exc)
            return None
        from malpi.recorder.codec import encode_jpeg

        return encode_jpeg

    def _publish_frame(self, frame, encode) -> None:
        try:
            data = encode(frame.image, self.link.frame_jpeg_quality)
        except Exception as exc:  # a bad frame must not end the thread (that would latch a fault)
            log.warning("frame %d not encodable: %s", frame.index, exc)
            return
        h, w = frame.image.shape[:2]
        episode, step = self._position
        msg = schema.FrameMsg(
            v=schema.PROTOCOL_VERSION,
            t=time.time() - (time.monotonic() - frame.timestamp),
            index=frame.index,
            episode=episode,
            step=step,
            width=w,
            height=h,
            encoding="jpeg",
            data=data,
        )
        self._send(b"frame", schema.encode(msg))
        self.frames += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        with self._lock:
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
