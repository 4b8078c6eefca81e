"""The browser console's core against the real daemon on the simulator: who may get in, what a
cross-site request gets, and the live socket's video and driving (motors read off the pins)."""

from __future__ import annotations

import json
import time

import pytest
from daemon_helpers import moving, wait_until
from link_helpers import link_config, running_link
from web_helpers import Http, running_console

from malpi.config import ConfigError, load_config
from malpi.web import auth
from malpi.web.auth import LoginLimiter, Sessions, check_password, hash_password


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_passwords_are_stored_hashed_and_checked():
    stored = hash_password("a good long password")
    assert "a good long password" not in stored and stored.startswith("scrypt$")
    assert check_password("a good long password", stored)
    assert not check_password("a good long passworD", stored)
    assert not check_password("x" * 10_000, stored)  # no scrypt of a megabyte
    assert not check_password("anything", "not a hash")
    with pytest.raises(auth.PasswordError, match="8 to"):
        hash_password("short")


def test_sessions_end_when_idle_or_old():
    clock = Clock()
    sessions = Sessions(hours=1, idle_minutes=10, clock=clock)
    s = sessions.open()
    clock.now += 9 * 60
    assert sessions.get(s.token) is s
    clock.now += 11 * 60
    assert sessions.get(s.token) is None  # idle too long
    s = sessions.open()
    for _ in range(7):
        clock.now += 9 * 60
        sessions.get(s.token)
    assert sessions.get(s.token) is None  # used all along, but older than an hour
    for _ in range(auth.MAX_SESSIONS + 5):
        sessions.open()
    assert len(sessions) == auth.MAX_SESSIONS


def test_failed_logins_are_limited_per_address_and_in_total():
    clock = Clock()
    limiter = LoginLimiter(clock)
    for _ in range(auth.FAILS_PER_ADDRESS):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") > 0
    assert limiter.retry_after("10.0.0.2") == 0  # another address may still try
    clock.now += auth.WINDOW + 1
    assert limiter.retry_after("10.0.0.1") == 0
    for i in range(auth.FAILS_IN_TOTAL):
        limiter.failed(f"10.1.{i}.1")
    assert limiter.retry_after("10.9.9.9") > 0  # many addresses guessing: everyone waits


def test_no_login_is_refused_off_loopback():
    with pytest.raises(ConfigError, match="web.login"):
        load_config(None, {"web.listen": "0.0.0.0:8080", "web.login": False})
    assert not load_config(None, {"web.listen": "127.0.0.1:8080", "web.login": False}).web.login


@pytest.fixture
def console(tmp_path):
    config = link_config(tmp_path, **{"safety.deadman_ms": 300})
    with running_link(config) as daemon, running_console(daemon) as console:
        yield console


def test_login_csrf_and_cross_site_requests(console):
    http = Http(console)
    try:
        assert http.get("/api/status")[0] == 401  # not logged in
        assert http.post("/api/mode", {"mode": "manual"})[0] == 401
        status, body = http.login("wrong password")
        assert status == 401 and body["error"] == "wrong_password"
        status, body = http.login()
        assert status == 200 and body["csrf"]
        assert http.get("/api/status")[1]["mode"] == "paused"
        # A change without the session's CSRF token, or from another site's page, is refused.
        status, body = http.post("/api/mode", {"mode": "manual"}, csrf=False)
        assert (status, body["error"]) == (403, "csrf")
        status, body = http.post(
            "/api/mode", {"mode": "manual"}, headers={"Origin": "http://evil.example"}
        )
        assert (status, body["error"]) == (403, "cross_site")
        assert http.get("/api/status")[1]["mode"] == "paused"  # nothing changed
        status, body = http.post("/api/mode", {"mode": "manual"})
        assert status == 200 and body["mode"] == "manual"
        # The robot's own refusal comes back named, with nothing changed.
        status, body = http.post("/api/mode", {"mode": "fast"})
        assert status == 400 and body["error"] == "invalid" and "mode" in body["message"]
        status, body = http.post("/api/record", {"on": "yes"})
        assert status == 400 and "on" in body["message"]
        status, body = http.request("POST", "/api/end", data=b"\xff\xfe", headers={
            "Content-Type": "application/json"})  # fmt: skip
        assert status == 400
        assert http.post("/api/stop")[1]["mode"] == "paused"
        assert http.post("/api/logout")[0] == 200
        assert http.get("/api/status")[0] == 401
    finally:
        http.close()


def test_guessing_the_password_is_slowed_down(console):
    http = Http(console)
    try:
        for _ in range(auth.FAILS_PER_ADDRESS):
            assert http.login("nope nope nope")[0] == 401
        status, body = http.login()  # even the right one, until the window passes
        assert status == 429 and body["error"] == "too_many"
    finally:
        http.close()


def test_without_login_only_this_machine_is_served(tmp_path):
    with (
        running_link(link_config(tmp_path)) as daemon,
        running_console(daemon, login=False) as console,
    ):
        http = Http(console)
        try:
            status, body = http.get("/api/session")
            assert status == 200 and body["logged_in"] and body["csrf"]
            http.csrf = body["csrf"]
            assert http.get("/api/status")[0] == 200
            # DNS rebinding: a page from evil.example resolved to 127.0.0.1 names its own host.
            status, body = http.get("/api/status", headers={"Host": "evil.example"})
            assert (status, body["error"]) == (403, "forbidden")
            status, _ = http.post("/api/mode", {"mode": "manual"}, csrf=False)
            assert status == 403
        finally:
            http.close()


def ws_session(console, http, origin=None):
    async def go():
        return await http.session.ws_connect(
            "/ws", headers={"Origin": origin or console.origin}, max_msg_size=0
        )

    return console.run(go())


def test_live_socket_needs_a_session_and_this_origin(console):
    import aiohttp

    http = Http(console)
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as no_session:
            ws_session(console, http)
        assert no_session.value.status == 401
        http.login()
        with pytest.raises(aiohttp.WSServerHandshakeError) as other_site:
            ws_session(console, http, origin="http://evil.example")
        assert other_site.value.status == 403
        ws = ws_session(console, http)
        console.run(ws.close())
    finally:
        http.close()


def receive(console, ws, seconds: float) -> tuple[list[dict], list[bytes]]:
    async def go():
        texts, frames = [], []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            if msg.type == 1:  # TEXT
                texts.extend(json.loads(msg.data))
            elif msg.type == 2:  # BINARY
                frames.append(msg.data)
            else:
                break
        return texts, frames

    return console.run(go())


def test_video_and_telemetry_reach_the_page(console):
    http = Http(console)
    try:
        http.login()
        ws = ws_session(console, http)
        texts, frames = receive(console, ws, 1.5)
        topics = {m["topic"] for m in texts}
        assert {"step", "status", "link"} <= topics
        assert any(m["topic"] == "link" and m["live"] for m in texts)
        assert frames, "no video frame in 1.5 s"
        n = int.from_bytes(frames[-1][:4], "big")
        head = json.loads(frames[-1][4 : 4 + n])
        jpeg = frames[-1][4 + n :]
        assert jpeg[:2] == b"\xff\xd8" and head["encoding"] == "jpeg" and head["width"] > 0
        console.run(ws.close())
    finally:
        http.close()


def drive(console, ws, action):
    console.run(ws.send_str(json.dumps({"type": "drive", "action": action})))


def test_driving_over_the_live_socket_and_the_deadman(console):
    factory = console.daemon.factory
    http = Http(console)
    try:
        http.login()
        http.post("/api/mode", {"mode": "manual"})
        ws = ws_session(console, http)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # a held control: 20 Hz
            drive(console, ws, 2)
            time.sleep(0.05)
        assert moving(factory)
        # The page goes quiet without closing (a frozen tab): the daemon's deadman stops the car.
        wait_until(lambda: not moving(factory), timeout=2.0)
        assert console.daemon.events.safety_stop("deadman")
        # Junk on the socket changes nothing and does not close it.
        for junk in (
            "{",
            "[]",
            '{"type": "drive", "action": 999}',
            '{"type": "drive", "action": true}',
        ):
            console.run(ws.send_str(junk))
        texts, _ = receive(console, ws, 0.5)
        assert texts and not moving(factory)
        console.run(ws.close())
    finally:
        http.close()


def test_a_page_that_goes_stops_the_car_at_once(tmp_path):
    # A long deadman, so that only the console's own stop can stop the car within a second.
    config = link_config(tmp_path, **{"safety.deadman_ms": 5000})
    with running_link(config) as daemon, running_console(daemon) as console:
        http = Http(console)
        try:
            http.login()
            http.post("/api/mode", {"mode": "manual"})
            ws = ws_session(console, http)
            drive(console, ws, 2)
            wait_until(lambda: moving(daemon.factory), timeout=2.0)
            console.run(ws.close())
            took = wait_until(lambda: not moving(daemon.factory), timeout=1.0)
            assert took < 1.0
        finally:
            http.close()


def test_logging_out_ends_the_pages_live_socket(console):
    http = Http(console)
    try:
        http.login()
        ws = ws_session(console, http)
        receive(console, ws, 0.3)
        other = Http(console)
        other.session.cookie_jar.update_cookies({c.key: c.value for c in http.session.cookie_jar})
        other.csrf = http.csrf
        assert other.post("/api/logout")[0] == 200  # the same session, from elsewhere
        other.close()
        receive(console, ws, 1.5)
        assert ws.closed and ws.close_code == 4001
    finally:
        http.close()
