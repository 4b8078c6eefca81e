"""The robot's side of ``list_episodes`` and ``get_episode``: its recording, read over the link.

Reads run on their own worker thread with their own read-only connection to
the recorder's database (SQLite in WAL mode: the recorder keeps writing), so
neither the control loop nor the command socket waits on the disk. Episodes
are sent in chunks of steps, each a bounded reply, rows exactly as stored.
Listing reads no configuration or action table, and the SQL does the paging:
the Python work (which competes with the control loop for the GIL) stays small.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from malpi.protocol import schema
from malpi.protocol.schema import ProtocolError
from malpi.recorder.codec import unpack_probs
from malpi.recorder.schema import StoreError
from malpi.recorder.store import EpisodeStore

MAX_WAITING = 8  # requests queued or running; more are answered "busy"


class EpisodeServer:
    """Answers episode requests from the recording database at ``path`` (None: not recording)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        # One worker: the connection below is used by that thread only (SQLite's rule).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="malpi-link-episodes")
        self._conn: EpisodeStore | None = None
        self._jobs: set[Future] = set()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, request: schema.ListEpisodes | schema.GetEpisode) -> Future:
        job = self.list if isinstance(request, schema.ListEpisodes) else self.chunk
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
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _summary(row: dict) -> schema.EpisodeSummary:
    """A ``summaries()`` row as its wire form."""
    last = row.pop("last_step")
    return schema.EpisodeSummary(
        **row, dropped_steps=0 if last is None else last + 1 - row["steps"]
    )
