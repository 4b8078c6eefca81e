"""The console's web application: who may ask, and the core requests (mode, stop, episode, record).

Every ``/api`` request and the live socket ``/ws`` pass :func:`guard`:

- with a login, a session cookie (HttpOnly, SameSite=Strict; Secure over
  HTTPS) from ``POST /api/login``; without one (loopback only) the Host
  header must name this machine, so that a web page elsewhere cannot reach the
  console through DNS rebinding;
- every request that changes something (any method but GET) carries the
  session's CSRF token in ``X-CSRF-Token`` and, when the browser sends one,
  an ``Origin`` that is this server's own; the live socket needs that Origin
  too (browsers send it with every WebSocket).

The route modules (``PANELS``: the live socket, curate, deploy, calibrate)
add their routes themselves; what they share is in ``base.py``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from importlib import resources
from typing import Any

from aiohttp import web

from malpi.operator.client import LinkTimeout, RobotError
from malpi.web import calibrate, curate, deploy, live
from malpi.web.auth import LoginLimiter, Sessions, check_password
from malpi.web.base import (
    BRIDGE,
    COOKIE,
    LIMITER,
    NO_LOGIN_CSRF,
    SESSIONS,
    SETTINGS,
    Settings,
    fail,
    field,
    read_json,
)
from malpi.web.bridge import Bridge, to_json

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # any request but a bundle upload (which reads its own body)
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
PANELS = (live, curate, deploy, calibrate)


def make_app(settings: Settings, bridge: Bridge) -> web.Application:
    app = web.Application(middlewares=[headers, errors, guard], client_max_size=MAX_BODY)
    app[BRIDGE] = bridge
    app[SETTINGS] = settings
    app[SESSIONS] = Sessions(settings.session_hours, settings.idle_minutes)
    app[LIMITER] = LoginLimiter()
    app[NO_LOGIN_CSRF] = secrets.token_urlsafe(32)
    static = resources.files("malpi.web") / "static"
    index = (static / "index.html").read_bytes()

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=index, content_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    app.router.add_get("/", page)
    app.router.add_static("/static/", str(static), append_version=False)
    app.router.add_get("/api/session", session_info)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/status", status)
    app.router.add_post("/api/mode", set_mode)
    app.router.add_post("/api/stop", stop)
    app.router.add_post("/api/reset", reset)
    app.router.add_post("/api/end", end)
    app.router.add_post("/api/record", record)
    for panel in PANELS:
        panel.add_routes(app)

    async def started(app: web.Application) -> None:
        bridge.start(asyncio.get_running_loop())

    async def stopped(app: web.Application) -> None:
        bridge.close()

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
    return app


# -- middlewares -----------------------------------------------------------------------


@web.middleware
async def headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """The robot's refusals and a lost link as JSON the page can show."""
    try:
        return await handler(request)
    except RobotError as exc:
        status = 404 if exc.code == "not_found" else 409 if exc.code in ("busy", "refused") else 400
        return fail(status, exc.code, exc.message)
    except LinkTimeout as exc:
        return fail(504, "link_timeout", str(exc))


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    path = request.path
    if not (path.startswith("/api/") or path == "/ws"):
        return await handler(request)
    settings = request.app[SETTINGS]
    if not settings.login and request.host.rpartition(":")[0] not in LOCAL_HOSTS:
        return fail(403, "forbidden", f"host {request.host!r} is not this machine's loopback")
    changes = request.method not in ("GET", "HEAD") or path == "/ws"
    if changes and not same_origin(request, required=path == "/ws"):
        return fail(403, "cross_site", "a request from another site's page is refused")
    if path in ("/api/session", "/api/login"):
        return await handler(request)
    csrf = current_csrf(request)
    if csrf is None:
        return fail(401, "login", "log in first")
    if changes and path != "/ws":
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), csrf.encode()):
            return fail(403, "csrf", "missing or wrong X-CSRF-Token (reload the page)")
    return await handler(request)


def same_origin(request: web.Request, *, required: bool) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return not required  # non-browser clients send none; browsers always do for these
    return origin == f"{request.scheme}://{request.host}"


def current_csrf(request: web.Request) -> str | None:
    """The CSRF token of the request's session (None: not logged in)."""
    if not request.app[SETTINGS].login:
        return request.app[NO_LOGIN_CSRF]
    session = request.app[SESSIONS].get(request.cookies.get(COOKIE))
    return None if session is None else session.csrf


# -- session ---------------------------------------------------------------------------


async def session_info(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    csrf = current_csrf(request)
    return web.json_response(
        {"login_required": settings.login, "logged_in": csrf is not None, "csrf": csrf}
    )


async def login(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not settings.login:
        return web.json_response({"csrf": request.app[NO_LOGIN_CSRF]})
    limiter = request.app[LIMITER]
    address = request.remote or "?"
    wait = limiter.retry_after(address)
    if wait > 0:
        return fail(
            429, "too_many", f"too many failed logins: try again in {wait:.0f} s",
            **{"Retry-After": str(int(wait) + 1)},
        )  # fmt: skip
    password = (await read_json(request)).get("password")
    stored = settings.password_hash
    ok = (
        isinstance(password, str)
        and stored is not None
        and await asyncio.get_running_loop().run_in_executor(None, check_password, password, stored)
    )
    if not ok:
        limiter.failed(address)
        log.warning("failed console login from %s", address)
        return fail(401, "wrong_password", "wrong password")
    session = request.app[SESSIONS].open()
    log.info("console login from %s", address)
    response = web.json_response({"csrf": session.csrf})
    response.set_cookie(
        COOKIE, session.token, httponly=True, samesite="Strict", secure=settings.secure, path="/",
        max_age=int(settings.session_hours * 3600),
    )  # fmt: skip
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].close(request.cookies.get(COOKIE))
    response = web.json_response({"logged_in": False})
    response.del_cookie(COOKIE, path="/")
    return response


# -- the core commands -----------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    reply = to_json(await bridge.call("status"))
    reply["link_live"] = bridge.live
    return web.json_response(reply)


async def set_mode(request: web.Request) -> web.Response:
    mode = field(await read_json(request), "mode", str)
    return web.json_response(to_json(await request.app[BRIDGE].call("set_mode", mode)))


async def stop(request: web.Request) -> web.Response:
    """Pause: nothing moves until an operator chooses a mode again."""
    return web.json_response(to_json(await request.app[BRIDGE].call("set_mode", "paused")))


async def reset(request: web.Request) -> web.Response:
    return web.json_response(to_json(await request.app[BRIDGE].call("reset_episode")))


async def end(request: web.Request) -> web.Response:
    outcome = field(await read_json(request), "outcome", str, "failed")
    return web.json_response(to_json(await request.app[BRIDGE].call("end_episode", outcome)))


async def record(request: web.Request) -> web.Response:
    on = field(await read_json(request), "on", bool)
    return web.json_response(to_json(await request.app[BRIDGE].call("record", on)))
