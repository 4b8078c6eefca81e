"""Evaluation episodes for any batched policy, many environments in lock step.

A policy here is anything with ``reset(n)`` and ``act(obs, starts) -> actions``
over a batch of ``n`` environments (``starts[i]`` is true on the first
observation of an episode). MaLPi's network actor, the DRQN actor and
sb3-contrib's RecurrentPPO (through an adapter in the benchmark) all fit, so all
are judged by the same episodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import gymnasium as gym
import numpy as np

log = logging.getLogger(__name__)


class BatchPolicy(Protocol):
    def reset(self, n: int) -> None: ...

    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EvalResult:
    returns: np.ndarray  # (episodes,)
    lengths: np.ndarray  # (episodes,)

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())


def evaluate(
    policy: BatchPolicy,
    env_fn: Callable[[], gym.Env],
    episodes: int = 100,
    seed: int = 10_000,
    parallel: int = 100,
) -> EvalResult:
    """Run ``episodes`` complete episodes (env ``i`` reset with ``seed + i``); no autoreset.

    Up to ``parallel`` environments step together so a recurrent policy is run
    batched; finished ones wait (their actions are ignored) until the batch ends.
    """
    returns: list[float] = []
    lengths: list[int] = []
    envs: list[gym.Env] = []
    try:
        for first in range(0, episodes, parallel):
            n = min(parallel, episodes - first)
            while len(envs) < n:
                envs.append(env_fn())
            obs = np.stack([envs[i].reset(seed=seed + first + i)[0] for i in range(n)])
            policy.reset(n)
            starts = np.ones(n, bool)
            active = np.ones(n, bool)
            ret = np.zeros(n)
            length = np.zeros(n, int)
            while active.any():
                actions = policy.act(obs, starts)
                starts = np.zeros(n, bool)
                for i in np.flatnonzero(active):
                    o, r, term, trunc, _ = envs[i].step(int(actions[i]))
                    obs[i] = o
                    ret[i] += float(r)
                    length[i] += 1
                    if term or trunc:
                        active[i] = False
            returns += ret.tolist()
            lengths += length.tolist()
    finally:
        for env in envs:
            env.close()
    return EvalResult(np.array(returns), np.array(lengths))
