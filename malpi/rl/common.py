"""What the training loops (:mod:`malpi.rl.ppo`, :mod:`malpi.rl.drqn`) share, none of it algorithm.

- ``Progress`` and ``TrainResult``: what a loop tells its callback, and what it returns.
- ``setup``: the network (given, or fresh from a spec), the seeds and the vector env.
- ``vector_env``: environments in lock step, each reset in the step its episode ends.
- ``gradient_step``: one optimiser step on a loss, the gradient's global norm clipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import tensorflow as tf

from malpi.policy.model import PolicyNetwork, build_policy
from malpi.policy.spec import PolicySpec


@dataclass
class Progress:
    """What the training loop tells its callback after every update."""

    steps: int
    updates: int
    wall_s: float
    episode_returns: list[float]  # the most recent finished training episodes (up to 100)
    stats: dict[str, float]
    net: PolicyNetwork


@dataclass
class TrainResult:
    net: PolicyNetwork
    steps: int
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def vector_env(env_fns: Sequence[Callable[[], gym.Env]]) -> gym.vector.SyncVectorEnv:
    """The environments stepped together. ``SAME_STEP`` autoreset: the step that ends an
    episode returns the next episode's first observation, and the final one in
    ``info["final_obs"]``."""
    return gym.vector.SyncVectorEnv(
        list(env_fns), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


def setup(
    env_fns: Sequence[Callable[[], gym.Env]],
    num_envs: int,
    spec: PolicySpec | None,
    net: PolicyNetwork | None,
    seed: int,
) -> tuple[PolicyNetwork, gym.vector.SyncVectorEnv, np.random.Generator]:
    """``net`` (or a fresh network of ``spec``), TensorFlow seeded, a generator and the env."""
    if len(env_fns) != num_envs:
        raise ValueError(f"{len(env_fns)} environment constructors for num_envs={num_envs}")
    if net is None:
        if spec is None:
            raise ValueError("give a network or a spec")
        net = build_policy(spec, seed=seed)
    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    return net, vector_env(env_fns), rng


def gradient_step(
    loss_fn: Callable[[], tuple[tf.Tensor, dict[str, tf.Tensor]]],
    variables: list,
    optimizer: Any,
    max_grad_norm: float,
) -> dict[str, tf.Tensor]:
    """Minimise ``loss_fn()`` (loss, stats) over ``variables`` by one step; stats + ``grad_norm``."""
    with tf.GradientTape() as tape:
        loss, stats = loss_fn()
    grads = tape.gradient(loss, variables)
    grads, norm = tf.clip_by_global_norm(grads, max_grad_norm)
    optimizer.apply_gradients(zip(grads, variables, strict=True))
    stats["grad_norm"] = norm
    return stats
