"""A world that runs in real time, shared by the simulated camera and drivetrain.

A background thread steps the physics at a fixed rate (100 Hz by default)
with the newest motor command; the camera renders the car's pose whenever it
wants a frame. This is how the daemon runs on a laptop with no robot: it gets
a :class:`~malpi.camera.sim.SimCamera` and a
:class:`~malpi.drivetrain.sim.SimDrivetrain` on the same :class:`RealTimeWorld`.

The thread runs while anyone holds the world (``acquire``/``release``; the
camera holds it from start to close, the drivetrain from creation to close).
A car that leaves the road is put back on the centre line, stopped, after
``respawn_after`` seconds, as a person would carry a real car back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np

from malpi.actions import STOP, MotorCommand
from malpi.sim.car import CarParams
from malpi.sim.track import STANDARD_EVAL_SEEDS
from malpi.sim.world import World

log = logging.getLogger(__name__)

_shared: RealTimeWorld | None = None
_shared_lock = threading.Lock()


class RealTimeWorld:
    def __init__(
        self,
        world: World | None = None,
        *,
        track_seed: int = STANDARD_EVAL_SEEDS[0],
        car: CarParams | None = None,
        camera: Any = None,
        seed: int | None = None,
        physics_hz: float = 100.0,
        respawn_after: float | None = 1.0,
    ):
        if not physics_hz > 0:
            raise ValueError(f"physics_hz must be positive, got {physics_hz!r}")
        self.world = world or World(track_seed, car, camera, rng=np.random.default_rng(seed))
        self.dt = 1.0 / physics_hz
        self.respawn_after = respawn_after
        self.lock = threading.RLock()
        self.respawns = 0
        self.error: BaseException | None = None  # what ended the physics thread, if anything
        self._users = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._off_since: float | None = None
        self._episode_from = 0.0  # world.travelled when the daemon's episode began

    # -- lifetime --------------------------------------------------------------------

    def acquire(self) -> None:
        """One more user: the physics thread runs while there is at least one."""
        with self.lock:
            self._users += 1
            if self._thread is None:
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name="sim-physics", daemon=True)
                self._thread.start()
                log.info("simulator running in real time on track %d", self.world.track.seed)

    def release(self) -> None:
        with self.lock:
            self._users = max(0, self._users - 1)
            if self._users or self._thread is None:
                return
            thread, self._thread = self._thread, None
            self._stopping.set()
        if thread is not threading.current_thread():
            thread.join(2.0)
        log.info("simulator stopped")

    @property
    def running(self) -> bool:
        """The physics thread is alive (False when nobody holds the world, or it failed)."""
        return self._thread is not None and self._thread.is_alive()

    # -- the car -----------------------------------------------------------------------

    def set_command(self, command: MotorCommand) -> None:
        with self.lock:
            self.world.command = command.clamped()

    def stop_car(self) -> None:
        """Zero the motor command (the car coasts to rest through its motor lag)."""
        self.set_command(STOP)

    def reset_car(self, s: float = 0.0) -> None:
        """Put the car back at rest on the centre line at arc length s."""
        with self.lock:
            self.world.reset(s)
            self._off_since = None
            self._episode_from = 0.0

    def new_episode(self) -> None:
        """Count laps and progress from here: the daemon started an episode (the car stays put,
        as a real one would)."""
        with self.lock:
            self._episode_from = self.world.travelled

    def pose(self) -> tuple[float, float, float]:
        with self.lock:
            st = self.world.car.state
            return st.x, st.y, st.heading

    def info(self) -> dict[str, Any]:
        """The world's :meth:`~malpi.sim.world.World.info`; laps and progress since the episode
        began (:meth:`new_episode`)."""
        with self.lock:
            info = self.world.info()
            progress = (self.world.travelled - self._episode_from) / self.world.track.length
        info["progress"] = progress
        info["laps"] = max(0, math.floor(progress + 1e-9))
        info["respawns"] = self.respawns
        return info

    def render(self) -> tuple[np.ndarray, float]:
        """The camera image at the current pose, and its capture time (monotonic)."""
        x, y, h = self.pose()
        stamp = time.monotonic()
        # the texture and renderer are read-only: render outside the lock
        return self.world.renderer.render(x, y, h), stamp

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the car must not keep going on a dead simulation
            self.error = exc
            log.error("simulator physics thread failed: %r", exc, exc_info=exc)
            with self.lock:
                self.world.command = STOP

    def _loop(self) -> None:
        period = self.dt
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            with self.lock:
                self.world.step(None, period)
                self._check_on_track()
            next_tick += period
            lag = time.monotonic() - next_tick
            if lag > 0.25:  # the machine stalled: skip ahead rather than fast-forwarding
                log.debug("simulator %.2f s behind real time; skipping", lag)
                next_tick = time.monotonic()
            self._stopping.wait(max(0.0, next_tick - time.monotonic()))

    def _check_on_track(self) -> None:
        if self.respawn_after is None or self.world.on_track:
            self._off_since = None
            return
        now = self.world.time
        if self._off_since is None:
            self._off_since = now
        elif now - self._off_since >= self.respawn_after:
            self.world.place(self.world.s)
            self._off_since = None
            self.respawns += 1
            log.info("car left the track; put back at s=%.2f m", self.world.s)


def shared_world(**kwargs: Any) -> RealTimeWorld:
    """The process-wide real-time world that a SimCamera and a SimDrivetrain built
    separately (e.g. from configuration) both drive. The first call's arguments
    create it; later calls return it as is."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RealTimeWorld(**kwargs)
        elif kwargs:
            log.debug("shared simulator already exists; ignoring %s", sorted(kwargs))
        return _shared


def reset_shared_world() -> None:
    """Forget the shared world (tests; a fresh start)."""
    global _shared
    with _shared_lock:
        _shared = None
