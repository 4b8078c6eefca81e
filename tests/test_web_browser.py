"""The console in a real headless Chromium (Debian's, through Playwright): log in, watch, drive
with the keyboard and the touch joystick, and what stops the car when the page lets go."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from daemon_helpers import moving, wait_until
from link_helpers import link_config, running_link
from web_helpers import DESKTOP, PHONE, Http, browser, login, running_console


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture
def console(tmp_path):
    config = link_config(tmp_path, **{"safety.deadman_ms": 300})
    with running_link(config) as daemon, running_console(daemon) as console:
        yield console


def steps_from(console, source: str) -> int:
    """Step telemetry messages the robot published with ``source`` (what the car did)."""
    return sum(1 for topic, m in console.daemon.events.messages
               if topic == "step" and m.get("source") == source)  # fmt: skip


def manual(page):
    page.click("button[data-mode=manual]")
    page.wait_for_selector("button[data-mode=manual][aria-pressed=true]")
    # The page knows the robot's action table (its bars are drawn) and the link is live.
    page.wait_for_selector(".probs .prob")
    page.wait_for_selector("#link-state.link-live")


def test_a_wrong_password_is_refused_and_the_right_one_shows_the_car(console, chromium):
    page = chromium.new_page(**DESKTOP)
    page.goto(console.url)
    page.fill("#password", "not the password")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:has-text('wrong password')")
    assert page.is_hidden("#console")
    login(page, console)
    page.wait_for_function("() => malpiStats.frames >= 5", timeout=10_000)
    assert page.inner_text("#link-state") == "live"
    assert "paused" in page.inner_text(".overlay")
    page.close()


def test_keyboard_driving_moves_the_car_and_letting_go_stops_it(console, chromium):
    factory = console.daemon.factory
    page = login(chromium.new_page(**DESKTOP), console)
    manual(page)
    assert not moving(factory)
    page.keyboard.down("ArrowUp")
    wait_until(lambda: moving(factory), timeout=3.0)
    wait_until(lambda: steps_from(console, "human") > 5, timeout=3.0)  # telemetry says so too
    assert moving(factory) and steps_from(console, "human") > 5
    page.keyboard.up("ArrowUp")
    assert wait_until(lambda: not moving(factory), timeout=1.0) < 1.0
    page.close()


def test_touch_joystick_drives_on_a_phone(console, chromium):
    factory = console.daemon.factory
    context = chromium.new_context(**PHONE)
    page = login(context.new_page(), console)
    manual(page)
    page.locator(".stick").scroll_into_view_if_needed()  # below the fold on a phone
    box = page.locator(".stick").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.1  # pushed forward
    cdp = context.new_cdp_session(page)
    point = [{"x": x, "y": y, "id": 1}]
    assert not moving(factory)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": point})
    wait_until(lambda: moving(factory), timeout=3.0)
    # The step's telemetry is published after its actuation: wait for it too.
    wait_until(lambda: steps_from(console, "human") > 0, timeout=3.0)
    assert moving(factory) and steps_from(console, "human") > 0
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    assert wait_until(lambda: not moving(factory), timeout=1.0) < 1.0
    context.close()


def test_the_phones_tilt_drives(console, chromium):
    """Tilt needs a secure context: loopback is one (elsewhere, HTTPS: docs/web.md)."""
    factory = console.daemon.factory
    context = chromium.new_context(**PHONE)
    page = login(context.new_page(), console)
    manual(page)
    page.click("#tilt")
    page.wait_for_selector("#tilt[aria-pressed=true]")

    def tilt(beta, gamma):
        page.evaluate(
            "([b, g]) => window.dispatchEvent(new DeviceOrientationEvent("
            "'deviceorientation', {alpha: 0, beta: b, gamma: g}))",
            [beta, gamma],
        )

    tilt(None, None)  # what Chromium sends without a sensor: nothing moves
    page.wait_for_timeout(300)
    assert not moving(factory)
    tilt(45, 0)  # the first reading is "level"
    tilt(20, 0)  # tipped forward from there: drive on
    wait_until(lambda: moving(factory), timeout=3.0)
    tilt(45, 0)  # level again: a stop at once
    wait_until(lambda: not moving(factory), timeout=1.0)
    tilt(None, None)
    page.wait_for_timeout(300)
    assert not moving(factory)
    context.close()


def test_a_gamepads_stick_drives(console, chromium):
    """The browser's Gamepad API, with a pad the page is given (none is plugged in here)."""
    factory = console.daemon.factory
    page = login(chromium.new_page(**DESKTOP), console)
    manual(page)

    def stick(x, y):
        page.evaluate(
            "([x, y]) => { navigator.getGamepads = () => [{id: 'Test pad', axes: [x, y], "
            "buttons: [{pressed: false}]}]; }",
            [x, y],
        )

    stick(0.0, -1.0)  # pushed forward
    wait_until(lambda: moving(factory), timeout=3.0)
    stick(0.0, 0.0)  # let go
    wait_until(lambda: not moving(factory), timeout=1.0)
    assert "Test pad" in page.inner_text(".drive-help")
    page.close()


def test_closing_the_tab_or_hiding_the_page_stops_the_car(tmp_path, chromium):
    # A deadman longer than the waits below: only the console can stop the car this fast.
    config = link_config(tmp_path, **{"safety.deadman_ms": 5000})
    with running_link(config) as daemon, running_console(daemon) as console:
        factory = daemon.factory
        page = login(chromium.new_page(**DESKTOP), console)
        manual(page)
        page.keyboard.down("ArrowUp")
        wait_until(lambda: moving(factory), timeout=3.0)
        page.evaluate(
            "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
            "document.dispatchEvent(new Event('visibilitychange'))"
        )
        assert wait_until(lambda: not moving(factory), timeout=1.0) < 1.0
        page.keyboard.up("ArrowUp")
        page.evaluate("Object.defineProperty(document, 'hidden', {value: false})")
        page.keyboard.down("ArrowUp")
        wait_until(lambda: moving(factory), timeout=3.0)
        page.close()  # the tab goes while the key is held
        assert wait_until(lambda: not moving(factory), timeout=1.0) < 1.0


def test_a_frozen_page_is_stopped_by_the_deadman(console, chromium):
    factory = console.daemon.factory
    page = login(chromium.new_page(**DESKTOP), console)
    manual(page)
    page.keyboard.down("ArrowUp")
    wait_until(lambda: moving(factory), timeout=3.0)
    # The page's script hangs for 1.5 s: no drive commands, the socket still open.
    busy = threading.Thread(target=lambda: page.evaluate(
        "(() => { const end = Date.now() + 1500; while (Date.now() < end) {} })()"))  # fmt: skip
    busy.start()
    wait_until(lambda: not moving(factory), timeout=1.2)
    assert console.daemon.events.safety_stop("deadman")
    busy.join()
    page.close()


def test_another_sites_page_cannot_drive_the_car(console, chromium, tmp_path):
    """The classic forgery: a page elsewhere posts to the console while its user is logged in."""
    from aiohttp import web

    evil = (
        f"<form id=f method=post enctype=text/plain action='{console.url}api/mode'>"
        '<input name=\'{"mode": "manual", "x": "\' value=\'"}\'></form>'
        f"<script>fetch('{console.url}api/mode', {{method: 'POST', mode: 'no-cors', credentials: "
        "'include', body: JSON.stringify({mode: 'auto'})}).finally(() => f.submit())</script>"
    )

    async def page_(request):
        return web.Response(text=evil, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page_)

    async def start():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "localhost", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = console.run(start())
    try:
        context = chromium.new_context(**DESKTOP)
        login(context.new_page(), console)  # logged in, in the same browser
        attacker = context.new_page()
        attacker.goto(f"http://localhost:{port}/")
        attacker.wait_for_load_state("networkidle")
        attacker.wait_for_timeout(500)
        http = Http(console)
        http.login()
        assert http.get("/api/status")[1]["mode"] == "paused"  # neither request got through
        http.close()
        context.close()
    finally:
        console.run(runner.cleanup())


def test_screenshots_at_phone_and_desktop_sizes(console, chromium, tmp_path):
    """The README's pictures (MALPI_SCREENSHOTS=DIR keeps them there)."""
    out = Path(os.environ.get("MALPI_SCREENSHOTS") or tmp_path)
    http = Http(console)
    http.login()
    http.post("/api/mode", {"mode": "auto"})
    http.post("/api/record", {"on": True})
    http.close()
    for name, size in (("web-phone.png", PHONE), ("web-desktop.png", DESKTOP)):
        context = chromium.new_context(**size)
        page = login(context.new_page(), console)
        # For the README, a minute's plots with something in them; for the test, a moment.
        frames = 300 if os.environ.get("MALPI_SCREENSHOTS") else 30
        page.wait_for_function(f"() => malpiStats.frames >= {frames}", timeout=60_000)
        page.wait_for_selector(".overlay .mode-auto")
        page.screenshot(path=str(out / name), full_page=size is PHONE)
        assert (out / name).stat().st_size > 10_000
        context.close()
