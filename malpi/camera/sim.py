"""Simulated camera: frames rendered from the car's pose in a real-time simulated world.

It is a capture-thread camera like the hardware backends: frames arrive at
``fps`` into the newest-frame slot, each stamped with the moment it was
rendered, so the control loop cannot tell it from a Pi camera. Pair it with a
:class:`malpi.drivetrain.sim.SimDrivetrain` on the same world (by passing the
same ``world``, or by both using the process-wide shared world).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from malpi.camera.capture import CaptureCamera
from malpi.sim.realtime import RealTimeWorld, shared_world


class SimCamera(CaptureCamera):
    channel_order = "RGB"

    def __init__(
        self,
        world: RealTimeWorld | None = None,
        fps: float = 20.0,
        *,
        on_error: Callable[[BaseException], None] | None = None,
        **world_kwargs: Any,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.world = world if world is not None else shared_world(**world_kwargs)
        spec = self.world.world.renderer.spec
        super().__init__(height=spec.height, width=spec.width, on_error=on_error)
        self.fps = float(fps)
        self._next = 0.0
        self._held = False

    def _open(self) -> None:
        self.world.acquire()
        self._held = True
        self._next = time.monotonic()

    def _grab(self) -> tuple[np.ndarray, float] | None:
        if not self._sleep(self._next - time.monotonic()):
            return None
        self._next += 1.0 / self.fps
        if self._next < time.monotonic() - 0.5:  # fell far behind: do not burst to catch up
            self._next = time.monotonic()
        return self.world.render()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self.world.release()

    def _describe(self) -> str:
        return f"SimCamera(track {self.world.world.track.seed}, {self.fps:g} fps)"
