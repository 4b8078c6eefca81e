"""The recorder: rows stored and read back, outcomes, the never-blocking control side, failures."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from recorder_helpers import N_ACTIONS, check_stored, meta_for, step_for

from malpi.actions import DEFAULT_ACTIONS, NO_ACTION
from malpi.recorder import EpisodeMeta, EpisodeStore, Recorder, Step, StoreError
from malpi.recorder import recorder as recorder_module
from malpi.recorder import store as store_module


@pytest.fixture
def db(tmp_path):
    return tmp_path / "episodes.sqlite"


def record_episode(rec: Recorder, n: int, *, with_policy: bool = True, meta_hint: int = 0) -> int:
    ep = rec.start_episode(meta_for(meta_hint))
    for i in range(n):
        assert rec.record(step_for(ep, i, with_policy=with_policy)) == i
    return ep


def test_rows_round_trip(db):
    with Recorder(db) as rec:
        t0 = time.time()
        ep = record_episode(rec, 30, meta_hint=4)
        rec.end_episode("finished")
        t1 = time.time()
        ep2 = record_episode(rec, 5, with_policy=False)
    assert rec.error is None
    assert rec.stats.steps_written == 35 and rec.stats.steps_dropped == 0
    assert rec.stats.commits <= 3  # written in batches, not a commit per step

    with EpisodeStore(db) as store:
        assert store.integrity_check() == "ok"
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        infos = store.episodes()
        assert [i.id for i in infos] == [ep, ep2]
        info = infos[0]
        assert info.outcome == "finished" and not info.terminated and not info.running
        assert info.config == {"loop": {"rate_hz": 20}, "hint": 4}
        assert info.action_table == DEFAULT_ACTIONS
        assert info.policy_version == "bundle-4" and info.notes == "test episode 4"
        assert t0 - 0.01 <= info.started_at <= info.ended_at <= t1 + 0.01
        assert info.step_count == 30 and info.last_step == 29 and info.dropped_steps == 0
        assert info.duration == pytest.approx(29 * 0.02 + 0.004)
        assert len(info.uuid) == 36 and info.uuid != infos[1].uuid
        assert store.count_steps(ep) == 30 and store.count_steps() == 35

        steps = list(store.iter_steps(ep))
        assert len(steps) == 30
        for i, s in enumerate(steps):
            check_stored(s, ep, i, last=i == 29)
        for i, s in enumerate(store.iter_steps(ep2)):
            check_stored(s, ep2, i, last=i == 4, with_policy=False)

        data = store.load_episode(ep)
        assert len(data) == 30 and data.frames.shape == (30, 120, 160, 3)
        assert data.probs.shape == (30, N_ACTIONS) and data.probs.dtype == np.float32
        np.testing.assert_array_equal(data.actions, [step_for(ep, i).action for i in range(30)])
        np.testing.assert_array_equal(data.steps, np.arange(30))
        assert list(data.sources) == [step_for(ep, i).source for i in range(30)]
        assert data.dones.tolist() == [False] * 29 + [True]
        assert data.prev_actions[0] == NO_ACTION
        np.testing.assert_array_equal(data.prev_actions[1:], data.actions[:-1])
        want_logp = [np.log(step_for(ep, i).probs[step_for(ep, i).action]) for i in range(30)]
        np.testing.assert_allclose(data.log_probs, want_logp, rtol=1e-6)
        assert [len(j) for j in data.jpegs] == [len(s.jpeg) for s in steps]

        no_policy = store.load_episode(ep2, decode=False)
        assert no_policy.frames is None
        assert np.isnan(no_policy.probs).all() and np.isnan(no_policy.values).all()
        assert np.isnan(no_policy.log_probs).all()


def test_outcomes_and_final_reward(db):
    with Recorder(db) as rec:
        ep1 = record_episode(rec, 4)
        ep2 = record_episode(rec, 4)  # starting a new episode aborts the open one
        # The operator's "episode failed" arrives while steps may still be queued.
        rec.set_outcome(ep2, "failed", final_reward=-10.0)
        assert rec.episode_id is None
        ep3 = record_episode(rec, 3)
        rec.end_episode("failed", final_reward=-1.0)
        assert rec.flush()
        with EpisodeStore(db) as store:
            ended_before = store.episode(ep1).ended_at
        rec.set_outcome(ep1, "finished", final_reward=2.5)  # an earlier episode, after the fact
    with EpisodeStore(db) as store:
        e1, e2, e3 = store.episodes()
        assert e1.ended_at == ended_before  # when it ended, not when it was judged
        assert (e1.outcome, e1.final_reward) == ("finished", 2.5)
        assert (e2.outcome, e2.final_reward, e2.terminated) == ("failed", -10.0, True)
        assert (e3.outcome, e3.final_reward) == ("failed", -1.0)
        for s in store.iter_steps(ep2):
            check_stored(s, ep2, s.step, last=s.step == 3, final_reward=-10.0)
        # The stored rows themselves are untouched: the adjustment is applied when reading.
        raw = [r[5] for r in store.raw_step_rows(ep2)]
        assert raw == [step_for(ep2, i).reward for i in range(4)]

        # Setting the outcome again replaces the final reward rather than adding to it.
        store.set_outcome(ep2, "failed", final_reward=-5.0)
        store.set_outcome(ep2, "failed", final_reward=-5.0)
        assert store.load_episode(ep2).rewards[-1] == pytest.approx(step_for(ep2, 3).reward - 5.0)
        store.set_outcome(ep3, "aborted")  # None keeps the final reward
        assert store.episode(ep3).final_reward == -1.0
        with pytest.raises(ValueError, match="outcome must be one of"):
            store.set_outcome(ep3, "running")


def test_ids_are_never_reused(db):
    with Recorder(db) as rec:
        a = record_episode(rec, 2)
        b = record_episode(rec, 2)
    with EpisodeStore(db) as store:
        assert store.delete_episode(b) == 2
    with Recorder(db) as rec:
        c = record_episode(rec, 1)
    assert (a, b, c) == (1, 2, 3)
    with EpisodeStore(db) as store:
        assert [e.id for e in store.episodes()] == [1, 3]


def test_an_episode_without_steps_leaves_nothing(db):
    """A daemon booted paused and stopped again, or a reset while paused: no empty episode."""
    with Recorder(db) as rec:
        rec.start_episode(meta_for())  # ended by the next start, without a step
        rec.start_episode(meta_for())
        rec.end_episode("failed", final_reward=-1.0)  # its outcome, too, has nowhere to go
        kept = record_episode(rec, 3)
        rec.start_episode(meta_for())  # open when the recorder closes
    with EpisodeStore(db) as store:
        assert [(e.id, e.step_count) for e in store.episodes()] == [(kept, 3)]


def test_record_rejects_malformed_steps_and_needs_an_episode(db):
    with Recorder(db) as rec:
        with pytest.raises(RuntimeError, match="start_episode"):
            rec.record(step_for(1, 0))
        ep = rec.start_episode(meta_for())
        good = step_for(ep, 0)
        bad = [
            (dict(action=N_ACTIONS), "outside the table"),
            (dict(action=1.0), "must be an int"),
            (dict(source="robot"), "source must be one of"),
            (dict(frame=np.zeros((120, 160), np.uint8)), "H x W x 3"),
            (dict(frame=np.zeros((120, 160, 3), np.float32)), "H x W x 3"),
            (dict(probs=[0.5, 0.5]), "probs has 2 entries"),
            (dict(reward=float("nan")), "reward must be finite"),
        ]
        for change, message in bad:
            with pytest.raises(ValueError, match=message):
                rec.record(Step(**{**vars(good), **change}))
        assert rec.record(good) == 0
        with pytest.raises(ValueError, match="outcome must be one of"):
            rec.end_episode("crashed")
    assert rec.stats.steps_written == 1
    with pytest.raises(RuntimeError, match="closed"):
        rec.start_episode(meta_for())
    assert rec.record(good) is None  # after close: dropped, never raises in the loop


def test_recorder_keeps_its_own_copy_of_the_frame(db):
    with Recorder(db) as rec:
        ep = rec.start_episode(meta_for())
        s = step_for(ep, 0)
        rec.record(s)
        s.frame[...] = 0  # the camera reuses its buffer
    with EpisodeStore(db) as store:
        check_stored(next(store.iter_steps(ep)), ep, 0, last=True)


def test_control_thread_never_blocks_on_a_slow_writer(db, monkeypatch):
    """The disk takes 100 ms per step; the loop records 300 steps as fast as it can.

    A record() that waited for the writer would take >= 100 ms; the thresholds
    below leave room only for scheduling noise on a busy machine (the GIL's
    switch interval is 5 ms).
    """
    real_insert = store_module.EpisodeStore.insert_steps

    def slow_insert(self, episode_id, rows):
        time.sleep(0.1)
        real_insert(self, episode_id, rows)

    monkeypatch.setattr(store_module.EpisodeStore, "insert_steps", slow_insert)
    rec = Recorder(db, queue_size=8)
    ep = rec.start_episode(meta_for())
    steps = [step_for(ep, i) for i in range(300)]
    durations, accepted = [], []
    start = time.perf_counter()
    for step in steps:
        t = time.perf_counter()
        index = rec.record(step)
        durations.append(time.perf_counter() - t)
        if index is not None:
            accepted.append(index)
    total = time.perf_counter() - start
    assert rec.stats.queue_depth <= 8
    rec.close()
    assert rec.error is None
    assert total < 0.5, f"300 record() calls took {total:.2f} s"
    assert max(durations) < 0.05, f"record() took {max(durations) * 1e3:.1f} ms"
    assert np.median(durations) < 0.0005
    stats = rec.stats
    assert stats.steps_dropped > 280  # the writer managed only a handful
    assert stats.steps_written == len(accepted) == 300 - stats.steps_dropped
    with EpisodeStore(db) as store:
        info = store.episode(ep)
        # The dropped steps are visible as gaps in the step indices.
        assert [s.step for s in store.iter_steps(ep, decode=False)] == accepted
        assert info.dropped_steps == info.last_step + 1 - len(accepted)
        for s in store.iter_steps(ep):
            check_stored(s, ep, s.step, last=s.step == info.last_step)


def test_commits_reach_the_disk_within_the_commit_interval(db):
    """A reader on another connection sees each step within ~0.5 s, without any flush()."""
    rec = Recorder(db, commit_interval=0.5)
    ep = rec.start_episode(meta_for())
    reader = EpisodeStore(db)
    lags = []
    try:
        for i in range(3):
            rec.record(step_for(ep, i))
            t = time.monotonic()
            while reader.count_steps(ep) <= i:
                assert time.monotonic() - t < 1.0, "a step was not committed within 1 s"
                time.sleep(0.01)
            lags.append(time.monotonic() - t)
    finally:
        rec.close()
        reader.close()
    assert max(lags) < 0.8
    assert rec.stats.commits >= 3


def test_writer_failure_is_observable_and_record_keeps_going(db, monkeypatch):
    def broken_insert(self, episode_id, rows):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_module.EpisodeStore, "insert_steps", broken_insert)
    rec = Recorder(db)
    ep = rec.start_episode(meta_for())
    assert rec.record(step_for(ep, 0)) == 0
    deadline = time.monotonic() + 2.0
    while rec.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(rec.error, sqlite3.OperationalError)
    assert not rec.flush(timeout=0.5)
    t = time.perf_counter()
    assert rec.record(step_for(ep, 1)) is None  # dropped, no exception in the control loop
    assert time.perf_counter() - t < 0.005
    assert rec.stats.steps_dropped == 1
    rec.close()  # does not raise
    # The failed transaction was rolled back: the file is intact.
    with EpisodeStore(db) as store:
        assert store.integrity_check() == "ok"
        assert store.count_steps() == 0


def test_record_from_several_threads(db):
    """The control loop and, say, a command handler may both touch the recorder."""
    with Recorder(db, queue_size=10_000) as rec:
        ep = rec.start_episode(meta_for())
        indices: list[int] = []
        lock = threading.Lock()

        def worker():
            for _ in range(50):
                i = rec.record(step_for(ep, 0))
                with lock:
                    indices.append(i)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(indices) == list(range(200))
    with EpisodeStore(db) as store:
        assert store.count_steps(ep) == 200


def test_an_episode_left_running_is_marked_interrupted(db):
    rec = Recorder(db)
    ep = record_episode(rec, 5)
    assert rec.flush()
    # Simulate a crash: the writer stops without the episode being ended.
    rec._closed = True
    rec._mailbox.put(recorder_module._STOP)
    rec._thread.join(5)
    os.close(rec._lock_fd)  # what the kernel does when the process dies
    with EpisodeStore(db) as store:
        assert store.episode(ep).running
        with pytest.raises(StoreError, match="still being recorded"):
            store.delete_episode(ep)
    rec2 = Recorder(db)
    assert rec2.recovered_episodes == [ep]
    rec2.close()
    with EpisodeStore(db) as store:
        info = store.episode(ep)
        assert info.outcome == "interrupted"
        assert info.ended_at == pytest.approx(info.wall_time(info.last_action_time))
        assert store.load_episode(ep).dones[-1]


def test_recorder_does_not_import_heavy_libraries():
    code = (
        "import sys; "
        "from malpi.recorder import EpisodeStore, Recorder; "
        "bad = [m for m in ('tensorflow', 'gpiozero', 'zmq', 'keras', 'cv2') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # Registering the command line loads nothing but the CLI module itself.
    code = (
        "import sys, malpi.recorder.cli; "
        "bad = [m for m in ('numpy', 'cv2', 'malpi.recorder.store') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_new_directories_and_a_config_changed_after_the_start(tmp_path):
    db = tmp_path / "state" / "malpi" / "episodes.sqlite"
    config = {"loop": {"rate_hz": 20}}
    with Recorder(db) as rec:
        ep = rec.start_episode(
            EpisodeMeta(action_table=DEFAULT_ACTIONS, config=config, policy_version="p")
        )
        config["loop"]["rate_hz"] = 99  # the daemon reconfigures after the episode started
        rec.record(step_for(ep, 0))
    with EpisodeStore(db) as store:
        assert store.episode(ep).config == {"loop": {"rate_hz": 20}}


def test_one_recorder_per_file(db):
    first = Recorder(db)
    with pytest.raises(
        StoreError, match=f"already being recorded by another recorder \\(process {os.getpid()}\\)"
    ):
        Recorder(db)
    with EpisodeStore(db, readonly=True) as store:  # readers are welcome
        assert store.episodes() == []
    first.close()
    Recorder(db).close()
