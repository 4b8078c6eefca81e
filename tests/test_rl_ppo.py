"""Recurrent PPO / A2C: GAE, reset masking, stored states, the padding mask, a short training run."""

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import gymnasium as gym
import numpy as np
import tensorflow as tf

from malpi.policy.model import build_policy
from malpi.policy.spec import PolicySpec
from malpi.rl import ppo, tasks
from malpi.rl.evaluate import evaluate

SMALL = PolicySpec(obs_dim=2, bottleneck=16, lstm_units=16, num_actions=2)


# ----------------------------------------------------------------------------- GAE


def test_gae_against_a_hand_computed_example():
    """Two environments, identical except that the episode ends at t=1 by failure in env 0
    (terminated: no bootstrap) and by the time limit in env 1 (truncated: bootstrap from the
    value of the final observation, 3.0). gamma 0.9, lambda 0.5, value after the rollout 2.0."""
    rewards = np.ones((4, 2), np.float32)
    values = np.array([[0.5, 0.5], [0.6, 0.6], [0.7, 0.7], [0.8, 0.8]], np.float32)
    terminated = np.zeros((4, 2), bool)
    truncated = np.zeros((4, 2), bool)
    terminated[1, 0] = True
    truncated[1, 1] = True
    final_values = np.zeros((4, 2), np.float32)
    final_values[1, 1] = 3.0
    last_values = np.array([2.0, 2.0], np.float32)
    adv, ret = ppo.gae(rewards, values, terminated, truncated, final_values, last_values, 0.9, 0.5)
    # t=3: 1 + 0.9*2.0 - 0.8 = 2.0
    # t=2: 1 + 0.9*0.8 - 0.7 = 1.02, + 0.45*2.0 = 1.92
    # t=1: env 0: 1 + 0 - 0.6 = 0.4 (no future); env 1: 1 + 0.9*3.0 - 0.6 = 3.1; chains cut
    # t=0: 1 + 0.9*0.6 - 0.5 = 1.04, + 0.45*A1 -> 1.22 and 2.435
    expected = np.array([[1.22, 2.435], [0.4, 3.1], [1.92, 1.92], [2.0, 2.0]], np.float32)
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    np.testing.assert_allclose(ret, expected + values, rtol=1e-6)


def test_gae_with_lambda_one_is_the_discounted_return_minus_value():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(6, 1)).astype(np.float32)
    v = rng.normal(size=(6, 1)).astype(np.float32)
    z = np.zeros((6, 1), bool)
    adv, _ = ppo.gae(r, v, z, z, np.zeros((6, 1)), np.array([0.7]), 0.95, 1.0)
    G = 0.7
    for t in reversed(range(6)):
        G = r[t, 0] + 0.95 * G
        assert adv[t, 0] == pytest.approx(G - v[t, 0], abs=1e-5)


# ----------------------------------------------------------------------------- rollouts and sequences


@pytest.fixture(scope="module")
def rollout():
    """A real rollout of a random policy: episodes end (and restart) inside it."""
    net = build_policy(SMALL, seed=4)
    envs = gym.vector.SyncVectorEnv(
        tasks.cartpole_novel_fns(3), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    collector = ppo.RolloutCollector(envs, ppo.Actor(net, seed=1), seed=3)
    data = collector.collect(40)
    envs.close()
    data["advantages"], data["returns"] = ppo.gae(
        data["rewards"],
        data["values"],
        data["terminated"],
        data["truncated"],
        data["final_values"],
        data["last_values"],
        0.98,
        0.8,
    )
    return net, data


def sequence_outputs(net, seqs):
    t = {k: tf.convert_to_tensor(seqs[k]) for k in ("obs", "prev", "starts", "h0", "c0")}
    out = net.sequence_model(
        {
            "frames": t["obs"],
            "prev_actions": tf.one_hot(t["prev"], net.spec.num_actions),
            "episode_starts": tf.cast(t["starts"], tf.float32),
            "h0": t["h0"],
            "c0": t["c0"],
        }
    )
    logp = tf.nn.log_softmax(out["logits"])
    return np.asarray(tf.gather(logp, seqs["actions"], batch_dims=2)), np.asarray(out["value"])[
        ..., 0
    ]


def test_training_sequences_reproduce_what_the_actor_computed(rollout):
    """Cut at 16 steps from the stored states, with resets inside: the sequence model gives the
    acting-time log-probabilities and values at every real step."""
    net, data = rollout
    assert data["starts"][1:].sum() >= 3  # episodes really restart inside the rollout
    seqs = ppo.make_sequences(data, seq_len=16)
    assert seqs["actions"].shape == (3 * 3, 16)  # 3 envs x ceil(40 / 16) pieces
    inside = seqs["starts"][:, 1:] * seqs["mask"][:, 1:]
    assert inside.sum() >= 2  # some training sequences contain a reset in the middle
    logp, values = sequence_outputs(net, seqs)
    real = seqs["mask"] == 1
    np.testing.assert_allclose(logp[real], seqs["logp"][real], atol=1e-5)
    np.testing.assert_allclose(values[real], seqs["values"][real], atol=1e-5)
    # Starting every piece from a zero state instead is wrong after the first piece.
    zeroed = {**seqs, "h0": np.zeros_like(seqs["h0"]), "c0": np.zeros_like(seqs["c0"])}
    _, bad_values = sequence_outputs(net, zeroed)
    assert np.abs(bad_values[real] - seqs["values"][real]).max() > 1e-3


def test_reset_inside_a_sequence_equals_two_separate_sequences(rollout):
    net, data = rollout
    env = int(np.argmax(data["starts"][5:35].sum(0)))
    k = 5 + int(np.flatnonzero(data["starts"][5:35, env])[0])  # a reset well inside
    whole = {key: data[key][:, env][None] for key in ("obs", "prev", "starts", "actions")}
    zero = np.zeros((1, SMALL.lstm_units), np.float32)
    rng = np.random.default_rng(0)
    # Whatever state the first part ends in, it must not leak past the reset.
    junk = rng.normal(size=(1, SMALL.lstm_units)).astype(np.float32)
    logp_whole, v_whole = sequence_outputs(net, {**whole, "h0": zero, "c0": zero})
    first = {key: v[:, :k] for key, v in whole.items()}
    second = {key: v[:, k:] for key, v in whole.items()}
    logp1, v1 = sequence_outputs(net, {**first, "h0": zero, "c0": zero})
    logp2, v2 = sequence_outputs(net, {**second, "h0": junk, "c0": junk})
    np.testing.assert_allclose(logp_whole, np.concatenate([logp1, logp2], 1), atol=1e-5)
    np.testing.assert_allclose(v_whole, np.concatenate([v1, v2], 1), atol=1e-5)


def _loss_and_grads(learner, seqs, clip=0.2):
    batch = {k: tf.convert_to_tensor(v) for k, v in seqs.items()}
    variables = learner.net.sequence_model.trainable_variables
    with tf.GradientTape() as tape:
        loss, stats = learner.loss(batch, tf.constant(clip))
    return float(loss), [np.asarray(g) for g in tape.gradient(loss, variables)], stats


def test_padded_steps_change_no_loss_and_no_gradient(rollout):
    net, data = rollout
    seqs = ppo.make_sequences(data, seq_len=16)
    pad = seqs["mask"] == 0
    assert pad.sum() == 3 * 8  # 48 steps padded to 3 x 16 per env
    learner = ppo.Learner(net, ppo.PPOConfig(ent_coef=0.01, clip_value=0.2))
    loss, grads, _ = _loss_and_grads(learner, seqs)
    rng = np.random.default_rng(1)
    junk = {k: v.copy() for k, v in seqs.items()}
    junk["obs"][pad] = rng.normal(size=junk["obs"][pad].shape) * 50
    junk["actions"][pad] = 1 - junk["actions"][pad]
    junk["prev"][pad] = 1
    junk["starts"][pad] = 1.0
    for key in ("advantages", "returns", "values", "logp"):
        junk[key][pad] = rng.normal(size=pad.sum()) * 100
    loss2, grads2, _ = _loss_and_grads(learner, junk)
    assert loss2 == pytest.approx(loss, rel=1e-6)
    for g, g2 in zip(grads, grads2, strict=True):
        np.testing.assert_allclose(g, g2, rtol=1e-5, atol=1e-7)
    # ... while the same garbage on a real step does change them.
    real = {k: v.copy() for k, v in seqs.items()}
    real["advantages"][0, 3] += 100.0
    real["returns"][0, 3] += 100.0
    assert _loss_and_grads(learner, real)[0] != pytest.approx(loss, rel=1e-3)


def test_policy_mask_leaves_steps_out_of_the_policy_loss_only(rollout):
    net, data = rollout
    seqs = ppo.make_sequences(data, seq_len=16)
    keep = np.ones(data["actions"].shape, bool)
    keep[10:20] = False  # e.g. steps an operator drove
    masked = ppo.make_sequences(data, seq_len=16, policy_mask=keep)
    learner = ppo.Learner(net, ppo.PPOConfig())
    _, _, full = _loss_and_grads(learner, seqs)
    _, _, part = _loss_and_grads(learner, masked)
    assert float(part["v_loss"]) == pytest.approx(float(full["v_loss"]), rel=1e-6)
    assert float(part["pg_loss"]) != pytest.approx(float(full["pg_loss"]), rel=1e-3)


def test_a2c_gradient_equals_ppo_gradient_at_ratio_one(rollout):
    """With the rollout's own policy, ratio = 1 and nothing is clipped: the clipped surrogate's
    gradient is the policy gradient's (the A2C setting)."""
    net, data = rollout
    seqs = ppo.make_sequences(data, seq_len=16)
    _, g_ppo, s_ppo = _loss_and_grads(ppo.Learner(net, ppo.PPOConfig(vf_coef=0.0)), seqs)
    _, g_a2c, _ = _loss_and_grads(ppo.Learner(net, ppo.PPOConfig.a2c(vf_coef=0.0)), seqs)
    assert float(s_ppo["approx_kl"]) == pytest.approx(0.0, abs=1e-6)
    for a, b in zip(g_ppo, g_a2c, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="algo"):
        ppo.PPOConfig(algo="trpo")
    with pytest.raises(ValueError, match="num_envs"):
        ppo.train(tasks.cartpole_novel_fns(2), SMALL, ppo.PPOConfig(num_envs=4))


# ----------------------------------------------------------------------------- training


def test_short_training_run_improves_return():
    """PPO on CartPole with velocities hidden, a few thousand steps: greedy return rises well
    above the untrained policy's."""
    cfg = ppo.PPOConfig(seed=2, total_steps=6144, reward_scale=0.1, log_every=1000)
    net = build_policy(ppo.CARTPOLE_SPEC, seed=cfg.seed)
    before = evaluate(ppo.Actor(net, greedy=True), tasks.cartpole_novel, episodes=20).mean
    result = ppo.train(tasks.cartpole_novel_fns(cfg.num_envs), config=cfg, net=net)
    after = evaluate(ppo.Actor(result.net, greedy=True), tasks.cartpole_novel, episodes=20).mean
    assert result.steps == 6144 and len(result.history) == 24
    assert np.isfinite([h["loss"] for h in result.history]).all()
    print(f"greedy return before {before:.1f}, after {after:.1f}")
    assert after >= max(2 * before, 60.0), (before, after)
