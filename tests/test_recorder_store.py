"""The episode database: delete, export, and refusing files that are not (or no longer) one."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from recorder_helpers import check_stored, meta_for, step_for

from malpi.actions import DEFAULT_ACTIONS
from malpi.recorder import (
    SCHEMA_VERSION,
    EpisodeStore,
    NotAMalpiDatabase,
    Recorder,
    SchemaVersionError,
    StoreError,
)
from malpi.recorder.codec import decode_jpeg
from malpi.recorder.export import export_episode


@pytest.fixture
def db(tmp_path):
    """Three ended episodes of 6, 4 and 5 steps; the second failed with a final penalty."""
    path = tmp_path / "episodes.sqlite"
    with Recorder(path) as rec:
        for n, outcome in ((6, "finished"), (4, "failed"), (5, "aborted")):
            ep = rec.start_episode(meta_for(n))
            for i in range(n):
                rec.record(step_for(ep, i))
            rec.end_episode(outcome, final_reward=-3.0 if outcome == "failed" else None)
    return path


def test_delete_removes_the_episode_and_its_steps_only(db):
    with EpisodeStore(db) as store:
        assert store.delete_episode(2) == 4
        assert [e.id for e in store.episodes()] == [1, 3]
        assert store.count_steps() == 11
        assert (
            store._conn.execute("SELECT count(*) FROM steps WHERE episode_id = 2").fetchone()[0]
            == 0
        )
        for ep, n in ((1, 6), (3, 5)):
            for s in store.iter_steps(ep):
                check_stored(s, ep, s.step, last=s.step == n - 1)
        with pytest.raises(StoreError, match="has no episode 2"):
            store.delete_episode(2)
        assert store.integrity_check() == "ok"


def test_delete_is_atomic(db, monkeypatch):
    """If deleting the episode row fails, its steps are not gone either."""
    with EpisodeStore(db) as store:
        store._conn.execute(
            "CREATE TRIGGER refuse BEFORE DELETE ON episodes BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        with pytest.raises(StoreError, match="no"):
            store.delete_episode(1)
        assert store.count_steps(1) == 6
        store._conn.execute("DROP TRIGGER refuse")


def test_export_to_a_directory(db, tmp_path):
    out = tmp_path / "export" / "ep2"
    with EpisodeStore(db) as store:
        export_episode(store, 2, Path(out))
        stored = list(store.iter_steps(2, decode=False))
    assert sorted(p.name for p in out.iterdir()) == ["episode.json", "frames", "steps.csv"]
    meta = json.loads((out / "episode.json").read_text())
    assert meta["id"] == 2 and meta["outcome"] == "failed" and meta["terminated"] is True
    assert meta["final_reward"] == -3.0 and meta["steps"] == 4
    assert meta["action_table"] == DEFAULT_ACTIONS.to_list()
    assert meta["config"] == {"loop": {"rate_hz": 20}, "hint": 4}
    with open(out / "steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row, s in zip(rows, stored, strict=True):
        want = step_for(2, s.step)
        assert int(row["step"]) == s.step
        assert int(row["action"]) == want.action
        assert row["action_name"] == DEFAULT_ACTIONS[want.action].name
        assert row["source"] == want.source
        assert float(row["reward"]) == s.reward and row["done"] == str(int(s.done))
        assert float(row["capture_time"]) == want.capture_time
        assert [float(row[f"p_{n}"]) for n in DEFAULT_ACTIONS.names] == pytest.approx(want.probs)
        # Frames are the recorded JPEG bytes, unchanged.
        assert (out / row["frame"]).read_bytes() == s.jpeg
    assert float(rows[-1]["reward"]) == step_for(2, 3).reward - 3.0 and rows[-1]["done"] == "1"
    assert decode_jpeg((out / rows[0]["frame"]).read_bytes()).shape == (120, 160, 3)

    with EpisodeStore(db) as store, pytest.raises(StoreError, match="not an empty directory"):
        export_episode(store, 1, Path(out))
    assert len(list(out.parent.iterdir())) == 1  # no half-written leftovers


def test_export_into_another_database(db, tmp_path):
    dest = tmp_path / "desk.sqlite"
    with EpisodeStore(db) as store:
        export_episode(store, 2, Path(dest))
        export_episode(store, 3, Path(dest))
        original = store.episode(2)
        raw = list(store.raw_step_rows(2))
        with pytest.raises(StoreError, match="already holds this episode"):
            export_episode(store, 2, Path(dest))
        with pytest.raises(StoreError, match="is the database the episode is in"):
            export_episode(store, 2, Path(db))
    with EpisodeStore(dest) as copy:
        a, b = copy.episodes()
        assert a.id == 1 and b.id == 2  # new ids in the new file...
        assert a.uuid == original.uuid  # ...same identity
        for field in ("started_at", "ended_at", "outcome", "final_reward", "config", "action_table",
                      "policy_version", "notes", "step_count", "duration"):  # fmt: skip
            assert getattr(a, field) == getattr(original, field), field
        assert list(copy.raw_step_rows(1)) == raw
        for s in copy.iter_steps(1):
            check_stored(s, 2, s.step, last=s.step == 3, final_reward=-3.0)


def test_a_missing_file_is_not_created(tmp_path):
    path = tmp_path / "nope.sqlite"
    with pytest.raises(NotAMalpiDatabase, match="no such episode database"):
        EpisodeStore(path)
    assert not path.exists()
    with pytest.raises(NotAMalpiDatabase, match="is a directory"):
        EpisodeStore(tmp_path)


def test_a_file_that_is_not_sqlite(tmp_path):
    path = tmp_path / "frames.sqlite"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is a JPEG, not a database" * 100)
    with pytest.raises(NotAMalpiDatabase, match="not an SQLite database"):
        EpisodeStore(path)
    with pytest.raises(NotAMalpiDatabase, match="not an SQLite database"):
        Recorder(path)


def test_an_empty_file(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.touch()
    with pytest.raises(NotAMalpiDatabase, match="empty SQLite file"):
        EpisodeStore(path)
    with Recorder(path):  # a recorder initialises it
        pass
    EpisodeStore(path).close()


def test_someone_elses_database(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(NotAMalpiDatabase, match="not a MaLPi episode store .*users"):
        EpisodeStore(path)
    with pytest.raises(NotAMalpiDatabase, match="not a MaLPi episode store"):
        Recorder(path)


def test_a_newer_schema_version(db):
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}.*newer MaLPi"):
        EpisodeStore(db)
    with pytest.raises(SchemaVersionError):
        Recorder(db)


def test_a_damaged_database(db):
    """Pages overwritten on disk: opening may still work, reading says the file is damaged."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    for p in range(1, len(data) // page):
        data[p * page : p * page + 200] = b"\x55" * 200
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged"), EpisodeStore(db) as store:
        store.episodes()
        list(store.iter_steps(1))


def test_read_only(db):
    with EpisodeStore(db, readonly=True) as store:
        assert [e.step_count for e in store.episodes()] == [6, 4, 5]
        for s in store.iter_steps(1):
            check_stored(s, 1, s.step, last=s.step == 5)
        with pytest.raises(StoreError, match="readonly"):
            store.delete_episode(1)
    with EpisodeStore(db) as store:
        assert store.count_steps(1) == 6
    # Reading leaves nothing behind beside the file (no -wal, no -shm).
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name)) == [
        db.name,
        f"{db.name}.lock",
    ]
    with pytest.raises(ValueError, match="cannot be created read-only"):
        EpisodeStore(db, create=True, readonly=True)


# -- cutting steps out of an ended episode ("tub cleaning") --------------------------------


def _raw(store, episode_id):
    return list(store.raw_step_rows(episode_id))


def test_a_cut_in_the_middle_splits_the_episode_in_two_contiguous_ones(db):
    """Episode 2 (4 steps, failed, final reward -3): cutting step 1 leaves step 0 as episode 2
    (a truncation: finished, no final reward) and steps 2-3 as a new episode, renumbered 0-1,
    that keeps the crash (failed, -3) and a consistent clock."""
    with EpisodeStore(db) as store:
        before = store.episode(2)
        rows = _raw(store, 2)
        result = store.cut_episode(2, 1, 2)
        assert (result.removed, result.episode, result.tail) == (1, 2, 4)
        head, tail = store.episode(2), store.episode(4)
        assert head.uuid == before.uuid and head.started_at == before.started_at
        assert (head.outcome, head.final_reward, head.step_count) == ("finished", None, 1)
        assert head.ended_at == pytest.approx(before.wall_time(rows[0][8]))
        assert tail.uuid != before.uuid and len(tail.uuid) == 36
        assert (tail.outcome, tail.final_reward, tail.ended_at) == ("failed", -3.0, before.ended_at)
        assert (tail.step_count, tail.dropped_steps, tail.last_step) == (2, 0, 1)
        assert tail.config == before.config and tail.action_table == before.action_table
        assert "episode 2" in tail.notes and before.uuid in tail.notes
        # The same instant on both clocks: a step's wall time is what it was.
        assert tail.started_mono == rows[2][7]
        assert tail.wall_time(rows[3][7]) == pytest.approx(before.wall_time(rows[3][7]))
        assert _raw(store, 2) == rows[:1]
        assert _raw(store, 4) == [(i, *r[1:]) for i, r in enumerate(rows[2:])]  # as stored
        data = store.load_episode(4)
        assert data.dones.tolist() == [False, True]  # the crash is still the last step
        assert data.rewards[-1] == pytest.approx(rows[3][5] - 3.0)
        assert store.load_episode(2).dones.tolist() == [True]  # an ending, not terminal:
        assert not store.episode(2).terminated  # (finished: the trainer bootstraps)
        assert store.next_episode_id() == 5 and store.integrity_check() == "ok"


def test_cuts_at_either_end_keep_the_id(db):
    from malpi.recorder.store import CutResult

    with EpisodeStore(db) as store:
        first = store.episode(1)
        rows = _raw(store, 1)
        assert store.cut_episode(1, 0, 2) == CutResult(2, 1, None)
        trimmed = store.episode(1)
        assert (trimmed.uuid, trimmed.outcome, trimmed.step_count) == (first.uuid, "finished", 4)
        assert _raw(store, 1) == [(i, *r[1:]) for i, r in enumerate(rows[2:])]
        assert trimmed.started_mono == rows[2][7]
        assert trimmed.started_at == pytest.approx(first.wall_time(rows[2][7]))
        # The end: steps 2-3 of what is left (4 and 5 of the recording).
        assert store.cut_episode(1, 2, 10**6).removed == 2
        end = store.episode(1)
        assert (end.step_count, end.outcome, end.ended_at) == (
            2,
            "finished",
            pytest.approx(first.wall_time(rows[3][8])),
        )
        # A failed episode whose crash is cut away is no longer terminal.
        assert store.cut_episode(2, 3, 4).removed == 1
        assert (store.episode(2).outcome, store.episode(2).final_reward) == ("finished", None)
        # An aborted one stays aborted (the trainer skips it either way).
        store.cut_episode(3, 4, 5)
        assert store.episode(3).outcome == "aborted"
        assert [e.id for e in store.episodes()] == [1, 2, 3]
        assert store.integrity_check() == "ok"


def test_a_cut_keeps_dropped_steps_and_shifts_expert_labels(tmp_path):
    from malpi.recorder.store import LABELS_KEY as STORE_KEY
    from malpi.train.episodes import LABELS_KEY

    assert STORE_KEY == LABELS_KEY
    path = tmp_path / "e.sqlite"
    meta = meta_for(0)
    meta.config[LABELS_KEY] = [i % 3 for i in range(10)]
    with Recorder(path) as rec:
        ep = rec.start_episode(meta)
        for i in (0, 1, 2, 3, 5, 6, 8, 9):  # 4 and 7 dropped
            rec.record(step_for(ep, i), index=i)
        rec.end_episode("finished")
    with EpisodeStore(path) as store:
        result = store.cut_episode(ep, 2, 4)  # steps 2 and 3; the head is 0-1
        assert result.removed == 2
        tail = store.episode(result.tail)
        assert [r[0] for r in _raw(store, result.tail)] == [0, 1, 3, 4]  # 5, 6, 8, 9
        assert tail.dropped_steps == 1
        assert tail.config[LABELS_KEY] == [i % 3 for i in range(5, 10)]
        assert store.episode(ep).config[LABELS_KEY] == meta.config[LABELS_KEY]
        # A head trim renumbers in place; labels follow.
        store.cut_episode(result.tail, 0, 1)
        assert [r[0] for r in _raw(store, result.tail)] == [0, 2, 3]  # 6, 8, 9
        assert store.episode(result.tail).config[LABELS_KEY] == [i % 3 for i in range(6, 10)]


def test_bad_cuts_change_nothing(db):
    from malpi.recorder.store import EpisodeRunning, NoSuchEpisode

    with EpisodeStore(db) as store:
        before = [(e, _raw(store, e.id)) for e in store.episodes()]
        for a, b, match in (
            (3, 3, "from_step < to_step"),
            (4, 2, "from_step < to_step"),
            (-1, 2, "from_step < to_step"),
            (6, 100, r"no step in \[6, 100\) \(it has steps 0-5\)"),
            (0, 6, "every step of episode 1: delete the episode instead"),
            (0, 2**62, "every step"),
        ):
            with pytest.raises(ValueError, match=match):
                store.cut_episode(1, a, b)
        with pytest.raises(NoSuchEpisode, match="no episode 99"):
            store.cut_episode(99, 0, 1)
        with pytest.raises(StoreError, match="id 3 is taken"):
            store.cut_episode(1, 2, 3, new_id=3)
        store._conn.execute("UPDATE episodes SET outcome = 'running' WHERE id = 2")
        with pytest.raises(EpisodeRunning, match="still being recorded"):
            store.cut_episode(2, 0, 1)
        store._conn.execute("UPDATE episodes SET outcome = 'failed' WHERE id = 2")
        assert [(e, _raw(store, e.id)) for e in store.episodes()] == before


def test_a_cut_is_one_transaction(db):
    """If the tail's new episode cannot be written, the deleted steps are back too."""
    with EpisodeStore(db) as store:
        before = _raw(store, 1)
        store._conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON episodes BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        with pytest.raises(StoreError, match="no"):
            store.cut_episode(1, 2, 3)
        assert _raw(store, 1) == before and store.episode(1).outcome == "finished"


def test_a_cut_episode_trains_as_contiguous_sequences(db):
    from malpi.train.episodes import read_store

    with EpisodeStore(db) as store:
        store.cut_episode(1, 2, 4)
    episodes = {e.origin.rsplit("#")[1]: e for e in read_store(db, DEFAULT_ACTIONS)}
    assert {k: len(e.actions) for k, e in episodes.items()} == {"1": 2, "2": 4, "4": 2}


# -- schema version 2: the motor command actually sent (step_commands) ------------------------


def _add_commands(db, episode_id, rows):
    with EpisodeStore(db) as store:
        store.begin()
        store.insert_commands(episode_id, rows)
        store.commit()


def _table_command(action):
    a = DEFAULT_ACTIONS[action]
    return [a.steering, a.throttle]


def test_commands_are_recorded_ones_else_the_action_tables(db):
    _add_commands(db, 1, [(2, -0.25, 0.5), (4, 0.125, 0.375)])
    with EpisodeStore(db, readonly=True) as store:
        data = store.load_episode(1, decode=False)
    assert data.commands.dtype == np.float32 and data.commands.shape == (6, 2)
    for i, step in enumerate(data.steps):
        want = {2: [-0.25, 0.5], 4: [0.125, 0.375]}.get(int(step), _table_command(data.actions[i]))
        np.testing.assert_allclose(data.commands[i], want)


def _make_v1(db):
    """The file as schema version 1 wrote it: no step_commands, user_version 1."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE step_commands")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_version_1_file_reads_read_only_and_upgrades_when_opened_writable(db):
    _make_v1(db)
    with EpisodeStore(db, readonly=True) as store:
        data = store.load_episode(2, decode=False)
        np.testing.assert_allclose(data.commands, [_table_command(a) for a in data.actions])
        assert store.raw_command_rows(2) == []
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # reading changed nothing
    conn.close()
    with EpisodeStore(db) as store:
        assert store.count_steps() == 15
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert conn.execute("SELECT count(*) FROM step_commands").fetchone()[0] == 0
    conn.close()
    _add_commands(db, 2, [(0, 0.5, 0.5)])


def test_a_failed_upgrade_leaves_version_1(db):
    _make_v1(db)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE step_commands (x)")  # in the way: the CREATE TABLE fails
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="cannot upgrade the episode schema to version 2"):
        EpisodeStore(db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


def test_delete_cut_and_copy_carry_the_commands(db, tmp_path):
    _add_commands(db, 1, [(i, i / 10, 0.25) for i in range(6)])
    _add_commands(db, 3, [(1, -0.5, 0.125)])
    with EpisodeStore(db) as store:
        store.delete_episode(3)
        assert (
            store._conn.execute(
                "SELECT count(*) FROM step_commands WHERE episode_id = 3"
            ).fetchone()[0]
            == 0
        )
        # A cut in the middle: the tail's commands move with its steps, renumbered.
        result = store.cut_episode(1, 2, 3)
        assert store.raw_command_rows(1) == [(0, 0.0, 0.25), (1, 0.1, 0.25)]
        assert store.raw_command_rows(result.tail) == [
            (0, 0.3, 0.25), (1, 0.4, 0.25), (2, 0.5, 0.25)
        ]  # fmt: skip
        # A cut from the start: renumbered in place.
        store.cut_episode(result.tail, 0, 1)
        assert store.raw_command_rows(result.tail) == [(0, 0.4, 0.25), (1, 0.5, 0.25)]
        tail = result.tail
        np.testing.assert_allclose(
            store.load_episode(tail, decode=False).commands, [[0.4, 0.25], [0.5, 0.25]]
        )
        assert store.integrity_check() == "ok"
    out = tmp_path / "copy.sqlite"
    with EpisodeStore(db, readonly=True) as store:
        export_episode(store, tail, out)
        new_id = 1  # the first episode of the new file
    with EpisodeStore(out, readonly=True) as copy:
        assert copy.raw_command_rows(new_id) == [(0, 0.4, 0.25), (1, 0.5, 0.25)]
