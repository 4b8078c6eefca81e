"""OpenCVCamera on a small generated video file (MJPG in AVI), paced like a live camera."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from malpi.camera.capture import CameraError
from malpi.camera.opencv import OpenCVCamera

FPS = 25.0
N_FRAMES = 8


def level(i: int) -> int:
    return 20 + 25 * i  # grey level of frame i's right half


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    """8 frames at 25 fps, 64x48: left half pure red, right half grey level(i)."""
    path = str(tmp_path_factory.mktemp("video") / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        img = np.full((48, 64, 3), level(i), np.uint8)
        img[:, :32] = (0, 0, 255)  # BGR red
        writer.write(img)
    writer.release()
    return path


def frame_number(image: np.ndarray) -> int:
    """Which frame this is, from the grey level of the right half (JPEG is lossy: nearest)."""
    grey = float(image[:, image.shape[1] * 3 // 4 :].mean())
    return int(np.argmin([abs(grey - level(i)) for i in range(N_FRAMES)]))


def read_all(cam: OpenCVCamera, limit: float = 3.0):
    frames, index = [], -1
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        frame = cam.wait_newer(index, 0.5)
        if frame is None:
            if not cam.alive:
                break
            continue
        frames.append(frame)
        index = frame.index
    return frames


def test_file_frames_are_rgb_at_the_policy_size(video):
    with OpenCVCamera(video, height=12, width=16) as cam:
        frame = cam.wait_newer(-1, 2.0)
    assert frame.image.shape == (12, 16, 3) and frame.image.dtype == np.uint8
    r, g, b = (int(v) for v in frame.image[6, 2])
    assert r > 200 and g < 40 and b < 40  # red stays red: BGR was converted


def period(frames) -> float:
    """Seconds per published frame (robust to a reader that skipped some)."""
    return (frames[-1].timestamp - frames[0].timestamp) / (frames[-1].index - frames[0].index)


def test_file_plays_every_frame_at_its_own_rate_then_ends(video):
    cam = OpenCVCamera(video, height=12, width=16)
    t0 = time.monotonic()
    cam.start()
    frames = read_all(cam)
    elapsed = time.monotonic() - t0
    cam.close()
    # Every frame of the file was published, in order (index i shows frame i)...
    assert frames[-1].index == N_FRAMES - 1
    assert all(frame_number(f.image) == f.index for f in frames)
    assert cam.ended and cam.error is None and not cam.alive
    # ...at the file's rate, not as fast as it decodes.
    assert period(frames) == pytest.approx(1 / FPS, rel=0.2)
    assert elapsed >= (N_FRAMES - 1) / FPS * 0.9


def test_fps_overrides_the_file_rate(video):
    with OpenCVCamera(video, height=12, width=16, fps=100.0) as cam:
        frames = read_all(cam)
    assert frames[-1].index == N_FRAMES - 1
    assert period(frames) == pytest.approx(0.01, rel=0.3)


def test_file_loops(video):
    with OpenCVCamera(video, height=12, width=16, fps=100.0, loop=True) as cam:
        frames = read_all(cam, limit=0.3)
        assert cam.alive and not cam.ended
    assert frames[-1].index >= N_FRAMES + 3  # went past the end of the file...
    assert all(frame_number(f.image) == f.index % N_FRAMES for f in frames)  # ...from its start


def test_a_slow_reader_sees_the_newest_file_frame(video):
    with OpenCVCamera(video, height=12, width=16) as cam:
        first = cam.wait_newer(-1, 2.0)
        time.sleep(4.5 / FPS)  # busy for four and a half frame periods
        frame = cam.wait_newer(first.index, 1.0)
        newest = cam.latest()
    assert frame.index >= first.index + 2  # the frames in between were never queued for us
    assert newest.index - frame.index <= 1
    assert frame_number(frame.image) == frame.index


def test_close_interrupts_pacing_promptly(video):
    cam = OpenCVCamera(video, height=12, width=16, fps=2.0)  # half a second between frames
    cam.start()
    assert cam.wait_newer(-1, 2.0) is not None
    t = time.monotonic()
    cam.close()
    assert time.monotonic() - t < 0.3
    assert not cam.alive


def test_missing_file_fails_at_start(tmp_path):
    cam = OpenCVCamera(str(tmp_path / "nope.avi"))
    with pytest.raises(CameraError, match="no such file"):
        cam.start()
    cam.close()


def test_unreadable_file_fails_at_start(tmp_path):
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(CameraError, match="cannot open"):
        OpenCVCamera(str(junk)).start()


def test_absent_device_index_fails_at_start():
    cam = OpenCVCamera("63")  # a digit string is a device index
    assert cam.source == 63
    with pytest.raises(CameraError, match="cannot open"):
        cam.start()
    cam.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"source": ""}, {"source": 1.5}, {"fps": 0}, {"fourcc": "MJPEG"}, {"capture_width": 0}],
)
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        OpenCVCamera(**kwargs)


class FakeDevice:
    """Stands in for cv2.VideoCapture on a USB camera (none on a build machine)."""

    instances: list[FakeDevice] = []

    def __init__(self, source):
        self.source, self.props, self.released, self.reads = source, {}, False, 0
        self.fail_from = None
        FakeDevice.instances.append(self)

    def isOpened(self):
        return True

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return self.props.get(prop, 0.0)

    def read(self):
        self.reads += 1
        time.sleep(0.002)
        if self.fail_from is not None and self.reads >= self.fail_from:
            return False, None
        img = np.zeros((48, 64, 3), np.uint8)
        img[:, :, 0] = 255  # BGR blue
        return True, img

    def release(self):
        self.released = True


@pytest.fixture
def fake_device(monkeypatch):
    FakeDevice.instances.clear()
    monkeypatch.setattr(cv2, "VideoCapture", FakeDevice)
    return FakeDevice


def test_device_is_asked_for_size_rate_format_and_one_buffer(fake_device):
    cam = OpenCVCamera(
        0, height=12, width=16, capture_width=320, capture_height=240, fps=30, fourcc="MJPG"
    )
    with cam:
        frame = cam.wait_newer(-1, 1.0)
        dev = fake_device.instances[0]
    assert dev.source == 0 and dev.released
    assert dev.props == {
        cv2.CAP_PROP_FOURCC: cv2.VideoWriter_fourcc(*"MJPG"),
        cv2.CAP_PROP_FRAME_WIDTH: 320,
        cv2.CAP_PROP_FRAME_HEIGHT: 240,
        cv2.CAP_PROP_FPS: 30,
        cv2.CAP_PROP_BUFFERSIZE: 1,
    }
    assert tuple(int(v) for v in frame.image[0, 0]) == (0, 0, 255)  # blue, now in RGB
    assert frame.timestamp <= time.monotonic()


def test_device_that_stops_reading_is_an_error_not_an_end(fake_device):
    cam = OpenCVCamera(0, height=12, width=16)
    cam.start()
    assert cam.wait_newer(-1, 1.0) is not None
    fake_device.instances[0].fail_from = fake_device.instances[0].reads + 1
    cam._thread.join(2)
    assert isinstance(cam.error, CameraError) and "5 reads failed in a row" in str(cam.error)
    assert not cam.ended and fake_device.instances[0].released
    cam.close()


def test_a_single_failed_read_is_tolerated(fake_device):
    cam = OpenCVCamera(0, height=12, width=16)
    cam.start()
    first = cam.wait_newer(-1, 1.0)
    dev = fake_device.instances[0]
    real_read = dev.read
    failed = []

    def flaky_read():
        if not failed:
            failed.append(1)
            return False, None
        return real_read()

    dev.read = flaky_read
    assert cam.wait_newer(first.index + 1, 1.0) is not None
    assert failed and cam.alive and cam.error is None
    cam.close()
