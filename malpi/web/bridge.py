"""The console's side of the link: commands to the robot, and its telemetry fanned out to browsers.

The web server is an operator client like ``malpi teleop``: it holds a CURVE
client key and talks to the daemon's link with :class:`RobotClient`, so the
control loop never sees HTTP. Blocking link calls run on worker threads, in
two lanes so that a slow one (a bundle upload, an episode read) never holds
up a quick one (a mode change, a stop). Each driving browser gets a link
connection of its own (:class:`Driver`), so that its drive sequence numbers
and the robot's transit-delay check are its own.

Telemetry is read by one thread and handed to the event loop, which copies it
to every watching browser's :class:`Feed`: a small buffer that keeps the
newest frame and the newest steps and drops older ones, so that a slow
browser loses video, never holds up the others or grows memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from malpi.operator.client import LinkTimeout, RobotClient, RobotError

log = logging.getLogger(__name__)

# Quick requests; everything else (bundles, episodes, calibration) goes in the bulk lane.
QUICK = frozenset({"ping", "status", "set_mode", "reset_episode", "end_episode", "record"})
LOST_AFTER = 1.5  # s without telemetry: the link is lost (status alone comes at 1 Hz)
FEED_STEPS = 32  # step messages a browser may lag behind before older ones are dropped
FEED_OTHER = 64  # status and event messages likewise

__all__ = ["Bridge", "Driver", "Feed", "LinkTimeout", "RobotError"]


def to_json(msg: Any) -> Any:
    """A decoded link message (a msgspec Struct) as plain JSON-able data."""
    return msgspec.to_builtins(msg)


class Feed:
    """What one browser has yet to receive: the newest frame, recent steps, status and events."""

    def __init__(self) -> None:
        self.frame: tuple[dict, bytes] | None = None
        self.steps: deque[dict] = deque(maxlen=FEED_STEPS)
        self.other: deque[dict] = deque(maxlen=FEED_OTHER)
        self.ready = asyncio.Event()
        self.frames_dropped = 0

    def put(self, topic: str, msg: dict, data: bytes | None = None) -> None:
        if topic == "frame":
            if self.frame is not None:
                self.frames_dropped += 1
            self.frame = (msg, data or b"")
        elif topic == "step":
            self.steps.append(msg)
        else:
            self.other.append(msg)
        self.ready.set()

    async def take(self) -> tuple[list[dict], tuple[dict, bytes] | None]:
        """Wait for something, then everything queued: (JSON messages, newest frame or None)."""
        await self.ready.wait()
        self.ready.clear()
        messages = [*self.other, *self.steps]
        self.other.clear()
        self.steps.clear()
        frame, self.frame = self.frame, None
        return messages, frame


class Driver:
    """One browser's drive commands, on a link connection of its own.

    Only the newest command waits to be sent: a browser that sends faster than
    the robot answers has its older commands replaced, never queued.
    """

    def __init__(self, client: RobotClient):
        self._client = client
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="malpi-web-drive")
        self._pending: int | None | str = "none"  # "none": nothing waiting; else the action
        self._busy = False
        self.last_reply: Any = None
        self.drove = False

    def send(self, action: int | None) -> None:
        self._pending = action
        self.drove = True
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().run_in_executor(self._pool, self._drain)

    def _drain(self) -> None:
        try:
            while self._pending != "none":
                action, self._pending = self._pending, "none"
                try:
                    self.last_reply = self._client.drive(action, timeout=0.5)
                except (RobotError, LinkTimeout) as exc:
                    self.last_reply = exc
        finally:
            self._busy = False
            if self._pending != "none":  # arrived between the check and the flag
                self._busy = True
                with contextlib.suppress(RuntimeError):  # shut down: the browser has gone
                    self._pool.submit(self._drain)

    def stop_and_close(self) -> None:
        """A stop for the car when this browser goes (only if it drove), then close."""

        def finish() -> None:
            if self.drove:
                try:
                    self._client.drive(None, timeout=0.5)
                except (RobotError, LinkTimeout) as exc:
                    log.warning("stop after a browser left: %s", exc)
            self._client.close()

        self._pending = "none"
        self._pool.submit(finish)
        self._pool.shutdown(wait=False)


class Bridge:
    def __init__(self, connect: Callable[..., RobotClient]):
        """``connect(timeout=...)`` makes a new RobotClient for the robot (one per use)."""
        self.connect = connect
        self._quick = connect(timeout=2.0)
        self._bulk = connect(timeout=10.0)
        self._quick_pool = ThreadPoolExecutor(1, thread_name_prefix="malpi-web-quick")
        self._bulk_pool = ThreadPoolExecutor(2, thread_name_prefix="malpi-web-bulk")
        self._bulk_lock = threading.Lock()
        self.feeds: set[Feed] = set()
        self.last_status: dict | None = None
        self.last_telemetry = 0.0  # monotonic time of the last message
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def live(self) -> bool:
        return time.monotonic() - self.last_telemetry < LOST_AFTER

    async def call(self, name: str, *args: Any, **kw: Any) -> Any:
        """Run ``RobotClient.<name>(*args, **kw)`` in its lane; RobotError / LinkTimeout pass up."""
        if name in QUICK:
            fn = functools.partial(getattr(self._quick, name), *args, **kw)
            pool = self._quick_pool
        else:
            fn = functools.partial(self._bulk_call, name, args, kw)
            pool = self._bulk_pool
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    def _bulk_call(self, name: str, args: tuple, kw: dict) -> Any:
        with self._bulk_lock:  # one RobotClient has one request outstanding at a time
            return getattr(self._bulk, name)(*args, **kw)

    def driver(self) -> Driver:
        return Driver(self.connect(timeout=0.5))

    # -- telemetry ---------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(
            target=self._listen, name="malpi-web-telemetry", daemon=True
        )
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            sub = self.connect(timeout=2.0)
            try:
                sub.subscribe()
                while not self._stop.is_set():
                    got = sub.receive(0.2)
                    if got is not None and self._loop is not None:
                        self._loop.call_soon_threadsafe(self._fan_out, *got)
            except Exception:  # noqa: BLE001 - pages say "link lost" meanwhile; the log says why
                log.exception("telemetry reader failed; reconnecting")
                self._stop.wait(1.0)
            finally:
                sub.close()

    def _fan_out(self, topic: str, msg: Any) -> None:
        self.last_telemetry = time.monotonic()
        data = None
        if topic == "frame":  # the JPEG goes to browsers as binary, not base64 in JSON
            data = bytes(msg.data)
            msg = msgspec.structs.replace(msg, data=b"")
        body = to_json(msg)
        body.pop("data", None)
        body["topic"] = topic
        if topic == "status":
            self.last_status = body
        for feed in self.feeds:
            feed.put(topic, body, data)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._quick_pool.shutdown(wait=False, cancel_futures=True)
        self._bulk_pool.shutdown(wait=False, cancel_futures=True)
        self._quick.close()
        self._bulk.close()
