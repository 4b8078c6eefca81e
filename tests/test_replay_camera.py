"""ReplayCamera: a recorded episode played back as a live camera."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from recorder_helpers import meta_for, step_for

from malpi.camera.base import Camera
from malpi.camera.capture import CameraError
from malpi.camera.replay import ReplayCamera
from malpi.recorder import EpisodeStore, Recorder


def record(db, capture_times) -> int:
    with Recorder(db) as rec:
        ep = rec.start_episode(meta_for())
        for i, t in enumerate(capture_times):
            rec.record(dataclasses.replace(step_for(ep, i), capture_time=t, action_time=t + 0.004))
    return ep


def play(cam: ReplayCamera, max_frames: int = 1000, timeout: float = 2.0):
    """Every frame the camera delivers, with the time it arrived, until it ends."""
    frames, last = [], -1
    while len(frames) < max_frames:
        frame = cam.wait_newer(last, timeout)
        if frame is None:
            break
        frames.append((frame, time.monotonic()))
        last = frame.index
    return frames


@pytest.fixture
def db(tmp_path):
    return tmp_path / "episodes.sqlite"


def test_plays_every_frame_in_order_at_the_recorded_rate(db):
    ep = record(db, [5.0 + 0.04 * i for i in range(12)])  # 25 Hz
    with EpisodeStore(db) as store:
        recorded = store.load_episode(ep).frames
    cam = ReplayCamera(db, ep)
    assert isinstance(cam, Camera)
    t0 = time.monotonic()
    with cam:
        frames = play(cam)
        assert cam.ended and cam.error is None and not cam.alive
    assert [f.index for f, _ in frames] == list(range(12))
    for (f, _), want in zip(frames, recorded, strict=True):
        assert f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8
        np.testing.assert_array_equal(f.image, want)
    stamps = np.array([f.timestamp for f, _ in frames])
    # Fresh capture times, on this machine's clock, paced like the recording.
    assert t0 <= stamps[0] and stamps[-1] <= time.monotonic()
    assert np.median(np.diff(stamps)) == pytest.approx(0.04, abs=0.01)
    assert stamps[-1] - stamps[0] == pytest.approx(0.44, abs=0.15)
    assert cam.frames_played == 12
    assert cam.wait_newer(frames[-1][0].index, 0.5) is None  # ended: nothing more comes


def test_fps_overrides_the_recorded_rate(db):
    ep = record(db, [0.04 * i for i in range(6)])
    with ReplayCamera(db, ep, fps=10) as cam:
        frames = play(cam)
    stamps = [f.timestamp for f, _ in frames]
    assert len(frames) == 6
    assert stamps[-1] - stamps[0] == pytest.approx(0.5, abs=0.15)


def test_recorded_gaps_are_replayed(db):
    ep = record(db, [0.0, 0.02, 0.04, 0.34, 0.36])  # the loop stalled for 0.3 s
    with ReplayCamera(db, ep) as cam:
        frames = play(cam)
    gaps = np.diff([f.timestamp for f, _ in frames])
    assert len(frames) == 5
    assert gaps[2] == pytest.approx(0.30, abs=0.08)
    assert max(gaps[[0, 1, 3]]) < 0.1


def test_loop_starts_again_after_the_last_frame(db):
    ep = record(db, [0.02 * i for i in range(4)])
    with EpisodeStore(db) as store:
        recorded = store.load_episode(ep).frames
    with ReplayCamera(db, ep, fps=50, loop=True) as cam:
        frames = play(cam, max_frames=10)
        assert not cam.ended and cam.loops_completed >= 2
    assert [f.index for f, _ in frames] == list(range(10))
    for k, (f, _) in enumerate(frames):
        np.testing.assert_array_equal(f.image, recorded[k % 4])
    assert np.all(np.diff([f.timestamp for f, _ in frames]) > 0.005)  # paced across the wrap too


def test_resize_to_the_policy_input(db):
    ep = record(db, [0.0, 0.02])
    with ReplayCamera(db, ep, height=60, width=80) as cam:
        frames = play(cam)
    assert [f.image.shape for f, _ in frames] == [(60, 80, 3)] * 2


def test_close_stops_promptly_and_twice_is_fine(db):
    ep = record(db, [0.0, 0.02, 0.04])
    cam = ReplayCamera(db, ep, fps=1)  # the thread sleeps a second between frames
    cam.start()
    assert cam.wait_newer(-1, 2.0) is not None
    t = time.monotonic()
    cam.close()
    assert time.monotonic() - t < 1.0
    assert not cam.alive
    cam.close()


def test_errors_name_the_problem(db, tmp_path):
    with pytest.raises(CameraError, match="no such episode database"):
        ReplayCamera(tmp_path / "missing.sqlite", 1)
    ep = record(db, [0.0])
    with pytest.raises(CameraError, match="has no episode 99"):
        ReplayCamera(db, 99)
    with Recorder(db) as rec:
        empty = rec.start_episode(meta_for())
    # An episode that never recorded a step is never written (a paused boot leaves nothing).
    with pytest.raises(CameraError, match=f"has no episode {empty}"):
        ReplayCamera(db, empty)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"junk" * 1000)
    with pytest.raises(CameraError, match="not an SQLite database"):
        ReplayCamera(junk, ep)
    with pytest.raises(ValueError, match="fps must be positive"):
        ReplayCamera(db, ep, fps=0)
