"""``malpi episodes import-donkey``: tubs written by DonkeyCar's own writers (tests/data/donkey-tub,
made by tools/make-donkey-tub.py) into the episode database, and what bad tubs get."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from extras import needs_tf

from malpi.actions import DEFAULT_ACTIONS
from malpi.cli import main
from malpi.recorder import EpisodeStore
from malpi.recorder.codec import decode_jpeg, encode_jpeg
from malpi.recorder.donkey import nearest_actions
from malpi.recorder.donkey_tub import jpeg_size, read_tub

TUBS = Path(__file__).parent / "data" / "donkey-tub"
V2, V1 = TUBS / "v2", TUBS / "v1"
TINY = Path(__file__).parent / "data" / "tiny-a.malpi"  # a policy taking 48x64 frames


def _catalog(tub: Path = V2) -> list[dict]:
    return [json.loads(line) for line in (tub / "catalog_0.catalog").read_text().splitlines()]


def _deleted(tub: Path = V2) -> list[int]:
    return json.loads((tub / "manifest.json").read_text().splitlines()[4])["deleted_indexes"]


def _import(capsys, *args: object) -> str:
    assert main(["episodes", "import-donkey", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_a_tub_v2_becomes_one_episode_per_session(tmp_path, capsys):
    db = tmp_path / "donkey.sqlite"
    out = _import(capsys, V2, "--out", db, "--policy", TINY)
    assert "2 episodes (48 steps, frames 64x48)" in out and "2 deleted records left out" in out
    records = _catalog()
    deleted = _deleted()
    assert deleted == [3, 30]
    kept = [r for r in records if r["_index"] not in deleted]
    sessions = sorted({r["_session_id"] for r in records})
    with EpisodeStore(db, readonly=True) as store:
        episodes = store.episodes()
        assert len(episodes) == len(sessions) == 2
        for info, session in zip(episodes, sessions, strict=True):
            rows = [r for r in kept if r["_session_id"] == session]
            data = store.load_episode(info.id)
            assert info.outcome == "finished" and info.config["donkeycar"]["session"] == session
            assert info.config["loop"]["rate_hz"] == 20.0  # measured: ~50 ms between records
            assert data.steps.tolist() == list(range(len(rows)))  # consecutive, deleted left out
            times = [r["_timestamp_ms"] / 1000 for r in rows]
            np.testing.assert_allclose(data.capture_times, times)
            assert info.started_at == pytest.approx(times[0])
            assert data.frames.shape == (len(rows), 48, 64, 3)
            # The command DonkeyCar sent: the user's in user mode, the pilot's angle in
            # local_angle (the user's throttle), the pilot's both in local.
            sent = [
                (r["user/angle"], r["user/throttle"]) if r["user/mode"] == "user"
                else (r["pilot/angle"], r["user/throttle"]) if r["user/mode"] == "local_angle"
                else (r["pilot/angle"], r["pilot/throttle"])
                for r in rows
            ]  # fmt: skip
            np.testing.assert_allclose(data.commands, sent, rtol=1e-6)
            assert (
                data.actions.tolist() == nearest_actions(np.array(sent), DEFAULT_ACTIONS).tolist()
            )
            source = {"user": "human", "local_angle": "policy", "local": "policy"}
            assert data.sources.tolist() == [source[r["user/mode"]] for r in rows]
            assert np.isnan(data.probs).all() and np.isnan(data.values).all()
    # The deleted records' frames are not there: every stored frame is a kept record's.
    first = store_frame(db, 1, 3)  # step 3 of session 0 is record 4 (record 3 is deleted)
    assert _close(first, _tub_frame(V2 / "images" / records[4]["cam/image_array"], (48, 64)))


def store_frame(db: Path, episode: int, step: int) -> np.ndarray:
    with EpisodeStore(db, readonly=True) as store:
        return next(s.frame for s in store.iter_steps(episode) if s.step == step)


def _tub_frame(path: Path, image: tuple[int, int]) -> np.ndarray:
    import cv2

    rgb = decode_jpeg(path.read_bytes())
    return cv2.resize(rgb, image[::-1], interpolation=cv2.INTER_AREA)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.mean(np.abs(a.astype(float) - b.astype(float)))) < 4.0


def test_the_actions_are_the_nearest_and_the_signs_agree():
    # DonkeyCar's angle -1 is full left, as MaLPi's steering -1: no flip.
    cmds = np.array([[-1.0, 0.5], [-0.3, 0.6], [0.0, 0.0], [0.3, 0.6], [1.0, 0.5], [0.0, -1.0]])
    names = [DEFAULT_ACTIONS[i].name for i in nearest_actions(cmds, DEFAULT_ACTIONS)]
    assert names == ["hard_left", "left", "straight", "right", "hard_right", "straight"]


def test_the_default_policy_keeps_donkeycars_160x120(tmp_path, capsys):
    db = tmp_path / "d.sqlite"
    _import(capsys, V2, "--out", db)
    with EpisodeStore(db, readonly=True) as store:
        data = store.load_episode(1)
    assert data.frames.shape[1:] == (120, 160, 3)
    record = _catalog()[0]
    assert _close(
        data.frames[0], decode_jpeg((V2 / "images" / record["cam/image_array"]).read_bytes())
    )


def test_a_reimport_adds_nothing(tmp_path, capsys):
    db = tmp_path / "d.sqlite"
    _import(capsys, V2, "--out", db, "--policy", TINY)
    with EpisodeStore(db, readonly=True) as store:
        uuids = [e.uuid for e in store.episodes()]
    # Again, from a copy elsewhere (the identity is the tub's, not its path), and twice.
    copy = tmp_path / "copy"
    shutil.copytree(V2, copy)
    out = _import(capsys, copy, V2, "--out", db, "--policy", TINY)
    assert "0 episodes" in out and "4 already imported, left as they are" in out
    assert out.count("already there as episode") == 4
    with EpisodeStore(db, readonly=True) as store:
        assert [e.uuid for e in store.episodes()] == uuids
        assert store.count_steps() == 48


def test_a_tub_v1(tmp_path, capsys):
    db = tmp_path / "d.sqlite"
    out = _import(capsys, V1, "--out", db, "--policy", TINY)
    assert "1 episodes (9 steps" in out and "1 deleted records left out" in out
    meta = json.loads((V1 / "meta.json").read_text())
    excluded = json.loads((V1 / "exclude.json").read_text())
    kept = [i for i in range(1, 11) if i not in excluded]
    rows = [json.loads((V1 / f"record_{i}.json").read_text()) for i in kept]
    with EpisodeStore(db, readonly=True) as store:
        (info,) = store.episodes()
        data = store.load_episode(info.id)
    assert info.config["donkeycar"]["tub_version"] == 1
    np.testing.assert_allclose(
        data.capture_times, [meta["start"] + r["milliseconds"] / 1000 for r in rows]
    )
    np.testing.assert_allclose(data.commands[:, 0], [r["user/angle"] for r in rows], rtol=1e-6)
    assert set(data.sources.tolist()) == {"human"}


def test_the_commands_travel_with_a_copy(tmp_path, capsys):
    """The commands travel with the episode through a copy into another database."""
    db = tmp_path / "d.sqlite"
    _import(capsys, V2, "--out", db, "--policy", TINY)
    other = tmp_path / "other.sqlite"
    assert main(["episodes", "export", "1", "--db", str(db), "--out", str(other)]) == 0
    with EpisodeStore(db, readonly=True) as a, EpisodeStore(other, readonly=True) as b:
        assert a.raw_command_rows(1) == b.raw_command_rows(1) != []


# -- bad tubs: a clear error naming the file, and nothing half-applied --------------------


@pytest.fixture
def tub(tmp_path):
    """A copy of the v2 tub as another tub (another creation time: other episode uuids)."""
    path = tmp_path / "tub"
    shutil.copytree(V2, path)
    manifest = path / "manifest.json"
    lines = manifest.read_text().splitlines()
    meta = json.loads(lines[3])
    meta["created_at"] += 1.0
    lines[3] = json.dumps(meta)
    manifest.write_text("\n".join(lines) + "\n")
    return path


def _edit_record(tub: Path, line: int, change) -> None:
    catalog = tub / "catalog_0.catalog"
    lines = catalog.read_text().splitlines()
    lines[line] = change(lines[line])
    catalog.write_text("\n".join(lines) + "\n")


def _set(key, value):
    def change(text):
        record = json.loads(text)
        record[key] = value
        return json.dumps(record)

    return change


def _bomb(path: Path) -> None:
    """A small JPEG whose header claims 10000x10000 pixels (300 MB decoded)."""
    data = bytearray(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = (10000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))
    assert jpeg_size(bytes(data)) == (10000, 10000)


BAD = {
    "no manifest": (lambda t: (t / "manifest.json").unlink(), "not a DonkeyCar tub"),
    "not JSON": (
        lambda t: _edit_record(t, 5, lambda s: s[:40]),
        "catalog_0.catalog line 6: not JSON",
    ),
    "image missing": (
        lambda t: (t / "images" / "7_cam_image_array_.jpg").unlink(),
        "catalog_0.catalog line 8: image .*7_cam_image_array_.jpg is missing",
    ),
    "angle a string": (
        lambda t: _edit_record(t, 9, _set("user/angle", "left")),
        "catalog_0.catalog line 10: user/angle must be a finite number, got 'left'",
    ),
    "angle NaN": (
        lambda t: _edit_record(
            t, 9, lambda s: s.replace('"user/angle": ', '"user/angle": NaN, "x": ')
        ),
        "line 10: user/angle must be a finite number, got nan",
    ),
    "throttle out of range": (
        lambda t: _edit_record(t, 11, _set("user/throttle", 1.5)),
        r"line 12: user/throttle=1.5 is outside \[-1, 1\]",
    ),
    "unknown mode": (
        lambda t: _edit_record(t, 2, _set("user/mode", "autopilot")),
        "line 3: unknown user/mode 'autopilot'",
    ),
    "huge line": (
        lambda t: _edit_record(t, 1, _set("user/extra", "x" * 200_000)),
        "catalog_0.catalog line 2: over 65536 bytes",
    ),
    "path traversal": (
        lambda t: _edit_record(t, 4, _set("cam/image_array", "../../etc/passwd")),
        "line 5: cam/image_array '../../etc/passwd' is not a plain file name",
    ),
    "absolute path": (
        lambda t: _edit_record(t, 4, _set("cam/image_array", "/etc/passwd")),
        "line 5: cam/image_array '/etc/passwd' is not a plain file name",
    ),
    "symlink out": (
        lambda t: (
            (t / "images" / "4_cam_image_array_.jpg").unlink(),
            (t / "images" / "4_cam_image_array_.jpg").symlink_to("/etc/passwd"),
        ),
        "line 5: image .* leads outside",
    ),
    "not a JPEG": (
        lambda t: (t / "images" / "6_cam_image_array_.jpg").write_bytes(
            b"\x89PNG\r\n\x1a\n" + bytes(100)
        ),
        "6_cam_image_array_.jpg: not a JPEG image",
    ),
    "image bomb": (
        lambda t: _bomb(t / "images" / "40_cam_image_array_.jpg"),
        "40_cam_image_array_.jpg: 10000x10000 pixels, over the 4096x4096 limit",
    ),
    "catalog outside": (
        lambda t: (t / "manifest.json").write_text(
            (t / "manifest.json")
            .read_text()
            .replace('"catalog_0.catalog"', '"../catalog_0.catalog"')
        ),
        "manifest.json: a catalog '../catalog_0.catalog' is not a plain file name",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_tub_is_refused_and_nothing_is_applied(case, tub, tmp_path, capsys):
    db = tmp_path / "d.sqlite"
    _import(capsys, V1, "--out", db, "--policy", TINY)  # a database with an episode in it
    before = sqlite3.connect(db).execute("SELECT count(*) FROM steps").fetchone()[0]
    damage, message = BAD[case]
    damage(tub)
    # The good tub first: its sessions were written before the bad one failed, and go too.
    args = ["episodes", "import-donkey", str(V2), str(tub), "--out", str(db)]
    assert main([*args, "--policy", str(TINY)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("malpi: error: ") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    with EpisodeStore(db, readonly=True) as store:
        assert len(store.episodes()) == 1 and store.count_steps() == before
    # And a database that did not exist is not left behind.
    fresh = tmp_path / "fresh.sqlite"
    assert main([*args[:-1], str(fresh), "--policy", str(TINY)]) == 1
    assert not fresh.exists() and not list(tmp_path.glob("fresh.sqlite*"))


def test_an_error_while_writing_rolls_everything_back(tub, tmp_path, capsys):
    """A bad image is found only while converting, after earlier sessions were inserted."""
    db = tmp_path / "d.sqlite"
    _import(capsys, V1, "--out", db, "--policy", TINY)
    last = _catalog()[-1]["cam/image_array"]  # in the second session
    (tub / "images" / last).write_bytes(b"\xff\xd8\xff" + bytes(50))
    assert (
        main(["episodes", "import-donkey", str(tub), "--out", str(db), "--policy", str(TINY)]) == 1
    )
    assert "malpi: error:" in capsys.readouterr().err
    with EpisodeStore(db, readonly=True) as store:
        assert len(store.episodes()) == 1
    assert read_tub(tub).records  # the catalog itself was fine


def test_the_committed_tub_is_what_donkeycar_wrote():
    tub = read_tub(V2)
    assert tub.version == 2 and tub.deleted == 2 and len(tub.records) == 48
    assert tub.metadata == {"made_by": "make-donkey-tub"}
    assert (V2 / "catalog_0.catalog_manifest").exists()


# -- training on an imported tub ----------------------------------------------------------


@needs_tf
def test_malpi_train_bc_trains_on_an_imported_tub(tmp_path, capsys):
    from policy_helpers import TINY_SPEC

    from malpi.policy.bundle import PolicyBundle

    db = tmp_path / "donkey.sqlite"
    _import(capsys, V2, V1, "--out", db, "--policy", TINY)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY_SPEC.to_dict()))
    out = tmp_path / "donkey.malpi"
    args = ["train", "bc", "--data", str(db), "--out", str(out), "--spec", str(spec)]
    args += ["--epochs", "1", "--batch", "2", "--length", "8", "--no-progress", "--no-augment"]
    args += ["--no-integer", "--val-fraction", "0.34"]
    assert main(args) == 0
    bundle = PolicyBundle.load(out)
    assert bundle.spec == TINY_SPEC and bundle.control_hz == 20.0
    assert bundle.manifest["provenance"]["data"] == [str(db)]
