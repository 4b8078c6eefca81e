"""The console as an attacker would use it: a crowd of sockets, too many pages, oversized input,
a page that never reads. The car stays stopped, memory stays bounded, other pages are served."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from daemon_helpers import moving, wait_until
from link_helpers import link_config, running_link
from web_helpers import Http, running_console  # skips the module without aiohttp

from malpi.web import bridge as bridge_module
from malpi.web import live

aiohttp = pytest.importorskip("aiohttp")  # imported by web_helpers already


@pytest.fixture
def console(tmp_path):
    with running_link(link_config(tmp_path)) as daemon, running_console(daemon) as console:
        yield console


def frames_within(console, http, seconds):
    async def go():
        ws = await http.session.ws_connect("/ws", headers={"Origin": console.origin})
        n, end = 0, time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            n += msg.type == aiohttp.WSMsgType.BINARY
        await ws.close()
        return n

    return console.run(go())


def test_a_crowd_of_strangers_gets_nothing_and_the_operator_still_watches(console):
    async def crowd(n):
        async with aiohttp.ClientSession(base_url=console.origin) as s:

            async def one():
                try:
                    await s.ws_connect("/ws", headers={"Origin": console.origin})
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status
                return 101

            return await asyncio.gather(*(one() for _ in range(n)))

    missed = console.daemon.robot.loop.stats.missed_periods
    statuses = console.run(crowd(300))
    assert set(statuses) == {401}
    assert not moving(console.daemon.factory)
    http = Http(console)
    try:
        http.login()
        assert frames_within(console, http, 1.0) > 0
    finally:
        http.close()
    # Timing is benchmarked (malpi bench web), not asserted; this only rules out a stall.
    assert console.daemon.robot.loop.stats.missed_periods - missed < 25


def test_pages_beyond_the_limit_are_refused(console, monkeypatch):
    monkeypatch.setattr(live, "MAX_WATCHERS", 3)
    http = Http(console)
    http.login()

    async def open_many(n):
        sockets, refused = [], []
        for _ in range(n):
            try:
                sockets.append(
                    await http.session.ws_connect("/ws", headers={"Origin": console.origin})
                )
            except aiohttp.WSServerHandshakeError as exc:
                refused.append(exc.status)
        for ws in sockets:
            await ws.close()
        return len(sockets), refused

    try:
        opened, refused = console.run(open_many(5))
        assert opened == 3 and refused == [503, 503]
    finally:
        http.close()


def test_oversized_or_endless_input_closes_the_socket_and_stops_the_car(tmp_path):
    config = link_config(tmp_path, **{"safety.deadman_ms": 5000})
    with running_link(config) as daemon, running_console(daemon) as console:
        http = Http(console)
        http.login()
        http.post("/api/mode", {"mode": "manual"})

        async def attack():
            ws = await http.session.ws_connect("/ws", headers={"Origin": console.origin})
            await ws.send_str(json.dumps({"type": "drive", "action": 2}))
            await asyncio.sleep(0.5)
            was_moving = moving(daemon.factory)
            await ws.send_str("x" * (live.MAX_MESSAGE + 1))
            while not ws.closed:
                await ws.receive(timeout=2)
            return was_moving, ws.close_code

        try:
            was_moving, code = console.run(attack())
            assert was_moving and code == 1009  # message too big
            assert wait_until(lambda: not moving(daemon.factory), timeout=1.0) < 1.0
            status, body = http.request(
                "POST", "/api/mode", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            assert status == 413
        finally:
            http.close()


def test_a_page_that_never_reads_costs_a_bounded_buffer(console):
    import base64
    import os
    import socket

    http = Http(console)
    http.login()
    cookie = "; ".join(f"{c.key}={c.value}" for c in http.session.cookie_jar)
    host = console.origin.removeprefix("http://")
    raw = socket.create_connection(tuple(host.split(":")[:1]) + (int(host.split(":")[1]),))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {console.origin}\r\n"
        f"Cookie: {cookie}\r\n\r\n".encode()
    )
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        assert raw.recv(12) == b"HTTP/1.1 101"
        time.sleep(3.0)  # reads nothing more while 3 s of telemetry and video go out
        feeds = list(console.bridge.feeds)
        assert feeds
        for f in feeds:
            assert len(f.steps) <= bridge_module.FEED_STEPS
            assert len(f.other) <= bridge_module.FEED_OTHER
        assert frames_within(console, http, 1.0) > 0  # another page is served meanwhile
    finally:
        raw.close()
        http.close()
