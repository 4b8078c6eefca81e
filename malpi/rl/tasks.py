"""Benchmark tasks: CartPole with the velocities hidden (memory needed to balance it)."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from malpi.actions import ActionTable

CARTPOLE_ACTIONS = ActionTable.from_list(
    [
        {"name": "push_left", "steering": -1.0, "throttle": 0.0},
        {"name": "push_right", "steering": 1.0, "throttle": 0.0},
    ]
)
"""CartPole's two actions, named so a CartPole policy can travel as a bundle."""

SOLVED_RETURN = 475.0


class HideVelocity(gym.ObservationWrapper):
    """CartPole observing only the cart position and the pole angle.

    The velocities must then be inferred from successive observations: a policy
    without memory cannot balance the pole for long. ``scale`` divides each by
    its termination threshold (2.4 m, 12 degrees) so both are in [-1, 1]; a fixed
    stand-in for observation normalisation.
    """

    KEEP = np.array([0, 2])

    def __init__(self, env: gym.Env, scale: bool = True):
        super().__init__(env)
        base = env.unwrapped
        limits = np.array([base.x_threshold, base.theta_threshold_radians], np.float32)
        self._scale = (1.0 / limits) if scale else np.ones(2, np.float32)
        high = (2 * limits * self._scale).astype(np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return (np.asarray(observation)[self.KEEP] * self._scale).astype(np.float32)


def cartpole_novel(scale: bool = True) -> gym.Env:
    """CartPole-v1 (500-step limit) with the velocities hidden."""
    return HideVelocity(gym.make("CartPole-v1"), scale=scale)


def cartpole_novel_fns(n: int, scale: bool = True) -> list[Callable[[], gym.Env]]:
    """Constructors for ``n`` environments (for a gymnasium vector env)."""
    return [lambda: cartpole_novel(scale) for _ in range(n)]
