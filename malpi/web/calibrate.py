"""The Calibrate tab's requests: ``malpi setup``'s motor test and calibration, through the link.

The robot's daemon owns the pins and checks everything (paused only, the
setup's bounds, the configuration's validation); these routes only carry
the page's requests to it (``calibration``, ``motor_test``,
``set_calibration``; docs/protocol.md, "Calibration") and its answers back:

- ``GET /api/calibration``: what can be tested and adjusted, and the values now;
- ``POST /api/calibration/test`` ``{"output", "power", "seconds"}``: runs one
  output, answered when it has ended (or was stopped early, e.g. by the stop
  button, which pauses the car);
- ``POST /api/calibration/set`` ``{"key", "value"}``: changes one value, in
  force at once and kept for the next boot.
"""

from __future__ import annotations

import math

from aiohttp import web

from malpi.web.base import BRIDGE, bad_request, field, read_json
from malpi.web.bridge import to_json

NUMBER = (int, float)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/calibration", calibration)
    app.router.add_post("/api/calibration/test", motor_test)
    app.router.add_post("/api/calibration/set", set_value)


def _number(body: dict, name: str, default: float | None = None) -> float:
    value = field(body, name, NUMBER) if default is None else field(body, name, NUMBER, default)
    if not math.isfinite(value):
        raise bad_request(f"{name}: must be a finite number")
    return float(value)


async def calibration(request: web.Request) -> web.Response:
    return web.json_response(to_json(await request.app[BRIDGE].call("calibration")))


async def motor_test(request: web.Request) -> web.Response:
    body = await read_json(request)
    output = field(body, "output", str)
    power, seconds = _number(body, "power", 0.3), _number(body, "seconds", 1.0)
    reply = await request.app[BRIDGE].call("motor_test", output, power, seconds)
    return web.json_response(to_json(reply))


async def set_value(request: web.Request) -> web.Response:
    body = await read_json(request)
    key, value = field(body, "key", str), _number(body, "value")
    return web.json_response(to_json(await request.app[BRIDGE].call("set_calibration", key, value)))
