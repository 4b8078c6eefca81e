"""The camera a configuration names: the one place that maps ``[camera]`` onto a backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from malpi.camera.base import Camera
from malpi.config import Config


def camera_from_config(config: Config, sim_world: Any = None) -> Camera:
    """The configured camera (not started); ``sim_world`` feeds the ``sim`` backend."""
    cam = config.camera
    common: dict[str, Any] = {
        "height": cam.height,
        "width": cam.width,
        "hflip": cam.hflip,
        "vflip": cam.vflip,
        "crop": tuple(cam.crop) if cam.crop else None,
    }
    if cam.backend == "sim":
        from malpi.camera.sim import SimCamera

        return SimCamera(sim_world, fps=cam.fps)
    if cam.backend == "picamera2":
        from malpi.camera.picamera import Picamera2Camera

        p = cam.picamera2
        return Picamera2Camera(
            p.camera_num,
            capture_width=p.capture_width,
            capture_height=p.capture_height,
            fps=cam.fps,
            **common,
        )
    if cam.backend == "opencv":
        from malpi.camera.opencv import OpenCVCamera

        o = cam.opencv
        return OpenCVCamera(
            o.source,
            capture_width=o.capture_width or None,
            capture_height=o.capture_height or None,
            fps=cam.fps,
            loop=o.loop,
            **common,
        )
    from malpi.camera.replay import ReplayCamera

    r = cam.replay
    return ReplayCamera(Path(r.db).expanduser(), r.episode, fps=cam.fps, loop=r.loop, **common)
