"""The browser console for tests: a daemon on the simulator, ``malpi web``'s app beside it on
loopback, HTTP and WebSocket clients, and Debian's headless Chromium driven by Playwright.

    with running_link(link_config(tmp_path, **LOOPBACK_CONSOLE)) as daemon, \\
            running_console(daemon) as console:
        with browser() as b:
            page = login(b.new_page(), console)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import threading
from dataclasses import dataclass

import pytest

pytest.importorskip("aiohttp", reason="the console needs aiohttp: pip install -e '.[web]'")

from aiohttp import web  # noqa: E402

from malpi.operator.client import RobotClient  # noqa: E402
from malpi.web.app import make_app  # noqa: E402
from malpi.web.auth import hash_password  # noqa: E402
from malpi.web.base import Settings  # noqa: E402
from malpi.web.bridge import Bridge  # noqa: E402

PASSWORD = "correct horse battery"
CHROMIUM = os.environ.get("MALPI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
NEEDS_CHROMIUM = (
    f"no Chromium at {CHROMIUM}: the console's browser tests drive Debian's chromium package, "
    "which .ci/run installs with apt as root (apt install chromium); this machine has no apt "
    "or is not root"
)
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}  # fmt: skip
DESKTOP = {"viewport": {"width": 1280, "height": 800}}


@dataclass
class Console:
    url: str
    origin: str
    app: web.Application
    bridge: Bridge
    daemon: object
    password: str | None
    loop: asyncio.AbstractEventLoop

    def run(self, coro):
        """Run a coroutine on the console's event loop (from the test's thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@contextlib.contextmanager
def running_console(daemon, *, login: bool = True, ssl_context=None):
    """``malpi web``'s app for ``daemon`` (a link_helpers.Daemon), served on a free port."""
    link = daemon.link
    connect = functools.partial(
        RobotClient, command=link.command_endpoint, telemetry=link.telemetry_endpoint,
        insecure=True,
    )  # fmt: skip
    settings = Settings(
        login=login,
        password_hash=hash_password(PASSWORD) if login else None,
        secure=ssl_context is not None,
    )
    bridge = Bridge(connect)
    app = make_app(settings, bridge)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def start() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        box["runner"] = runner
        box["port"] = site._server.sockets[0].getsockname()[1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="console", daemon=True)
    thread.start()
    started.wait(10)
    if "port" not in box:
        raise RuntimeError("the console did not start")
    scheme = "https" if ssl_context else "http"
    origin = f"{scheme}://127.0.0.1:{box['port']}"
    console = Console(origin + "/", origin, app, bridge, daemon, PASSWORD if login else None, loop)
    try:
        yield console
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def browser():
    """Debian's Chromium, headless, through Playwright (skips, saying why, without it)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    if not os.path.exists(CHROMIUM):
        pytest.skip(NEEDS_CHROMIUM)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def login(page, console: Console, password: str | None = None):
    """Open the console in ``page`` and log in (a no-login console opens at once)."""
    page.goto(console.url)
    if console.password is not None:
        page.fill("#password", password or console.password)
        page.click("#login-form button")
    page.wait_for_selector("#console:not([hidden])", timeout=10_000)
    page.wait_for_function(
        "() => window.malpiStats && window.malpiStats.frames > 0", timeout=10_000
    )
    return page


class Http:
    """A logged-in HTTP client of the console (aiohttp, on the console's own loop)."""

    def __init__(self, console: Console):
        import aiohttp

        self.console = console
        self.csrf = None

        async def make():
            return aiohttp.ClientSession(
                base_url=console.origin, cookie_jar=aiohttp.CookieJar(unsafe=True)
            )

        self.session = console.run(make())

    def request(self, method: str, path: str, *, csrf: bool = True, **kw):
        """(status, JSON body or text) of one request; the CSRF header is sent if known."""
        headers = kw.pop("headers", {})
        if csrf and self.csrf:
            headers.setdefault("X-CSRF-Token", self.csrf)

        async def go():
            async with self.session.request(method, path, headers=headers, **kw) as r:
                try:
                    return r.status, await r.json()
                except Exception:  # noqa: BLE001 - not JSON: the text
                    return r.status, await r.text()

        return self.console.run(go())

    def login(self, password: str | None = None):
        status, body = self.request(
            "POST", "/api/login", json={"password": password or self.console.password}
        )
        if status == 200:
            self.csrf = body["csrf"]
        return status, body

    def post(self, path: str, body: dict | None = None, **kw):
        return self.request("POST", path, json=body or {}, **kw)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def close(self):
        self.console.run(self.session.close())
