"""Recurrent actor-critic with MaLPi's policy network: PPO-clipped, or advantage actor-critic.

One module, top to bottom, in the spirit of CleanRL's single-file algorithms:

1. ``PPOConfig``: every setting (``algo="a2c"`` drops the ratio and the clip).
2. ``Actor``: acts in a batch of environments with the *sequence* model run for
   one time step (T=1) over all of them, holding each one's LSTM state,
   previous action and episode-start flag.
3. ``gae``: generalised advantage estimation; a truncated episode is
   bootstrapped from the value of its final observation, a terminated one is not.
4. ``make_sequences``: cuts each environment's rollout into training sequences
   of ``seq_len`` steps, each carrying the LSTM state stored at its first step;
   a short last piece is padded and its ``mask`` is 0 there.
5. ``Learner``: the loss (clipped surrogate or plain policy gradient, value
   loss, entropy bonus), every term a mean over unpadded steps only, and the
   update (epochs x minibatches of whole sequences, gradient-norm clipping).
   The off-line robot loop (:mod:`malpi.rl.robot`) uses it as it is, with the
   recorded behaviour probabilities as the "old" policy: that is the importance
   correction.
6. ``train``: the loop: collect a rollout from a gymnasium vector env, GAE,
   sequences, update, repeat.

The episode-start flag enters the network at every step and the LSTM state is
multiplied by (1 - start) there (``ResetLSTMCell``), so an episode that begins
inside a training sequence starts from a zero state exactly as it did when the
rollout was collected.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import keras
import numpy as np
import tensorflow as tf

from malpi.policy.model import PolicyNetwork
from malpi.policy.spec import PolicySpec
from malpi.rl.common import Progress, TrainResult, gradient_step, setup

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- 1. settings


@dataclass
class PPOConfig:
    algo: str = "ppo"  # "ppo" (clipped surrogate) or "a2c" (plain advantage actor-critic)
    num_envs: int = 8
    num_steps: int = 32  # steps per environment per rollout
    seq_len: int = 32  # training sequence length (<= num_steps; the last piece is padded)
    total_steps: int = 100_000
    learning_rate: float = 1e-3
    anneal_lr: bool = True  # linearly to zero over total_steps
    gamma: float = 0.98
    gae_lambda: float = 0.8
    epochs: int = 20
    minibatches: int = 1  # per epoch, each a set of whole sequences
    clip: float = 0.2
    anneal_clip: bool = True
    clip_value: float | None = None  # clip the value change as in PPO2; None = plain MSE
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    reward_scale: float = 1.0  # rewards are multiplied by this for learning (smaller value targets)
    max_grad_norm: float = 0.5
    normalize_advantages: bool = True
    seed: int = 0
    log_every: int = 10  # updates between log lines

    def __post_init__(self) -> None:
        if self.algo not in ("ppo", "a2c"):
            raise ValueError(f"algo must be 'ppo' or 'a2c', not {self.algo!r}")
        for name in ("num_envs", "num_steps", "seq_len", "total_steps", "epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @classmethod
    def a2c(cls, **overrides: Any) -> PPOConfig:
        """Advantage actor-critic: one gradient step per rollout, no ratio, no clipping."""
        base: dict[str, Any] = dict(
            algo="a2c", epochs=1, minibatches=1, learning_rate=7e-4, num_steps=16, seq_len=16
        )
        return cls(**{**base, **overrides})


# CartPole with the velocities hidden: rl-zoo's RecurrentPPO settings (8 envs x 32 steps, 20
# epochs on the whole rollout, lr and clip annealed from 1e-3 and 0.2, gamma 0.98, lambda 0.8) with
# these deviations, stated in docs/rl.md: rewards scaled by a hand-picked 0.1 where rl-zoo
# normalises them (actor and critic share one LSTM here, sb3 gives the critic its own, and smaller
# value targets keep the value loss from swamping the policy gradient in it), and observations
# divided by their termination thresholds where rl-zoo normalises them with running statistics.
CARTPOLE_CONFIG = PPOConfig(reward_scale=0.1)
CARTPOLE_SPEC = PolicySpec(obs_dim=2, bottleneck=64, lstm_units=64, num_actions=2)


# --------------------------------------------------------------------------- 2. acting


class Actor:
    """Acts for a batch of environments with the sequence model at T=1.

    Holds, per environment, the LSTM state (h, c) and the previous action. On an
    episode start the network zeroes the state itself (the start flag goes in)
    and the previous action is "none" (an all-zero one-hot).
    """

    def __init__(self, net: PolicyNetwork, greedy: bool = False, seed: int | None = None):
        self.net = net
        self.greedy = greedy
        self.rng = np.random.default_rng(seed)
        spec = net.spec
        n = spec.num_actions
        obs_dtype = tf.uint8 if spec.is_image else tf.float32
        model = net.sequence_model

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, *spec.observation_shape), obs_dtype),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,), tf.float32),
                tf.TensorSpec((None, spec.lstm_units), tf.float32),
                tf.TensorSpec((None, spec.lstm_units), tf.float32),
            ]
        )
        def forward(obs, prev, starts, h, c):
            out = model(
                {
                    "frames": obs[:, None],
                    "prev_actions": tf.one_hot(prev, n)[:, None],  # -1 -> all zeros
                    "episode_starts": starts[:, None],
                    "h0": h,
                    "c0": c,
                }
            )
            return out["logits"][:, 0], out["value"][:, 0, 0], out["h"], out["c"]

        self._forward = forward
        self.reset(1)

    def reset(self, n: int) -> None:
        u = self.net.spec.lstm_units
        self.h = np.zeros((n, u), np.float32)
        self.c = np.zeros((n, u), np.float32)
        self.prev = np.full(n, -1, np.int32)

    def forward(
        self, obs: np.ndarray, prev: np.ndarray, starts: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(logits, values, h', c') for one step; no state is kept."""
        logits, values, h2, c2 = self._forward(
            obs, prev.astype(np.int32), starts.astype(np.float32), h, c
        )
        return logits.numpy(), values.numpy(), h2.numpy(), c2.numpy()

    def forward_truncated(
        self,
        info: dict[str, Any],
        actions: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        h: np.ndarray,
        c: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, logits, values) of the environments a time limit cut short this step.

        Each is run on its episode's final observation (``info["final_obs"]``: the
        vector env has already reset it) after its action ``actions[i]``, from the
        state (h, c) after the step: what bootstrapping the cut episode needs.
        """
        cut = np.flatnonzero(truncated & ~terminated)
        logits = np.zeros((0, self.net.spec.num_actions), np.float32)
        values = np.zeros(0, np.float32)
        if len(cut):
            final_obs = np.stack([info["final_obs"][i] for i in cut])
            logits, values, _, _ = self.forward(
                final_obs, actions[cut], np.zeros(len(cut)), h[cut], c[cut]
            )
        return cut, logits, values

    def step(self, obs: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        """Choose actions, advance the state; returns what a rollout stores for this step."""
        starts = np.asarray(starts, bool)
        prev = np.where(starts, -1, self.prev).astype(np.int32)
        h, c = self.h, self.c  # the state *before* this step (the model applies the reset)
        logits, values, self.h, self.c = self.forward(obs, prev, starts, h, c)
        logp_all = log_softmax(logits)
        if self.greedy:
            actions = logits.argmax(-1)
        else:  # Gumbel-max sampling: one draw per environment from the seeded generator
            actions = (logp_all + self.rng.gumbel(size=logp_all.shape)).argmax(-1)
        actions = actions.astype(np.int32)
        self.prev = actions
        return {
            "actions": actions,
            "logp": logp_all[np.arange(len(actions)), actions],
            "values": values,
            "prev": prev,
            "h": h,
            "c": c,
        }

    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The :class:`malpi.rl.evaluate.BatchPolicy` interface."""
        return self.step(obs, starts)["actions"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# --------------------------------------------------------------------------- 3. advantages


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    final_values: np.ndarray,
    last_values: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over a (T, N) rollout; returns (advantages, returns).

    At step t the next state's value is ``values[t+1]`` (``last_values`` after
    the last step), except when the episode ended at t: terminated -> 0 (there
    is no future); truncated (a time limit, not a failure) -> ``final_values[t]``,
    the value of the observation the episode was cut at. Either way the
    advantage chain stops there: the next step belongs to a new episode.
    """
    T = rewards.shape[0]
    ended = np.logical_or(terminated, truncated)
    advantages = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1:], np.float64)
    for t in reversed(range(T)):
        following = last_values if t == T - 1 else values[t + 1]
        next_value = np.where(
            terminated[t], 0.0, np.where(truncated[t], final_values[t], following)
        )
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * (1.0 - ended[t]) * running
        advantages[t] = running
    advantages = advantages.astype(np.float32)
    return advantages, (advantages + values).astype(np.float32)


def rollout_gae(
    rollout: dict[str, np.ndarray], gamma: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gae` of a rollout from :meth:`RolloutCollector.collect`."""
    return gae(
        rollout["rewards"],
        rollout["values"],
        rollout["terminated"],
        rollout["truncated"],
        rollout["final_values"],
        rollout["last_values"],
        gamma,
        lam,
    )


# --------------------------------------------------------------------------- 4. sequences


SEQUENCE_KEYS = ("obs", "prev", "starts", "actions", "logp", "values", "advantages", "returns")


def make_sequences(
    rollout: dict[str, np.ndarray], seq_len: int, policy_mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Cut (T, N, ...) rollout arrays into (N * ceil(T / seq_len), seq_len, ...) sequences.

    Each sequence starts from the LSTM state stored at its first step (``h0``,
    ``c0``). Steps past T are padding: zeros with ``mask`` 0 (and
    ``policy_mask`` 0, the mask of steps whose action the policy chose).
    """
    T, N = rollout["actions"].shape[:2]
    pieces = math.ceil(T / seq_len)
    pad = pieces * seq_len - T
    out: dict[str, np.ndarray] = {}

    def cut(x: np.ndarray) -> np.ndarray:
        x = np.swapaxes(x, 0, 1)  # (N, T, ...): one environment's steps in order
        if pad:
            x = np.concatenate([x, np.zeros((N, pad, *x.shape[2:]), x.dtype)], axis=1)
        return x.reshape(N * pieces, seq_len, *x.shape[2:])

    for key in SEQUENCE_KEYS:
        out[key] = cut(rollout[key])
    mask = cut(np.ones((T, N), np.float32))
    out["mask"] = mask
    out["policy_mask"] = (
        mask * cut(policy_mask.astype(np.float32)) if policy_mask is not None else mask
    )
    starts_at = np.arange(pieces) * seq_len
    for key, src in (("h0", "h"), ("c0", "c")):
        state = np.swapaxes(rollout[src], 0, 1)[:, starts_at]  # (N, pieces, U)
        out[key] = state.reshape(N * pieces, -1)
    return out


# --------------------------------------------------------------------------- 5. loss and update


def masked_mean(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over the steps where mask is 1: a padded step adds nothing, not even to the count.

    ``where``, not ``x * mask``: an inf on a padded step would make NaN of a product.
    """
    return tf.reduce_sum(tf.where(mask > 0, x, tf.zeros_like(x))) / tf.maximum(
        tf.reduce_sum(mask), 1.0
    )


class Learner:
    """Loss and optimiser for a PolicyNetwork's sequence model."""

    def __init__(self, net: PolicyNetwork, config: PPOConfig, variables: list | None = None):
        """``variables``: what the update changes (default: every weight of the network; e.g.
        only the value head's to fit a critic to a behaviour-cloned policy before touching it)."""
        self.net = net
        self.config = config
        self.variables = (
            list(net.sequence_model.trainable_variables) if variables is None else list(variables)
        )
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, epsilon=1e-5)
        self.optimizer.build(self.variables)
        self._train_step = tf.function(self._step, reduce_retracing=True)

    def loss(self, batch: dict[str, tf.Tensor], clip: tf.Tensor) -> tuple[tf.Tensor, dict]:
        cfg = self.config
        spec = self.net.spec
        out = self.net.sequence_model(
            {
                "frames": batch["obs"],
                "prev_actions": tf.one_hot(tf.cast(batch["prev"], tf.int32), spec.num_actions),
                "episode_starts": tf.cast(batch["starts"], tf.float32),
                "h0": batch["h0"],
                "c0": batch["c0"],
            }
        )
        mask = tf.cast(batch["mask"], tf.float32)
        pmask = tf.cast(batch["policy_mask"], tf.float32)

        def real(key: str) -> tf.Tensor:  # a per-step target, zero on padded steps
            return tf.where(mask > 0, batch[key], tf.zeros_like(batch[key]))

        logp_all = tf.nn.log_softmax(out["logits"])
        actions = tf.cast(batch["actions"], tf.int32)
        logp = tf.gather(logp_all, actions, batch_dims=2)
        entropy = -tf.reduce_sum(tf.exp(logp_all) * logp_all, axis=-1)

        adv = real("advantages")
        if cfg.normalize_advantages:
            mean = masked_mean(adv, pmask)
            std = tf.sqrt(masked_mean(tf.square(adv - mean), pmask))
            adv = (adv - mean) / (std + 1e-8)
        log_ratio = logp - real("logp")
        ratio = tf.exp(log_ratio)
        if cfg.algo == "ppo":
            surrogate = tf.minimum(ratio * adv, tf.clip_by_value(ratio, 1 - clip, 1 + clip) * adv)
            pg_loss = -masked_mean(surrogate, pmask)
        else:
            pg_loss = -masked_mean(logp * adv, pmask)

        value = out["value"][..., 0]
        returns = real("returns")
        v_err = tf.square(value - returns)
        if cfg.clip_value is not None:
            old = real("values")
            clipped = old + tf.clip_by_value(value - old, -cfg.clip_value, cfg.clip_value)
            v_err = tf.maximum(v_err, tf.square(clipped - returns))
        v_loss = 0.5 * masked_mean(v_err, mask)
        ent = masked_mean(entropy, pmask)
        loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
        stats = {
            "loss": loss,
            "pg_loss": pg_loss,
            "v_loss": v_loss,
            "entropy": ent,
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, pmask),
            "clip_frac": masked_mean(tf.cast(tf.abs(ratio - 1.0) > clip, tf.float32), pmask),
        }
        return loss, stats

    def _step(self, batch: dict[str, tf.Tensor], clip: tf.Tensor) -> dict[str, tf.Tensor]:
        return gradient_step(
            lambda: self.loss(batch, clip),
            self.variables,
            self.optimizer,
            self.config.max_grad_norm,
        )

    def update(
        self,
        sequences: dict[str, np.ndarray],
        learning_rate: float,
        clip: float,
        rng: np.random.Generator,
    ) -> dict[str, float]:
        """``epochs`` passes over the sequences in ``minibatches`` shuffled sets; mean stats."""
        self.optimizer.learning_rate.assign(learning_rate)
        n = len(sequences["actions"])
        per = max(1, n // self.config.minibatches)
        totals: dict[str, float] = {}
        count = 0
        for _ in range(self.config.epochs):
            order = rng.permutation(n)
            for start in range(0, n - per + 1, per):
                idx = order[start : start + per]
                batch = {k: tf.convert_to_tensor(v[idx]) for k, v in sequences.items()}
                stats = self._train_step(batch, tf.constant(clip, tf.float32))
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                count += 1
        return {k: v / count for k, v in totals.items()}


# --------------------------------------------------------------------------- 6. the loop


class RolloutCollector:
    """Steps a gymnasium vector env with an :class:`Actor` and stores (T, N) rollouts.

    The vector env resets an environment in the same step its episode ends
    (``SAME_STEP``): the observation returned is the new episode's first one,
    flagged as a start for the next step, and the final observation is in the
    info (used to bootstrap a truncated episode).
    """

    def __init__(
        self, envs: gym.vector.VectorEnv, actor: Actor, reward_scale: float = 1.0, seed: int = 0
    ):
        self.envs = envs
        self.actor = actor
        self.reward_scale = reward_scale
        self.n = envs.num_envs
        self.obs, _ = envs.reset(seed=seed)
        self.starts = np.ones(self.n, bool)
        actor.reset(self.n)
        self.episode_return = np.zeros(self.n)
        self.finished: deque[float] = deque(maxlen=100)  # recent finished episodes' returns

    def collect(self, T: int) -> dict[str, np.ndarray]:
        """T steps in every environment; arrays (T, N, ...), plus ``last_values`` (N,)."""
        actor, N = self.actor, self.n
        U = actor.net.spec.lstm_units
        buf = {
            "obs": np.zeros((T, *self.obs.shape), self.obs.dtype),
            "prev": np.zeros((T, N), np.int32),
            "starts": np.zeros((T, N), np.float32),
            "actions": np.zeros((T, N), np.int32),
            "logp": np.zeros((T, N), np.float32),
            "values": np.zeros((T, N), np.float32),
            "rewards": np.zeros((T, N), np.float32),
            "terminated": np.zeros((T, N), bool),
            "truncated": np.zeros((T, N), bool),
            "final_values": np.zeros((T, N), np.float32),
            "h": np.zeros((T, N, U), np.float32),
            "c": np.zeros((T, N, U), np.float32),
        }
        for t in range(T):
            step = actor.step(self.obs, self.starts)
            buf["obs"][t], buf["starts"][t] = self.obs, self.starts
            for key in ("prev", "actions", "logp", "values", "h", "c"):
                buf[key][t] = step[key]
            self.obs, rewards, terminated, truncated, info = self.envs.step(step["actions"])
            buf["rewards"][t] = rewards * self.reward_scale
            buf["terminated"][t], buf["truncated"][t] = terminated, truncated
            # The value of the observation a time limit cut the episode at.
            cut, _, v = actor.forward_truncated(
                info, step["actions"], terminated, truncated, actor.h, actor.c
            )
            buf["final_values"][t, cut] = v
            self.episode_return += rewards
            self.starts = terminated | truncated
            for i in np.flatnonzero(self.starts):
                self.finished.append(float(self.episode_return[i]))
                self.episode_return[i] = 0.0
        # The value after the last step, from the state the next rollout will start with.
        _, buf["last_values"], _, _ = actor.forward(
            self.obs, np.where(self.starts, -1, actor.prev), self.starts, actor.h, actor.c
        )
        return buf


def train(
    env_fns: Sequence[Callable[[], gym.Env]],
    spec: PolicySpec | None = None,
    config: PPOConfig | None = None,
    net: PolicyNetwork | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
) -> TrainResult:
    """Train ``net`` (or a fresh network of ``spec``) on ``len(env_fns)`` environments.

    ``callback(progress)`` runs after every update; returning True stops training.
    """
    cfg = config or PPOConfig()
    net, envs, rng = setup(env_fns, cfg.num_envs, spec, net, cfg.seed)
    collector = RolloutCollector(envs, Actor(net, seed=cfg.seed), cfg.reward_scale, cfg.seed)
    learner = Learner(net, cfg)
    history: list[dict[str, float]] = []
    num_updates = max(1, cfg.total_steps // (cfg.num_steps * cfg.num_envs))
    steps = 0
    t0 = time.perf_counter()
    try:
        for update in range(num_updates):
            remaining = 1.0 - update / num_updates
            lr = cfg.learning_rate * (remaining if cfg.anneal_lr else 1.0)
            clip = cfg.clip * (remaining if cfg.anneal_clip else 1.0)

            rollout = collector.collect(cfg.num_steps)
            steps += cfg.num_steps * cfg.num_envs
            rollout["advantages"], rollout["returns"] = rollout_gae(
                rollout, cfg.gamma, cfg.gae_lambda
            )
            stats = learner.update(make_sequences(rollout, cfg.seq_len), lr, clip, rng)

            wall = time.perf_counter() - t0
            recent = list(collector.finished)
            stats["mean_return"] = float(np.mean(recent)) if recent else float("nan")
            history.append({"steps": steps, "wall_s": wall, **stats})
            if update % cfg.log_every == 0 or update == num_updates - 1:
                log.info(
                    "steps %d  return %.1f  v_loss %.3f  entropy %.3f  kl %.4f  clip %.2f  (%.0f steps/s)",
                    steps,
                    stats["mean_return"],
                    stats["v_loss"],
                    stats["entropy"],
                    stats["approx_kl"],
                    stats["clip_frac"],
                    steps / wall,
                )
            if callback is not None and callback(
                Progress(steps, update + 1, wall, recent, stats, net)
            ):
                break
    finally:
        envs.close()
    return TrainResult(net, steps, time.perf_counter() - t0, history, asdict(cfg))
