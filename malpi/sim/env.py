"""The gymnasium environment: drive a camera car round a procedural track.

``gymnasium.make("MaLPi/Track-v0")`` after ``import malpi.sim.env`` (or
``gymnasium.make("malpi.sim.env:MaLPi/Track-v0")``, which imports it).

- observation: the forward camera image, Box(0, 255, (H, W, 3), uint8), RGB
- action: Discrete(n), an index into the action table (default DEFAULT_ACTIONS)
- reward: metres of progress along the centre line this step (negative backwards)
- terminated: the car left the track; truncated: ``max_steps`` reached
- info: laps, progress (laps as a float), cte, speed, on_track, s, heading_error,
  pose, track_seed, time

Each reset draws a track from ``track_seeds`` (or takes ``options["track_seed"]``),
a start point and direction, the car's trim and gains and (optionally) the
camera's looks, all from the env's seeded RNG: ``reset(seed=k)`` then the same
actions give the same observations and rewards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from malpi.actions import DEFAULT_ACTIONS, ActionTable
from malpi.sim import DEFAULT_DT
from malpi.sim.augment import Appearance, Randomization
from malpi.sim.car import CarParams
from malpi.sim.expert import Expert
from malpi.sim.render import CameraRenderer, CameraSpec
from malpi.sim.track import STANDARD_EVAL_SEEDS, TRAIN_SEEDS
from malpi.sim.world import World, texture_for, track_for_seed

ENV_ID = "MaLPi/Track-v0"
DIFF_ENV_ID = "MaLPi/TrackDiff-v0"
EVAL_ENV_ID = "MaLPi/TrackEval-v0"


class TrackEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        track_seeds: int | Iterable[int] | None = None,
        actions: ActionTable | Iterable[Mapping[str, Any]] = DEFAULT_ACTIONS,
        drivetrain: str = "steering",
        car: CarParams | None = None,
        camera: CameraSpec | None = None,
        dt: float = DEFAULT_DT,
        max_steps: int = 1000,
        random_start: bool = True,
        random_direction: bool = True,
        randomize: bool | Randomization = False,
        render_mode: str | None = None,
    ):
        if track_seeds is None:
            track_seeds = TRAIN_SEEDS
        self.track_seeds = [track_seeds] if isinstance(track_seeds, int) else list(track_seeds)
        if not self.track_seeds:
            raise ValueError("track_seeds is empty")
        self.actions = (
            actions if isinstance(actions, ActionTable) else ActionTable.from_list(actions)
        )
        # full car parameters, when given, include their own drivetrain
        self.car_params = car if car is not None else CarParams(drivetrain=drivetrain)
        self.camera_spec = camera or CameraSpec()
        self.dt = float(dt)
        self.max_steps = int(max_steps)
        self.random_start = random_start
        self.random_direction = random_direction
        self.randomization = Randomization() if randomize is True else randomize or None
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', not {render_mode!r}")
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": round(1 / self.dt)}
        sp = self.camera_spec
        self.observation_space = spaces.Box(0, 255, (sp.height, sp.width, 3), np.uint8)
        self.action_space = spaces.Discrete(len(self.actions))
        self.expert = Expert(self.actions, dt=self.dt)
        self._commands = [a.command for a in self.actions]
        self._renderers: dict[tuple[int, CameraSpec], CameraRenderer] = {}
        self.world: World | None = None
        self._appearance: Appearance | None = None
        self._steps = 0

    # -- gymnasium API ------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        options = options or {}
        if "track_seed" in options:
            track_seed = int(options["track_seed"])
        else:
            track_seed = self.track_seeds[int(rng.integers(len(self.track_seeds)))]
        track = track_for_seed(track_seed)
        if self.random_direction and rng.uniform() < 0.5:
            track = track.reversed()
        spec = self.camera_spec
        self._appearance = None
        if self.randomization is not None:
            self._appearance = Appearance(self.randomization, rng, self.observation_space.shape)
            spec = self._appearance.camera(spec)
        self.world = World(
            track, self.car_params, spec, rng=rng, renderer=self._renderer(track, spec)
        )
        if self.random_start:
            hw = track.half_width
            self.world.reset(
                s=float(rng.uniform(0, track.length)),
                offset=float(rng.uniform(-0.3, 0.3) * hw),
                heading_error=float(rng.uniform(-0.15, 0.15)),
            )
        else:
            self.world.reset()
        self._steps = 0
        return self._observe(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.world is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        if not 0 <= a < len(self._commands):
            raise ValueError(f"action {action!r} is outside Discrete({len(self._commands)})")
        reward = self.world.step(self._commands[a], self.dt)
        self._steps += 1
        terminated = not self.world.on_track
        truncated = self._steps >= self.max_steps and not terminated
        return self._observe(), float(reward), terminated, truncated, self._info()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self.world is None:
            return None
        from malpi.sim.pictures import chase_view

        return chase_view(self.world)

    # -- extras -------------------------------------------------------------------------------

    def expert_action(self) -> int:
        """What the expert would do now (a DAgger label for the current state)."""
        if self.world is None:
            raise RuntimeError("call reset() before expert_action()")
        return self.expert.act(self.world)

    def _observe(self) -> np.ndarray:
        assert self.world is not None
        image = self.world.render()
        if self._appearance is not None:
            self._appearance.apply(image)
        return image

    def _info(self) -> dict[str, Any]:
        assert self.world is not None
        info = self.world.info()
        info["step"] = self._steps
        return info

    def _renderer(self, track: Any, spec: CameraSpec) -> CameraRenderer:
        key = (track.seed, spec)
        r = self._renderers.get(key)
        if r is None:
            if len(self._renderers) >= 8:
                self._renderers.pop(next(iter(self._renderers)))
            r = self._renderers[key] = CameraRenderer(texture_for(track), spec)
        return r


def make_eval_env(track_seed: int, **kwargs: Any) -> TrackEnv:
    """A fixed-start, fixed-direction, unrandomised env on one track (for evaluation)."""
    kwargs.setdefault("random_start", False)
    kwargs.setdefault("random_direction", False)
    kwargs.setdefault("max_steps", 3000)
    return TrackEnv(track_seeds=[track_seed], **kwargs)


def register() -> None:
    """Register the environment ids with gymnasium (idempotent)."""
    specs = {
        ENV_ID: {},
        DIFF_ENV_ID: {"drivetrain": "differential"},
        EVAL_ENV_ID: {
            "track_seeds": list(STANDARD_EVAL_SEEDS),
            "random_start": False,
            "random_direction": False,
            "max_steps": 3000,
        },
    }
    for env_id, kwargs in specs.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="malpi.sim.env:TrackEnv", kwargs=kwargs)


register()
