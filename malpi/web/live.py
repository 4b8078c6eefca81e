"""``/ws``: the live socket of a console page: telemetry and video out, drive commands in.

Out (server to page):

- text: a JSON array of messages, each a link telemetry message (``step``,
  ``status``, ``event``; docs/protocol.md) with its ``topic`` added, or
  ``{"topic": "link", "live": bool}`` twice a second, or ``{"topic": "drive",
  ...}`` when the robot's answer to this page's driving changes;
- binary: a video frame: 4 bytes (big-endian length N), N bytes of JSON (the
  ``frame`` message without its data), then the JPEG.

In (page to server), text JSON: ``{"type": "drive", "action": int|null}``
while a control is held (the page sends at 20 Hz; the server forwards each to
the robot and never repeats one by itself, so when the page goes quiet the
robot's deadman stops the car), ``{"type": "ping", "t": ...}`` (answered with
``{"topic": "pong", "t": ...}``). When the socket closes, a page that drove
sends a stop at once rather than wait for the deadman.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time

from aiohttp import WSMsgType, web

from malpi.web.base import BRIDGE, COOKIE, SESSIONS, SETTINGS
from malpi.web.bridge import Bridge, Feed

log = logging.getLogger(__name__)

MAX_WATCHERS = 16  # pages at once; each costs a frame buffer and a sender task
MAX_MESSAGE = 4096  # bytes: a page sends only small JSON
LINK_EVERY = 0.5  # s between link-state messages


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ws", live)


async def live(request: web.Request) -> web.WebSocketResponse:
    bridge = request.app[BRIDGE]
    if len(bridge.feeds) >= MAX_WATCHERS:
        raise web.HTTPServiceUnavailable(text=f"{MAX_WATCHERS} pages are watching already")
    ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    token = request.cookies.get(COOKIE)
    needs_session = request.app[SETTINGS].login

    def allowed() -> bool:  # a session that ends (logout, expiry) ends its sockets too
        return not needs_session or request.app[SESSIONS].get(token) is not None

    feed = Feed()
    bridge.feeds.add(feed)
    sender = asyncio.create_task(_send(ws, feed, bridge, allowed))
    driver = None
    last_answer = None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            if not allowed():
                await ws.close(code=4001, message=b"session ended")
                break
            try:
                body = json.loads(msg.data)
                kind = body["type"]
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "drive":
                action = body.get("action")
                if action is not None and (
                    not isinstance(action, int) or isinstance(action, bool) or not 0 <= action < 256
                ):
                    continue
                driver = driver or bridge.driver()
                driver.send(action)
                answer = _answer(driver.last_reply)
                if answer != last_answer and answer is not None:
                    last_answer = answer
                    await ws.send_str(json.dumps([{"topic": "drive", **answer}]))
            elif kind == "ping":
                await ws.send_str(json.dumps([{"topic": "pong", "t": body.get("t")}]))
    finally:
        bridge.feeds.discard(feed)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        if driver is not None:
            driver.stop_and_close()
    return ws


def _answer(reply: object) -> dict | None:
    if reply is None:
        return None
    if isinstance(reply, Exception):
        return {"accepted": False, "reason": str(reply)}
    return {"accepted": reply.accepted, "mode": reply.mode, "reason": reply.reason}


async def _send(ws: web.WebSocketResponse, feed: Feed, bridge: Bridge, allowed) -> None:
    if bridge.last_status is not None:
        feed.put("status", bridge.last_status)
    checked = time.monotonic()
    try:
        while not ws.closed:
            try:
                messages, frame = await asyncio.wait_for(feed.take(), LINK_EVERY)
            except TimeoutError:
                messages, frame = [], None
            if time.monotonic() - checked > LINK_EVERY:
                checked = time.monotonic()
                if not allowed():
                    await ws.close(code=4001, message=b"session ended")
                    return
            messages.append({"topic": "link", "live": bridge.live})
            try:
                text = json.dumps(messages, allow_nan=False)
            except ValueError:  # a non-finite figure: JSON has none, and one would spoil the batch
                log.warning("telemetry with a non-finite value not sent to the page")
                text = json.dumps([messages[-1]])
            await ws.send_str(text)
            if frame is not None:
                head = json.dumps(frame[0]).encode()
                await ws.send_bytes(struct.pack(">I", len(head)) + head + frame[1])
    except (ConnectionResetError, RuntimeError):
        pass  # the page went away; live() cleans up
