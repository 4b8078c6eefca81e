"""``malpi episodes export --format lerobot``: a LeRobotDataset v3.0, checked with readers that
are not MaLPi's (pyarrow, HF datasets/pandas, OpenCV's decoder) against the format as LeRobot
documents and reads it (docs/source/lerobot-dataset-v3.mdx; lerobot.datasets.utils and
lerobot_dataset.py of lerobot 0.4.x: info.json keys, DEFAULT_FEATURES, the episode columns
LeRobotDataset looks up, the 1e-4 s timestamp tolerance, per-channel image stats)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from recorder_helpers import H, W, frame_for, meta_for, run_cli, step_for

from malpi.actions import DEFAULT_ACTIONS, NO_ACTION, Action, ActionTable
from malpi.recorder import EpisodeMeta, EpisodeStore, Recorder, StoreError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

from malpi.recorder.lerobot import (  # noqa: E402
    LeRobotExportError,
    episode_commands,
    export_lerobot,
)

CAMERA = "observation.images.front"
# What LeRobot itself writes into every dataset (lerobot.datasets.utils.DEFAULT_FEATURES).
DEFAULT_FEATURES = {
    "timestamp": ("float32", [1]),
    "frame_index": ("int64", [1]),
    "episode_index": ("int64", [1]),
    "index": ("int64", [1]),
    "task_index": ("int64", [1]),
}
INFO_KEYS = {
    "codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
    "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
    "data_path", "video_path", "features",
}  # fmt: skip
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance_s
PSNR_DB = 32.0  # decoded video frame vs the stored JPEG (measured: 37.5 dB at worst)
LENGTHS = (12, 7, 9)


def record(path: Path, lengths=LENGTHS, *, rate=20, table=DEFAULT_ACTIONS, size=(H, W),
           outcome="finished", gaps=(), end=True) -> list[int]:  # fmt: skip
    """Episodes of deterministic steps; ``gaps``: step numbers left out (dropped steps)."""
    ids = []
    config = {"loop": {"rate_hz": rate}} if rate is not None else {}
    with Recorder(path) as rec:
        for n in lengths:
            ep = rec.start_episode(EpisodeMeta(action_table=table, config=dict(config)))
            for i in range(n + len(gaps)):
                if i in gaps:
                    continue
                step = step_for(ep, i)
                step = dataclasses.replace(
                    step, frame=frame_for(ep, i, *size), action=step.action % len(table),
                    probs=step.probs if len(table) == len(DEFAULT_ACTIONS) else None,
                )  # fmt: skip
                rec.record(step, index=i)
            if end:
                rec.end_episode(outcome, final_reward=-2.0 if outcome == "failed" else None)
            ids.append(ep)
    if not end:  # closing the recorder ended them: as a recorder still writing would leave them
        with sqlite3.connect(path) as conn:
            conn.executemany(
                "UPDATE episodes SET outcome = 'running', ended_at = NULL WHERE id = ?",
                [(i,) for i in ids],
            )
    return ids


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "episodes.sqlite"
    record(path, outcome="finished")
    record(path, lengths=(5,), outcome="failed", gaps=(2, 3))  # episode 4: 2 steps dropped
    return path


def export(db: Path, out: Path, ids=None, **kw):
    with EpisodeStore(db, readonly=True) as store:
        return export_lerobot(store, ids, out, **kw)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def read_data(root: Path) -> dict[str, list]:
    """Every data parquet file (pyarrow), concatenated in file order."""
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.to_pydict()


def check_v3(root: Path) -> tuple[dict, list[dict], dict[str, list]]:
    """The dataset against LeRobot's published v3.0 layout; returns info, episodes, data."""
    info = json.loads((root / "meta/info.json").read_text())
    assert set(info) == INFO_KEYS  # newer LeRobot warns about any other key
    assert info["codebase_version"] == "v3.0"
    assert isinstance(info["fps"], int) and info["fps"] > 0
    assert info["data_path"] == DATA_PATH and info["video_path"] == VIDEO_PATH
    assert info["splits"] == {"train": f"0:{info['total_episodes']}"}
    assert info["total_tasks"] >= 1 and info["chunks_size"] > 0
    feats = info["features"]
    for key, (dtype, shape) in DEFAULT_FEATURES.items():
        assert (feats[key]["dtype"], feats[key]["shape"]) == (dtype, shape)
    for key, ft in feats.items():
        assert "/" not in key
        assert {"dtype", "shape", "names"} <= set(ft)
        if ft["dtype"] == "video":
            assert len(ft["shape"]) == 3 and ft["names"] == ["height", "width", "channels"]
            vi = ft["info"]
            assert vi["video.fps"] == info["fps"] and vi["video.pix_fmt"] == "yuv420p"
            assert [vi["video.height"], vi["video.width"], vi["video.channels"]] == ft["shape"]
        elif ft["dtype"] != "string":
            np.dtype(ft["dtype"])  # a numpy dtype name
            if ft["names"] is not None:
                assert len(ft["names"]) == ft["shape"][-1]
    video_keys = [k for k, ft in feats.items() if ft["dtype"] == "video"]

    # Data: one column per non-video feature; shape (1,) is a scalar column, (n,) a list of n.
    data = read_data(root)
    n = info["total_frames"]
    assert set(data) == {k for k in feats if k not in video_keys}
    for key, ft in feats.items():
        if key in data:
            assert len(data[key]) == n
            if ft["shape"] != [1]:
                assert {len(v) for v in data[key]} == {ft["shape"][0]}
    assert data["index"] == list(range(n))
    ts = np.array(data["timestamp"], dtype=np.float64)
    assert np.all(np.abs(ts - np.array(data["frame_index"]) / info["fps"]) < TOLERANCE_S)

    # Episodes: the columns LeRobotDataset looks up, contiguous index ranges.
    ep_files = sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
    episodes = pa.concat_tables([pq.read_table(f) for f in ep_files]).to_pylist()
    assert len(episodes) == info["total_episodes"]
    assert sum(e["length"] for e in episodes) == n
    start = 0
    last_video: dict[str, tuple] = {}
    for i, e in enumerate(episodes):
        assert e["episode_index"] == i
        assert e["dataset_from_index"] == start and e["dataset_to_index"] == start + e["length"]
        rows = range(e["dataset_from_index"], e["dataset_to_index"])
        assert [data["episode_index"][r] for r in rows] == [i] * e["length"]
        assert [data["frame_index"][r] for r in rows] == list(range(e["length"]))
        assert (root / DATA_PATH.format(chunk_index=e["data/chunk_index"],
                                        file_index=e["data/file_index"])).exists()  # fmt: skip
        assert e["tasks"] and all(isinstance(t, str) for t in e["tasks"])
        assert {"meta/episodes/chunk_index", "meta/episodes/file_index"} <= set(e)
        for key in video_keys:
            at = (e[f"videos/{key}/chunk_index"], e[f"videos/{key}/file_index"])
            assert (root / VIDEO_PATH.format(video_key=key, chunk_index=at[0],
                                             file_index=at[1])).exists()  # fmt: skip
            frm, to = e[f"videos/{key}/from_timestamp"], e[f"videos/{key}/to_timestamp"]
            assert abs((to - frm) - e["length"] / info["fps"]) < TOLERANCE_S
            # Episodes are concatenated in a file: each starts where the previous one ended.
            prev = last_video.get(key)
            assert frm == (prev[1] if prev and prev[0] == at else 0.0)
            last_video[key] = (at, to)
        for key, ft in feats.items():
            if ft["dtype"] != "string":
                assert e[f"stats/{key}/count"] == [e["length"]]
        start += e["length"]

    # Stats: min/max/mean/std/count per feature; images per channel, (3, 1, 1), in [0, 1].
    stats = json.loads((root / "meta/stats.json").read_text())
    for key, ft in feats.items():
        if ft["dtype"] == "string":
            assert key not in stats
            continue
        s = stats[key]
        assert s["count"] == [n]
        for name in ("min", "max", "mean", "std", "q01", "q50", "q99"):
            value = np.array(s[name])
            if ft["dtype"] == "video":
                assert value.shape == (3, 1, 1) and np.all((value >= 0) & (value <= 1))
            else:
                assert value.shape == tuple(ft["shape"])
        if key in data and ft["dtype"] != "bool":
            column = np.array(data[key], dtype=np.float64).reshape(n, -1)
            np.testing.assert_allclose(s["min"], column.min(axis=0))
            np.testing.assert_allclose(s["max"], column.max(axis=0))
            np.testing.assert_allclose(s["mean"], column.mean(axis=0), rtol=1e-6, atol=1e-9)
    return info, episodes, data


def decode_all(root: Path, key: str = CAMERA) -> dict[tuple[int, int], list[np.ndarray]]:
    """Every frame of every video file, decoded by OpenCV (RGB)."""
    out = {}
    for path in sorted((root / "videos" / key).glob("chunk-*/file-*.mp4")):
        cap = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
        found = re.fullmatch(r"chunk-(\d+)/file-(\d+)\.mp4", f"{path.parent.name}/{path.name}")
        assert found, path
        chunk, file = int(found[1]), int(found[2])
        out[(chunk, file)] = frames
    return out


def check_frames(root: Path, db: Path, info: dict, episodes: list[dict], ids: list[int]) -> None:
    """Each exported frame, decoded by OpenCV, is the stored JPEG's image (PSNR)."""
    videos = decode_all(root)
    assert sum(len(f) for f in videos.values()) == info["total_frames"]
    with EpisodeStore(db, readonly=True) as store:
        for e, episode_id in zip(episodes, ids, strict=True):
            stored = store.load_episode(episode_id)
            frames = videos[(e[f"videos/{CAMERA}/chunk_index"], e[f"videos/{CAMERA}/file_index"])]
            first = round(e[f"videos/{CAMERA}/from_timestamp"] * info["fps"])
            for j in range(e["length"]):
                got = psnr(frames[first + j], stored.frames[j])
                assert got > PSNR_DB, f"episode {episode_id} frame {j}: {got:.1f} dB"


def test_export_is_a_v3_dataset(db, tmp_path):
    out = tmp_path / "ds"
    result = export(db, out, task="follow the line", repo_id="someone/malpi-laps")
    assert result.episodes == [1, 2, 3, 4] and result.fps == 20 and result.frames == 12 + 7 + 9 + 5
    info, episodes, data = check_v3(out)
    assert (info["total_episodes"], info["total_frames"], info["fps"]) == (4, 33, 20)
    assert info["features"][CAMERA]["shape"] == [H, W, 3]
    assert info["features"][CAMERA]["info"]["video.codec"] == "av1"
    assert [e["length"] for e in episodes] == [12, 7, 9, 5]
    assert all(e["tasks"] == ["follow the line"] for e in episodes)
    check_frames(out, db, info, episodes, result.episodes)
    malpi = json.loads((out / "meta/malpi.json").read_text())
    assert malpi["repo_id"] == "someone/malpi-laps"
    assert malpi["action_table"] == DEFAULT_ACTIONS.to_list()
    assert [e["id"] for e in malpi["episodes"]] == [1, 2, 3, 4]
    assert "someone/malpi-laps" in (out / "README.md").read_text()
    assert not list(tmp_path.glob(".ds.*"))  # no temporary directory left


def test_per_frame_values_are_the_recorded_steps(db, tmp_path):
    out = tmp_path / "ds"
    export(db, out)
    _, episodes, data = check_v3(out)
    names = ["steering", "throttle"]
    with EpisodeStore(db, readonly=True) as store:
        for e, episode_id in zip(episodes, [1, 2, 3, 4], strict=True):
            ep = store.load_episode(episode_id, decode=False)
            rows = slice(e["dataset_from_index"], e["dataset_to_index"])
            commands = np.array([[a.steering, a.throttle] for a in DEFAULT_ACTIONS])[ep.actions]
            assert data["discrete_action"][rows] == ep.actions.tolist()
            assert data["observation.prev_discrete_action"][rows] == ep.prev_actions.tolist()
            assert data["observation.prev_discrete_action"][rows][0] == NO_ACTION
            np.testing.assert_allclose(data["action"][rows], commands, rtol=1e-6)
            # The previous command: the motors stopped at the start, then the last one sent.
            np.testing.assert_allclose(data["observation.state"][rows][0], [0.0, 0.0])
            np.testing.assert_allclose(data["observation.state"][rows][1:], commands[:-1])
            np.testing.assert_allclose(data["next.reward"][rows], ep.rewards)
            assert data["next.done"][rows] == ep.dones.tolist()
            assert data["next.done"][rows][-1] is True and not any(data["next.done"][rows][:-1])
            assert data["source"][rows] == ep.sources.tolist()
            assert data["step_index"][rows] == ep.steps.tolist()
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"]["action"]["names"] == names
    # Episode 4 dropped steps 2 and 3: its frames are the stored steps, renumbered.
    last = slice(episodes[3]["dataset_from_index"], episodes[3]["dataset_to_index"])
    assert data["step_index"][last] == [0, 1, 4, 5, 6]
    assert data["frame_index"][last] == [0, 1, 2, 3, 4]
    assert data["next.reward"][last][-1] == pytest.approx(step_for(4, 6).reward - 2.0)


def test_readers_of_the_hugging_face_stack(db, tmp_path):
    """HF datasets loads the data as LeRobotDataset does (Dataset.from_parquet with the features
    from info.json); pandas restores the tasks' index (LeRobot reads tasks.parquet so)."""
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    out = tmp_path / "ds"
    export(db, out, task="lap")
    info = json.loads((out / "meta/info.json").read_text())
    hf = {}
    for key, ft in info["features"].items():
        if ft["dtype"] == "video":
            continue
        value = datasets.Value(dtype=ft["dtype"])
        hf[key] = value if ft["shape"] == [1] else datasets.Sequence(value, length=ft["shape"][0])
    paths = [str(p) for p in sorted((out / "data").glob("*/*.parquet"))]
    ds = datasets.Dataset.from_parquet(paths, features=datasets.Features(hf), cache_dir=tmp_path)
    assert len(ds) == info["total_frames"]
    assert ds[0]["observation.prev_discrete_action"] == NO_ACTION and ds[0]["source"] in (
        "human", "policy", "intervention",
    )  # fmt: skip
    assert len(ds[5]["action"]) == 2
    tasks = pd.read_parquet(out / "meta/tasks.parquet")
    assert list(tasks.index) == ["lap"] and tasks.loc["lap"].task_index == 0
    assert tasks.iloc[0].name == "lap"  # how LeRobotDataset.__getitem__ finds the task
    episodes = datasets.Dataset.from_parquet(
        str(out / "meta/episodes/chunk-000/file-000.parquet"), cache_dir=tmp_path
    )
    assert episodes[2]["dataset_from_index"] == 19 and episodes[2]["length"] == 9


def test_h264_and_more_files(db, tmp_path):
    """h264 video; tiny file limits: every episode starts a new data and video file (file-001,
    ... then chunk-001), each video file starting at timestamp 0."""
    out = tmp_path / "ds"
    export(db, out, vcodec="h264", chunks_size=2, data_file_mb=1e-6, video_file_mb=1e-6)
    info, episodes, _ = check_v3(out)
    assert info["features"][CAMERA]["info"]["video.codec"] == "h264"
    at = [(e[f"videos/{CAMERA}/chunk_index"], e[f"videos/{CAMERA}/file_index"]) for e in episodes]
    assert at == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(e["data/chunk_index"], e["data/file_index"]) for e in episodes] == at
    assert all(e[f"videos/{CAMERA}/from_timestamp"] == 0.0 for e in episodes)
    check_frames(out, db, info, episodes, [1, 2, 3, 4])


def test_choosing_episodes(db, tmp_path):
    record(db, lengths=(4,), end=False)  # episode 5: still recording
    result = export(db, tmp_path / "all")
    assert result.episodes == [1, 2, 3, 4] and result.skipped == [5]
    result = export(db, tmp_path / "some", [3, 1])
    assert result.episodes == [3, 1]
    _, episodes, _ = check_v3(tmp_path / "some")
    assert [e["length"] for e in episodes] == [9, 12]
    with pytest.raises(LeRobotExportError, match="episode 5 is still being recorded"):
        export(db, tmp_path / "running", [1, 5])
    with pytest.raises(StoreError, match="no episode 9"):
        export(db, tmp_path / "missing", [9])
    with pytest.raises(LeRobotExportError, match="named twice"):
        export(db, tmp_path / "twice", [1, 1])
    assert not (tmp_path / "running").exists() and not (tmp_path / "missing").exists()


def test_an_empty_database(tmp_path):
    path = tmp_path / "empty.sqlite"
    Recorder(path).close()
    with pytest.raises(LeRobotExportError, match="no ended episode with steps"):
        export(path, tmp_path / "ds")
    record(path, lengths=(), end=True)
    record(path, lengths=(3,), end=False)
    with pytest.raises(LeRobotExportError, match="no ended episode with steps"):
        export(path, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_episodes_that_cannot_share_a_dataset(tmp_path):
    path = tmp_path / "mixed.sqlite"
    record(path, lengths=(4,))
    record(path, lengths=(4,), size=(96, 128))
    record(path, lengths=(4,), rate=10)
    other = ActionTable([Action("go", 0.0, 0.5), Action("turn", 0.5, 0.4)])
    record(path, lengths=(4,), table=other)
    record(path, lengths=(4,), rate=None)
    record(path, lengths=(4,), rate=12.5)
    cases = [
        ([1, 2], "frames differ in size \\(160x120: \\[1\\]; 128x96: \\[2\\]\\)"),
        ([1, 3], "different control rates \\(10 Hz: \\[3\\]; 20 Hz: \\[1\\]\\)"),
        ([1, 4], "episodes 1 and 4 have different action tables"),
        ([5], "do not record their control rate; give it with --fps N"),
        ([6], "12.5 Hz; a LeRobot dataset's fps is an integer"),
    ]
    for ids, message in cases:
        with pytest.raises(LeRobotExportError, match=message):
            export(path, tmp_path / "ds", ids)
        assert not (tmp_path / "ds").exists()
    assert export(path, tmp_path / "ds", [1, 3], fps=20).fps == 20  # forced: one rate
    assert export(path, tmp_path / "ds5", [5, 6], fps=15).frames == 8


def test_a_frame_of_another_size_mid_episode_leaves_nothing(tmp_path):
    path = tmp_path / "odd.sqlite"
    with Recorder(path) as rec:
        ep = rec.start_episode(meta_for(0))
        for i in range(6):
            step = step_for(ep, i)
            if i == 4:
                step = dataclasses.replace(step, frame=frame_for(ep, i, 96, 128))
            rec.record(step)
        rec.end_episode("finished")
    with pytest.raises(LeRobotExportError, match="step 4: a frame of 128x96"):
        export(path, tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))


def test_the_output_directory(db, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LeRobotExportError, match="already exists and is not an empty directory"):
        export(db, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    export(db, out)  # an empty directory is fine
    check_v3(out)
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(LeRobotExportError, match="already exists"):
        export(db, file)


def test_commands_come_from_the_episode_when_recorded(db):
    with EpisodeStore(db, readonly=True) as store:
        ep = store.load_episode(1, decode=False)
    table = np.array([[a.steering, a.throttle] for a in DEFAULT_ACTIONS], dtype=np.float32)
    np.testing.assert_array_equal(episode_commands(ep), table[ep.actions])
    sent = np.random.default_rng(0).uniform(-1, 1, (len(ep), 2)).astype(np.float32)
    ep.commands = sent  # what the store gives once it records the commands sent
    np.testing.assert_array_equal(episode_commands(ep), sent)
    ep.commands = None
    np.testing.assert_array_equal(episode_commands(ep), table[ep.actions])


@pytest.fixture
def malpi(monkeypatch, capsys):
    return run_cli(monkeypatch, capsys)


def test_cli(malpi, db, tmp_path):
    out = tmp_path / "ds"
    code, text, _ = malpi("episodes", "export", "--db", str(db), "--format", "lerobot",
                          "--out", str(out), "--task", "lap", "--repo-id", "me/laps")  # fmt: skip
    assert code == 0
    assert (
        text
        == f"exported 4 episodes (33 frames at 20 fps, av1 video) to {out} as a LeRobot dataset\n"
    )
    _, episodes, _ = check_v3(out)
    assert episodes[0]["tasks"] == ["lap"]
    code, text, _ = malpi("episodes", "export", "2", "3", "--db", str(db), "--format", "lerobot",
                          "--out", str(tmp_path / "two"), "--vcodec", "h264", "--fps", "10")  # fmt: skip
    assert code == 0 and "2 episodes (16 frames at 10 fps, h264 video)" in text
    code, _, err = malpi("episodes", "export", "1", "--db", str(db), "--format", "lerobot",
                         "--all", "--out", str(tmp_path / "both"))  # fmt: skip
    assert code == 1 and "episode IDs or --all, not both" in err
    code, _, err = malpi("episodes", "export", "1", "--db", str(db), "--task", "x",
                         "--out", str(tmp_path / "dir"))  # fmt: skip
    assert code == 1 and "--task: only with --format lerobot" in err
    code, _, err = malpi("episodes", "export", "1", "2", "--db", str(db),
                         "--out", str(tmp_path / "dir"))  # fmt: skip
    assert code == 1 and "--format dir exports one episode" in err
    code, _, err = malpi("episodes", "export", "--db", str(db), "--out", str(tmp_path / "x.db"))
    assert code == 1 and "--format sqlite exports one episode" in err
    # --format overrides the suffix: a directory called x.sqlite
    code, text, _ = malpi("episodes", "export", "1", "--db", str(db), "--format", "dir",
                          "--out", str(tmp_path / "x.sqlite"))  # fmt: skip
    assert code == 0 and (tmp_path / "x.sqlite" / "steps.csv").exists()
    code, text, _ = malpi("episodes", "export", "1", "--db", str(db), "--format", "sqlite",
                          "--out", str(tmp_path / "copy"))  # fmt: skip
    assert code == 0 and "copied episode 1" in text


def test_without_pyarrow_the_error_says_what_to_install(db, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'", name="pyarrow")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ImportError, match=r"pyarrow is missing\): pip install -e '.\[data\]'"):
        export(db, tmp_path / "ds")


def test_the_av1_encoder_leaves_no_thread_real_time(db, tmp_path):
    """SVT-AV1, run as root (as CI and a car's services run), makes the encoding thread and its
    own workers SCHED_FIFO 99; the export undoes it, so nothing it leaves runs above a control
    loop or hands real-time scheduling to the threads a process starts later."""
    import threading

    from malpi.recorder.lerobot_format import _realtime_threads

    before = _realtime_threads()
    export(db, tmp_path / "ds", vcodec="av1")
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert _realtime_threads() <= before
    started = []
    t = threading.Thread(target=lambda: started.append(os.sched_getscheduler(0)))
    t.start()
    t.join()
    assert started == [os.SCHED_OTHER]
