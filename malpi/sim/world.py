"""One simulated world: a track, a car on it, its progress, and the car's camera.

The world is stepped explicitly (``step(command, dt)``): as fast as possible
by the gymnasium environment and the expert, or from a background thread in
real time by :mod:`malpi.sim.realtime`. It does no locking itself.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from malpi.actions import STOP, MotorCommand
from malpi.sim.car import Car, CarParams, CarState
from malpi.sim.track import Track, generate_track

FLOOR_MARGIN = 3.0  # m of floor around the track; beyond it is a wall the car stops at
_TEXTURES: OrderedDict[tuple[int, float], Any] = OrderedDict()
_TEXTURE_CACHE = 8  # a handful of floors (~10 MB each) so cycling tracks does not redraw them
_TRACKS: dict[int, Track] = {}


def track_for_seed(seed: int) -> Track:
    """The (cached) track of this seed."""
    if seed not in _TRACKS:
        _TRACKS[seed] = generate_track(seed)
    return _TRACKS[seed]


def texture_for(track: Track, ppm: float = 100.0) -> Any:
    """The (cached) floor texture of a seed-generated track; drawn once per seed."""
    from malpi.sim.texture import TrackTexture  # cv2 only when something renders

    canonical = track_for_seed(track.seed)
    same = track is canonical or track.forward is canonical
    if not same:  # a hand-made track: no caching
        return TrackTexture(track, ppm, FLOOR_MARGIN)
    key = (track.seed, ppm)
    if key in _TEXTURES:
        _TEXTURES.move_to_end(key)
    else:
        _TEXTURES[key] = TrackTexture(canonical, ppm, FLOOR_MARGIN)
        while len(_TEXTURES) > _TEXTURE_CACHE:
            _TEXTURES.popitem(last=False)
    return _TEXTURES[key]


@dataclass(frozen=True)
class WorldState:
    """A complete snapshot: ``World.set_state`` of it reproduces the future exactly
    (given the same noise draws)."""

    car: CarState
    time: float
    s: float  # arc length of the car's foot point on the centre line
    index: int  # nearest centre-line sample (search hint)
    travelled: float  # signed metres along the track since reset


class World:
    """A track and a car. Rendering is optional and built on first use."""

    def __init__(
        self,
        track: Track | int,
        car: CarParams | None = None,
        camera: Any = None,
        rng: np.random.Generator | None = None,
        ppm: float = 100.0,
        renderer: Any = None,
    ):
        self.track = track_for_seed(track) if isinstance(track, int) else track
        self.car = Car(car, rng)
        self.camera_spec = camera  # a render.CameraSpec, or None for the default
        self.ppm = ppm
        self._renderer: Any = renderer  # a CameraRenderer of this track, to share one
        xmin, ymin, xmax, ymax = self.track.bounds
        self.floor = (
            xmin - FLOOR_MARGIN,
            ymin - FLOOR_MARGIN,
            xmax + FLOOR_MARGIN,
            ymax + FLOOR_MARGIN,
        )
        self.command: MotorCommand = STOP
        self.reset()

    # -- episode -------------------------------------------------------------------

    def reset(self, s: float = 0.0, offset: float = 0.0, heading_error: float = 0.0) -> None:
        """Start afresh: the car at rest at arc length s, ``offset`` m left of the centre
        line, turned ``heading_error`` rad from the track direction; clock and progress zero."""
        self.time = 0.0
        self.travelled = 0.0
        self.car.reset(0.0, 0.0, 0.0)  # this episode's trim and gains
        self.place(s, offset, heading_error)

    def place(self, s: float, offset: float = 0.0, heading_error: float = 0.0) -> None:
        """Put the car down at rest (as a hand would) without resetting clock or progress."""
        x, y, h = self.track.point_at(s)
        x -= math.sin(h) * offset
        y += math.cos(h) * offset
        self.car.put(x, y, h + heading_error)
        self.command = STOP
        p = self.track.project(x, y)
        self._index, self.s, self.cte = p.index, p.s, p.cte
        self.track_heading = p.heading

    def step(self, command: MotorCommand | None = None, dt: float = 0.05) -> float:
        """Advance dt seconds under ``command`` (or the last one); returns metres of progress."""
        if command is not None:
            self.command = command
        st = self.car.step(self.command, dt)
        fx0, fy0, fx1, fy1 = self.floor
        if not (fx0 <= st.x <= fx1 and fy0 <= st.y <= fy1):  # hit the wall round the floor
            diff = self.car.params.drivetrain == "differential"
            x, y = min(max(st.x, fx0), fx1), min(max(st.y, fy0), fy1)
            self.car.set_state(replace(st, x=x, y=y, speed=0.0, a1=0.0, a0=0.0 if diff else st.a0))
            st = self.car.state
        self.time += dt
        p = self.track.project(st.x, st.y, self._index)
        if abs(p.cte) > self.track.width:  # far off the road: the local search may be lost
            p = self.track.project(st.x, st.y)
        delta = self.track.progress_delta(self.s, p.s)
        self._index, self.s, self.cte, self.track_heading = p.index, p.s, p.cte, p.heading
        self.travelled += delta
        return delta

    # -- observations ----------------------------------------------------------------

    @property
    def on_track(self) -> bool:
        """The car's reference point is on the road (inside the outer edge of the edge lines)."""
        return abs(self.cte) <= self.track.half_width

    @property
    def laps(self) -> int:
        """Completed laps since reset (driving backwards un-completes them)."""
        return max(0, math.floor(self.travelled / self.track.length + 1e-9))

    @property
    def index(self) -> int:
        """The centre-line sample nearest the car."""
        return self._index

    @property
    def heading_error(self) -> float:
        return math.remainder(self.car.state.heading - self.track_heading, math.tau)

    def info(self) -> dict[str, Any]:
        st = self.car.state
        return {
            "laps": self.laps,
            "progress": self.travelled / self.track.length,
            "cte": self.cte,
            "speed": st.speed,
            "on_track": self.on_track,
            "s": self.s,
            "heading_error": self.heading_error,
            "pose": (st.x, st.y, st.heading),
            "track_seed": self.track.seed,
            "time": self.time,
        }

    @property
    def renderer(self) -> Any:
        if self._renderer is None:
            from malpi.sim.render import CameraRenderer

            self._renderer = CameraRenderer(texture_for(self.track, self.ppm), self.camera_spec)
        return self._renderer

    def render(self, out: np.ndarray | None = None) -> np.ndarray:
        """The camera image from the car's current pose."""
        st = self.car.state
        return self.renderer.render(st.x, st.y, st.heading, out)

    # -- snapshots ----------------------------------------------------------------------

    def get_state(self) -> WorldState:
        return WorldState(self.car.state, self.time, self.s, self._index, self.travelled)

    def set_state(self, state: WorldState) -> None:
        self.car.set_state(state.car)
        self.time, self.s, self._index, self.travelled = (
            state.time,
            state.s,
            state.index,
            state.travelled,
        )
        p = self.track.project(state.car.x, state.car.y, state.index)
        self.cte, self.track_heading = p.cte, p.heading
