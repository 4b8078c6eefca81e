"""A fake of the part of picamera2's API that malpi uses, for machines without libcamera.

Modelled on picamera2 (raspberrypi/picamera2, picamera2.py and request.py):

- ``Picamera2.global_camera_info()`` lists the attached cameras; ``Picamera2(n)``
  indexes that list (IndexError when absent) and refuses a camera already open.
- ``create_video_configuration`` merges ``main`` into the default
  ``{"format": "XBGR8888", "size": (1280, 720)}``, rounds the size down to even
  numbers, and puts a 30 fps ``FrameDurationLimits`` in front of the caller's
  controls (a ``FrameRate`` control overrides it, as picamera2's virtual
  control does).
- ``configure`` rejects unknown formats, odd sizes and a started camera.
- ``capture_request(wait=...)`` blocks until a frame completes (``wait`` a
  number: raises TimeoutError after that many seconds). With ``queue=True``
  the newest already-completed frame is returned at once; with ``queue=False``
  only a frame completing after the call. A request holds one of
  ``buffer_count`` buffers until ``release()``; with none free, no frame
  completes.
- ``CompletedRequest.make_array("main")`` returns a copy in the stream's
  memory order: "RGB888" is B, G, R per pixel, "BGR888" is R, G, B, and the
  X formats add a fourth byte. ``get_metadata()`` has ``SensorTimestamp``
  (ns on CLOCK_BOOTTIME), ``ExposureTime`` (µs) and ``FrameDuration`` (µs).

Not modelled: previews, encoders, lores/raw streams, async jobs
(``signal_function``/``wait=False``), still captures.

Test hooks: ``reset(cameras)``, ``Picamera2.instances``, ``scene`` (index,
width, height -> RGB image), ``hang()``, ``fail_next_capture(exc)``,
``frame_times`` (monotonic time each delivered frame's SensorTimestamp denotes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

_DEFAULT_CAMERAS = [
    {
        "Model": "imx219",
        "Location": 2,
        "Rotation": 180,
        "Id": "/base/soc/i2c0mux/i2c@1/imx219@10",
        "Num": 0,
    },
]
_FORMATS = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4}

_cameras: list[dict[str, Any]] = [dict(c) for c in _DEFAULT_CAMERAS]
_open: set[int] = set()


def reset(cameras: list[dict[str, Any]] | None = None) -> None:
    """Forget all instances; attach these cameras (default: one imx219)."""
    global _cameras
    _cameras = [dict(c) for c in (_DEFAULT_CAMERAS if cameras is None else cameras)]
    _open.clear()
    Picamera2.instances.clear()


def default_scene(index: int, width: int, height: int) -> np.ndarray:
    """RGB: left half pure red, right half pure blue, a green top row whose level is index % 256."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = (255, 0, 0)
    img[:, width // 2 :] = (0, 0, 255)
    img[0, :] = (0, index % 256, 0)
    return img


def _boottime_offset() -> float:
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return 0.0 if clock is None else time.clock_gettime(clock) - time.monotonic()


class CompletedRequest:
    def __init__(self, picam2: Picamera2, image: np.ndarray, metadata: dict[str, Any]):
        self.picam2 = picam2
        self.ref_count = 1
        self.config = dict(picam2.camera_config)
        self._image = image
        self._metadata = metadata

    def acquire(self) -> None:
        with self.picam2.request_lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        with self.picam2.request_lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count == 0:
                self.config = {}
                self.picam2._buffer_returned()

    def make_array(self, name: str) -> np.ndarray:
        if self.config.get(name) is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return np.copy(self._image)

    def get_metadata(self) -> dict[str, Any]:
        if self.ref_count == 0:
            raise AssertionError("request used after release")
        return dict(self._metadata)


class Picamera2:
    instances: list[Picamera2] = []
    scene: Callable[[int, int, int], np.ndarray] = staticmethod(default_scene)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in _cameras]

    def __init__(self, camera_num: int = 0, verbose_console=None, tuning=None, allocator=None):
        self.is_open = False
        num = self.global_camera_info()[camera_num]["Num"]  # IndexError, as picamera2
        if num in _open:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        _open.add(num)
        self.camera_idx = num
        self.is_open = True
        self.camera_config: dict[str, Any] = {}
        self.started = False
        self.request_lock = threading.Lock()
        self._cond = threading.Condition()
        self._outstanding = 0
        self._hung = False
        self._fail: BaseException | None = None
        self._t0 = 0.0
        self._last_delivered = -1
        self.calls: list[tuple[str, Any]] = []
        self.frame_times: list[float] = []
        self.delivered = 0
        Picamera2.instances.append(self)

    # -- configuration ---------------------------------------------------------

    def create_video_configuration(
        self,
        main={},  # noqa: B006  (picamera2's own signature)
        lores=None,
        raw={},  # noqa: B006  (picamera2's own signature)
        transform=None,
        colour_space=None,
        buffer_count=6,
        controls={},  # noqa: B006
        display="main",
        encode="main",
        queue=True,
        sensor={},  # noqa: B006
        use_case="video",
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        self.calls.append(
            (
                "create_video_configuration",
                dict(main=main, buffer_count=buffer_count, controls=controls, queue=queue),
            )
        )
        stream = {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True} | dict(main)
        w, h = stream["size"]
        stream["size"] = (w - w % 2, h - h % 2)  # align_stream(optimal=False)
        return {
            "use_case": use_case,
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": stream,
            "lores": lores,
            "raw": raw,
            "controls": {"NoiseReductionMode": "Fast", "FrameDurationLimits": (33333, 33333)}
            | dict(controls),
            "sensor": sensor,
            "display": display,
            "encode": encode,
        }

    def configure(self, camera_config=None) -> None:
        self.calls.append(("configure", camera_config))
        if not isinstance(camera_config, dict):
            raise NotImplementedError("the fake only takes configuration dicts")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        main = camera_config["main"]
        fmt, size = main.get("format"), main.get("size")
        if not isinstance(fmt, str) or fmt not in _FORMATS:
            raise RuntimeError(f"Bad format {fmt} in stream main")
        if not isinstance(size, tuple) or len(size) != 2:
            raise RuntimeError("size in main stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")
        config = dict(camera_config)
        config["main"] = dict(main, stride=size[0] * _FORMATS[fmt])
        self.camera_config = config

    def camera_configuration(self) -> dict[str, Any]:
        return self.camera_config

    @property
    def frame_duration(self) -> float:
        controls = self.camera_config.get("controls", {})
        if "FrameRate" in controls:
            return 1.0 / float(controls["FrameRate"])
        return controls.get("FrameDurationLimits", (33333, 33333))[1] / 1e6

    # -- running ---------------------------------------------------------------

    def start(self, config=None, show_preview=False) -> None:
        self.calls.append(("start", config))
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        with self._cond:
            if not self.started:
                self.started = True
                self._t0 = time.monotonic()
                self._last_delivered = -1

    def stop(self) -> None:
        self.calls.append(("stop", None))
        with self._cond:
            self.started = False
            self._cond.notify_all()

    def close(self) -> None:
        if self.is_open:
            self.stop()  # as picamera2's close() does
            self.is_open = False
            _open.discard(self.camera_idx)
        self.calls.append(("close", None))

    def cancel_all_and_flush(self) -> None:
        self.calls.append(("cancel_all_and_flush", None))

    # -- test hooks ------------------------------------------------------------

    def hang(self) -> None:
        """Stop delivering frames, as with a dislodged cable."""
        with self._cond:
            self._hung = True

    def fail_next_capture(self, exc: BaseException) -> None:
        with self._cond:
            self._fail = exc

    @property
    def outstanding_requests(self) -> int:
        return self._outstanding

    # -- capture ---------------------------------------------------------------

    def capture_request(self, wait=None, signal_function=None, flush=None) -> CompletedRequest:
        if signal_function is not None or wait is False or flush is not None:
            raise NotImplementedError("the fake supports blocking capture_request only")
        timeout = None if wait in (None, True) else float(wait)
        deadline = None if timeout is None else time.monotonic() + timeout
        dur = self.frame_duration
        with self._cond:
            if self._fail is not None:
                exc, self._fail = self._fail, None
                raise exc
            now = time.monotonic()
            completed = int((now - self._t0) / dur) - 1  # the newest frame finished by now
            if self.camera_config.get("queue", True) and completed > self._last_delivered:
                index = completed
            else:
                index = max(completed + 1, self._last_delivered + 1)
            while True:
                due = self._t0 + (index + 1) * dur
                now = time.monotonic()
                ready = (
                    self.started
                    and not self._hung
                    and now >= due
                    and self._outstanding < self.camera_config["buffer_count"]
                )
                if ready:
                    break
                if deadline is not None and now >= deadline:
                    raise TimeoutError()
                if deadline is None and not self.started:
                    raise RuntimeError(
                        "fake: capture_request on a stopped camera would block forever"
                    )
                step = max(due - now, 0.001)
                if deadline is not None:
                    step = min(step, max(deadline - now, 0.0))
                self._cond.wait(step)
            self._last_delivered = index
            self._outstanding += 1
            self.delivered += 1
        readout_start = due - dur / 4
        self.frame_times.append(readout_start)
        w, h = self.camera_config["main"]["size"]
        rgb = np.asarray(type(self).scene(index, w, h), np.uint8)
        image = self._to_memory_order(rgb, self.camera_config["main"]["format"])
        metadata = {
            "SensorTimestamp": int((readout_start + _boottime_offset()) * 1e9),
            "ExposureTime": int(min(dur * 0.5, 0.01) * 1e6),
            "FrameDuration": int(dur * 1e6),
        }
        return CompletedRequest(self, image, metadata)

    def _buffer_returned(self) -> None:
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()

    @staticmethod
    def _to_memory_order(rgb: np.ndarray, fmt: str) -> np.ndarray:
        if fmt == "BGR888":
            return rgb.copy()
        if fmt == "RGB888":
            return rgb[:, :, ::-1].copy()
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        if fmt == "XBGR8888":
            return np.concatenate([rgb, alpha], axis=2)
        return np.concatenate([rgb[:, :, ::-1], alpha], axis=2)  # XRGB8888
