"""What every route module of the console shares: the app's keys, its settings, JSON in and out.

Route modules (``live``, ``curate``, ``deploy``, ``calibrate``) each have
``add_routes(app)`` and read the link bridge as ``request.app[BRIDGE]``;
``app.py`` puts them together behind the login and CSRF checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from malpi.web.auth import LoginLimiter, Sessions
from malpi.web.bridge import Bridge

COOKIE = "malpi_session"


@dataclass
class Settings:
    login: bool  # False only on loopback (web.login, refused otherwise by the config)
    password_hash: str | None
    secure: bool  # served over HTTPS: cookies are Secure
    session_hours: float = 12.0
    idle_minutes: float = 60.0


BRIDGE = web.AppKey("bridge", Bridge)
SETTINGS = web.AppKey("settings", Settings)
SESSIONS = web.AppKey("sessions", Sessions)
LIMITER = web.AppKey("limiter", LoginLimiter)
NO_LOGIN_CSRF = web.AppKey("no_login_csrf", str)


def fail(status: int, code: str, message: str, **headers: str) -> web.Response:
    """An error the page shows: ``{"error": code, "message": message}``."""
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "invalid", "message": message}), content_type="application/json"
    )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (400 otherwise)."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("the body is not JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple, default: Any = ...) -> Any:
    """``body[name]`` checked against ``kind``: a 400 naming the field otherwise."""
    if name not in body and default is not ...:
        return default
    value = body.get(name)
    if isinstance(value, bool) and kind is not bool:
        value = None
    if not isinstance(value, kind):
        raise bad_request(f"{name}: missing or not {getattr(kind, '__name__', kind)}")
    return value
