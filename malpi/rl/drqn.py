"""Recurrent Q-learning (DRQN, with R2D2's stored state and burn-in) on MaLPi's policy network.

The Q-network *is* a :class:`PolicyNetwork`: its policy head's logits are read
as Q-values (the value head is unused), so the same LSTM code path, the same
reset-by-episode-start and the same bundles apply; ``argmax`` of the logits is
the greedy action, exactly what the robot's step policy picks by default.

- Acting: epsilon-greedy over ``num_envs`` environments with the sequence
  model at T=1, keeping each environment's LSTM state (``malpi.rl.ppo.Actor``).
- Replay: every ``seq_len`` steps each environment emits a sequence of
  ``burn_in + seq_len + n_step`` steps (overlapping the previous one), with the
  LSTM state the actor had *before* its first step. Episodes may begin inside a
  sequence: the start flags reset the state there, as when acting.
- Learning: the stored state (or a zero state, ``stored_state=False``, the
  "stale state" ablation of R2D2) is carried through ``burn_in`` steps without
  gradient by both the online and the target network; then n-step double-Q
  targets, a Huber loss on the ``seq_len`` learning steps, and a target
  network copied every ``target_every`` updates. Replay is uniform.

A truncated episode (a time limit) is bootstrapped from the target network's
value of its final observation, computed when the step is collected (slightly
stale, and rare: only at the time limit); a terminated one is not bootstrapped.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import keras
import numpy as np
import tensorflow as tf

from malpi.policy.model import PolicyNetwork, build_policy
from malpi.policy.spec import PolicySpec
from malpi.rl.common import Progress, TrainResult, gradient_step, setup
from malpi.rl.ppo import Actor

log = logging.getLogger(__name__)


@dataclass
class DRQNConfig:
    num_envs: int = 8
    total_steps: int = 100_000
    seq_len: int = 20  # learning steps per replayed sequence
    burn_in: int = 10  # steps replayed only to warm the LSTM state up
    n_step: int = 3
    stored_state: bool = True  # False: every sequence starts from a zero state
    gamma: float = 0.99
    learning_rate: float = 3e-4
    batch_size: int = 32  # sequences per update
    buffer_sequences: int = 3000
    learning_starts: int = 5_000  # environment steps before the first update
    train_every: int = 1  # vector steps (of num_envs environment steps) per update
    target_every: int = 500  # updates between target-network copies
    epsilon_start: float = 1.0
    epsilon_end: float = 0.02
    epsilon_steps: int = 20_000
    max_grad_norm: float = 10.0
    seed: int = 0
    log_every: int = 5_000  # environment steps between log lines

    @property
    def window(self) -> int:
        return self.burn_in + self.seq_len + self.n_step


CARTPOLE_DRQN_CONFIG = DRQNConfig()


class ReplayBuffer:
    """A ring buffer of fixed-length sequences with the LSTM state at their first step."""

    def __init__(
        self, capacity: int, window: int, obs_shape: tuple[int, ...], obs_dtype, units: int
    ):
        self.capacity = capacity
        self.size = 0
        self._next = 0
        self.data = {
            "obs": np.zeros((capacity, window, *obs_shape), obs_dtype),
            "prev": np.zeros((capacity, window), np.int32),
            "starts": np.zeros((capacity, window), np.float32),
            "actions": np.zeros((capacity, window), np.int32),
            "rewards": np.zeros((capacity, window), np.float32),
            "terminated": np.zeros((capacity, window), np.float32),
            "truncated": np.zeros((capacity, window), np.float32),
            "trunc_values": np.zeros((capacity, window), np.float32),
            "h0": np.zeros((capacity, units), np.float32),
            "c0": np.zeros((capacity, units), np.float32),
        }

    def add(self, sequence: dict[str, np.ndarray]) -> None:
        for key, value in sequence.items():
            self.data[key][self._next] = value
        self._next = (self._next + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, batch_size)
        return {k: v[idx] for k, v in self.data.items()}


class SequenceWriter:
    """Cuts each environment's stream of steps into overlapping replay sequences.

    A sequence covering steps [s, s + window) is emitted once step s + window - 1
    is known; the next one starts ``seq_len`` steps later, so the learning parts
    tile the stream and burn-in / n-step tails overlap their neighbours.
    """

    KEYS = (
        "obs",
        "prev",
        "starts",
        "actions",
        "rewards",
        "terminated",
        "truncated",
        "trunc_values",
    )

    def __init__(self, num_envs: int, window: int, stride: int):
        self.window, self.stride = window, stride
        self.steps: list[deque[dict[str, Any]]] = [deque() for _ in range(num_envs)]

    def push(self, env: int, step: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """Add one step (with the state ``h``/``c`` before it); returns a full sequence if one is due."""
        q = self.steps[env]
        q.append(step)
        if len(q) < self.window:
            return None
        seq = {k: np.stack([s[k] for s in q]) for k in self.KEYS}
        seq["h0"], seq["c0"] = q[0]["h"], q[0]["c"]
        for _ in range(self.stride):
            q.popleft()
        return seq


class QLearner:
    """Online and target Q-networks and the burn-in + n-step double-Q update."""

    def __init__(self, net: PolicyNetwork, config: DRQNConfig):
        self.net = net
        self.config = config
        self.target = build_policy(net.spec)
        self.sync_target()
        # The value head is not part of a Q-network: it is left out of the optimisation.
        self.variables = (
            net.encoder.trainable_variables
            + net.cell.trainable_variables
            + net.policy_head.trainable_variables
        )
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        self.optimizer.build(self.variables)
        self._train_step = tf.function(self._step, reduce_retracing=True)

    def sync_target(self) -> None:
        self.target.sequence_model.set_weights(self.net.sequence_model.get_weights())

    def unroll(
        self, net: PolicyNetwork, batch: dict[str, tf.Tensor], h0: tf.Tensor, c0: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Q-values over the batch's steps from state (h0, c0); returns (q, h, c)."""
        out = net.sequence_model(
            {
                "frames": batch["obs"],
                "prev_actions": tf.one_hot(batch["prev"], net.spec.num_actions),
                "episode_starts": batch["starts"],
                "h0": h0,
                "c0": c0,
            }
        )
        return out["logits"], out["h"], out["c"]

    def initial_state(self, batch: dict[str, tf.Tensor], net: PolicyNetwork):
        """The state after burn-in, without gradient: stored (or zero) state carried through it."""
        cfg = self.config
        h0, c0 = batch["h0"], batch["c0"]
        if not cfg.stored_state:
            h0, c0 = tf.zeros_like(h0), tf.zeros_like(c0)
        if cfg.burn_in == 0:
            return h0, c0
        warm = {k: v[:, : cfg.burn_in] for k, v in batch.items() if k not in ("h0", "c0")}
        _, h, c = self.unroll(net, warm, h0, c0)
        return tf.stop_gradient(h), tf.stop_gradient(c)

    def targets(self, batch: dict[str, tf.Tensor]) -> tf.Tensor:
        """n-step double-Q targets for the learning steps, (B, seq_len)."""
        cfg = self.config
        rest = {k: v[:, cfg.burn_in :] for k, v in batch.items() if k not in ("h0", "c0")}
        q_online, _, _ = self.unroll(self.net, rest, *self.initial_state(batch, self.net))
        q_target, _, _ = self.unroll(self.target, rest, *self.initial_state(batch, self.target))
        best = tf.argmax(q_online, axis=-1, output_type=tf.int32)
        next_value = tf.gather(q_target, best, batch_dims=2)  # (B, seq_len + n_step)
        L, n, gamma = cfg.seq_len, cfg.n_step, cfg.gamma
        ret = tf.zeros_like(next_value[:, :L])
        alive = tf.ones_like(ret)  # 1 while no episode boundary has been crossed
        for k in range(n):
            r = rest["rewards"][:, k : k + L]
            term = rest["terminated"][:, k : k + L]
            trunc = rest["truncated"][:, k : k + L]
            ret += alive * (gamma**k) * (r + gamma * trunc * rest["trunc_values"][:, k : k + L])
            alive *= (1.0 - term) * (1.0 - trunc)
        ret += alive * (gamma**n) * next_value[:, n : n + L]
        return tf.stop_gradient(ret)

    def loss(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        cfg = self.config
        target = self.targets(batch)
        rest = {
            k: v[:, cfg.burn_in : cfg.burn_in + cfg.seq_len]
            for k, v in batch.items()
            if k not in ("h0", "c0")
        }
        q, _, _ = self.unroll(self.net, rest, *self.initial_state(batch, self.net))
        q_taken = tf.gather(q, rest["actions"], batch_dims=2)
        loss = tf.reduce_mean(
            keras.losses.Huber(reduction=None)(target[..., None], q_taken[..., None])
        )
        return loss, {"loss": loss, "q": tf.reduce_mean(q_taken)}

    def _step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return gradient_step(
            lambda: self.loss(batch), self.variables, self.optimizer, self.config.max_grad_norm
        )

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        stats = self._train_step({k: tf.convert_to_tensor(v) for k, v in batch.items()})
        return {k: float(v) for k, v in stats.items()}


def train(
    env_fns: Sequence[Callable[[], gym.Env]],
    spec: PolicySpec | None = None,
    config: DRQNConfig | None = None,
    net: PolicyNetwork | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    callback_every: int = 5_120,
) -> TrainResult:
    """Train a recurrent Q-network; ``callback`` every ``callback_every`` steps, True stops."""
    cfg = config or DRQNConfig()
    net, envs, rng = setup(env_fns, cfg.num_envs, spec, net, cfg.seed)
    N = cfg.num_envs
    actor = Actor(net, greedy=True)
    learner = QLearner(net, cfg)
    target_actor = Actor(learner.target, greedy=True)
    replay = ReplayBuffer(
        cfg.buffer_sequences,
        cfg.window,
        net.spec.observation_shape,
        envs.single_observation_space.dtype,
        net.spec.lstm_units,
    )
    writer = SequenceWriter(N, cfg.window, cfg.seq_len)
    obs, _ = envs.reset(seed=cfg.seed)
    starts = np.ones(N, bool)
    actor.reset(N)
    episode_return = np.zeros(N)
    recent: deque[float] = deque(maxlen=100)
    history: list[dict[str, float]] = []
    stats: dict[str, float] = {}
    steps = updates = 0
    next_callback, next_log = callback_every, cfg.log_every
    t0 = time.perf_counter()
    try:
        while steps < cfg.total_steps:
            eps = cfg.epsilon_end + (cfg.epsilon_start - cfg.epsilon_end) * max(
                0.0, 1.0 - steps / cfg.epsilon_steps
            )
            step = actor.step(obs, starts)  # greedy actions; the state advances either way
            explore = rng.random(N) < eps
            actions = np.where(explore, rng.integers(0, net.spec.num_actions, N), step["actions"])
            actor.prev = actions.astype(np.int32)
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            trunc_values = np.zeros(N, np.float32)
            cut, q, _ = target_actor.forward_truncated(
                info, actions, terminated, truncated, actor.h, actor.c
            )
            trunc_values[cut] = q.max(-1)
            for i in range(N):
                seq = writer.push(
                    i,
                    {
                        "obs": obs[i],
                        "prev": step["prev"][i],
                        "starts": float(starts[i]),
                        "actions": actions[i],
                        "rewards": rewards[i],
                        "terminated": float(terminated[i]),
                        "truncated": float(truncated[i] and not terminated[i]),
                        "trunc_values": trunc_values[i],
                        "h": step["h"][i],
                        "c": step["c"][i],
                    },
                )
                if seq is not None:
                    replay.add(seq)
            episode_return += rewards
            obs, starts = next_obs, terminated | truncated
            for i in np.flatnonzero(starts):
                recent.append(float(episode_return[i]))
                episode_return[i] = 0.0
            steps += N

            if steps >= cfg.learning_starts and (steps // N) % cfg.train_every == 0 and replay.size:
                stats = learner.update(replay.sample(cfg.batch_size, rng))
                updates += 1
                if updates % cfg.target_every == 0:
                    learner.sync_target()
            if steps >= next_log:
                next_log += cfg.log_every
                wall = time.perf_counter() - t0
                mean = float(np.mean(recent)) if recent else float("nan")
                history.append(
                    {"steps": steps, "wall_s": wall, "mean_return": mean, "epsilon": eps, **stats}
                )
                log.info(
                    "steps %d  return %.1f  epsilon %.2f  loss %.3f  q %.2f  (%.0f steps/s)",
                    steps,
                    mean,
                    eps,
                    stats.get("loss", float("nan")),
                    stats.get("q", float("nan")),
                    steps / wall,
                )
            if callback is not None and steps >= next_callback:
                next_callback += callback_every
                progress = Progress(
                    steps, updates, time.perf_counter() - t0, list(recent), stats, net
                )
                if callback(progress):
                    break
    finally:
        envs.close()
    return TrainResult(net, steps, time.perf_counter() - t0, history, asdict(cfg))
