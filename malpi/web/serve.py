"""Running the console: its settings from the configuration, the link bridge, and the server."""

from __future__ import annotations

import functools
import logging
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from malpi.config import Config
from malpi.operator.client import RobotClient
from malpi.web.app import make_app
from malpi.web.auth import PasswordError, read_password_file
from malpi.web.base import Settings
from malpi.web.bridge import Bridge

__all__ = ["PasswordError", "build", "serve"]

log = logging.getLogger(__name__)


def build(config: Config, connect: dict[str, Any]) -> tuple[web.Application, ssl.SSLContext | None]:
    """The console's app for ``config`` (its [web] section), reaching the robot with
    ``RobotClient(**connect)``, and its SSL context (None: plain HTTP)."""
    w = config.web
    password = read_password_file(Path(w.password_file).expanduser()) if w.login else None
    context = None
    if w.tls:
        from malpi.web.tls import server_context

        context = server_context(w.cert, w.key, w.tls_dir)
    settings = Settings(
        login=w.login,
        password_hash=password,
        secure=context is not None,
        session_hours=w.session_hours,
        idle_minutes=w.idle_minutes,
    )
    bridge = Bridge(functools.partial(RobotClient, **connect))
    return make_app(settings, bridge), context


def serve(config: Config, connect: dict[str, Any]) -> int:
    app, context = build(config, connect)
    host, _, port = config.web.listen.rpartition(":")
    scheme = "https" if context else "http"
    where = connect.get("host") or connect.get("command")
    print(f"malpi web: the console for {where} on {scheme}://{host}:{port}/ (Ctrl-C stops)")
    web.run_app(
        app,
        host=host.strip("[]"),
        port=int(port),
        ssl_context=context,
        print=None,
        access_log=None,
        handle_signals=True,
    )
    return 0
