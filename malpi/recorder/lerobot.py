"""Exporting episodes as a LeRobotDataset (format v3.0), with pyarrow and PyAV, without torch.

``malpi episodes export [N...] --format lerobot --out DIR`` checks that the episodes can share
one dataset (action table, control rate, frame size), then streams them, one in memory at a
time, into the files lerobot_format.py describes.

Frames are the stored steps of each episode, renumbered 0..T-1 (``frame_index``), at the
episode's recorded control rate: ``timestamp = frame_index / fps``. Steps the recorder
dropped leave no frame (``step_index`` keeps the recorded step number, so gaps show).
Like export.py, the directory appears complete or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable
from malpi.recorder.codec import decode_jpeg
from malpi.recorder.export import check_new_directory, new_directory
from malpi.recorder.lerobot_format import (
    CAMERA_KEY,
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILE_MB,
    DATA_PATH,
    DEFAULT_TASK,
    DEFAULT_VCODEC,
    EPISODES_PATH,
    PANDAS_TASKS,
    ROBOT_TYPE,
    VCODECS,
    VIDEO_FILE_MB,
    VIDEO_PATH,
    Video,
    column_stats,
    dataset_card,
    features,
    image_stats,
    next_file,
    size_mb,
    write_json,
)
from malpi.recorder.schema import StoreError
from malpi.recorder.store import EpisodeData, EpisodeInfo, EpisodeStore

log = logging.getLogger(__name__)


class LeRobotExportError(StoreError):
    """Episodes that cannot go into one LeRobot dataset; the message says why."""


@dataclass
class LeRobotExport:
    """What export_lerobot wrote."""

    out: Path
    episodes: list[int]  # MaLPi episode ids, in dataset order (episode_index 0, 1, ...)
    frames: int
    fps: int
    vcodec: str
    skipped: list[int] = field(default_factory=list)  # running or empty episodes left out


def episode_commands(data: EpisodeData) -> np.ndarray:
    """float32 (T, 2) [steering, throttle]: the command sent at each step.

    ``EpisodeData.commands`` when the store records them, else the action table's entry
    for the step's action (what the drivetrain was told to do)."""
    commands = getattr(data, "commands", None)
    if commands is not None:
        return np.asarray(commands, dtype=np.float32).reshape(len(data), 2)
    table = data.info.action_table
    lookup = np.array([[a.steering, a.throttle] for a in table], dtype=np.float32)
    actions = data.actions
    if len(actions) and (actions.min() < 0 or actions.max() >= len(table)):
        raise LeRobotExportError(
            f"episode {data.info.id} has actions outside its table of {len(table)}"
        )
    return lookup[actions] if len(actions) else np.zeros((0, 2), np.float32)


def recorded_rate(config: dict[str, Any]) -> float | None:
    """The control rate an episode ran at, from its recorded configuration (the daemon's
    ``loop.rate_hz``, or the simulator's ``dt``). The same rule as
    malpi.train.episodes.recorded_control_hz, which the recorder may not import."""
    loop = config.get("loop")
    rate = loop.get("rate_hz") if isinstance(loop, dict) else None
    sim = config.get("simulator")
    if rate is None and isinstance(sim, dict) and sim.get("dt"):
        rate = 1.0 / float(sim["dt"])
    return None if rate is None else float(rate)


def export_lerobot(
    store: EpisodeStore,
    episode_ids: Sequence[int] | None,
    out: Path,
    *,
    task: str = DEFAULT_TASK,
    repo_id: str | None = None,
    fps: int | None = None,
    vcodec: str = DEFAULT_VCODEC,
    chunks_size: int = CHUNKS_SIZE,
    data_file_mb: float = DATA_FILE_MB,
    video_file_mb: float = VIDEO_FILE_MB,
) -> LeRobotExport:
    """Write the episodes (None: every ended one) as a LeRobot dataset in the new directory
    ``out``. ``fps`` overrides the recorded control rate. Raises LeRobotExportError when the
    episodes cannot share one dataset (frame size, action table, rate) or there are none."""
    pa, pq, av = _modules()
    if vcodec not in VCODECS:
        raise LeRobotExportError(f"unknown video codec {vcodec!r}; one of {sorted(VCODECS)}")
    if not task.strip():
        raise LeRobotExportError("the task must not be empty")
    check_new_directory(out, LeRobotExportError)
    infos, skipped = _select(store, episode_ids)
    table = _one_action_table(infos)
    rate = _one_rate(infos, fps)
    height, width = _one_frame_size(store, infos)
    with new_directory(out, LeRobotExportError) as tmp:
        writer = _Writer(
            tmp, pa, pq, av, fps=rate, height=height, width=width, vcodec=VCODECS[vcodec],
            task=task, chunks_size=chunks_size, data_file_mb=data_file_mb,
            video_file_mb=video_file_mb,
        )  # fmt: skip
        try:
            for info in infos:
                writer.add_episode(store.load_episode(info.id, decode=False))
        finally:
            writer.close()
        writer.finish(table, infos, store, repo_id)
    log.info(
        "exported %d episodes (%d frames at %d fps, %s) to %s",
        len(infos), writer.total_frames, rate, vcodec, out,
    )  # fmt: skip
    return LeRobotExport(out, [i.id for i in infos], writer.total_frames, rate, vcodec, skipped)


def _modules() -> tuple[Any, Any, Any]:
    try:
        import av
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            f"exporting a LeRobot dataset needs pyarrow and PyAV ({exc.name} is missing): "
            "pip install -e '.[data]'"
        ) from exc
    return pa, pq, av


def _select(
    store: EpisodeStore, episode_ids: Sequence[int] | None
) -> tuple[list[EpisodeInfo], list[int]]:
    """The episodes to export and the ids left out. Asked-for episodes that are running or
    empty are refused; by default they are skipped (and logged)."""
    skipped: list[int] = []
    if episode_ids is None:
        infos = []
        for info in store.episodes():
            if info.running or info.step_count == 0:
                why = "still being recorded" if info.running else "has no steps"
                log.warning("skipping episode %d: it %s", info.id, why)
                skipped.append(info.id)
            else:
                infos.append(info)
        if not infos:
            raise LeRobotExportError(f"{store.path} has no ended episode with steps to export")
        return infos, skipped
    if len(set(episode_ids)) != len(episode_ids):
        raise LeRobotExportError(f"an episode is named twice in {list(episode_ids)}")
    infos = [store.episode(i) for i in episode_ids]
    for info in infos:
        if info.running:
            raise LeRobotExportError(
                f"episode {info.id} is still being recorded; export it once it has ended"
            )
        if info.step_count == 0:
            raise LeRobotExportError(
                f"episode {info.id} has no steps (a LeRobot episode needs one)"
            )
    if not infos:
        raise LeRobotExportError("no episodes to export")
    return infos, skipped


def _one_action_table(infos: list[EpisodeInfo]) -> ActionTable:
    # discrete_action indices only mean something against one table.
    first = infos[0]
    for info in infos[1:]:
        if info.action_table != first.action_table:
            raise LeRobotExportError(
                f"episodes {first.id} and {info.id} have different action tables "
                f"({first.action_table.to_list()} vs {info.action_table.to_list()}); "
                "export them to separate datasets"
            )
    return first.action_table


def _one_rate(infos: list[EpisodeInfo], fps: int | None) -> int:
    # A LeRobot dataset has one integer fps (info.json, and the video's frame rate).
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
            raise LeRobotExportError(f"fps must be a positive integer, not {fps!r}")
        return fps
    rates: dict[float | None, list[int]] = {}
    for info in infos:
        rates.setdefault(recorded_rate(info.config), []).append(info.id)
    if None in rates:
        raise LeRobotExportError(
            f"episode(s) {rates[None]} do not record their control rate; give it with --fps N"
        )
    if len(rates) > 1:
        detail = "; ".join(f"{r:g} Hz: {ids}" for r, ids in sorted(rates.items()))  # type: ignore[arg-type]
        raise LeRobotExportError(
            f"the episodes were recorded at different control rates ({detail}); a LeRobot "
            "dataset has one fps: export them separately (or force one with --fps N)"
        )
    rate = next(iter(rates))
    assert rate is not None
    if rate <= 0 or abs(rate - round(rate)) > 1e-6:
        raise LeRobotExportError(
            f"the episodes ran at {rate:g} Hz; a LeRobot dataset's fps is an integer: "
            "give one with --fps N (timestamps are frame_index / fps)"
        )
    return int(round(rate))


def _one_frame_size(store: EpisodeStore, infos: list[EpisodeInfo]) -> tuple[int, int]:
    # One video stream per camera: every frame has the first episode's size. Each episode's
    # first frame is checked here (before writing anything); every frame again while encoding.
    sizes: dict[tuple[int, int], list[int]] = {}
    for info in infos:
        step = next(store.iter_steps(info.id, decode=False))
        h, w = decode_jpeg(step.jpeg).shape[:2]
        sizes.setdefault((h, w), []).append(info.id)
    if len(sizes) > 1:
        detail = "; ".join(f"{w}x{h}: {ids}" for (h, w), ids in sizes.items())
        raise LeRobotExportError(
            f"the episodes' frames differ in size ({detail}); one dataset has one frame size: "
            "export them separately"
        )
    (h, w), _ = next(iter(sizes.items()))
    if h % 2 or w % 2:
        raise LeRobotExportError(
            f"frames of {w}x{h}: video in yuv420p needs an even width and height"
        )
    return h, w


class _Writer:
    """Appends episodes to the data parquet and the video, one episode in memory at a time."""

    def __init__(
        self, root: Path, pa: Any, pq: Any, av: Any, *, fps: int, height: int, width: int,
        vcodec: str, task: str, chunks_size: int, data_file_mb: float, video_file_mb: float,
    ) -> None:  # fmt: skip
        self.root, self.pa, self.pq, self.av = root, pa, pq, av
        self.fps, self.height, self.width, self.vcodec, self.task = fps, height, width, vcodec, task
        self.chunks_size, self.data_file_mb, self.video_file_mb = (
            chunks_size, data_file_mb, video_file_mb,
        )  # fmt: skip
        self.features = features(height, width)
        self.schema = self._schema()
        self.total_frames = 0
        self.episodes: list[dict[str, Any]] = []
        self._data_at = (0, 0)
        self._data: Any = None  # pq.ParquetWriter
        self._video_at = (0, 0)
        self._video: Video | None = None
        self._columns: dict[str, list[np.ndarray]] = {}  # numeric columns, for stats.json
        self._hist = np.zeros((3, 256), dtype=np.int64)
        # SVT-AV1 prints its configuration to stderr unless told otherwise.
        os.environ.setdefault("SVT_LOG", "1")

    def _schema(self) -> Any:
        pa = self.pa
        types = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_(),
                 "string": pa.string()}  # fmt: skip
        fields = []
        for key, ft in self.features.items():
            if ft["dtype"] == "video":
                continue  # in the mp4, not the parquet
            t = types[ft["dtype"]]
            # LeRobot (via HF datasets) stores shape (1,) as a scalar column, (n,) as a list.
            fields.append(pa.field(key, t if ft["shape"] == [1] else pa.list_(t, ft["shape"][0])))
        return pa.schema(fields)

    def add_episode(self, data: EpisodeData) -> None:
        t0 = time.monotonic()
        n = len(data)
        episode_index = len(self.episodes)
        commands = episode_commands(data)
        prev_commands = np.zeros_like(commands)
        prev_commands[1:] = commands[:-1]
        frame_index = np.arange(n, dtype=np.int64)
        columns: dict[str, np.ndarray] = {
            "observation.state": prev_commands,
            "observation.prev_discrete_action": data.prev_actions.astype(np.int64),
            "action": commands,
            "discrete_action": data.actions.astype(np.int64),
            "next.reward": data.rewards.astype(np.float32),
            "next.done": data.dones.astype(bool),
            "step_index": data.steps.astype(np.int64),
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(n, episode_index, dtype=np.int64),
            "index": np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
            "task_index": np.zeros(n, dtype=np.int64),
        }

        video_from = self._video_frames_before_episode()
        hist = np.zeros((3, 256), dtype=np.int64)
        assert self._video is not None
        for j, jpeg in enumerate(data.jpegs):
            rgb = decode_jpeg(jpeg)
            if rgb.shape != (self.height, self.width, 3):
                raise LeRobotExportError(
                    f"episode {data.info.id} step {int(data.steps[j])}: a frame of "
                    f"{rgb.shape[1]}x{rgb.shape[0]}, the dataset's are {self.width}x{self.height}"
                )
            for c in range(3):
                hist[c] += np.bincount(rgb[..., c].ravel(), minlength=256)
            self._video.add(rgb)
        self._hist += hist

        data_at = self._data_file_for_episode()
        arrays = []
        for f in self.schema:
            if f.name == "source":
                arrays.append(self.pa.array([str(s) for s in data.sources], type=f.type))
                continue
            col = columns[f.name]
            if col.ndim == 2:
                flat = self.pa.array(col.reshape(-1), type=f.type.value_type)
                arrays.append(self.pa.FixedSizeListArray.from_arrays(flat, col.shape[1]))
            else:
                arrays.append(self.pa.array(col, type=f.type))
        self._data.write_table(self.pa.Table.from_arrays(arrays, schema=self.schema))

        ep_stats = {k: column_stats(v) for k, v in columns.items()}
        ep_stats[CAMERA_KEY] = image_stats(hist) | {"count": [n]}
        for k, v in columns.items():
            self._columns.setdefault(k, []).append(v)
        self.episodes.append(
            {
                "episode_index": episode_index,
                "tasks": [self.task],
                "length": n,
                "data/chunk_index": data_at[0],
                "data/file_index": data_at[1],
                "dataset_from_index": self.total_frames,
                "dataset_to_index": self.total_frames + n,
                f"videos/{CAMERA_KEY}/chunk_index": self._video_at[0],
                f"videos/{CAMERA_KEY}/file_index": self._video_at[1],
                f"videos/{CAMERA_KEY}/from_timestamp": video_from / self.fps,
                f"videos/{CAMERA_KEY}/to_timestamp": (video_from + n) / self.fps,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                **{
                    f"stats/{key}/{name}": value
                    for key, s in ep_stats.items()
                    for name, value in s.items()
                },
            }
        )
        self.total_frames += n
        log.debug(
            "episode %d -> episode_index %d: %d frames in %.1f s",
            data.info.id, episode_index, n, time.monotonic() - t0,
        )  # fmt: skip

    def _video_frames_before_episode(self) -> int:
        """Opens the first video file, or the next one once the current is full; returns the
        frames already in the file (the episode's from_timestamp is that / fps)."""
        if self._video is not None and self._video.size_mb() >= self.video_file_mb:
            self._video.close()
            self._video = None
            self._video_at = next_file(*self._video_at, self.chunks_size)
        if self._video is None:
            path = self.root / VIDEO_PATH.format(
                video_key=CAMERA_KEY, chunk_index=self._video_at[0], file_index=self._video_at[1]
            )
            self._video = Video(self.av, path, self.fps, self.vcodec, self.height, self.width)
        return self._video.frames

    def _data_file_for_episode(self) -> tuple[int, int]:
        path = self.root / DATA_PATH.format(
            chunk_index=self._data_at[0], file_index=self._data_at[1]
        )
        if self._data is not None and path.stat().st_size / 2**20 >= self.data_file_mb:
            self._data.close()
            self._data = None
            self._data_at = next_file(*self._data_at, self.chunks_size)
            path = self.root / DATA_PATH.format(
                chunk_index=self._data_at[0], file_index=self._data_at[1]
            )
        if self._data is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = self.pq.ParquetWriter(path, self.schema, compression="snappy")
        return self._data_at

    def close(self) -> None:
        """Closes the open files (also after an error: the caller removes the directory)."""
        try:
            if self._video is not None:
                self._video.close()
        finally:
            self._video = None
            if self._data is not None:
                self._data.close()
                self._data = None

    def finish(
        self, table: ActionTable, infos: list[EpisodeInfo], store: EpisodeStore,
        repo_id: str | None,
    ) -> None:  # fmt: skip
        """The metadata, once the data and video files are complete."""
        pa, pq = self.pa, self.pq
        feats = self.features
        feats[CAMERA_KEY]["info"] = self._video_info()
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": ROBOT_TYPE,
            "total_episodes": len(self.episodes),
            "total_frames": self.total_frames,
            "total_tasks": 1,
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": size_mb(self.data_file_mb),
            "video_files_size_in_mb": size_mb(self.video_file_mb),
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": feats,
        }
        meta = self.root / "meta"
        meta.mkdir(exist_ok=True)
        write_json(meta / "info.json", info)

        stats = {k: column_stats(np.concatenate(v)) for k, v in self._columns.items()}
        stats[CAMERA_KEY] = image_stats(self._hist) | {"count": [self.total_frames]}
        write_json(meta / "stats.json", stats)

        # tasks.parquet as LeRobot writes it (pandas, task strings as the index), with the
        # pandas metadata written out so that pandas.read_parquet restores that index.
        tasks = pa.table(
            {"task_index": pa.array([0], pa.int64()), "__index_level_0__": [self.task]}
        )
        tasks = tasks.replace_schema_metadata({b"pandas": json.dumps(PANDAS_TASKS).encode()})
        pq.write_table(tasks, meta / "tasks.parquet")

        episodes = pa.Table.from_pylist(self.episodes)
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episodes, path, compression="snappy")

        write_json(
            meta / "malpi.json",
            {
                "format": "malpi-lerobot-export/1",
                "repo_id": repo_id,
                "source_database": str(store.path.resolve()),
                "exported_at": time.time(),
                "action_table": table.to_list(),
                "sources": ["human", "policy", "intervention"],
                "episodes": [
                    {"episode_index": i, "id": e.id, "uuid": e.uuid, "outcome": e.outcome,
                     "started_at": e.started_at, "steps": e.step_count,
                     "dropped_steps": e.dropped_steps, "policy_version": e.policy_version,
                     "notes": e.notes}
                    for i, e in enumerate(infos)
                ],
            },
        )  # fmt: skip
        (self.root / "README.md").write_text(dataset_card(repo_id, info, table))

    def _video_info(self) -> dict[str, Any]:
        """The video's facts as LeRobot's get_video_info reads them, read back from the file."""
        path = self.root / VIDEO_PATH.format(video_key=CAMERA_KEY, chunk_index=0, file_index=0)
        with self.av.open(str(path)) as container:
            stream = container.streams.video[0]
            return {
                "video.height": stream.height,
                "video.width": stream.width,
                "video.codec": stream.codec_context.codec.canonical_name,
                "video.pix_fmt": stream.pix_fmt,
                "video.is_depth_map": False,
                "video.fps": int(stream.base_rate),
                "video.channels": 3,
                "has_audio": False,
            }
