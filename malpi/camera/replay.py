"""Replay camera: the frames of a recorded episode, delivered as a live camera would.

Frames come out in recorded order, paced at the recorded rate (the gaps
between the recorded capture times, so stalls and jitter replay too) or at a
fixed ``fps``, each stamped with a fresh capture time, through the same
capture thread and newest-frame slot as the hardware backends: a control loop
cannot tell it from a camera. With ``loop`` the episode starts again after its
last frame; without, the camera ends (``ended``) and no more frames come.

Frames are streamed from the database in the capture thread (an hour-long
episode is never in memory). They are delivered at their recorded size unless
``height``/``width`` (and crop/flip) ask for a transform.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from malpi.camera.capture import CameraError, CaptureCamera
from malpi.recorder.codec import decode_jpeg
from malpi.recorder.schema import StoreError
from malpi.recorder.store import EpisodeStore

log = logging.getLogger(__name__)

# A recorded gap longer than this (the recorder paused, the loop stalled) is
# replayed as one nominal period, so a replay does not sit frozen for minutes.
_MAX_GAP = 2.0


class ReplayCamera(CaptureCamera):
    """Frames of episode ``episode_id`` of the episode database ``db_path``."""

    channel_order = "RGB"  # decode_jpeg returns RGB

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        episode_id: int,
        fps: float | None = None,
        loop: bool = False,
        *,
        height: int | None = None,
        width: int | None = None,
        crop: tuple[float, float, float, float] | None = None,
        hflip: bool = False,
        vflip: bool = False,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if fps is not None and not (0 < fps < float("inf")):
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.db_path = Path(db_path)
        self.episode_id = episode_id
        self.fps = fps
        self.loop = loop
        # Check everything here, in the caller's thread, so a wrong path or id fails loudly.
        try:
            with EpisodeStore(self.db_path, readonly=True) as store:
                self.info = store.episode(episode_id)
                first = next(store.iter_steps(episode_id, decode=False), None)
        except StoreError as exc:
            raise CameraError(f"replay: {exc}") from exc
        if first is None:
            raise CameraError(f"replay: episode {episode_id} of {self.db_path} has no steps")
        h, w = decode_jpeg(first.jpeg).shape[:2]
        super().__init__(
            height=height or h, width=width or w, crop=crop, hflip=hflip, vflip=vflip,
            on_error=on_error,
        )  # fmt: skip
        # The nominal period: for a loop's wrap-around and for over-long recorded gaps.
        self.period = 1.0 / fps if fps else self._recorded_period()
        self.frames_played = 0
        self.loops_completed = 0
        self._store: EpisodeStore | None = (
            None  # opened in the capture thread (SQLite is per thread)
        )
        self._frames: Iterator[tuple[float, bytes]] | None = None
        self._prev_time: float | None = None  # recorded capture time of the frame delivered last
        self._next_due = 0.0

    def _describe(self) -> str:
        return f"ReplayCamera({str(self.db_path)!r}, episode {self.episode_id})"

    def _recorded_period(self) -> float:
        if self.info.step_count > 1 and self.info.duration > 0:
            return min(_MAX_GAP, self.info.duration / (self.info.step_count - 1))
        return 1.0 / 30.0

    def _open(self) -> None:
        if not self.db_path.exists():
            raise CameraError(f"{self._describe()}: {self.db_path} no longer exists")

    def _rows(self) -> Iterator[tuple[float, bytes]]:
        if self._store is None:
            self._store = EpisodeStore(self.db_path, readonly=True)
        for step in self._store.iter_steps(self.episode_id, decode=False):
            yield step.capture_time, step.jpeg

    def _grab(self) -> tuple[np.ndarray, float] | None:
        if self._frames is None:
            self._frames = self._rows()
        item = next(self._frames, None)
        gap = None
        if item is None:
            if not self.loop or self.frames_played == 0:
                return None
            self.loops_completed += 1
            self._frames = self._rows()
            item = next(self._frames, None)
            if item is None:  # deleted while we played it
                return None
            gap = self.period
        recorded, jpeg = item
        image = decode_jpeg(jpeg)  # decode before waiting, so the frame is ready on time
        if gap is None:
            gap = self.period
            if self.fps is None and self._prev_time is not None:
                gap = recorded - self._prev_time
                if not 0.0 <= gap <= _MAX_GAP:
                    gap = self.period
        self._prev_time = recorded
        self._pace(gap)
        self.frames_played += 1
        return image, time.monotonic()

    def _pace(self, gap: float) -> None:
        """Wait until this frame is due: ``gap`` after the previous one's due time."""
        now = time.monotonic()
        if self.frames_played == 0:
            self._next_due = now
        else:
            self._next_due += gap
            if now - self._next_due > max(gap, self.period):
                # We fell more than a frame behind (the machine stalled): restart the
                # clock rather than burst through frames.
                self._next_due = now
        self._sleep(self._next_due - now)

    def _release(self) -> None:
        self._frames = None
        if self._store is not None:
            self._store.close()
            self._store = None
