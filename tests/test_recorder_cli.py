"""``malpi episodes list|show|delete|export``."""

from __future__ import annotations

import json
import sqlite3

import pytest
from recorder_helpers import meta_for, run_cli, step_for

from malpi.recorder import EpisodeStore, Recorder


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "episodes.sqlite"
    with Recorder(path) as rec:
        for n, outcome in ((6, "finished"), (4, "failed")):
            ep = rec.start_episode(meta_for(n))
            for i in range(n):
                rec.record(step_for(ep, i))
            rec.end_episode(outcome, final_reward=-3.0 if outcome == "failed" else None)
    return path


@pytest.fixture
def malpi(monkeypatch, capsys):
    return run_cli(monkeypatch, capsys)


def test_list(malpi, db):
    code, out, _ = malpi("episodes", "list", "--db", str(db))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STARTED", "STEPS", "DROPPED", "DURATION", "HZ", "OUTCOME",
                                "POLICY", "NOTES"]  # fmt: skip
    first, second = lines[1].split(), lines[2].split()
    assert first[0] == "1" and first[3:5] == ["6", "0"] and "finished" in first
    assert second[0] == "2" and second[3] == "4" and "failed" in second and "(-3)" in second
    assert first[5:7] == ["0.1", "s"]  # 5 periods of 20 ms + 4 ms
    assert "bundle-6" in first
    assert lines[-1].startswith("2 episodes, 10 steps")


def test_list_empty(malpi, tmp_path):
    path = tmp_path / "new.sqlite"
    Recorder(path).close()
    assert malpi("episodes", "list", "--db", str(path))[1] == f"no episodes in {path}\n"


def test_show(malpi, db):
    code, out, _ = malpi("episodes", "show", "2", "--db", str(db), "--steps", "3")
    assert code == 0
    fields = {line[:17].strip(): line[17:] for line in out.split("\n\n")[0].splitlines()}
    assert fields["outcome"] == "failed  (terminal)"
    assert fields["final reward"] == "-3 on the last step"
    assert fields["steps"].startswith("4 (0 dropped)")
    sources = [step_for(2, i).source for i in range(4)]
    for name in ("human", "policy", "intervention"):
        assert f"{name} {sources.count(name)}" in fields["sources"]
    assert fields["frames"].startswith("160x120")
    assert fields["frame interval"].startswith("median 20.0 ms")  # what it is, not "period"
    assert fields["config"] == "loop 20 Hz"  # the configuration in brief
    assert max(len(line) for line in out.splitlines()) < 100
    table = out.split("STEP")[1].splitlines()[1:]
    assert len(table) == 3 and table[0].split()[0] == "0"


def test_show_json(malpi, db):
    code, out, _ = malpi("episodes", "show", "2", "--db", str(db), "--steps", "2", "--json")
    assert code == 0
    facts = json.loads(out)
    assert facts["outcome"] == "failed" and facts["final_reward"] == -3
    assert facts["config"] == meta_for(4).config  # all of it
    assert facts["frame_interval_ms"]["median"] == 20.0
    assert [s["step"] for s in facts["steps"]] == [0, 1]


def test_delete(malpi, db):
    code, out, _ = malpi("episodes", "delete", "1", "2", "--db", str(db))
    assert code == 0 and out == "deleted episode 1 (6 steps)\ndeleted episode 2 (4 steps)\n"
    with EpisodeStore(db) as store:
        assert store.episodes() == [] and store.count_steps() == 0


def test_delete_refuses_a_running_episode_without_force(malpi, tmp_path):
    path = tmp_path / "e.sqlite"
    with EpisodeStore(path, create=True) as store:
        store.begin()
        store.insert_episode(None, "u-1", 0.0, 0.0, {}, meta_for().action_table, None, "")
        store.commit()
    code, _, err = malpi("episodes", "delete", "1", "--db", str(path))
    assert code == 1 and "still being recorded" in err
    assert "malpi episodes delete 1 --force" in err
    assert malpi("episodes", "delete", "1", "--force", "--db", str(path))[0] == 0


def test_export(malpi, db, tmp_path):
    out_dir = tmp_path / "ep1"
    code, out, _ = malpi("episodes", "export", "1", "--db", str(db), "--out", str(out_dir))
    assert code == 0 and "exported episode 1 (6 steps)" in out
    assert json.loads((out_dir / "episode.json").read_text())["steps"] == 6
    assert len(list((out_dir / "frames").iterdir())) == 6
    dest = tmp_path / "copy.sqlite"
    code, out, _ = malpi("episodes", "export", "2", "--db", str(db), "--out", str(dest))
    assert code == 0 and out == f"copied episode 2 into {dest} as episode 1\n"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such episode database"),
        (lambda p: p.write_bytes(b"garbage" * 1000), "not an SQLite database"),
        (lambda p: _other_db(p), "not a MaLPi episode store"),
        (lambda p: _versioned(p, 42), "schema version 42, written by a newer MaLPi"),
    ],
)
def test_clear_errors_name_the_file_and_the_problem(malpi, tmp_path, make, message):
    path = tmp_path / "x.sqlite"
    make(path)
    for argv in (
        ("list",),
        ("show", "1"),
        ("delete", "1"),
        ("export", "1", "--out", str(tmp_path / "o")),
    ):
        code, out, err = malpi("episodes", *argv, "--db", str(path))
        assert code == 1 and out == ""
        assert err.startswith("malpi: error: ") and str(path) in err and message in err


def test_unknown_episode(malpi, db):
    code, _, err = malpi("episodes", "show", "9", "--db", str(db))
    assert code == 1 and "has no episode 9" in err


def _other_db(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tracks (x)")
    conn.commit()
    conn.close()


def _versioned(path, version):
    Recorder(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
