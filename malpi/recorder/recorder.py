"""The recorder the control loop calls: it never blocks and never touches SQLite.

The control thread only puts items into an in-memory mailbox (O(1) under a
lock that the writer holds for O(1) too). A writer thread takes them, encodes
the frames as JPEG and writes them into an open transaction that it commits
at least every ``commit_interval`` seconds (0.5 s): a step recorded at time t
is on disk, fsynced, by about t + 0.5 s, so a power cut loses at most the last
second, and SQLite's WAL makes sure it never corrupts the file.

Only steps can be dropped: when ``queue_size`` steps are waiting (the disk is
slower than the loop), a new step is counted in ``stats.steps_dropped``,
logged (rate-limited) and discarded, leaving a visible gap in the step
indices. Episode starts and ends are never dropped. An episode is written with
its first step: one that ends without any (a daemon booted paused and stopped,
a reset while paused) leaves no row in the database.

One recorder writes a file at a time (it holds a lock on ``<db>.lock``);
any number of readers may read it meanwhile.

If the writer fails (disk full, I/O error) it stops and the exception is in
``recorder.error``; ``record()`` then drops. The daemon polls ``error`` and
decides what to do (stop the car, or drive on without recording).

Typical use::

    rec = Recorder("episodes.sqlite")
    ep = rec.start_episode(EpisodeMeta(action_table=table, config=cfg, policy_version="7"))
    rec.record(Step(frame.image, action, "policy", frame.timestamp, time.monotonic(),
                    probs=p, value=v, reward=r, policy_version="7"))
    rec.end_episode("finished")
    rec.close()
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable
from malpi.recorder.codec import DEFAULT_JPEG_QUALITY, check_frame, encode_jpeg, pack_probs
from malpi.recorder.schema import END_OUTCOMES, SOURCES, StoreError
from malpi.recorder.store import EpisodeStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeMeta:
    """What is known about an episode when it starts."""

    action_table: ActionTable
    config: dict[str, Any] = field(default_factory=dict)  # the effective configuration
    policy_version: str | None = None
    notes: str = ""


@dataclass(frozen=True)
class Step:
    """One control period, as the loop hands it to the recorder.

    The step index is assigned by the recorder (0, 1, ... per episode).
    """

    frame: np.ndarray  # H x W x 3 uint8 RGB: what the policy saw
    action: int  # index into the episode's action table: what the car did
    source: str  # "human" | "policy" | "intervention"
    capture_time: float  # Frame.timestamp (time.monotonic() at capture)
    action_time: float  # time.monotonic() when the action reached the drivetrain
    probs: np.ndarray | Sequence[float] | None = None  # the policy's action probabilities
    value: float | None = None  # the policy's value estimate
    reward: float = 0.0
    done: bool = False  # the environment ended the episode at this step
    policy_version: str | None = None  # the policy that computed probs/value


@dataclass
class RecorderStats:
    steps_queued: int = 0
    steps_written: int = 0  # committed to disk
    steps_dropped: int = 0
    queue_depth: int = 0
    commits: int = 0
    episodes_started: int = 0
    last_commit_mono: float | None = None  # time.monotonic() of the last commit


@dataclass(frozen=True)
class _Start:
    episode_id: int
    uuid: str
    started_at: float
    started_mono: float
    meta: EpisodeMeta


@dataclass(frozen=True)
class _End:
    episode_id: int
    outcome: str
    ended_at: float
    final_reward: float | None
    after_the_fact: bool = False  # an earlier episode: keep its recorded end time


@dataclass(frozen=True)
class _StepItem:
    episode_id: int
    index: int
    step: Step


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


_STOP = object()


class _Mailbox:
    """Ordered items; steps bounded (overflow is refused), control items never refused."""

    def __init__(self, max_steps: int):
        self._cond = threading.Condition()
        self._items: deque[object] = deque()
        self._steps = 0
        self._max_steps = max_steps

    def put_step(self, item: _StepItem) -> bool:
        with self._cond:
            if self._steps >= self._max_steps:
                return False
            self._items.append(item)
            self._steps += 1
            self._cond.notify()
            return True

    def put(self, item: object) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def take(self, timeout: float | None, limit: int) -> list[object]:
        """Up to ``limit`` items, waiting up to ``timeout`` for the first."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            out = []
            while self._items and len(out) < limit:
                item = self._items.popleft()
                if isinstance(item, _StepItem):
                    self._steps -= 1
                out.append(item)
            return out

    @property
    def steps(self) -> int:
        return self._steps


class Recorder:
    """Records episodes into an episode database from a background writer thread."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        queue_size: int = 256,
        commit_interval: float = 0.5,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    ):
        if queue_size < 1 or not commit_interval > 0 or not 1 <= jpeg_quality <= 100:
            raise ValueError("queue_size >= 1, commit_interval > 0 and jpeg_quality in 1..100")
        self.path = Path(db_path)
        self.commit_interval = commit_interval
        self.jpeg_quality = jpeg_quality
        # Setup happens here, in the caller's thread, before the loop runs: create or
        # check the file (errors surface now, not in the thread), close episodes a
        # dead recorder left running, and learn the next id so that start_episode
        # can return it without waiting for the writer.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_for_writing(self.path)
        try:
            with EpisodeStore(self.path, create=True) as store:
                self.recovered_episodes = store.recover_interrupted()
                self._next_id = store.next_episode_id()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._mailbox = _Mailbox(queue_size)
        self._lock = (
            threading.Lock()
        )  # guards the episode state below, for callers on several threads
        self._episode: int | None = None
        self._episode_meta: EpisodeMeta | None = None
        self._step_index = 0
        self._closed = False
        self._error: BaseException | None = None
        self._stats = RecorderStats()
        self._last_drop_log = -math.inf
        # The writer thread's own: episodes started but with no step written yet. An episode's
        # row is inserted with its first step, so one that never gets a step (a daemon booted
        # paused and stopped again) leaves nothing behind.
        self._unwritten: dict[int, _Start] = {}
        self._empty: set[int] = set()  # ended before their first step: never written
        self._thread = threading.Thread(target=self._run, name="malpi-recorder", daemon=True)
        self._thread.start()

    # -- the control thread's side: never blocks -------------------------------

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped the writer, or None while it is healthy."""
        return self._error

    @property
    def episode_id(self) -> int | None:
        """The episode being recorded, or None."""
        return self._episode

    @property
    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
        with self._lock:
            s = RecorderStats(**vars(self._stats))
        s.queue_depth = self._mailbox.steps
        return s

    @property
    def next_episode_id(self) -> int:
        return self._next_id

    def reserve_episode_id(self) -> int:
        """An id no episode started here will get (for one written by someone else: a cut)."""
        with self._lock:
            episode_id = self._next_id
            self._next_id += 1
        return episode_id

    def start_episode(
        self,
        meta: EpisodeMeta,
        *,
        episode_id: int | None = None,
        uuid: str | None = None,
        started: tuple[float, float] | None = None,
    ) -> int:
        """Begin a new episode and return its id. An episode still open is ended as 'aborted'.

        ``episode_id``, ``uuid`` and ``started`` (wall, monotonic) are chosen here unless given
        (the daemon's control process chooses them and this recorder runs in another process);
        a given id must not be below :attr:`next_episode_id`.
        """
        if not isinstance(meta.action_table, ActionTable):
            raise TypeError("EpisodeMeta.action_table must be an ActionTable")
        # Freeze the configuration now: the caller may change its dict after we return.
        meta = replace(meta, config=json.loads(json.dumps(meta.config, default=str)))
        with self._lock:
            self._check_open()
            if episode_id is not None and episode_id < self._next_id:
                raise ValueError(f"episode id {episode_id} is taken (next free: {self._next_id})")
            if self._episode is not None:
                self._end_locked("aborted", None)
            episode_id = self._next_id if episode_id is None else episode_id
            self._next_id = episode_id + 1
            self._episode, self._episode_meta, self._step_index = episode_id, meta, 0
            self._stats.episodes_started += 1
            wall, mono = started or (time.time(), time.monotonic())
            self._mailbox.put(_Start(episode_id, uuid or str(uuidlib.uuid4()), wall, mono, meta))
        return episode_id

    def record(self, step: Step, index: int | None = None) -> int | None:
        """Queue a step of the current episode; returns its step index, or None if dropped.

        ``index`` is the step's number when the caller keeps count (steps it dropped leave
        gaps); by default steps are numbered here. Never blocks and never does I/O. Raises
        ValueError for a malformed step and RuntimeError without a current episode (both
        are bugs in the caller).
        """
        with self._lock:
            if self._episode is None:
                if self._closed:
                    self._drop("the recorder is closed")
                    return None
                raise RuntimeError("record() without an episode: call start_episode() first")
            meta = self._episode_meta
            assert meta is not None
            _check_step(step, len(meta.action_table))
            if index is None:
                index = self._step_index
            elif index < self._step_index:
                raise ValueError(f"step {index} comes after step {self._step_index - 1}")
            self._step_index = index + 1
            if self._error is not None:
                self._drop("the writer has failed")
                return None
            # The loop's frame buffer may be reused by the camera: keep our own copy.
            item = _StepItem(self._episode, index, _own(step))
            if not self._mailbox.put_step(item):
                self._drop("the write queue is full")
                return None
            self._stats.steps_queued += 1
            return index

    def end_episode(
        self, outcome: str = "finished", final_reward: float | None = None
    ) -> int | None:
        """End the current episode (no-op without one); returns its id.

        ``final_reward`` is added to the last step's reward by readers (a terminal
        penalty or bonus); outcome 'failed' makes that step terminal.
        """
        _check_outcome(outcome, final_reward)
        with self._lock:
            episode_id = self._episode
            if episode_id is not None:
                self._end_locked(outcome, final_reward)
        return episode_id

    def set_outcome(self, episode_id: int, outcome: str, final_reward: float | None = None) -> None:
        """Set the outcome (and final reward) of the current or an earlier episode, in order
        with the steps still queued. For the current episode this ends it."""
        _check_outcome(outcome, final_reward)
        with self._lock:
            self._check_open()
            if episode_id == self._episode:
                self._end_locked(outcome, final_reward)
            else:
                self._mailbox.put(_End(episode_id, outcome, time.time(), final_reward, True))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed; False on time-out or writer error.

        Blocks: not for the control thread.
        """
        if self._error is not None or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._mailbox.put(_Flush(done))
        return done.wait(timeout) and self._error is None

    def close(self, timeout: float = 10.0, outcome: str = "finished") -> None:
        """End the current episode (as ``outcome``), write everything queued, stop the writer.

        ``outcome`` may also be 'interrupted': the daemon died with the episode running. Safe
        to call more than once. Raises nothing; check ``error`` afterwards.
        """
        with self._lock:
            if self._closed:
                return
            if self._episode is not None:
                self._end_locked(outcome, None)
            self._closed = True
            self._mailbox.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("recorder writer did not finish within %.1f s", timeout)
        else:
            os.close(self._lock_fd)  # another recorder may open the file now

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the recorder is closed")

    def _end_locked(self, outcome: str, final_reward: float | None) -> None:
        assert self._episode is not None
        self._mailbox.put(_End(self._episode, outcome, time.time(), final_reward))
        self._episode = self._episode_meta = None

    def _drop(self, why: str) -> None:
        self._stats.steps_dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= 5.0:  # rate-limited: logging must not slow the loop
            self._last_drop_log = now
            log.warning(
                "recorder dropped a step (%s); %d dropped so far", why, self._stats.steps_dropped
            )

    def _run(self) -> None:
        store: EpisodeStore | None = None
        flushes: list[threading.Event] = []
        written = 0  # steps in the open transaction
        txn_start: float | None = None
        try:
            store = EpisodeStore(self.path)
            while True:
                timeout = None
                if txn_start is not None:
                    timeout = max(0.0, txn_start + self.commit_interval - time.monotonic())
                stop = False
                for item in self._mailbox.take(timeout, limit=64):
                    if item is _STOP:
                        stop = True
                        break
                    if isinstance(item, _Flush):
                        flushes.append(item.done)
                        continue
                    if txn_start is None:
                        store.begin()
                        txn_start = time.monotonic()
                    written += self._write(store, item)
                if txn_start is not None and (
                    stop or flushes or time.monotonic() - txn_start >= self.commit_interval
                ):
                    store.commit()
                    txn_start = None
                    with self._lock:
                        self._stats.steps_written += written
                        self._stats.commits += 1
                        self._stats.last_commit_mono = time.monotonic()
                    written = 0
                for done in flushes:
                    done.set()
                flushes.clear()
                if stop:
                    return
        except BaseException as exc:  # observable, so the daemon can fail safe
            self._error = exc
            log.exception("recorder writer failed; recording has stopped")
            if store is not None:
                try:
                    store.rollback()
                except Exception:
                    log.debug("rollback after the failure failed too", exc_info=True)
        finally:
            if store is not None:
                store.close()

    def _write(self, store: EpisodeStore, item: object) -> int:
        if isinstance(item, _StepItem):
            start = self._unwritten.pop(item.episode_id, None)
            if start is not None:
                self._insert_episode(store, start)
            s = item.step
            jpeg = encode_jpeg(s.frame, self.jpeg_quality)
            store.insert_steps(
                item.episode_id,
                [(item.index, s.action, s.source, pack_probs(s.probs), s.value, s.reward,
                  int(s.done), s.capture_time, s.action_time, s.policy_version, jpeg)],
            )  # fmt: skip
            return 1
        if isinstance(item, _Start):
            self._unwritten[item.episode_id] = item  # written with its first step
        elif isinstance(item, _End):
            if self._unwritten.pop(item.episode_id, None) is not None:
                self._empty.add(item.episode_id)
                log.debug("episode %d ended without a step: not kept", item.episode_id)
                return 0
            if item.episode_id in self._empty:
                return 0
            found = store.end_episode(
                item.episode_id, item.outcome, item.ended_at, item.final_reward,
                keep_end_time=item.after_the_fact,
            )  # fmt: skip
            if not found:
                log.warning("set_outcome: there is no episode %d", item.episode_id)
        return 0

    @staticmethod
    def _insert_episode(store: EpisodeStore, start: _Start) -> None:
        m = start.meta
        store.insert_episode(
            start.episode_id, start.uuid, start.started_at, start.started_mono, m.config,
            m.action_table, m.policy_version, m.notes,
        )  # fmt: skip


def _lock_for_writing(path: Path) -> int:
    """Hold an exclusive lock on ``<db>.lock`` while this recorder lives.

    One writer per file: a second recorder would take the same episode ids and
    mark the first one's episode as interrupted. The kernel drops the lock when
    the process dies, however it dies, so a crash never leaves it stale.
    """
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(
            f"{path} is already being recorded by another recorder (process {holder})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _own(step: Step) -> Step:
    probs = None if step.probs is None else np.array(step.probs, dtype=np.float32)
    return Step(
        frame=step.frame.copy(),
        action=int(step.action),
        source=step.source,
        capture_time=float(step.capture_time),
        action_time=float(step.action_time),
        probs=probs,
        value=None if step.value is None else float(step.value),
        reward=float(step.reward),
        done=bool(step.done),
        policy_version=step.policy_version,
    )


def _check_step(step: Step, n_actions: int) -> None:
    check_frame(step.frame)
    if isinstance(step.action, bool) or not isinstance(step.action, int | np.integer):
        raise ValueError(f"action must be an int, not {step.action!r}")
    if not 0 <= step.action < n_actions:
        raise ValueError(f"action {step.action} is outside the table of {n_actions}")
    if step.source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {step.source!r}")
    if step.probs is not None and len(step.probs) != n_actions:
        raise ValueError(f"probs has {len(step.probs)} entries; the action table has {n_actions}")
    if not math.isfinite(step.reward):
        raise ValueError(f"reward must be finite, not {step.reward}")


def _check_outcome(outcome: str, final_reward: float | None) -> None:
    if outcome not in END_OUTCOMES:
        raise ValueError(f"outcome must be one of {END_OUTCOMES}, not {outcome!r}")
    if final_reward is not None and not math.isfinite(final_reward):
        raise ValueError(f"final_reward must be finite, not {final_reward}")
