"""The robot's side of ``list_episodes`` and ``get_episode``: its recording, read over the link.

Reads run on their own worker thread with their own read-only connection to
the recorder's database (SQLite in WAL mode: the recorder keeps writing), so
neither the control loop nor the command socket waits on the disk. Episodes
are sent in chunks of steps, each a bounded reply, rows exactly as stored.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from malpi.link import schema
from malpi.link.schema import ProtocolError
from malpi.recorder.codec import unpack_probs
from malpi.recorder.schema import StoreError
from malpi.recorder.store import EpisodeInfo, EpisodeStore


class EpisodeServer:
    """Answers episode requests from the recording database at ``path`` (None: not recording)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        # One worker: the connection below is used by that thread only (SQLite's rule).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="malpi-link-episodes")
        self._conn: EpisodeStore | None = None

    def submit(self, request: schema.ListEpisodes | schema.GetEpisode) -> Future:
        job = self.list if isinstance(request, schema.ListEpisodes) else self.chunk
        return self._pool.submit(job, request)

    def close(self) -> None:
        self._pool.submit(self._close_store)
        self._pool.shutdown(wait=True)

    # -- on the worker thread ---------------------------------------------------------

    def list(self, req: schema.ListEpisodes) -> schema.EpisodeList:
        infos = [e for e in self._store().episodes() if e.id > req.since]
        return schema.EpisodeList(
            episodes=[_summary(e) for e in infos[: req.limit]], more=len(infos) > req.limit
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
        # One row past the limit tells whether there is more.
        rows = store.raw_step_rows(info.id, req.from_step, req.max_steps + 1)
        next_step = None
        for row in rows:
            step, action, source, probs, value, reward, done, t_cap, t_act, version, frame = row
            if len(steps) == req.max_steps or (
                steps and size + len(frame) > schema.CHUNK_FRAME_BYTES
            ):
                next_step = step
                break
            probs_list = unpack_probs(probs)
            steps.append(
                schema.StepRecord(
                    step=step,
                    action=action,
                    source=source,
                    probs=None if probs_list is None else probs_list.tolist(),
                    value=value,
                    reward=reward,
                    done=bool(done),
                    capture_time=t_cap,
                    action_time=t_act,
                    policy_version=version,
                    frame=bytes(frame),
                )
            )
            size += len(frame)
        rows.close()
        return schema.EpisodeChunk(
            episode=_summary(info),
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


def _summary(e: EpisodeInfo) -> schema.EpisodeSummary:
    return schema.EpisodeSummary(
        id=e.id,
        uuid=e.uuid,
        started_at=e.started_at,
        ended_at=e.ended_at,
        outcome=e.outcome,
        final_reward=e.final_reward,
        policy_version=e.policy_version,
        steps=e.step_count,
        dropped_steps=e.dropped_steps,
        notes=e.notes,
    )
