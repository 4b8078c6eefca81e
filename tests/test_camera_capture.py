"""The capture thread base and the policy-input transform, on a scripted backend."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from malpi.camera.capture import CameraError, CaptureCamera, FrameTransform

# -- FrameTransform ----------------------------------------------------------


def quadrants_bgr(h: int = 40, w: int = 60) -> np.ndarray:
    """BGR image: top-left red, top-right green, bottom-left blue, bottom-right white."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (0, 0, 255)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (255, 0, 0)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def corners(img: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in img[y, x]) for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1))]


def test_transform_resizes_and_converts_bgr_to_rgb():
    out = FrameTransform(12, 16)(quadrants_bgr(), "BGR")
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    assert corners(out) == [RED, GREEN, BLUE, WHITE]


def test_transform_output_is_fresh_contiguous_and_read_only():
    src = np.ascontiguousarray(quadrants_bgr(12, 16)[:, :, ::-1])  # already RGB, already the size
    out = FrameTransform(12, 16)(src, "RGB")
    assert np.array_equal(out, src)
    assert not np.may_share_memory(out, src)
    assert out.flags.c_contiguous and not out.flags.writeable
    with pytest.raises(ValueError):
        out[0, 0, 0] = 1


def test_transform_crop_is_in_fractions_of_the_frame():
    # The bottom half holds blue (left) and white (right).
    out = FrameTransform(10, 10, crop=(0.0, 0.5, 1.0, 1.0))(quadrants_bgr(), "BGR")
    assert corners(out) == [BLUE, WHITE, BLUE, WHITE]
    # Just the top-right quadrant.
    out = FrameTransform(4, 4, crop=(0.5, 0.0, 1.0, 0.5))(quadrants_bgr(), "BGR")
    assert set(map(tuple, out.reshape(-1, 3).tolist())) == {GREEN}


@pytest.mark.parametrize(
    "hflip, vflip, expected",
    [
        (True, False, [GREEN, RED, WHITE, BLUE]),
        (False, True, [BLUE, WHITE, RED, GREEN]),
        (True, True, [WHITE, BLUE, GREEN, RED]),
    ],
)
def test_transform_flips(hflip, vflip, expected):
    out = FrameTransform(12, 16, hflip=hflip, vflip=vflip)(quadrants_bgr(), "BGR")
    assert corners(out) == expected


def test_transform_crop_is_chosen_on_the_flipped_picture():
    # Upside-down camera: after the flip, red is bottom-right; crop the upright bottom-right.
    t = FrameTransform(4, 4, crop=(0.5, 0.5, 1.0, 1.0), hflip=True, vflip=True)
    out = t(quadrants_bgr(), "BGR")
    assert set(map(tuple, out.reshape(-1, 3).tolist())) == {RED}


def test_transform_equals_flip_then_crop_then_resize():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    t = FrameTransform(24, 32, crop=(0.25, 0.0, 0.75, 0.5), hflip=True)
    upright = src[:, ::-1, ::-1]  # flip horizontally, BGR -> RGB
    expected = upright[0:24, 16:48]  # 24 x 32: no resize needed
    assert np.array_equal(t(src, "BGR"), expected)


def test_transform_accepts_gray_and_four_channel_frames():
    gray = np.full((8, 8), 77, np.uint8)
    assert np.all(FrameTransform(4, 4)(gray) == 77)
    assert np.all(FrameTransform(4, 4)(gray[:, :, None]) == 77)
    bgrx = np.zeros((8, 8, 4), np.uint8)
    bgrx[...] = (255, 0, 0, 255)  # blue in B, G, R, X order
    out = FrameTransform(4, 4)(bgrx, "BGR")
    assert out.shape == (4, 4, 3) and corners(out) == [BLUE] * 4
    rgbx = bgrx[:, :, [2, 1, 0, 3]].copy()
    assert corners(FrameTransform(4, 4)(rgbx, "RGB")) == [BLUE] * 4


def test_transform_upscales_small_frames():
    out = FrameTransform(120, 160)(quadrants_bgr(6, 8), "BGR")
    assert out.shape == (120, 160, 3)
    assert corners(out) == [RED, GREEN, BLUE, WHITE]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 0},
        {"width": -1},
        {"height": 1.5},
        {"crop": (0, 0, 1)},
        {"crop": (0.5, 0, 0.5, 1)},
        {"crop": (0, 0.6, 1, 0.4)},
        {"crop": (-0.1, 0, 1, 1)},
        {"crop": (0, 0, 1, float("nan"))},
    ],
)
def test_transform_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        FrameTransform(**kwargs)


def test_transform_rejects_bad_frames():
    t = FrameTransform(4, 4)
    with pytest.raises(ValueError):
        t(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError):
        t(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError):
        t(np.zeros((8, 8, 3), np.uint8), "YUV")


# -- CaptureCamera -----------------------------------------------------------


class ScriptedCamera(CaptureCamera):
    """Frames whose every pixel is the frame number, at a fixed period; can fail or end on cue."""

    channel_order = "RGB"

    def __init__(self, period=0.002, frames=None, fail_at=None, open_error=None, **kw):
        super().__init__(height=4, width=4, **kw)
        self.period, self.frames, self.fail_at, self.open_error = (
            period,
            frames,
            fail_at,
            open_error,
        )
        self.n = 0
        self.timestamps: list[float] = []
        self.opened = 0
        self.released = 0
        self.grab_threads: set[str] = set()
        self.block = threading.Event()
        self.block.set()

    def _open(self):
        self.opened += 1
        if self.open_error:
            raise self.open_error

    def _grab(self):
        self.grab_threads.add(threading.current_thread().name)
        self.block.wait()
        if self.frames is not None and self.n >= self.frames:
            return None
        if self.fail_at is not None and self.n >= self.fail_at:
            raise OSError("sensor unplugged")
        time.sleep(self.period)
        ts = time.monotonic() - 0.001  # the backend's own capture time, slightly in the past
        self.timestamps.append(ts)
        img = np.full((8, 8, 3), self.n % 256, np.uint8)
        self.n += 1
        return img, ts

    def _release(self):
        self.released += 1


def test_frames_carry_the_backend_timestamp_and_an_increasing_index():
    with ScriptedCamera(period=0.005) as cam:
        seen = []
        index = -1
        while len(seen) < 5:
            frame = cam.wait_newer(index, 1.0)
            assert frame is not None
            seen.append(frame)
            index = frame.index
    for f in seen:
        assert f.image.shape == (4, 4, 3)
        assert int(f.image[0, 0, 0]) == f.index  # pixel value = grab number = index
        assert f.timestamp == cam.timestamps[f.index]
    assert [f.index for f in seen] == sorted({f.index for f in seen})


def test_a_slow_reader_only_ever_gets_the_newest_frame():
    with ScriptedCamera(period=0.001) as cam:
        first = cam.wait_newer(-1, 1.0)
        time.sleep(0.05)  # the reader is busy; ~50 frames arrive meanwhile
        frame = cam.wait_newer(first.index, 1.0)
        assert frame.index > first.index + 5  # the queued ones were skipped
        assert frame.index >= cam.latest().index - 1
        assert frame.index in (cam.n - 1, cam.n - 2)  # newest or the one being published


def test_grab_runs_in_the_capture_thread_and_close_releases_once():
    cam = ScriptedCamera()
    cam.start()
    assert cam.wait_newer(-1, 1.0) is not None
    assert cam.alive
    cam.close()
    assert not cam.alive and cam.error is None
    assert cam.released == 1
    assert cam.grab_threads and all(n.startswith("capture-") for n in cam.grab_threads)
    cam.close()  # idempotent
    assert cam.released == 1


def test_thread_failure_is_observable():
    errors = []
    cam = ScriptedCamera(fail_at=3, on_error=errors.append)
    cam.start()
    deadline = time.monotonic() + 2
    while cam.alive and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not cam.alive
    assert isinstance(cam.error, OSError) and "unplugged" in str(cam.error)
    assert errors == [cam.error]
    assert cam.released == 1  # the dead thread released the device
    assert not cam.ended
    # A reader waiting for a newer frame is not kept waiting for a dead camera.
    last = cam.latest()
    t = time.monotonic()
    assert cam.wait_newer(last.index, 5.0) is None
    assert time.monotonic() - t < 0.5
    cam.close()
    assert cam.released == 1


def test_a_failing_on_error_callback_does_not_hide_the_error():
    def boom(exc):
        raise ValueError("callback bug")

    cam = ScriptedCamera(fail_at=0, on_error=boom)
    cam.start()
    cam._thread.join(2)
    assert isinstance(cam.error, OSError)
    cam.close()


def test_end_of_stream_is_not_an_error():
    cam = ScriptedCamera(frames=3)
    cam.start()
    cam._thread.join(2)
    assert cam.ended and cam.error is None and not cam.alive
    assert cam.latest().index == 2
    cam.close()
    assert cam.released == 1


def test_open_failure_raises_from_start_and_releases():
    cam = ScriptedCamera(open_error=CameraError("no such device"))
    with pytest.raises(CameraError, match="no such device"):
        cam.start()
    assert cam.released == 1 and not cam.alive
    with pytest.raises(CameraError):
        cam.start()
    cam.close()
    assert cam.released == 1


def test_start_twice_and_after_close_are_refused():
    cam = ScriptedCamera()
    cam.start()
    with pytest.raises(CameraError, match="already started"):
        cam.start()
    cam.close()
    with pytest.raises(CameraError, match="closed"):
        cam.start()


def test_close_before_start_and_reading_before_start():
    cam = ScriptedCamera()
    assert cam.latest() is None
    t = time.monotonic()
    assert cam.wait_newer(-1, 2.0) is None  # nothing running: no waiting
    assert time.monotonic() - t < 0.5
    cam.close()
    assert cam.released == 1 and cam.opened == 0


def test_wait_newer_times_out_on_a_live_but_silent_camera():
    cam = ScriptedCamera()
    cam.block.clear()  # the grab blocks, like a camera between frames
    cam.start()
    t = time.monotonic()
    assert cam.wait_newer(-1, 0.15) is None
    assert 0.14 <= time.monotonic() - t < 0.5
    assert cam.alive
    cam.block.set()
    cam.close()


def test_close_does_not_hang_on_a_stuck_grab():
    cam = ScriptedCamera()
    cam.join_timeout = 0.1
    cam.block.clear()
    cam.start()
    t = time.monotonic()
    cam.close()
    assert time.monotonic() - t < 1.0
    assert cam.released == 0  # not released under a grab in progress...
    cam.block.set()
    cam._thread.join(2)
    assert cam.released == 1  # ...but as soon as the grab returns
