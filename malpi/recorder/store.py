"""Reading and maintaining the episode database (and the writes the recorder's thread makes).

The trainer's entry point::

    with EpisodeStore("episodes.sqlite") as store:
        for info in store.episodes():
            ep = store.load_episode(info.id)      # frames T x H x W x 3 RGB, actions, ...
            for step in store.iter_steps(info.id, decode=False):
                step.jpeg                          # raw bytes, e.g. for tf.io.decode_jpeg

Episode-level facts are applied when reading, never written into step rows, so
the rows stay exactly as the control loop recorded them and an outcome can be
set at any time (even before the last queued steps reach the disk): once an
episode has ended its last step reads ``done=True``, and an episode's
``final_reward`` (e.g. the operator's "episode failed" penalty) is added to the
last step's reward.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable, ActionTableError, previous_actions
from malpi.recorder.codec import decode_jpeg, unpack_probs
from malpi.recorder.schema import END_OUTCOMES, StoreError, connect, has_commands_table

log = logging.getLogger(__name__)

_EPISODE_SELECT = """
SELECT e.id, e.uuid, e.started_at, e.started_mono, e.ended_at, e.outcome, e.final_reward,
       e.config, e.action_table, e.policy_version, e.notes,
       (SELECT count(*) FROM steps s WHERE s.episode_id = e.id),
       (SELECT max(step) FROM steps s WHERE s.episode_id = e.id),
       (SELECT capture_time FROM steps s WHERE s.episode_id = e.id ORDER BY step LIMIT 1),
       (SELECT action_time FROM steps s WHERE s.episode_id = e.id ORDER BY step DESC LIMIT 1)
FROM episodes e
"""

_SUMMARY_SELECT = (
    "SELECT e.id, e.uuid, e.started_at, e.ended_at, e.outcome, e.final_reward, "
    "e.policy_version, e.notes, "
    "(SELECT count(*) FROM steps s WHERE s.episode_id = e.id), "
    "(SELECT max(step) FROM steps s WHERE s.episode_id = e.id) "
    "FROM episodes e "
)

LABELS_KEY = "trainer_labels"
"""The episode config key of the expert's action at every step index
(:data:`malpi.train.episodes.LABELS_KEY`): a cut that renumbers steps shifts it too."""

_STEP_COLUMNS = (
    "step, action, source, probs, value, reward, done, capture_time, action_time, "
    "policy_version, frame"
)


@dataclass(frozen=True)
class EpisodeInfo:
    """One episode's metadata and a summary of its steps (no frames are read)."""

    id: int
    uuid: str
    started_at: float  # wall clock, Unix seconds
    started_mono: float  # time.monotonic() at started_at: step times convert with wall_time()
    ended_at: float | None
    outcome: str
    final_reward: float | None
    config: dict[str, Any]
    action_table: ActionTable
    policy_version: str | None
    notes: str
    step_count: int
    last_step: int | None  # the highest step index; last_step + 1 - step_count steps were dropped
    first_capture_time: float | None
    last_action_time: float | None

    @property
    def running(self) -> bool:
        return self.outcome == "running"

    @property
    def terminated(self) -> bool:
        """Ended by failure: the last step is terminal (no value bootstrap). Other endings truncate."""
        return self.outcome == "failed"

    @property
    def dropped_steps(self) -> int:
        return 0 if self.last_step is None else self.last_step + 1 - self.step_count

    @property
    def duration(self) -> float:
        """Seconds from the first frame's capture to the last action (0 without steps)."""
        if self.first_capture_time is None or self.last_action_time is None:
            return 0.0
        return max(0.0, self.last_action_time - self.first_capture_time)

    def wall_time(self, mono: float) -> float:
        """A step's monotonic timestamp as wall-clock Unix seconds."""
        return self.started_at + (mono - self.started_mono)


@dataclass(frozen=True)
class StoredStep:
    """One recorded step as read back. ``reward`` and ``done`` include the episode's ending."""

    episode_id: int
    step: int
    action: int
    source: str  # one of SOURCES
    probs: np.ndarray | None  # float32, one per action; None if no policy ran
    value: float | None
    reward: float
    done: bool
    capture_time: float
    action_time: float
    policy_version: str | None
    jpeg: bytes
    frame: np.ndarray | None  # RGB uint8 H x W x 3, or None when read with decode=False


@dataclass
class EpisodeData:
    """A whole episode as arrays, T = number of stored steps, A = number of actions."""

    info: EpisodeInfo
    steps: np.ndarray  # int64 (T,), step indices (gaps are dropped steps)
    frames: np.ndarray | None  # uint8 (T, H, W, 3) RGB; None with decode=False
    jpegs: list[bytes]
    actions: np.ndarray  # int64 (T,)
    sources: np.ndarray  # str (T,)
    probs: np.ndarray  # float32 (T, A); NaN rows where no probabilities were recorded
    values: np.ndarray  # float32 (T,); NaN where none
    rewards: np.ndarray  # float32 (T,)
    dones: np.ndarray  # bool (T,)
    capture_times: np.ndarray  # float64 (T,), time.monotonic() of the recording machine
    action_times: np.ndarray  # float64 (T,)
    policy_versions: list[str | None] = field(default_factory=list)
    # float32 (T, 2) [steering, throttle]: the motor command sent at each step, the recorded
    # one (step_commands) where there is one, else the action table's entry for the step's
    # action. None only when an action lies outside the table and no command was recorded.
    commands: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def prev_actions(self) -> np.ndarray:
        """The policy's "previous action" input: NO_ACTION, then actions[:-1]."""
        return previous_actions(self.actions)

    @property
    def log_probs(self) -> np.ndarray:
        """Behaviour log-probability of the action taken, float32 (T,); NaN where unknown."""
        out = np.full(len(self.actions), np.nan, dtype=np.float32)
        ok = ~np.isnan(self.probs).any(axis=1) if self.probs.size else np.zeros(len(out), bool)
        rows = np.nonzero(ok)[0]
        with np.errstate(divide="ignore"):
            out[rows] = np.log(self.probs[rows, self.actions[rows]])
        return out


@contextlib.contextmanager
def _db_errors(path: Path) -> Iterator[None]:
    """SQLite's errors as StoreError naming the file (a damaged file says so)."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "malformed" in text or "not a database" in text:
            raise StoreError(
                f"{path} is damaged ({text}); `sqlite3 {path} .recover` may salvage it"
            ) from exc
        raise StoreError(f"{path}: {text}") from exc


class NoSuchEpisode(StoreError):
    """The database holds no episode with that id (never recorded, or deleted)."""


class EpisodeRunning(StoreError):
    """The episode is still being recorded: a recorder may be writing it."""


@dataclass(frozen=True)
class CutResult:
    """What :meth:`EpisodeStore.cut_episode` did."""

    removed: int  # steps deleted
    episode: int  # the piece that keeps the episode's id and uuid
    tail: int | None  # the steps after a cut in the middle, as a new episode (None: none)


class EpisodeStore:
    """An open episode database. One per thread (SQLite connections are per thread).

    ``create`` initialises a new file; ``readonly`` never writes (reading only).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = False, readonly: bool = False
    ):
        self.path = Path(path)
        self._conn = connect(self.path, create=create, readonly=readonly)
        # A version 1 file opened read-only has no step_commands table (nothing to read).
        self._has_commands = has_commands_table(self._conn)

    # -- context, housekeeping -------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self) -> str:
        """SQLite's full integrity check: 'ok', or the problems it found."""
        with _db_errors(self.path):
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(r[0] for r in rows)

    # -- reading -----------------------------------------------------------------

    def episodes(self) -> list[EpisodeInfo]:
        """Every episode, oldest first."""
        with _db_errors(self.path):
            rows = self._conn.execute(_EPISODE_SELECT + " ORDER BY e.id").fetchall()
        return [self._info(r) for r in rows]

    def summaries(self, since: int = 0, limit: int = -1) -> list[dict[str, Any]]:
        """Episodes with an id above ``since``, oldest first, at most ``limit`` (-1: all): the
        columns a listing needs, plus ``steps`` and ``last_step`` (no config or action table
        is parsed: a robot lists thousands of episodes while it drives)."""
        with _db_errors(self.path):
            cursor = self._conn.execute(
                _SUMMARY_SELECT + "WHERE e.id > ? ORDER BY e.id LIMIT ?", (since, limit)
            )
            return _summary_rows(cursor)

    def summary(self, episode_id: int) -> dict[str, Any]:
        """One episode's ``summaries()`` row; NoSuchEpisode if there is none."""
        with _db_errors(self.path):
            rows = _summary_rows(
                self._conn.execute(_SUMMARY_SELECT + "WHERE e.id = ?", (episode_id,))
            )
        if not rows:
            raise NoSuchEpisode(f"{self.path} has no episode {episode_id}")
        return rows[0]

    def episode(self, episode_id: int) -> EpisodeInfo:
        with _db_errors(self.path):
            row = self._conn.execute(_EPISODE_SELECT + " WHERE e.id = ?", (episode_id,)).fetchone()
        if row is None:
            raise NoSuchEpisode(f"{self.path} has no episode {episode_id}")
        return self._info(row)

    def find_uuid(self, uuid: str) -> int | None:
        """The id of the episode with this uuid here, if there is one."""
        with _db_errors(self.path):
            row = self._conn.execute("SELECT id FROM episodes WHERE uuid = ?", (uuid,)).fetchone()
        return None if row is None else int(row[0])

    def count_steps(self, episode_id: int | None = None) -> int:
        """Stored steps in one episode, or in the whole database."""
        with _db_errors(self.path):
            if episode_id is None:
                return self._conn.execute("SELECT count(*) FROM steps").fetchone()[0]
            return self._conn.execute(
                "SELECT count(*) FROM steps WHERE episode_id = ?", (episode_id,)
            ).fetchone()[0]

    def iter_steps(self, episode_id: int, *, decode: bool = True) -> Iterator[StoredStep]:
        """The episode's steps in order, read in chunks (the whole episode is never in memory)."""
        info = self.episode(episode_id)
        with _db_errors(self.path):
            cursor = self._conn.execute(
                f"SELECT {_STEP_COLUMNS} FROM steps WHERE episode_id = ? ORDER BY step",
                (episode_id,),
            )
            while rows := cursor.fetchmany(64):
                for row in rows:
                    yield self._step(info, row, decode)

    def raw_step_rows(
        self, episode_id: int, from_step: int = 0, limit: int = -1
    ) -> Iterator[tuple[Any, ...]]:
        """Step rows exactly as stored (no episode-level adjustments, frames as JPEG), in the
        column order insert_steps takes: for copying between databases. ``from_step``: the
        first step index wanted; ``limit``: at most this many rows (-1: all)."""
        with _db_errors(self.path):
            cursor = self._conn.execute(
                f"SELECT {_STEP_COLUMNS} FROM steps WHERE episode_id = ? AND step >= ? "
                "ORDER BY step LIMIT ?",
                (episode_id, from_step, limit),
            )
            while rows := cursor.fetchmany(64):
                yield from rows

    def raw_command_rows(self, episode_id: int) -> list[tuple[int, float, float]]:
        """The episode's recorded motor commands as stored: (step, steering, throttle) rows,
        only for the steps that have one (see :meth:`insert_commands`)."""
        if not self._has_commands:
            return []
        with _db_errors(self.path):
            return self._conn.execute(
                "SELECT step, steering, throttle FROM step_commands WHERE episode_id = ? "
                "ORDER BY step",
                (episode_id,),
            ).fetchall()

    def load_episode(self, episode_id: int, *, decode: bool = True) -> EpisodeData:
        """The whole episode as arrays (see EpisodeData)."""
        info = self.episode(episode_id)
        steps = list(self.iter_steps(episode_id, decode=decode))
        n_actions = len(info.action_table)
        probs = np.full((len(steps), n_actions), np.nan, dtype=np.float32)
        for i, s in enumerate(steps):
            if s.probs is not None and len(s.probs) == n_actions:
                probs[i] = s.probs
        frames = None
        if decode:
            shapes = {s.frame.shape for s in steps if s.frame is not None}
            if len(shapes) > 1:
                raise StoreError(f"episode {episode_id} has frames of different sizes: {shapes}")
            frames = (
                np.stack([s.frame for s in steps])
                if steps
                else np.zeros((0, 0, 0, 3), dtype=np.uint8)
            )
        return EpisodeData(
            info=info,
            steps=np.array([s.step for s in steps], dtype=np.int64),
            frames=frames,
            jpegs=[s.jpeg for s in steps],
            actions=np.array([s.action for s in steps], dtype=np.int64),
            sources=np.array([s.source for s in steps], dtype="<U12"),
            probs=probs,
            values=np.array(
                [np.nan if s.value is None else s.value for s in steps], dtype=np.float32
            ),
            rewards=np.array([s.reward for s in steps], dtype=np.float32),
            dones=np.array([s.done for s in steps], dtype=bool),
            capture_times=np.array([s.capture_time for s in steps], dtype=np.float64),
            action_times=np.array([s.action_time for s in steps], dtype=np.float64),
            policy_versions=[s.policy_version for s in steps],
            commands=self._commands(info, steps),
        )

    def _commands(self, info: EpisodeInfo, steps: list[StoredStep]) -> np.ndarray | None:
        """EpisodeData.commands: the stored command, else the action table's entry."""
        table = info.action_table
        recorded = {row[0]: row[1:] for row in self.raw_command_rows(info.id)}
        out = np.zeros((len(steps), 2), dtype=np.float32)
        for i, s in enumerate(steps):
            if s.step in recorded:
                out[i] = recorded[s.step]
            elif 0 <= s.action < len(table):
                out[i] = (table[s.action].steering, table[s.action].throttle)
            else:
                return None  # no command can be named for this step
        return out

    # -- maintenance -----------------------------------------------------------

    def delete_episode(self, episode_id: int, *, force: bool = False) -> int:
        """Delete an episode and its steps in one transaction; returns the steps deleted.

        A running episode is refused unless ``force``: a recorder is probably still
        writing it.
        """
        with _db_errors(self.path), self._transaction():
            info = self.episode(episode_id)
            if info.running and not force:
                raise EpisodeRunning(
                    f"episode {episode_id} is still being recorded (outcome 'running'); "
                    "end it first, or force the delete"
                )
            n = self._conn.execute("DELETE FROM steps WHERE episode_id = ?", (episode_id,)).rowcount
            if self._has_commands:
                self._conn.execute("DELETE FROM step_commands WHERE episode_id = ?", (episode_id,))
            self._conn.execute("DELETE FROM episodes WHERE id = ?", (episode_id,))
        with _db_errors(self.path):
            self._conn.execute("PRAGMA incremental_vacuum")  # give the freed pages back
        log.debug("deleted episode %d (%d steps) from %s", episode_id, n, self.path)
        return n

    def set_outcome(
        self,
        episode_id: int,
        outcome: str,
        final_reward: float | None = None,
        *,
        force: bool = False,
    ) -> None:
        """Mark a past episode's outcome, optionally with a terminal reward on its last step.

        ``final_reward`` replaces any earlier one (setting it twice does not add up);
        None keeps the current one. A running episode is refused unless ``force``:
        use ``Recorder.end_episode`` for the episode being recorded.
        """
        _check_outcome(outcome)
        if final_reward is not None and not math.isfinite(final_reward):
            raise ValueError(f"final_reward must be finite, not {final_reward}")
        with _db_errors(self.path), self._transaction():
            info = self.episode(episode_id)
            if info.running and not force:
                raise EpisodeRunning(
                    f"episode {episode_id} is still being recorded; end it through the recorder"
                )
            self.end_episode(episode_id, outcome, time.time(), final_reward, keep_end_time=True)

    def cut_episode(
        self,
        episode_id: int,
        from_step: int,
        to_step: int,
        *,
        new_id: int | None = None,
        new_uuid: str | None = None,
        force: bool = False,
    ) -> CutResult:
        """Remove the steps numbered ``from_step`` <= step < ``to_step`` of an ended episode, in
        one transaction ("tub cleaning"). Every episode stays one contiguous sequence:

        - the steps before the cut (the head) keep the episode's id, uuid and start; when the
          cut took the episode's last step away, the head's end is a truncation: outcome
          ``finished`` if it was ``failed`` (its new last step is not the crash), no
          ``final_reward``, ``ended_at`` its last step's time;
        - the steps after a cut in the middle become a new episode (id ``new_id``, by default
          the next free one; a new uuid), numbered from 0, started at its first step, with the
          episode's ending (outcome, final reward, end time);
        - with no head (a cut from the start), the rest keeps the id and uuid, renumbered
          from 0 and started at its first step.

        Gaps (dropped steps) inside a piece are kept; an expert-label list in the config
        (``trainer_labels``) is shifted with the numbering. ValueError for an empty range, a
        range holding no step, or one holding every step (delete the episode instead);
        NoSuchEpisode, EpisodeRunning (unless ``force``) as the names say.
        """
        if not 0 <= from_step < to_step:
            raise ValueError(
                f"the cut must have 0 <= from_step < to_step, not [{from_step}, {to_step})"
            )
        with _db_errors(self.path), self._transaction():
            info = self.episode(episode_id)
            if info.running and not force:
                raise EpisodeRunning(
                    f"episode {episode_id} is still being recorded; cut it once it has ended"
                )
            q = self._conn.execute
            steps = q(
                "SELECT step, capture_time, action_time FROM steps WHERE episode_id = ? "
                "ORDER BY step",
                (episode_id,),
            ).fetchall()
            head = [r for r in steps if r[0] < from_step]
            tail = [r for r in steps if r[0] >= to_step]
            removed = len(steps) - len(head) - len(tail)
            if not removed:
                held = f"steps {steps[0][0]}-{steps[-1][0]}" if steps else "no steps"
                raise ValueError(
                    f"episode {episode_id} has no step in [{from_step}, {to_step}) (it has {held})"
                )
            if not head and not tail:
                raise ValueError(
                    f"the cut [{from_step}, {to_step}) holds every step of episode {episode_id}: "
                    "delete the episode instead"
                )
            # Recorded motor commands follow their steps (deleted, moved, renumbered alike).
            tables = ("steps", "step_commands") if self._has_commands else ("steps",)
            for t in tables:
                q(
                    f"DELETE FROM {t} WHERE episode_id = ? AND step >= ? AND step < ?",
                    (episode_id, from_step, to_step),
                )
            new_episode = None
            if tail:
                first, first_capture = tail[0][0], tail[0][1]
                config = _shift_labels(info.config, first)
                started = (info.wall_time(first_capture), first_capture)
            if head and tail:
                new_episode = new_id if new_id is not None else self.next_episode_id()
                if q("SELECT 1 FROM episodes WHERE id = ?", (new_episode,)).fetchone():
                    raise StoreError(f"{self.path}: episode id {new_episode} is taken")
                self.insert_episode(
                    new_episode, new_uuid or str(uuidlib.uuid4()), *started, config,
                    info.action_table, info.policy_version,
                    f"steps {first}-{tail[-1][0]} of episode {episode_id} ({info.uuid}), "
                    f"after a cut of [{from_step}, {to_step})",
                    outcome=info.outcome, ended_at=info.ended_at, final_reward=info.final_reward,
                )  # fmt: skip
                for t in tables:
                    q(
                        f"UPDATE {t} SET episode_id = ?, step = step - ? "
                        "WHERE episode_id = ? AND step >= ?",
                        (new_episode, first, episode_id, to_step),
                    )
            elif tail:  # no head: the rest keeps the id, renumbered from 0
                if first:
                    # Two passes, so that no row ever takes a number another still holds.
                    top = tail[-1][0] + 1
                    for t in tables:
                        q(f"UPDATE {t} SET step = step + ? WHERE episode_id = ?", (top, episode_id))
                        q(
                            f"UPDATE {t} SET step = step - ? WHERE episode_id = ?",
                            (top + first, episode_id),
                        )
                q(
                    "UPDATE episodes SET started_at = ?, started_mono = ?, config = ? WHERE id = ?",
                    (*started, json.dumps(config, sort_keys=True, default=str), episode_id),
                )
            if (
                head
            ):  # the head lost the episode's end (it ends at the cut, or the cut took the end)
                outcome = "finished" if info.outcome == "failed" else info.outcome
                q(
                    "UPDATE episodes SET outcome = ?, ended_at = ?, final_reward = NULL "
                    "WHERE id = ?",
                    (outcome, info.wall_time(head[-1][2]), episode_id),
                )
        with _db_errors(self.path):
            self._conn.execute("PRAGMA incremental_vacuum")  # give the freed pages back
        log.debug(
            "cut [%d, %d) of episode %d: %d steps removed, tail %s",
            from_step, to_step, episode_id, removed, new_episode,
        )  # fmt: skip
        return CutResult(removed, episode_id, new_episode)

    # -- writes made by the recorder's thread ----------------------------------

    def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def next_episode_id(self) -> int:
        """The id the next episode gets (ids are never reused, even after a delete)."""
        seq = self._conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'episodes'"
        ).fetchone()
        top = self._conn.execute("SELECT max(id) FROM episodes").fetchone()[0]
        return max(seq[0] if seq else 0, top or 0) + 1

    def insert_episode(
        self,
        episode_id: int | None,
        uuid: str,
        started_at: float,
        started_mono: float,
        config: dict[str, Any],
        action_table: ActionTable,
        policy_version: str | None,
        notes: str,
        *,
        outcome: str = "running",
        ended_at: float | None = None,
        final_reward: float | None = None,
    ) -> int:
        cur = self._conn.execute(
            "INSERT INTO episodes (id, uuid, started_at, started_mono, ended_at, outcome, "
            "final_reward, config, action_table, policy_version, notes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                episode_id,
                uuid,
                started_at,
                started_mono,
                ended_at,
                outcome,
                final_reward,
                json.dumps(config, sort_keys=True, default=str),
                json.dumps(action_table.to_list()),
                policy_version,
                notes,
            ),
        )
        return int(cur.lastrowid)

    def insert_steps(self, episode_id: int, rows: list[tuple[Any, ...]]) -> None:
        """Rows of (step, action, source, probs blob, value, reward, done, capture_time,
        action_time, policy_version, jpeg)."""
        self._conn.executemany(
            f"INSERT INTO steps (episode_id, {_STEP_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(episode_id, *row) for row in rows],
        )

    def insert_commands(self, episode_id: int, rows: list[tuple[int, float, float]]) -> None:
        """Rows of (step, steering, throttle): the motor command actually sent at a step, where
        it differs from the action table's entry for the step's action. Inside a transaction."""
        if not self._has_commands:
            raise StoreError(f"{self.path} is opened read-only with schema version 1")
        self._conn.executemany(
            "INSERT INTO step_commands (episode_id, step, steering, throttle) VALUES (?, ?, ?, ?)",
            [(episode_id, *row) for row in rows],
        )

    def end_episode(
        self,
        episode_id: int,
        outcome: str,
        ended_at: float,
        final_reward: float | None = None,
        *,
        keep_end_time: bool = False,
    ) -> bool:
        """Set an episode's outcome; False if there is no such episode."""
        end = "coalesce(ended_at, ?)" if keep_end_time else "?"
        return (
            self._conn.execute(
                f"UPDATE episodes SET outcome = ?, ended_at = {end}, "
                "final_reward = coalesce(?, final_reward) WHERE id = ?",
                (outcome, ended_at, final_reward, episode_id),
            ).rowcount
            > 0
        )

    def recover_interrupted(self) -> list[int]:
        """Mark episodes left 'running' by a dead recorder as 'interrupted'. Call only when
        no recorder is writing this file."""
        with _db_errors(self.path), self._transaction():
            ids = [
                r[0]
                for r in self._conn.execute("SELECT id FROM episodes WHERE outcome = 'running'")
            ]
            for episode_id in ids:
                info = self.episode(episode_id)
                end = info.wall_time(info.last_action_time) if info.step_count else info.started_at
                self.end_episode(episode_id, "interrupted", end)
        for episode_id in ids:
            log.warning("episode %d was not ended (recorder died): marked interrupted", episode_id)
        return ids

    # -- row conversion ----------------------------------------------------------

    def _info(self, row: tuple[Any, ...]) -> EpisodeInfo:
        try:
            config = json.loads(row[7])
            table = ActionTable.from_list(json.loads(row[8]))
        except (ValueError, ActionTableError) as exc:
            raise StoreError(
                f"{self.path}: episode {row[0]} has unreadable metadata: {exc}"
            ) from exc
        return EpisodeInfo(*row[:7], config, table, *row[9:])

    def _step(self, info: EpisodeInfo, row: tuple[Any, ...], decode: bool) -> StoredStep:
        step, action, source, probs, value, reward, done = row[:7]
        last = not info.running and step == info.last_step
        if last and info.final_reward is not None:
            reward += info.final_reward
        frame = None
        if decode:
            try:
                frame = decode_jpeg(row[10])
            except ValueError as exc:
                raise StoreError(
                    f"{self.path}: episode {info.id} step {step}: the frame is damaged ({exc})"
                ) from exc
        return StoredStep(
            episode_id=info.id,
            step=step,
            action=action,
            source=source,
            probs=unpack_probs(probs),
            value=value,
            reward=float(reward),
            done=bool(done) or last,
            capture_time=row[7],
            action_time=row[8],
            policy_version=row[9],
            jpeg=row[10],
            frame=frame,
        )


def _summary_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    names[-2:] = ["steps", "last_step"]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _shift_labels(config: dict[str, Any], first: int) -> dict[str, Any]:
    """The config of a piece whose step ``first`` is renumbered 0: its labels shifted alike."""
    labels = config.get(LABELS_KEY)
    if not isinstance(labels, list) or not first:
        return config
    return {**config, LABELS_KEY: labels[first:]}


def _check_outcome(outcome: str) -> None:
    if outcome not in END_OUTCOMES:
        raise ValueError(f"outcome must be one of {END_OUTCOMES}, not {outcome!r}")
