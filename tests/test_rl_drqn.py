"""DRQN: replay sequences with stored state, burn-in plumbing, n-step double-Q targets, a short run."""

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import dataclasses

import gymnasium as gym
import numpy as np
import tensorflow as tf

from malpi.policy.model import build_policy
from malpi.policy.spec import PolicySpec
from malpi.rl import drqn, ppo, tasks

SMALL = PolicySpec(obs_dim=2, bottleneck=16, lstm_units=16, num_actions=2)
CFG = drqn.DRQNConfig(seq_len=6, burn_in=4, n_step=2, num_envs=2, gamma=0.9)


@pytest.fixture(scope="module")
def stream():
    """Two environments stepped by the actor: every step with the state the actor had before it."""
    net = build_policy(SMALL, seed=2)
    actor = ppo.Actor(net, seed=0)
    envs = gym.vector.SyncVectorEnv(
        tasks.cartpole_novel_fns(2), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    obs, _ = envs.reset(seed=1)
    starts = np.ones(2, bool)
    actor.reset(2)
    writer = drqn.SequenceWriter(2, CFG.window, CFG.seq_len)
    steps, sequences = [], []
    for _ in range(60):
        step = actor.step(obs, starts)
        nxt, r, term, trunc, _ = envs.step(step["actions"])
        row = {
            "obs": obs[0].copy(),
            "prev": step["prev"][0],
            "starts": float(starts[0]),
            "actions": step["actions"][0],
            "rewards": r[0],
            "terminated": float(term[0]),
            "truncated": float(trunc[0]),
            "trunc_values": 0.0,
            "h": step["h"][0],
            "c": step["c"][0],
        }
        steps.append(row)
        seq = writer.push(0, row)
        if seq is not None:
            sequences.append(seq)
        obs, starts = nxt, term | trunc
    envs.close()
    return net, steps, sequences


def test_writer_emits_overlapping_windows_with_the_state_before_their_first_step(stream):
    _, steps, sequences = stream
    window, stride = CFG.window, CFG.seq_len  # 12 steps, a new one every 6
    assert len(sequences) == 1 + (60 - window) // stride
    for k, seq in enumerate(sequences):
        first = k * stride
        np.testing.assert_array_equal(
            seq["obs"], np.stack([s["obs"] for s in steps[first : first + window]])
        )
        np.testing.assert_array_equal(seq["h0"], steps[first]["h"])
        np.testing.assert_array_equal(seq["c0"], steps[first]["c"])
    assert sum(seq["starts"][1:].sum() for seq in sequences) >= 1  # resets inside sequences


def test_burn_in_from_the_stored_state_recovers_the_actors_state(stream):
    """R2D2's point: burn-in from the stored state lands on the state the actor really had."""
    net, steps, sequences = stream
    learner = drqn.QLearner(net, CFG)
    batch = {k: tf.convert_to_tensor(np.stack([s[k] for s in sequences])) for k in sequences[0]}
    h, c = learner.initial_state(batch, net)
    want_h = np.stack([steps[k * CFG.seq_len + CFG.burn_in]["h"] for k in range(len(sequences))])
    want_c = np.stack([steps[k * CFG.seq_len + CFG.burn_in]["c"] for k in range(len(sequences))])
    np.testing.assert_allclose(np.asarray(h), want_h, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c), want_c, atol=1e-5)
    # From a zero state (stored_state=False) the burnt-in state is not the actor's, where the
    # stored one was not zero and no reset intervened during burn-in.
    zero = drqn.QLearner(net, dataclasses.replace(CFG, stored_state=False))
    hz, _ = zero.initial_state(batch, net)
    no_reset = (np.stack([s["starts"][: CFG.burn_in] for s in sequences]).sum(1) == 0) & (
        np.abs(np.stack([s["h0"] for s in sequences])).max(1) > 0
    )
    assert no_reset.any()
    assert np.abs(np.asarray(hz)[no_reset] - want_h[no_reset]).max() > 1e-3
    # Burn-in carries no gradient: the state is a constant for the learning part.
    with tf.GradientTape() as tape:
        h, _ = learner.initial_state(batch, net)
        s = tf.reduce_sum(h)
    assert all(g is None for g in tape.gradient(s, net.sequence_model.trainable_variables))


class FixedQ(drqn.QLearner):
    """A learner whose networks return given Q-values, to check the target arithmetic."""

    def __init__(self, config, q_online, q_target):
        self.config = config
        self.net, self.target = "online", "target"
        self._q = {"online": q_online, "target": q_target}

    def unroll(self, net, batch, h0, c0):
        T = batch["rewards"].shape[1]
        q = tf.constant(self._q[net][:, -T:], tf.float32)
        return q, h0, c0

    def initial_state(self, batch, net):
        return batch["h0"], batch["c0"]


def test_n_step_double_q_targets_by_hand():
    cfg = drqn.DRQNConfig(seq_len=3, burn_in=1, n_step=2, gamma=0.5)
    W = cfg.window  # 6 steps: 1 burn-in, 3 learning, 2 n-step tail
    rewards = np.array([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    terminated = np.zeros((1, W), np.float32)
    truncated = np.zeros((1, W), np.float32)
    trunc_values = np.zeros((1, W), np.float32)
    terminated[0, 2] = 1.0  # the episode fails at step 2 (learning index 1)
    truncated[0, 4] = 1.0  # a later episode is cut by the time limit at step 4
    trunc_values[0, 4] = 10.0
    # Online Q picks the action, target Q values it (double Q). Steps after burn-in: 5.
    q_online = np.array([[[0, 1], [1, 0], [0, 1], [1, 0], [0, 1], [1, 0]]], np.float32)
    q_target = np.array([[[0, 0], [7, 70], [8, 80], [9, 90], [6, 60], [5, 50]]], np.float32)
    batch = {
        "rewards": rewards,
        "terminated": terminated,
        "truncated": truncated,
        "trunc_values": trunc_values,
        "h0": np.zeros((1, 4), np.float32),
        "c0": np.zeros((1, 4), np.float32),
    }
    learner = FixedQ(cfg, q_online, q_target)
    got = np.asarray(learner.targets({k: tf.constant(v) for k, v in batch.items()}))
    # Learning step 0 (step 1): r1 + g*r2, and step 2 terminated -> no bootstrap: 1 + 0.5*2 = 2
    # Learning step 1 (step 2): terminated at once: r2 = 2
    # Learning step 2 (step 3): r3 + g*(r4 + g*10) (truncated at 4: bootstrap 10, stop) = 3 + 0.5*(4 + 5) = 7.5
    np.testing.assert_allclose(got, [[2.0, 2.0, 7.5]], rtol=1e-6)
    # No endings: r1 + g r2 + g^2 * Q_target(step 3, argmax Q_online(step 3) = action 0) = 1 + 1 + 0.25*9
    clean = {
        **batch,
        "terminated": np.zeros((1, W), np.float32),
        "truncated": np.zeros((1, W), np.float32),
    }
    got = np.asarray(learner.targets({k: tf.constant(v) for k, v in clean.items()}))
    assert got[0, 0] == pytest.approx(1 + 0.5 * 2 + 0.25 * 9)


def test_short_run_fills_replay_and_learns_finite_q_values():
    cfg = drqn.DRQNConfig(
        num_envs=4,
        total_steps=1_600,
        learning_starts=400,
        batch_size=8,
        seq_len=8,
        burn_in=4,
        target_every=20,
        log_every=800,
        epsilon_steps=1_000,
    )
    result = drqn.train(tasks.cartpole_novel_fns(4), SMALL, cfg)
    assert result.steps == 1_600
    last = result.history[-1]
    assert np.isfinite(last["loss"]) and np.isfinite(last["q"])
    # CartPole pays 1 per step: learnt Q-values grow from ~0 towards the discounted horizon.
    assert last["q"] > 1.0
