"""``malpi pull``: copy a robot's recorded episodes into a local episode database, over the link.

Each episode is fetched in chunks (``get_episode``) and written in one
transaction, under the robot's uuid, rows exactly as the robot stored them:
a pull that fails halfway (link lost, robot stopped, disk full) leaves no
partial episode, and pulling again copies only what is not there yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malpi.link import schema
from malpi.recorder.codec import pack_probs
from malpi.recorder.store import EpisodeStore

log = logging.getLogger(__name__)


class PullError(RuntimeError):
    """The robot's answers do not add up to a whole episode."""


@dataclass
class Pulled:
    robot_id: int  # the episode's id on the robot
    local_id: int  # its id in the local database
    steps: int
    bytes: int  # frames and fields received


@dataclass
class PullResult:
    pulled: list[Pulled] = field(default_factory=list)
    already_here: list[int] = field(default_factory=list)  # robot ids whose uuid was present
    running: list[int] = field(default_factory=list)  # still being recorded: not copied
    local_ids: dict[int, int] = field(default_factory=dict)  # robot id -> local id, all ended
    seconds: float = 0.0


def list_all(client: Any, since: int = 0) -> list[schema.EpisodeSummary]:
    """Every episode on the robot with an id above ``since``, oldest first (paged)."""
    out: list[schema.EpisodeSummary] = []
    while True:
        reply = client.list_episodes(since=since)
        out.extend(reply.episodes)
        if not reply.more or not reply.episodes:
            return out
        since = reply.episodes[-1].id


def pull_episodes(
    client: Any,
    dest: str | Path,
    *,
    ids: Iterable[int] | None = None,
    since: int = 0,
    wait: float = 0.0,
    chunk_steps: int = 256,
    progress: Callable[[Pulled], None] | None = None,
) -> PullResult:
    """Copy the robot's ended episodes (those in ``ids``, else all above ``since``) into ``dest``.

    ``wait``: seconds to wait for wanted episodes that are still being recorded
    (the recorder writes an episode's end a moment after ``end_episode`` returns).
    """
    started = time.monotonic()
    wanted = None if ids is None else set(ids)
    deadline = time.monotonic() + wait
    while True:
        summaries = [s for s in list_all(client, since) if wanted is None or s.id in wanted]
        missing = set() if wanted is None else wanted - {s.id for s in summaries}
        running = [s.id for s in summaries if s.outcome == "running"]
        if wanted is None or not (running or missing) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if missing:
        raise PullError(f"the robot has no episode {', '.join(map(str, sorted(missing)))}")
    result = PullResult(running=running)
    with EpisodeStore(dest, create=True) as store:
        for s in summaries:
            if s.outcome == "running":
                continue
            local_id = store.find_uuid(s.uuid)
            if local_id is not None:
                result.already_here.append(s.id)
                result.local_ids[s.id] = local_id
                continue
            pulled = _pull_one(client, store, s, chunk_steps)
            result.pulled.append(pulled)
            result.local_ids[s.id] = pulled.local_id
            if progress is not None:
                progress(pulled)
    result.seconds = time.monotonic() - started
    return result


def _pull_one(
    client: Any, store: EpisodeStore, summary: schema.EpisodeSummary, chunk_steps: int
) -> Pulled:
    """One episode, all chunks, one transaction."""
    store.begin()
    try:
        local_id = None
        received = steps = 0
        next_step: int | None = 0
        while next_step is not None:
            chunk = client.get_episode(summary.id, from_step=next_step, max_steps=chunk_steps)
            e = chunk.episode
            if e.uuid != summary.uuid:
                raise PullError(f"episode {summary.id} changed on the robot while being pulled")
            if local_id is None:
                local_id = store.insert_episode(
                    None,
                    e.uuid,
                    e.started_at,
                    chunk.started_mono,
                    chunk.config,
                    schema.action_table(chunk.actions),
                    e.policy_version,
                    e.notes,
                    outcome=e.outcome,
                    ended_at=e.ended_at,
                    final_reward=e.final_reward,
                )
            if next_step > 0 and not chunk.steps:
                raise PullError(f"episode {summary.id}: no steps from {next_step} on")
            if chunk.next_step is not None and chunk.next_step <= next_step:
                raise PullError(f"episode {summary.id}: the robot's chunks do not move forward")
            store.insert_steps(local_id, [_row(r) for r in chunk.steps])
            steps += len(chunk.steps)
            received += sum(len(r.frame) for r in chunk.steps)
            next_step = chunk.next_step
        if steps != e.steps:
            raise PullError(
                f"episode {summary.id}: received {steps} steps, the robot lists {e.steps}"
            )
    except BaseException:
        store.rollback()
        raise
    store.commit()
    log.debug("pulled episode %d (%d steps) as local episode %d", summary.id, steps, local_id)
    return Pulled(summary.id, local_id, steps, received)


def _row(r: schema.StepRecord) -> tuple[Any, ...]:
    """A received step as the row ``EpisodeStore.insert_steps`` takes."""
    return (
        r.step,
        r.action,
        r.source,
        pack_probs(r.probs),
        r.value,
        r.reward,
        int(r.done),
        r.capture_time,
        r.action_time,
        r.policy_version,
        r.frame,
    )
