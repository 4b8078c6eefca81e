"""Expert demonstrations: camera frames, actions, rewards, driven by the scripted expert.

A demonstration runs the gymnasium environment (so frames are exactly what a
policy would see, including any randomisation) with the expert choosing the
actions. With ``noise_prob`` > 0 a random action is taken instead some of the
time, while ``expert_actions`` still records what the expert wanted: the car
drifts off the ideal line and the data shows how to recover (as in DART).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import DEFAULT_ACTIONS, ActionTable
from malpi.sim.env import TrackEnv


@dataclass
class Demonstration:
    track_seed: int
    frames: np.ndarray  # (T, H, W, 3) uint8: the observation each action was chosen on
    actions: np.ndarray  # (T,) int64: the action taken
    expert_actions: np.ndarray  # (T,) int64: the expert's choice (= actions without noise)
    rewards: np.ndarray  # (T,) float32: progress in metres after each action
    cte: np.ndarray  # (T,) float32: cross-track error after each action
    speed: np.ndarray  # (T,) float32: speed after each action
    poses: np.ndarray  # (T, 3) float32: x, y, heading when the frame was taken
    terminated: bool  # left the track
    laps: int

    def __len__(self) -> int:
        return len(self.actions)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> Demonstration:
        with np.load(path) as z:
            kw: dict[str, Any] = {f.name: z[f.name] for f in fields(cls)}
        for k in ("track_seed", "laps"):
            kw[k] = int(kw[k])
        kw["terminated"] = bool(kw["terminated"])
        return cls(**kw)


def demonstrate(
    track_seed: int,
    steps: int = 1000,
    *,
    actions: ActionTable = DEFAULT_ACTIONS,
    noise_prob: float = 0.0,
    seed: int = 0,
    **env_kwargs: Any,
) -> Demonstration:
    """Drive ``steps`` control periods on one track with the expert (stops early if the
    car leaves the track). ``env_kwargs`` go to :class:`TrackEnv` (drivetrain, camera,
    randomize, random_start, dt ...); by default the start is the start line."""
    env_kwargs.setdefault("random_start", False)
    env_kwargs.setdefault("random_direction", False)
    env = TrackEnv(track_seeds=[track_seed], actions=actions, max_steps=steps, **env_kwargs)
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    shape = env.observation_space.shape
    frames = np.empty((steps, *shape), np.uint8)
    taken = np.empty(steps, np.int64)
    wanted = np.empty(steps, np.int64)
    rewards = np.empty(steps, np.float32)
    cte = np.empty(steps, np.float32)
    speed = np.empty(steps, np.float32)
    poses = np.empty((steps, 3), np.float32)
    terminated = False
    n = 0
    while n < steps:
        frames[n] = obs
        poses[n] = info["pose"]
        wanted[n] = env.expert_action()
        explore = noise_prob > 0 and rng.uniform() < noise_prob
        taken[n] = int(rng.integers(len(actions))) if explore else wanted[n]
        obs, rewards[n], terminated, truncated, info = env.step(taken[n])
        cte[n], speed[n] = info["cte"], info["speed"]
        n += 1
        if terminated or truncated:
            break
    return Demonstration(
        track_seed, frames[:n], taken[:n], wanted[:n], rewards[:n], cte[:n], speed[:n],
        poses[:n], bool(terminated), int(info["laps"]),
    )  # fmt: skip
