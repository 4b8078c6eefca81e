"""The robot's side of the episode requests: its recording, read and curated over the link.

``list_episodes`` and ``get_episode`` read; ``delete_episode``, ``cut_episode``
and ``set_outcome`` change ended episodes. All run one at a time on their own
worker thread, with their own connections to the recorder's database (SQLite
in WAL mode: the recorder keeps writing), so neither the control loop nor the
command socket waits on the disk. Reads use a read-only connection; each
change is one transaction on a read-write one, which waits for the recorder's
commit (SQLite's busy timeout) and is refused for the episode being recorded.
Episodes are sent in chunks of steps, each a bounded reply, rows exactly as
stored. Listing reads no configuration or action table, and the SQL does the
paging: the Python work (which competes with the control loop for the GIL)
stays small.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from malpi.protocol import schema
from malpi.protocol.schema import ProtocolError
from malpi.recorder.codec import unpack_probs
from malpi.recorder.schema import StoreError
from malpi.recorder.store import EpisodeRunning, EpisodeStore, NoSuchEpisode

log = logging.getLogger(__name__)

MAX_WAITING = 8  # requests queued or running; more are answered "busy"


class EpisodeServer:
    """Answers episode requests from the recording database at ``path`` (None: not recording)."""

    def __init__(self, path: str | Path | None, reserve_id: Callable[[], int] | None = None):
        """``reserve_id``: a new episode id that the daemon will not use (the control process
        chooses ids: a cut that splits an episode must not take the next one's)."""
        self.path = Path(path) if path is not None else None
        self.reserve_id = reserve_id
        # One worker: the connections below are used by that thread only (SQLite's rule).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="malpi-link-episodes")
        self._conn: EpisodeStore | None = None
        self._writer: EpisodeStore | None = None
        self._jobs: set[Future] = set()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, request: schema.Request) -> Future:
        job = {
            schema.ListEpisodes: self.list,
            schema.GetEpisode: self.chunk,
            schema.DeleteEpisode: self.delete,
            schema.CutEpisode: self.cut,
            schema.SetOutcome: self.outcome,
        }[type(request)]
        with self._lock:
            self._jobs = {f for f in self._jobs if not f.done()}
            if self._closed:
                raise ProtocolError("stopped", "the link is closing")
            if len(self._jobs) >= MAX_WAITING:
                raise ProtocolError("busy", f"{MAX_WAITING} episode requests are already waiting")
            future = self._pool.submit(job, request)
            self._jobs.add(future)
        return future

    def close(self) -> None:
        """Drop the requests still queued (the daemon is stopping), close the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for f in self._jobs:
                f.cancel()
            self._pool.submit(self._close_store)
        self._pool.shutdown(wait=True)

    # -- on the worker thread ---------------------------------------------------------

    def list(self, req: schema.ListEpisodes) -> schema.EpisodeList:
        rows = self._store().summaries(req.since, req.limit + 1)  # one more: is there more?
        return schema.EpisodeList(
            episodes=[_summary(r) for r in rows[: req.limit]], more=len(rows) > req.limit
        )

    def chunk(self, req: schema.GetEpisode) -> schema.EpisodeChunk:
        store = self._store()
        try:
            info = store.episode(req.episode)
        except StoreError:
            raise ProtocolError("not_found", f"no episode {req.episode} in the recording") from None
        if info.running:
            raise ProtocolError(
                "refused", f"episode {req.episode} is still being recorded; ask once it has ended"
            )
        steps: list[schema.StepRecord] = []
        size = 0
        next_step = None
        # One row past the limit tells whether there is more.
        rows = store.raw_step_rows(info.id, req.from_step, req.max_steps + 1)
        try:
            for row in rows:
                step, action, source, probs, value, reward, done, t_cap, t_act, version, jpeg = row
                if len(steps) == req.max_steps or (
                    steps and size + len(jpeg) > schema.CHUNK_FRAME_BYTES
                ):
                    next_step = step
                    break
                probs = unpack_probs(probs)
                steps.append(
                    schema.StepRecord(
                        step=step,
                        action=action,
                        source=source,
                        probs=None if probs is None else probs.tolist(),
                        value=value,
                        reward=reward,
                        done=bool(done),
                        capture_time=t_cap,
                        action_time=t_act,
                        policy_version=version,
                        frame=bytes(jpeg),
                    )
                )
                size += len(jpeg)
        finally:
            rows.close()  # ends the read (and its WAL snapshot) now
        return schema.EpisodeChunk(
            episode=schema.EpisodeSummary(
                id=info.id,
                uuid=info.uuid,
                started_at=info.started_at,
                ended_at=info.ended_at,
                outcome=info.outcome,
                final_reward=info.final_reward,
                policy_version=info.policy_version,
                steps=info.step_count,
                dropped_steps=info.dropped_steps,
                notes=info.notes,
            ),
            started_mono=info.started_mono,
            config=info.config,
            actions=[schema.ActionInfo(**a) for a in info.action_table.to_list()],
            steps=steps,
            next_step=next_step,
        )

    # -- changes (ended episodes only; one transaction each) ---------------------------

    def delete(self, req: schema.DeleteEpisode) -> schema.DeleteReply:
        with _changing(req.episode, "deleted"):
            removed = self._write().delete_episode(req.episode)
        log.info("episode %d deleted over the link (%d steps)", req.episode, removed)
        return schema.DeleteReply(episode=req.episode, removed=removed)

    def cut(self, req: schema.CutEpisode) -> schema.CutReply:
        store = self._write()
        new_id = None
        with _changing(req.episode, "cut"):
            if self._splits(store, req) and self.reserve_id is not None:
                new_id = self.reserve_id()  # before the transaction: no lock held meanwhile
            result = store.cut_episode(req.episode, req.from_step, req.to_step, new_id=new_id)
        log.info(
            "episode %d: steps [%d, %d) cut over the link (%d removed; the rest after it: %s)",
            req.episode, req.from_step, req.to_step, result.removed, result.tail,
        )  # fmt: skip
        return schema.CutReply(
            removed=result.removed,
            episode=_summary(store.summary(result.episode)),
            tail=None if result.tail is None else _summary(store.summary(result.tail)),
        )

    def outcome(self, req: schema.SetOutcome) -> schema.OutcomeReply:
        store = self._write()
        with _changing(req.episode, "changed"):
            store.set_outcome(req.episode, req.outcome, req.final_reward)
            return schema.OutcomeReply(episode=_summary(store.summary(req.episode)))

    @staticmethod
    def _splits(store: EpisodeStore, req: schema.CutEpisode) -> bool:
        """Whether the cut leaves steps on both sides (a new episode for the tail)."""
        q = store._conn.execute
        before = q(
            "SELECT 1 FROM steps WHERE episode_id = ? AND step < ? LIMIT 1",
            (req.episode, req.from_step),
        ).fetchone()
        after = q(
            "SELECT 1 FROM steps WHERE episode_id = ? AND step >= ? LIMIT 1",
            (req.episode, req.to_step),
        ).fetchone()
        return before is not None and after is not None

    def _write(self) -> EpisodeStore:
        if self.path is None:
            raise ProtocolError("refused", "this robot has no recording configured")
        if self._writer is None:
            try:
                self._writer = EpisodeStore(self.path)
            except StoreError as exc:
                raise ProtocolError("refused", f"the recording cannot be changed: {exc}") from None
        return self._writer

    def _store(self) -> EpisodeStore:
        if self.path is None:
            raise ProtocolError("refused", "this robot has no recording configured")
        if self._conn is None:
            try:
                self._conn = EpisodeStore(self.path, readonly=True)
            except StoreError as exc:  # e.g. nothing recorded yet: no file
                raise ProtocolError("refused", f"the recording cannot be read: {exc}") from None
        return self._conn

    def _close_store(self) -> None:
        for store in (self._conn, self._writer):
            if store is not None:
                store.close()
        self._conn = self._writer = None


class _changing:
    """The store's refusals of a change as the link's error codes (the change did not happen:
    each is one transaction)."""

    def __init__(self, episode: int, what: str):
        self.episode, self.what = episode, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, ProtocolError):
            return False
        if isinstance(exc, NoSuchEpisode):
            raise ProtocolError("not_found", f"no episode {self.episode} in the recording")
        if isinstance(exc, EpisodeRunning):
            raise ProtocolError(
                "refused",
                f"episode {self.episode} is still being recorded: it can be {self.what} once "
                "it has ended (end_episode)",
            )
        if isinstance(exc, ValueError):
            raise ProtocolError("invalid", str(exc))
        if isinstance(exc, StoreError):
            if "locked" in str(exc) or "busy" in str(exc):
                raise ProtocolError(
                    "busy", f"the recording is busy (the recorder holds it): {exc}; try again"
                )
            raise ProtocolError("refused", f"the recording cannot be changed: {exc}")
        return False


def _summary(row: dict) -> schema.EpisodeSummary:
    """A ``summaries()`` row as its wire form."""
    last = row.pop("last_step")
    return schema.EpisodeSummary(
        **row, dropped_steps=0 if last is None else last + 1 - row["steps"]
    )
