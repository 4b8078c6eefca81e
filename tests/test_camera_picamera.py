"""Picamera2Camera against a fake of the picamera2 API it uses (tests/fakes/picamera2.py)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from malpi.camera.capture import CameraError
from malpi.camera.picamera import Picamera2Camera


@pytest.fixture
def fake(monkeypatch):
    """The fake picamera2 module, installed as 'picamera2' for this test only."""
    path = Path(__file__).parent / "fakes" / "picamera2.py"
    spec = importlib.util.spec_from_file_location("picamera2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.reset()
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return module


def wait_frames(cam, n, timeout=2.0):
    frames, index = [], -1
    deadline = time.monotonic() + timeout
    while len(frames) < n and time.monotonic() < deadline:
        frame = cam.wait_newer(index, 0.5)
        if frame is not None:
            frames.append(frame)
            index = frame.index
    return frames


def test_configures_a_video_stream_and_delivers_rgb(fake):
    cam = Picamera2Camera(
        0, height=12, width=16, capture_width=64, capture_height=48, fps=100.0, buffer_count=3
    )
    with cam:
        frame = cam.wait_newer(-1, 2.0)
        pc = fake.Picamera2.instances[0]
    assert frame.image.shape == (12, 16, 3) and frame.image.dtype == np.uint8
    # The fake scene is red on the left, blue on the right, in true RGB; picamera2's
    # "RGB888" stores it B, G, R, so a missing swap would show blue on the left.
    assert tuple(int(v) for v in frame.image[6, 2]) == (255, 0, 0)
    assert tuple(int(v) for v in frame.image[6, 13]) == (0, 0, 255)

    calls = dict(pc.calls)
    assert calls["create_video_configuration"] == {
        "main": {"size": (64, 48), "format": "RGB888"},
        "buffer_count": 3,
        "controls": {"FrameRate": 100.0},
        "queue": False,
    }
    assert pc.camera_config["main"]["size"] == (64, 48)
    names = [name for name, _ in pc.calls]
    assert names.index("configure") < names.index("start") < names.index("stop")
    assert names[-1] == "close" and not pc.is_open


def test_timestamps_are_the_sensor_timestamps_on_the_monotonic_clock(fake):
    with Picamera2Camera(height=12, width=16, capture_width=64, capture_height=48, fps=50.0) as cam:
        frames = wait_frames(cam, 4)
        pc = fake.Picamera2.instances[0]
        assert len(frames) == 4
        for f in frames:
            # Each frame carries the time its own exposure was read out, not its arrival.
            assert min(abs(f.timestamp - t) for t in pc.frame_times) < 1e-3
            assert f.timestamp <= time.monotonic()
    gaps = np.diff([f.timestamp for f in frames])
    assert np.all(gaps > 0)
    assert np.median(gaps) == pytest.approx(0.02, rel=0.25)


def test_every_request_is_released(fake):
    cam = Picamera2Camera(
        height=12, width=16, capture_width=64, capture_height=48, fps=200.0, buffer_count=2
    )
    cam.start()
    frames = wait_frames(cam, 20)
    pc = fake.Picamera2.instances[0]
    cam.close()
    # With 2 buffers, an unreleased request would have stalled the camera after 2 frames.
    assert len(frames) == 20 and pc.delivered >= 20
    assert pc.outstanding_requests == 0


def test_the_scene_content_is_the_current_frame(fake):
    with Picamera2Camera(
        height=48, width=64, capture_width=64, capture_height=48, fps=100.0
    ) as cam:
        frames = wait_frames(cam, 3)
    levels = [int(f.image[0, 20, 1]) for f in frames]  # green top row = frame number
    assert levels == sorted(levels) and len(set(levels)) == 3


def test_missing_camera_fails_at_start(fake):
    fake.reset(cameras=[])
    cam = Picamera2Camera(0)
    with pytest.raises(CameraError, match="no such camera; libcamera sees 0"):
        cam.start()
    cam.close()


def test_busy_camera_fails_at_start(fake):
    other = fake.Picamera2(0)
    with pytest.raises(CameraError, match="cannot open"):
        Picamera2Camera(0).start()
    other.close()


def test_picamera2_not_installed_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    with pytest.raises(CameraError, match="apt install python3-picamera2"):
        Picamera2Camera().start()


def test_a_camera_that_stops_delivering_is_an_observable_error(fake):
    errors = []
    cam = Picamera2Camera(
        height=12,
        width=16,
        capture_width=64,
        capture_height=48,
        fps=100.0,
        frame_timeout=0.1,
        on_error=errors.append,
    )
    cam.start()
    assert wait_frames(cam, 2)
    pc = fake.Picamera2.instances[0]
    pc.hang()
    deadline = time.monotonic() + 2
    while cam.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not cam.alive
    assert isinstance(cam.error, CameraError) and "no frame within 0.1 s" in str(cam.error)
    assert errors == [cam.error]
    names = [name for name, _ in pc.calls]
    assert "cancel_all_and_flush" in names and names[-1] == "close"  # released by the thread
    cam.close()


def test_a_capture_exception_is_an_observable_error(fake):
    cam = Picamera2Camera(height=12, width=16, capture_width=64, capture_height=48, fps=100.0)
    cam.start()
    assert wait_frames(cam, 1)
    fake.Picamera2.instances[0].fail_next_capture(RuntimeError("libcamera: request failed"))
    cam._thread.join(2)
    assert isinstance(cam.error, RuntimeError) and "request failed" in str(cam.error)
    assert not fake.Picamera2.instances[0].is_open
    cam.close()


def test_unusable_sensor_timestamp_falls_back_to_arrival_time(fake):
    cam = Picamera2Camera()
    before = time.monotonic()
    assert before <= cam._timestamp({}) <= time.monotonic()
    assert before <= cam._timestamp({"SensorTimestamp": 12}) <= time.monotonic()  # another clock
    future = int((time.monotonic() + 60) * 1e9)
    assert cam._timestamp({"SensorTimestamp": future}) <= time.monotonic()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"camera_num": -1},
        {"capture_width": 641},
        {"capture_height": 0},
        {"fps": 0},
        {"fps": float("inf")},
        {"buffer_count": 0},
        {"frame_timeout": 0},
        {"crop": (0.5, 0, 0.2, 1)},
    ],
)
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        Picamera2Camera(**kwargs)
