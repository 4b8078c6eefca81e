"""``malpi pull``: copy a robot's recorded episodes into a local episode database, over the link.

Each episode is fetched whole (``get_episode``, chunk by chunk) and then
written in one short transaction, under the robot's uuid, rows exactly as the
robot stored them: a pull that fails halfway (link lost, robot stopped, disk
full) leaves no partial episode, the local database is never locked while
waiting on the network, and pulling again copies only what is not there yet
(and brings over an outcome changed on the robot since). An episode cut on
the robot (``cut_episode``) while it is being pulled fails that pull; one cut
after it was copied keeps its copy as it was (the log says so), and the steps
after a cut in the middle are copied as the new episode they became.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malpi.protocol import schema
from malpi.recorder.codec import pack_probs
from malpi.recorder.schema import END_OUTCOMES
from malpi.recorder.store import EpisodeStore

log = logging.getLogger(__name__)

PAGE = 200  # episodes per list_episodes request: small replies, little work on the robot
POLL_S = 0.25  # while waiting for the recorder to write an episode's ending


class PullError(RuntimeError):
    """The robot's answers do not add up to a whole episode."""


@dataclass
class Pulled:
    robot_id: int  # the episode's id on the robot
    local_id: int  # its id in the local database
    steps: int
    bytes: int  # JPEG frame bytes received


@dataclass
class PullResult:
    pulled: list[Pulled] = field(default_factory=list)
    already_here: list[int] = field(default_factory=list)  # robot ids whose uuid was present
    updated: list[int] = field(default_factory=list)  # of those, outcome brought up to date
    running: list[int] = field(default_factory=list)  # still being recorded: not copied
    local_ids: dict[int, int] = field(default_factory=dict)  # robot id -> local id, all ended
    seconds: float = 0.0


def list_all(client: Any, since: int = 0, until: int | None = None) -> list[schema.EpisodeSummary]:
    """The robot's episodes with ids above ``since`` (and up to ``until``), oldest first."""
    out: list[schema.EpisodeSummary] = []
    while True:
        reply = client.list_episodes(since=since, limit=PAGE)
        out.extend(e for e in reply.episodes if until is None or e.id <= until)
        if not reply.more or not reply.episodes:
            return out
        since = reply.episodes[-1].id
        if until is not None and since >= until:
            return out


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
    if wanted is not None:
        since, until = (min(wanted) - 1, max(wanted)) if wanted else (0, 0)
    else:
        until = None
    deadline = time.monotonic() + wait
    while True:
        summaries = [s for s in list_all(client, since, until) if wanted is None or s.id in wanted]
        missing = set() if wanted is None else wanted - {s.id for s in summaries}
        running = [s.id for s in summaries if s.outcome == "running"]
        if wanted is None or not (running or missing) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    if missing:
        raise PullError(f"the robot has no episode {', '.join(map(str, sorted(missing)))}")
    result = PullResult(running=running)
    with EpisodeStore(dest, create=True) as store:
        for s in summaries:
            if s.outcome == "running":
                continue
            local_id = store.find_uuid(s.uuid)
            if local_id is None:
                pulled = _pull_one(client, store, s, chunk_steps)
                if pulled is not None:
                    result.pulled.append(pulled)
                    result.local_ids[s.id] = pulled.local_id
                    if progress is not None:
                        progress(pulled)
                    continue
                local_id = store.find_uuid(s.uuid)  # another pull wrote it meanwhile
            result.already_here.append(s.id)
            result.local_ids[s.id] = local_id
            if _bring_up_to_date(store, local_id, s):
                result.updated.append(s.id)
    result.seconds = time.monotonic() - started
    return result


def _pull_one(
    client: Any, store: EpisodeStore, summary: schema.EpisodeSummary, chunk_steps: int
) -> Pulled | None:
    """One episode: every chunk received, then one transaction. None if it arrived meanwhile."""
    chunks: list[schema.EpisodeChunk] = []
    next_step: int | None = 0
    while next_step is not None:
        chunk = client.get_episode(summary.id, from_step=next_step, max_steps=chunk_steps)
        if chunks and _cut_meanwhile(chunks[0], chunk):
            raise PullError(
                f"episode {summary.id} was cut on the robot while being pulled; pull again"
            )
        if chunk.episode.uuid != summary.uuid:
            raise PullError(f"episode {summary.id} changed on the robot while being pulled")
        if next_step > 0 and not chunk.steps:
            raise PullError(f"episode {summary.id}: no steps from {next_step} on")
        if chunk.next_step is not None and chunk.next_step <= next_step:
            raise PullError(f"episode {summary.id}: the robot's chunks do not move forward")
        chunks.append(chunk)
        next_step = chunk.next_step
    first, last = chunks[0], chunks[-1].episode  # the last chunk has the newest ending
    rows = [_row(r) for c in chunks for r in c.steps]
    if len(rows) != last.steps:
        raise PullError(
            f"episode {summary.id}: received {len(rows)} steps, the robot lists {last.steps}"
        )
    store.begin()
    try:
        if store.find_uuid(summary.uuid) is not None:
            store.rollback()
            return None
        local_id = store.insert_episode(
            None,
            last.uuid,
            last.started_at,
            first.started_mono,
            first.config,
            schema.action_table(first.actions),
            last.policy_version,
            last.notes,
            outcome=last.outcome,
            ended_at=last.ended_at,
            final_reward=last.final_reward,
        )
        store.insert_steps(local_id, rows)
    except BaseException:
        store.rollback()
        raise
    store.commit()
    size = sum(len(r[-1]) for r in rows)
    log.debug("pulled episode %d (%d steps) as local episode %d", summary.id, len(rows), local_id)
    return Pulled(summary.id, local_id, len(rows), size)


def _bring_up_to_date(store: EpisodeStore, local_id: int, s: schema.EpisodeSummary) -> bool:
    """An outcome or final reward set on the robot after an earlier pull: copy it over."""
    here = store.episode(local_id)
    if here.step_count != s.steps:
        # Cut on the robot after it was copied (cut_episode): this copy is not changed, and the
        # steps after a cut in the middle come as an episode of their own.
        log.warning(
            "episode %d: the robot has %d steps, the copy here %d (cut on the robot after it "
            "was pulled); the copy is left as it is",
            s.id,
            s.steps,
            here.step_count,
        )
        return False
    if (here.outcome, here.final_reward) == (s.outcome, s.final_reward):
        return False
    if s.outcome not in END_OUTCOMES or (s.final_reward is None and here.final_reward is not None):
        # (an outcome the store cannot set after the fact, or a final reward removed)
        log.warning(
            "episode %d: the robot has %s/%s, the copy %s/%s; left as it is",
            s.id,
            s.outcome,
            s.final_reward,
            here.outcome,
            here.final_reward,
        )
        return False
    store.set_outcome(local_id, s.outcome, s.final_reward)
    return True


def _cut_meanwhile(first: schema.EpisodeChunk, chunk: schema.EpisodeChunk) -> bool:
    """The episode's steps or start changed between two chunks: a cut_episode came between."""
    a, b = first.episode, chunk.episode
    return (a.steps, a.started_at, first.started_mono) != (
        b.steps,
        b.started_at,
        chunk.started_mono,
    )


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
