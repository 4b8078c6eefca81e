"""A DonkeyCar owner's path to a LeRobot dataset: a tub DonkeyCar's own writer made, imported
into an episode database, exported as a LeRobotDataset, and read back by readers not MaLPi's
(pyarrow for the parquet, OpenCV's decoder for the video). Training on the imported tub is
tests/test_import_donkey.py's test_malpi_train_bc_trains_on_an_imported_tub."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from test_export_lerobot import CAMERA, check_v3, decode_all, psnr  # noqa: E402

from malpi.cli import main  # noqa: E402
from malpi.recorder import EpisodeStore  # noqa: E402

TUB = Path(__file__).parent / "data" / "donkey-tub" / "v2"


def test_a_donkeycar_tub_becomes_a_lerobot_dataset(tmp_path, capsys):
    db, out = tmp_path / "donkey.sqlite", tmp_path / "lerobot"
    assert main(["episodes", "import-donkey", str(TUB), "--out", str(db)]) == 0
    assert (
        main(["episodes", "export", "--db", str(db), "--format", "lerobot", "--out", str(out)]) == 0
    )
    capsys.readouterr()

    records = [json.loads(line) for line in (TUB / "catalog_0.catalog").read_text().splitlines()]
    manifest = (TUB / "manifest.json").read_text().splitlines()
    deleted = set(json.loads(manifest[4])["deleted_indexes"])
    kept = [r for r in records if r["_index"] not in deleted]
    sessions = sorted({r["_session_id"] for r in kept})

    info, episodes, data = check_v3(out)
    # One episode per DonkeyCar session, one frame per record it did not delete, at 20 Hz,
    # in DonkeyCar's own 160x120 (the shipped policy's input).
    assert (info["total_episodes"], info["total_frames"], info["fps"]) == (2, len(kept), 20)
    assert [e["length"] for e in episodes] == [
        sum(r["_session_id"] == s for r in kept) for s in sessions
    ]
    assert info["features"]["observation.images.front"]["shape"] == [120, 160, 3]
    with EpisodeStore(db, readonly=True) as store:
        ids = [i.id for i in store.episodes()]
        stored = [store.load_episode(i) for i in ids]
    # Each decoded frame is its record's picture: close to it (AV1 at LeRobot's CRF 30 loses
    # more on these noisy pictures than on the recorder tests' smooth ones), and closer to it
    # than to the record before.
    videos = decode_all(out)
    for e, s in zip(episodes, stored, strict=True):
        frames = videos[(e[f"videos/{CAMERA}/chunk_index"], e[f"videos/{CAMERA}/file_index"])]
        first = round(e[f"videos/{CAMERA}/from_timestamp"] * info["fps"])
        for j in range(e["length"]):
            own = psnr(frames[first + j], s.frames[j])
            assert own > 27, (e["episode_index"], j, own)
            if j:
                assert own > psnr(frames[first + j], s.frames[j - 1]), (e["episode_index"], j)
    # The motor command DonkeyCar sent, not only the nearest discrete action, comes out.
    actions = np.asarray(data["action"], np.float32)
    np.testing.assert_array_equal(actions, np.concatenate([s.commands for s in stored]))
    assert data["discrete_action"] == np.concatenate([s.actions for s in stored]).tolist()
    assert data["source"] == np.concatenate([s.sources for s in stored]).tolist()
    assert set(data["source"]) == {"human", "policy"}  # the tub's user and pilot modes
