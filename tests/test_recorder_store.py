"""The episode database: delete, export, and refusing files that are not (or no longer) one."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

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
