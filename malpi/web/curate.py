"""The Episodes tab's requests: the robot's recording, browsed, played back and curated.

Everything goes through the link (``list_episodes``, ``get_episode``,
``delete_episode``, ``cut_episode``, ``set_outcome``; docs/protocol.md): the
robot checks and does every change, in one transaction each.

- ``GET /api/episodes``: every episode's summary, oldest first;
- ``GET /api/episodes/{id}``: its summary, action table and each step's
  ``step``, ``action``, ``source``, ``reward``, ``value``, ``probs`` (no frames);
- ``GET /api/episodes/{id}/frame/{step}``: that step's camera frame (JPEG);
- ``POST /api/episodes/{id}/cut`` ``{"from_step", "to_step"}``: removes those
  steps (the steps after a cut in the middle become a new episode);
- ``POST /api/episodes/{id}/delete``; ``POST /api/episodes/{id}/outcome``
  ``{"outcome", "final_reward"}`` (``final_reward`` null keeps the episode's);
- ``GET /api/episodes/{id}/download``: the episode as a MaLPi episode database
  of its own (what ``malpi episodes export N --out F.sqlite`` writes).

Episodes come over the link in chunks of steps with their frames. What this
process fetched is kept, bounded: the steps (without frames) of the last
``META_EPISODES`` episodes looked at, and frames in one least-recently-used
store of at most ``FRAME_BYTES``; a frame not held is fetched with the few
after it (playback asks for them next). A cached episode is checked against
the robot's summary when it is opened again, so a change made elsewhere (a
cut from another page, ``malpi`` on the robot) is never shown stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from malpi.protocol import schema
from malpi.web.base import BRIDGE, bad_request, fail, read_json
from malpi.web.base import field as body_field
from malpi.web.bridge import Bridge, to_json

log = logging.getLogger(__name__)

OUTCOMES = ("finished", "failed", "aborted")
META_EPISODES = 8  # episodes whose steps (without frames) are kept
FRAME_BYTES = 48 * 1024 * 1024  # frames kept, all episodes together
FRAME_WINDOW = 48  # steps fetched with a frame that is not held (playback asks for them next)
PAGE = 500  # episodes per list_episodes request
MAX_ID = 2**63 - 1

Version = tuple[int, str, int, float]  # (id, uuid, steps, started_at): what a cut changes


@dataclass
class Episode:
    """One episode's steps as the page plays them back (frames are in the FrameCache)."""

    version: Version
    summary: dict[str, Any]
    actions: list[dict[str, Any]]
    rate_hz: float | None = None  # the control rate it was recorded at (playback's speed)
    steps: list[dict[str, Any]] = field(default_factory=list)


class FrameCache:
    """JPEG frames by (episode version, step), least recently used out first, bounded in bytes."""

    def __init__(self, limit: int = FRAME_BYTES):
        self.limit = limit
        self.size = 0
        self._frames: OrderedDict[tuple[Version, int], bytes] = OrderedDict()

    def get(self, version: Version, step: int) -> bytes | None:
        key = (version, step)
        data = self._frames.get(key)
        if data is not None:
            self._frames.move_to_end(key)
        return data

    def put(self, version: Version, step: int, data: bytes) -> None:
        key = (version, step)
        old = self._frames.pop(key, None)
        if old is not None:
            self.size -= len(old)
        if len(data) > self.limit:
            return
        self._frames[key] = data
        self.size += len(data)
        while self.size > self.limit:
            _, dropped = self._frames.popitem(last=False)
            self.size -= len(dropped)

    def forget(self, episode: int) -> None:
        for key in [k for k in self._frames if k[0][0] == episode]:
            self.size -= len(self._frames.pop(key))


class Episodes:
    """The web process's view of the robot's recording: fetched lazily, kept bounded."""

    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.frames = FrameCache()
        self._meta: OrderedDict[int, Episode] = OrderedDict()
        self._locks: dict[int, asyncio.Lock] = {}

    async def summary(self, episode: int) -> schema.EpisodeSummary:
        reply = await self.bridge.call("list_episodes", episode - 1, 1) if episode else None
        found = reply.episodes[0] if reply is not None and reply.episodes else None
        if found is None or found.id != episode:
            raise _not_found(f"no episode {episode} in the recording")
        return found

    async def episode(self, episode: int, *, check: bool = True) -> Episode:
        """The episode's steps: fetched (frames kept in the cache) unless held and unchanged."""
        lock = self._locks.setdefault(episode, asyncio.Lock())
        async with lock:
            held = self._meta.get(episode)
            if held is not None and check and _version(await self.summary(episode)) != held.version:
                self.forget(episode)
                held = None
            if held is not None:
                self._meta.move_to_end(episode)
                return held
            fetched = await self._fetch(episode)
            self._meta[episode] = fetched
            while len(self._meta) > META_EPISODES:
                self._meta.popitem(last=False)
            for key in [
                k for k, v in self._locks.items() if k not in self._meta and not v.locked()
            ]:
                del self._locks[key]  # one lock per episode held, not per episode ever opened
            return fetched

    async def _fetch(self, episode: int) -> Episode:
        ep: Episode | None = None
        next_step: int | None = 0
        while next_step is not None:
            chunk = await self.bridge.call("get_episode", episode, next_step, 256)
            version = _version(chunk.episode)
            if ep is None:
                ep = Episode(
                    version,
                    to_json(chunk.episode),
                    [to_json(a) for a in chunk.actions],
                    _rate(chunk.config),
                )
            elif version != ep.version:  # cut meanwhile: start again
                self.frames.forget(episode)
                return await self._fetch(episode)
            for s in chunk.steps:
                ep.steps.append(_step(s))
                self.frames.put(version, s.step, s.frame)
            if chunk.next_step is not None and chunk.next_step <= next_step:
                break  # a robot that does not move forward: what came is what there is
            next_step = chunk.next_step
        assert ep is not None
        return ep

    async def frame(self, episode: int, step: int) -> bytes:
        """A step's frame: held, or fetched with the ones after it when the episode is open
        (playback), else alone (a thumbnail)."""
        ep = self._meta.get(episode)
        if ep is not None and (data := self.frames.get(ep.version, step)) is not None:
            return data
        window = FRAME_WINDOW if ep is not None else 1
        chunk = await self.bridge.call("get_episode", episode, step, window)
        version = _version(chunk.episode)
        if ep is not None and version != ep.version:
            self.forget(episode)  # changed since: the page opens the episode again
            raise web.HTTPConflict(
                text='{"error": "changed", "message": "the episode changed: open it again"}',
                content_type="application/json",
            )
        data = None
        for s in chunk.steps:
            self.frames.put(version, s.step, s.frame)
            if s.step == step:
                data = s.frame
        if data is None:
            raise _not_found(f"episode {episode} has no step {step}")
        return data

    def forget(self, episode: int) -> None:
        self._meta.pop(episode, None)
        self.frames.forget(episode)


EPISODES = web.AppKey("episodes", Episodes)


def add_routes(app: web.Application) -> None:
    async def setup(app: web.Application) -> None:
        app[EPISODES] = Episodes(app[BRIDGE])

    app.on_startup.append(setup)
    app.router.add_get("/api/episodes", list_episodes)
    app.router.add_get("/api/episodes/{id}", get_episode)
    app.router.add_get("/api/episodes/{id}/frame/{step}", get_frame)
    app.router.add_get("/api/episodes/{id}/download", download)
    app.router.add_post("/api/episodes/{id}/cut", cut)
    app.router.add_post("/api/episodes/{id}/delete", delete)
    app.router.add_post("/api/episodes/{id}/outcome", outcome)


def _int(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 19 or int(text) > MAX_ID:
        raise bad_request(f"{what}: not an episode or step number: {text[:32]!r}")
    return int(text)


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=json.dumps({"error": "not_found", "message": message}),
        content_type="application/json",
    )


def _id(request: web.Request) -> int:
    return _int(request.match_info["id"], "episode")


async def list_episodes(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    out: list[Any] = []
    since = 0
    while True:
        reply = await bridge.call("list_episodes", since, PAGE)
        out += [to_json(e) for e in reply.episodes]
        if not reply.more or not reply.episodes:
            break
        since = reply.episodes[-1].id
    return web.json_response({"episodes": out})


async def get_episode(request: web.Request) -> web.Response:
    ep = await request.app[EPISODES].episode(_id(request))
    return web.json_response(
        {"episode": ep.summary, "actions": ep.actions, "rate_hz": ep.rate_hz, "steps": ep.steps}
    )


async def get_frame(request: web.Request) -> web.Response:
    step = _int(request.match_info["step"], "step")
    data = await request.app[EPISODES].frame(_id(request), step)
    return web.Response(
        body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"}
    )


async def cut(request: web.Request) -> web.Response:
    episode = _id(request)
    body = await read_json(request)
    a, b = body_field(body, "from_step", int), body_field(body, "to_step", int)
    if not 0 <= a < b <= MAX_ID:
        raise bad_request("the cut needs 0 <= from_step < to_step")
    episodes = request.app[EPISODES]
    try:
        reply = await request.app[BRIDGE].call("cut_episode", episode, a, b)
    finally:
        episodes.forget(episode)
    if reply.tail is not None:
        episodes.forget(reply.tail.id)
    return web.json_response(to_json(reply))


async def delete(request: web.Request) -> web.Response:
    episode = _id(request)
    try:
        reply = await request.app[BRIDGE].call("delete_episode", episode)
    finally:
        request.app[EPISODES].forget(episode)
    return web.json_response(to_json(reply))


async def outcome(request: web.Request) -> web.Response:
    episode = _id(request)
    body = await read_json(request)
    what = body_field(body, "outcome", str)
    if what not in OUTCOMES:
        raise bad_request(f"outcome: one of {', '.join(OUTCOMES)}")
    reward = body_field(body, "final_reward", (int, float), None)
    if reward is not None and not math.isfinite(reward):
        raise bad_request("final_reward: must be a finite number")
    reply = await request.app[BRIDGE].call(
        "set_outcome", episode, what, None if reward is None else float(reward)
    )
    held = request.app[EPISODES]._meta.get(episode)
    if held is not None:  # the steps are the same; the ending is in the summary
        held.summary = to_json(reply.episode)
    return web.json_response(to_json(reply))


async def download(request: web.Request) -> web.StreamResponse:
    """The episode copied, rows exactly as stored, into a new episode database (``malpi pull``'s
    copy, one episode): streamed, then removed."""
    from malpi.operator.pull import PullError, pull_episodes

    episode = _id(request)
    bridge = request.app[BRIDGE]
    loop = asyncio.get_running_loop()

    class Robot:  # pull_episodes' client, on a worker thread, through the bridge
        def list_episodes(self, since: int = 0, limit: int = PAGE):
            return asyncio.run_coroutine_threadsafe(
                bridge.call("list_episodes", since, limit), loop
            ).result()

        def get_episode(self, episode: int, from_step: int = 0, max_steps: int = 256):
            return asyncio.run_coroutine_threadsafe(
                bridge.call("get_episode", episode, from_step, max_steps), loop
            ).result()

    tmp = Path(tempfile.mkdtemp(prefix="malpi-web-download-"))
    path = tmp / f"episode-{episode}.sqlite"
    try:
        try:
            await loop.run_in_executor(None, lambda: pull_episodes(Robot(), path, ids=[episode]))
        except PullError as exc:
            return fail(404 if "has no episode" in str(exc) else 409, "download", str(exc))
        f = path.open("rb")
    finally:
        with contextlib.suppress(OSError):
            for p in tmp.iterdir():
                if p != path:
                    p.unlink()
    try:
        path.unlink()  # the open file is read to its end regardless
        tmp.rmdir()
        size = os.fstat(f.fileno()).st_size
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/vnd.sqlite3",
                "Content-Disposition": f'attachment; filename="episode-{episode}.sqlite"',
                "Content-Length": str(size),
            }
        )
        await response.prepare(request)
        while chunk := await loop.run_in_executor(None, f.read, 1 << 20):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        f.close()


def _version(summary: schema.EpisodeSummary) -> Version:
    return (summary.id, summary.uuid, summary.steps, summary.started_at)


def _rate(config: dict[str, Any]) -> float | None:
    loop = config.get("loop")
    rate = loop.get("rate_hz") if isinstance(loop, dict) else None
    return float(rate) if isinstance(rate, int | float) and 0 < rate <= 1000 else None


def _step(s: schema.StepRecord) -> dict[str, Any]:
    return {
        "step": s.step,
        "action": s.action,
        "source": s.source,
        "reward": s.reward,
        "value": s.value,
        "probs": None if s.probs is None else [round(p, 4) for p in s.probs],
    }
