"""The LeRobotDataset v3.0 format: its layout, features, statistics and video files.

``malpi episodes export [N...] --format lerobot --out DIR`` writes::

    DIR/meta/info.json                      schema, fps, codebase_version "v3.0", path templates
    DIR/meta/stats.json                     per-feature min/max/mean/std/count/quantiles
    DIR/meta/tasks.parquet                  the task string (index) -> task_index
    DIR/meta/episodes/chunk-000/file-000.parquet   one row per episode: length, index ranges,
                                            data and video file, video from/to timestamps, stats
    DIR/meta/malpi.json                     MaLPi's own: action table, source episodes (LeRobot
                                            ignores files it does not know)
    DIR/data/chunk-000/file-000.parquet     one row per frame, all episodes
    DIR/videos/observation.images.front/chunk-000/file-000.mp4   all episodes' frames, in order
    DIR/README.md                           a dataset card for the Hugging Face Hub

The layout, names and column types follow LeRobot's own writer (``lerobot.datasets`` of
lerobot 0.4.x, ``LeRobotDatasetMetadata``/``LeRobotDataset.save_episode``). A new data or
video file is started (file-001, ... then chunk-001 after ``chunks_size`` files) once the
current one has reached ``data_files_size_in_mb``/``video_files_size_in_mb``, checked

lerobot.py fills it with MaLPi episodes (export_lerobot).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable

CODEBASE_VERSION = "v3.0"
CAMERA_KEY = "observation.images.front"
DEFAULT_TASK = "drive the track"
ROBOT_TYPE = "malpi"
# LeRobot's defaults (lerobot.datasets.utils): files per chunk directory, file size limits.
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# --vcodec: LeRobot's default is SVT-AV1 (libsvtav1); its writer also accepts h264.
VCODECS = {"av1": "libsvtav1", "h264": "libx264"}
DEFAULT_VCODEC = "av1"
CRF = 30  # LeRobot's encode_video_frames defaults: crf 30, a keyframe every 2 frames
GOP = 2
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES: q01 ... q99
STEER_THROTTLE = ["steering", "throttle"]


def features(height: int, width: int) -> dict[str, dict[str, Any]]:
    """info.json's ``features`` without the video's ``info`` (added once the file exists)."""

    def scalar(dtype: str) -> dict[str, Any]:
        return {"dtype": dtype, "shape": [1], "names": None}

    return {
        CAMERA_KEY: {
            "dtype": "video",
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
        },
        # The command sent at the previous step ([0, 0] at the start: the motors are stopped):
        # a LeRobot policy's robot state.
        "observation.state": {"dtype": "float32", "shape": [2], "names": STEER_THROTTLE},
        # MaLPi's policy input: the previous action's index, -1 (NO_ACTION) at the start.
        "observation.prev_discrete_action": scalar("int64"),
        "action": {"dtype": "float32", "shape": [2], "names": STEER_THROTTLE},
        # Not "action_index": LeRobot treats every feature named action* as a policy output.
        "discrete_action": scalar("int64"),
        "next.reward": scalar("float32"),
        "next.done": scalar("bool"),
        "source": scalar("string"),  # human | policy | intervention
        "step_index": scalar("int64"),  # the recorder's step number (gaps: dropped steps)
        "timestamp": scalar("float32"),
        "frame_index": scalar("int64"),
        "episode_index": scalar("int64"),
        "index": scalar("int64"),
        "task_index": scalar("int64"),
    }


def column_stats(values: np.ndarray) -> dict[str, Any]:
    """LeRobot's statistics of a (T, d) numeric column: each stat has shape (d,), count (1,)."""
    v = values.astype(np.float64).reshape(len(values), -1)
    stats: dict[str, Any] = {
        "min": v.min(axis=0).tolist(),
        "max": v.max(axis=0).tolist(),
        "mean": v.mean(axis=0).tolist(),
        "std": v.std(axis=0).tolist(),
        "count": [len(v)],
    }
    for q in QUANTILES:
        stats[f"q{round(q * 100):02d}"] = np.quantile(v, q, axis=0).tolist()
    return stats


def image_stats(hist: np.ndarray) -> dict[str, Any]:
    """Per-channel statistics in [0, 1], shape (3, 1, 1), from (3, 256) histograms of uint8
    pixels (exact, where LeRobot samples frames); count is the number of frames."""
    levels = np.arange(256, dtype=np.float64)
    n = hist.sum(axis=1).astype(np.float64)
    mean = (hist * levels).sum(axis=1) / n
    std = np.sqrt(np.maximum(0.0, (hist * levels**2).sum(axis=1) / n - mean**2))
    cdf = np.cumsum(hist, axis=1)
    nonzero = hist > 0

    def shaped(v: np.ndarray) -> list:
        return (v / 255.0).reshape(3, 1, 1).tolist()

    stats: dict[str, Any] = {
        "min": shaped(np.argmax(nonzero, axis=1).astype(np.float64)),
        "max": shaped(255 - np.argmax(nonzero[:, ::-1], axis=1).astype(np.float64)),
        "mean": shaped(mean),
        "std": shaped(std),
        "count": [0],  # set by the caller
    }
    for q in QUANTILES:
        idx = np.array([np.searchsorted(cdf[c], q * n[c]) for c in range(3)], dtype=np.float64)
        stats[f"q{round(q * 100):02d}"] = shaped(idx)
    return stats


class Video:
    """One mp4 file being written: frames at pts 0, 1, 2, ... in units of 1/fps."""

    def __init__(self, av: Any, path: Path, fps: int, codec: str, height: int, width: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.frames = 0
        options = {"g": str(GOP), "crf": str(CRF)}
        if codec == "libsvtav1":
            options["preset"] = "12"  # LeRobot's preset: fast
        self._av = av
        self._realtime_before = _realtime_threads()
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream(codec, rate=fps, options=options)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"

    def add(self, rgb: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames
        self._container.mux(self._stream.encode(frame))
        self.frames += 1
        _no_new_realtime(self._realtime_before)

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))  # flush the encoder
        finally:
            self._container.close()
            self._container = None
            _no_new_realtime(self._realtime_before)

    def size_mb(self) -> float:
        # What has reached the disk: the muxer opens the file with its first packet, and the
        # encoder holds a few frames back.
        return self.path.stat().st_size / 2**20 if self.path.exists() else 0.0


def _realtime_threads() -> set[int]:
    """The threads of this process that run SCHED_FIFO or SCHED_RR."""
    found = set()
    for task in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ():
        try:
            if os.sched_getscheduler(int(task)) in (os.SCHED_FIFO, os.SCHED_RR):
                found.add(int(task))
        except OSError:
            pass  # the thread ended meanwhile
    return found


def _no_new_realtime(before: set[int]) -> None:
    """Undo what SVT-AV1 does when it can: run as root, it makes the thread that encodes and its
    own worker threads SCHED_FIFO 99. On a car that would put an export above the control loop,
    and in a trainer every thread started later would inherit it. Checked after every frame, so
    at most one frame's encoding runs real-time."""
    for tid in _realtime_threads() - before:
        with contextlib.suppress(OSError):  # gone, or not ours to change
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    # LeRobot's update_chunk_file_indices: file-000 ... then the next chunk directory.
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


PANDAS_TASKS = {
    "index_columns": ["__index_level_0__"],
    "column_indexes": [
        {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
         "metadata": {"encoding": "UTF-8"}}
    ],
    "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
         "numpy_type": "int64", "metadata": None},
        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
         "numpy_type": "object", "metadata": None},
    ],
    "creator": {"library": "pyarrow", "version": "15.0.0"},
    "pandas_version": "2.2.0",
}  # fmt: skip


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n")


def dataset_card(repo_id: str | None, info: dict[str, Any], table: ActionTable) -> str:
    """A dataset card like LeRobot's (tags, robotics, the data files), for the Hub."""
    actions = ", ".join(
        f"{i} {a.name} ({a.steering:+g}, {a.throttle:+g})" for i, a in enumerate(table)
    )
    return (
        "---\nlicense: other\ntask_categories:\n- robotics\ntags:\n- LeRobot\n- MaLPi\n"
        "configs:\n- config_name: default\n  data_files: data/*/*.parquet\n---\n\n"
        f"# {repo_id or 'MaLPi episodes'}\n\n"
        "Episodes of a MaLPi robot car (camera, discrete actions as steering and throttle), "
        "exported by `malpi episodes export --format lerobot`.\n\n"
        f"- {info['total_episodes']} episodes, {info['total_frames']} frames at "
        f"{info['fps']} fps\n"
        f"- `discrete_action` indices: {actions}\n"
        "- `source`: human, policy or intervention\n\n"
        f"[meta/info.json](meta/info.json):\n\n```json\n{json.dumps(info, indent=4)}\n```\n"
    )


def size_mb(value: float) -> int | float:
    # info.json holds LeRobot's integer sizes; a fractional limit (tests) stays as given.
    return int(value) if float(value).is_integer() else value
