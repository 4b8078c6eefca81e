"""A vector env whose environments live in Ray actors: ``malpi rl sim --ray``.

Rendering and stepping the simulator is the expensive part of a roll-out, so with
``--ray`` the environments move into Ray actors (one CPU each), each holding a
contiguous slice of them as its own ``SyncVectorEnv``; the network, the
:class:`~malpi.rl.ppo.RolloutCollector` and the learner stay in the driver.

:class:`RayVectorEnv` behaves as :func:`malpi.rl.common.vector_env`'s
``SyncVectorEnv`` does: ``reset(seed=s)`` seeds environment i with s + i,
``SAME_STEP`` autoreset (the final observation in ``info["final_obs"]``), the
infos merged with gymnasium's own ``_add_info``. Each environment computes what
it would locally, so a run gives the same results with it as without.

Only imported when ``--ray`` is given: this module imports Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import ray
from gymnasium.vector.utils import batch_space

from malpi.rl.common import vector_env

log = logging.getLogger(__name__)


class EnvSlice:
    """A Ray actor's share of the environments: a ``SyncVectorEnv`` of contiguous ones."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]]):
        self.envs = vector_env(env_fns)

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        return self.envs.single_observation_space, self.envs.single_action_space

    def reset(self, seed: list[int | None], options: dict | None) -> tuple[Any, list[dict]]:
        obs, info = self.envs.reset(seed=seed, options=options)
        return obs, split_info(info, self.envs.num_envs)

    def step(self, actions: np.ndarray) -> tuple:
        obs, rewards, terminated, truncated, info = self.envs.step(actions)
        return obs, rewards, terminated, truncated, split_info(info, self.envs.num_envs)

    def close(self) -> None:
        self.envs.close()


def split_info(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """A vector env's merged info back into each environment's own (the ``_key`` masks say
    which environment has which key), so the driver can merge all of them as one env would."""
    return [_env_info(info, i) for i in range(n)]


def _env_info(info: dict[str, Any], i: int) -> dict[str, Any]:
    out = {}
    for key, value in info.items():
        mask = info.get(f"_{key}")
        if key.startswith("_") or mask is None or not mask[i]:
            continue
        if isinstance(value, dict):
            out[key] = _env_info(value, i)
        elif isinstance(value, np.ndarray) and value.dtype == np.bool_ and value.ndim == 1:
            # A bool array holds Python bools (np.bool_ ones go into an object array), and
            # _add_info must see a Python bool again to build a bool array, not an object one.
            out[key] = bool(value[i])
        else:
            out[key] = value[i]
    return out


class RayVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` environments in ``actors`` Ray actors, stepped concurrently."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], actors: int):
        self.num_envs = len(env_fns)
        if not 1 <= actors <= self.num_envs:
            raise ValueError(f"{actors} actors for {self.num_envs} environments")
        bounds = np.linspace(0, self.num_envs, actors + 1).round().astype(int)
        self.actors = actors
        self._slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        remote = ray.remote(num_cpus=1, max_restarts=0)(EnvSlice)
        self._actors = [remote.remote(list(env_fns[s])) for s in self._slices]
        obs_space, action_space = ray.get(self._actors[0].spaces.remote())
        self.single_observation_space, self.single_action_space = obs_space, action_space
        self.observation_space = batch_space(obs_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        log.info("%d environments in %d Ray actors", self.num_envs, actors)

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options is not None and "reset_mask" in options:
            # The collector resets all environments together and autoresets the rest; a
            # partial reset would need every actor's current observations here.
            raise ValueError("RayVectorEnv resets all its environments together: no reset_mask")
        if seed is None or isinstance(seed, int):  # SyncVectorEnv's seed + i
            seed = [None if seed is None else seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"{len(seed)} seeds for num_envs={self.num_envs}")
        refs = [
            a.reset.remote(seed[s], options)
            for a, s in zip(self._actors, self._slices, strict=True)
        ]
        parts = ray.get(refs)
        return np.concatenate([p[0] for p in parts]), self._merge([p[1] for p in parts])

    def step(self, actions: np.ndarray) -> tuple:
        actions = np.asarray(actions)
        # All actors step at once: submit every slice's step, then wait for all.
        refs = [a.step.remote(actions[s]) for a, s in zip(self._actors, self._slices, strict=True)]
        parts = ray.get(refs)
        obs, rewards, terminated, truncated = (
            np.concatenate([p[k] for p in parts]) for k in range(4)
        )
        return obs, rewards, terminated, truncated, self._merge([p[4] for p in parts])

    def _merge(self, per_actor: list[list[dict[str, Any]]]) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        for i, env_info in enumerate(info for part in per_actor for info in part):
            infos = self._add_info(infos, env_info, i)
        return infos

    def close_extras(self, **kwargs: Any) -> None:
        try:
            ray.get([a.close.remote() for a in self._actors])
        finally:
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []


def ray_vector_env(env_fns: Sequence[Callable[[], gym.Env]]) -> RayVectorEnv:
    """The environments in min(environments, the cluster's CPUs) actors; Ray connected."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return RayVectorEnv(env_fns, min(len(env_fns), cpus))
