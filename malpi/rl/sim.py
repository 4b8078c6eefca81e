"""``malpi rl sim``: fine-tune a (behaviour-cloned) image policy with recurrent PPO in the simulator.

The environments are the simulator's training tracks (never the held-out
evaluation tracks 1000-1009 that ``malpi eval`` drives), at the policy's
camera size, with the car the daemon simulates. The reward is the simulator's:
metres of progress along the centre line each step, plus ``time_reward`` every
step and ``departure_penalty`` when the car leaves the road (which ends the
episode: terminated, no bootstrap); an episode cut at ``max_steps`` is
truncated and bootstrapped.

A behaviour-cloned policy's value head was never trained (imitation gives it
no gradient), so the first ``value_warmup`` updates fit only the value head on
the policy's own roll-outs; with a critic that knows nothing the first policy
updates would follow noise. Then the whole network is trained with PPO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np

from malpi.policy.bundle import PolicyBundle

log = logging.getLogger(__name__)


@dataclass
class SimFineTuneConfig:
    total_steps: int = 50_000
    num_envs: int = 4
    num_steps: int = 128
    seq_len: int = 32
    epochs: int = 4
    minibatches: int = 4
    learning_rate: float = 1e-4
    clip: float = 0.1
    ent_coef: float = 0.003
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_steps: int = 500
    time_reward: float = 0.0
    departure_penalty: float = -5.0
    value_warmup: int = 2
    car: str = "differential"  # the daemon's simulated car
    car_noise: float = 1.0
    randomize: bool = False
    seed: int = 0


class DrivingReward(gym.Wrapper):
    """Progress (the env's reward) + a per-step time reward + a penalty for leaving the road."""

    def __init__(self, env: gym.Env, time_reward: float, departure_penalty: float):
        super().__init__(env)
        self.time_reward, self.departure_penalty = time_reward, departure_penalty

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward = float(reward) + self.time_reward + (self.departure_penalty if terminated else 0.0)
        return obs, reward, terminated, truncated, info


def env_fns(bundle: PolicyBundle, cfg: SimFineTuneConfig) -> list[Callable[[], gym.Env]]:
    from malpi.sim.car import CarParams
    from malpi.sim.env import TrackEnv
    from malpi.sim.render import CameraSpec

    # Only what an environment needs, not the bundle's weights: these travel to Ray's actors.
    spec, actions = bundle.spec, bundle.actions

    def make() -> gym.Env:
        env = TrackEnv(
            actions=actions,
            car=CarParams(drivetrain=cfg.car, noise=cfg.car_noise),
            camera=CameraSpec(width=spec.image_width, height=spec.image_height),
            max_steps=cfg.max_steps,
            randomize=cfg.randomize,
        )
        return DrivingReward(env, cfg.time_reward, cfg.departure_penalty)

    return [make for _ in range(cfg.num_envs)]


def make_envs(fns: list[Callable[[], gym.Env]], ray: str | None) -> gym.vector.VectorEnv:
    """The environments here (a ``SyncVectorEnv``) or, given ``ray``, in Ray actors."""
    if ray is None:
        from malpi.rl.common import vector_env

        return vector_env(fns)
    from malpi.rl.remote import ray_vector_env

    return ray_vector_env(fns)


def fine_tune(
    policy: str | PolicyBundle, cfg: SimFineTuneConfig, ray: str | None = None
) -> PolicyBundle:
    """PPO from ``policy`` for ``cfg.total_steps`` simulator steps; the new bundle (version + 1).

    ``ray`` (``auto`` or a head's ``HOST:PORT``): the environments run in Ray actors
    (:mod:`malpi.rl.remote`), the network and the learner here; the same result either way.
    """
    if ray is not None:
        from malpi.workers import connect

        connect(ray)  # first: a cluster that cannot be joined fails before any work
    import tensorflow as tf

    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy
    from malpi.rl.ppo import (
        Actor,
        Learner,
        PPOConfig,
        RolloutCollector,
        make_sequences,
        rollout_gae,
    )
    from malpi.sim import DEFAULT_DT

    bundle = policy if isinstance(policy, PolicyBundle) else PolicyBundle.load(policy)
    if not bundle.spec.is_image:
        raise ValueError("malpi rl sim fine-tunes image policies; this bundle takes vectors")
    net = build_policy(bundle.spec)
    net.set_named_weights(bundle.weights)
    tf.random.set_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    ppo_cfg = PPOConfig(
        num_envs=cfg.num_envs,
        num_steps=cfg.num_steps,
        seq_len=cfg.seq_len,
        total_steps=cfg.total_steps,
        learning_rate=cfg.learning_rate,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        epochs=cfg.epochs,
        minibatches=cfg.minibatches,
        clip=cfg.clip,
        ent_coef=cfg.ent_coef,
        seed=cfg.seed,
    )
    critic = Learner(net, ppo_cfg, variables=net.value_head.trainable_variables)
    learner = Learner(net, ppo_cfg)
    envs = make_envs(env_fns(bundle, cfg), ray)
    collector = RolloutCollector(envs, Actor(net, seed=cfg.seed), seed=cfg.seed)
    per_update = cfg.num_steps * cfg.num_envs
    updates = max(1, cfg.total_steps // per_update)
    t0 = time.perf_counter()
    steps = 0
    try:
        for update in range(updates):
            rollout = collector.collect(cfg.num_steps)
            steps += per_update
            rollout["advantages"], rollout["returns"] = rollout_gae(
                rollout, cfg.gamma, cfg.gae_lambda
            )
            sequences = make_sequences(rollout, cfg.seq_len)
            warming = update < cfg.value_warmup
            remaining = 1.0 - update / updates
            stats = (critic if warming else learner).update(
                sequences, cfg.learning_rate * (10.0 if warming else remaining), cfg.clip, rng
            )
            finished = list(collector.finished)
            departures = int(rollout["terminated"].sum())
            log.info(
                "%s %d/%d: %d steps, return %.2f (last %d episodes), %d departures this rollout, "
                "v_loss %.4f, kl %.4f, %.0f steps/s",
                "value warm-up" if warming else "update",
                update + 1,
                updates,
                steps,
                float(np.mean(finished[-20:])) if finished else float("nan"),
                min(20, len(finished)),
                departures,
                stats["v_loss"],
                stats["approx_kl"],
                steps / (time.perf_counter() - t0),
            )
    finally:
        envs.close()
    return make_bundle(
        net,
        bundle.actions,
        provenance={
            "made_by": "malpi rl sim",
            "from": bundle.label,
            "steps": steps,
            "config": asdict(cfg),
        },
        version=bundle.version + 1,
        parent=bundle.id,
        control_hz=1.0 / DEFAULT_DT,  # TrackEnv's step
    )
