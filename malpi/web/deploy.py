"""The Policies tab's requests: what runs, what boots, what is kept; push, keep and roll back.

Through the link (``list_policies``, ``load_policy``, ``keep_policy``,
``rollback_policy``; docs/protocol.md): the robot validates every bundle
completely, in a process of its own, before anything changes.

- ``GET /api/policies``: the running and boot policies, the policy store's
  history (newest first) with each bundle's evaluation figures, the shipped
  default;
- ``POST /api/policy`` (``?keep=1`` to keep it too): the request's body is a
  ``.malpi`` bundle file, at most 64 MiB: a larger one is refused from its
  ``Content-Length`` before any of it is read (or as soon as a body without
  one passes the limit); it runs once the robot has validated it;
- ``POST /api/policy/keep``: the running policy boots from now on;
- ``POST /api/policy/rollback``: back to the boot policy, or from it to the
  one kept before it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from malpi.protocol.schema import MAX_BUNDLE_BYTES
from malpi.web.base import BRIDGE, fail
from malpi.web.bridge import to_json

READ_BYTES = 1024 * 1024
# One push at a time (the link takes one anyway): bodies wait for none, so without this a few
# concurrent 64 MiB uploads would hold the console's whole memory.
PUSHING = web.AppKey("pushing", asyncio.Lock)
LOAD_TIMEOUT = 300.0  # s: validating a big bundle on a Pi takes seconds, the robot allows 300


def add_routes(app: web.Application) -> None:
    app[PUSHING] = asyncio.Lock()
    app.router.add_get("/api/policies", policies)
    app.router.add_post("/api/policy", upload)
    app.router.add_post("/api/policy/keep", keep)
    app.router.add_post("/api/policy/rollback", rollback)


def _too_large(size: int | str) -> web.Response:
    return fail(
        413, "too_large", f"a bundle of {size} bytes; a bundle may be at most {MAX_BUNDLE_BYTES}"
    )


async def policies(request: web.Request) -> web.Response:
    return web.json_response(to_json(await request.app[BRIDGE].call("list_policies")))


async def upload(request: web.Request) -> web.Response:
    keep = request.query.get("keep", "") in ("1", "true", "yes")
    length = request.content_length
    if length is not None and length > MAX_BUNDLE_BYTES:
        return _too_large(length)  # nothing read (aiohttp closes the connection after it)
    if request.app[PUSHING].locked():
        return fail(409, "busy", "another bundle is being pushed; try again when it is done")
    async with request.app[PUSHING]:
        return await _push(request, keep)


async def _push(request: web.Request, keep: bool) -> web.Response:
    data = bytearray()
    while chunk := await request.content.read(READ_BYTES):
        data += chunk
        if len(data) > MAX_BUNDLE_BYTES:
            return _too_large(f"over {MAX_BUNDLE_BYTES}")
    if not data:
        return fail(400, "invalid", "the request's body must be the .malpi bundle file")
    reply = await request.app[BRIDGE].call(
        "load_policy", bytes(data), timeout=LOAD_TIMEOUT, keep=keep
    )
    return web.json_response(to_json(reply))


async def keep(request: web.Request) -> web.Response:
    return web.json_response(to_json(await request.app[BRIDGE].call("keep_policy")))


async def rollback(request: web.Request) -> web.Response:
    reply = await request.app[BRIDGE].call("rollback_policy", timeout=LOAD_TIMEOUT)
    return web.json_response(to_json(reply))
