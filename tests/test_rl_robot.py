"""The robot loop end to end against the daemon on the simulator, and the reward source."""

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import numpy as np
import tensorflow as tf
from link_helpers import bundles, link_config, running_link

from malpi.daemon.control.reward import RewardingRecorder, RewardSource
from malpi.policy.bundle import PolicyBundle
from malpi.policy.model import build_policy
from malpi.recorder.store import EpisodeStore
from malpi.rl.robot import RobotLoopConfig, episode_batch, run_robot_loop


class Meter:
    def __init__(self):
        self.metres, self.road = 0.0, True

    def travelled(self):
        return self.metres

    def on_track(self):
        return self.road


class FakeRecorder:
    def __init__(self):
        self.steps, self.ends = [], []

    def start_episode(self, meta):
        return 1

    def record(self, step):
        self.steps.append(step)

    def end_episode(self, outcome="finished", final_reward=None):
        self.ends.append((outcome, final_reward))
        return 1

    stats = "passed through"


def test_reward_source_progress_time_off_track_and_failure():
    meter = Meter()
    rec = RewardingRecorder(
        FakeRecorder(),
        RewardSource(progress=2.0, time=-0.1, off_track=-1.0, failed=-5.0, meter=meter),
    )
    meter.metres = 10.0
    rec.start_episode(None)  # progress counts from here
    meter.metres = 10.5
    rec.record(_step())
    meter.metres, meter.road = 10.25, False  # backwards, and off the road
    rec.record(_step())
    rewards = [s.reward for s in rec._recorder.steps]
    assert rewards == pytest.approx([2.0 * 0.5 - 0.1, 2.0 * -0.25 - 0.1 - 1.0])
    rec.end_episode("failed")  # the operator's verdict without a reward: the configured penalty
    rec.end_episode("failed", -2.0)  # with one: the operator's
    rec.end_episode("finished")
    assert rec._recorder.ends == [("failed", -5.0), ("failed", -2.0), ("finished", None)]
    assert rec.stats == "passed through"
    # Without a meter (a real car without odometry): the time term only.
    plain = RewardingRecorder(FakeRecorder(), RewardSource(progress=1.0, time=0.25))
    plain.start_episode(None)
    plain.record(_step())
    assert plain._recorder.steps[0].reward == 0.25


def _step():
    from malpi.recorder.recorder import Step

    return Step(np.zeros((2, 2, 3), np.uint8), 0, "policy", 0.0, 0.0)


def test_robot_loop_end_to_end_on_the_simulated_robot(tmp_path):
    """Two tiny iterations: drive, read the recording, learn off-line, push; the robot's policy
    version goes v1 -> v2 -> v3 and each iteration learnt from the version that drove it."""
    start = tmp_path / "start.malpi"
    start.write_bytes(bundles()["a"])
    config = link_config(
        tmp_path,
        start,
        **{
            "drivetrain.backend": "sim",
            "policy.sample": True,
            "reward.time": -0.01,
            "reward.progress": 1.0,
        },
    )
    db = str(tmp_path / "pulled.sqlite")  # not the robot's: the episodes come over the link
    cfg = RobotLoopConfig(
        db=db,
        policy=str(start),
        iterations=2,
        episodes=2,
        episode_seconds=0.5,
        epochs=2,
        seq_len=8,
        learning_rate=1e-3,
        out_dir=str(tmp_path / "pushed"),
    )
    first = PolicyBundle.from_bytes(bundles()["a"])
    with running_link(config) as daemon, daemon.client(timeout=10.0) as client:
        assert client.status().policy_version == first.label
        history = run_robot_loop("", cfg, client=client)
        final = client.status()
    assert [h["iteration"] for h in history] == [1, 2]
    assert history[0]["policy_driven"] == first.label
    assert history[0]["pushed"].startswith("v2-") and history[1]["pushed"].startswith("v3-")
    assert history[1]["policy_driven"] == history[0]["pushed"]
    assert final.policy_version == history[1]["pushed"]  # the robot runs the newest
    print(history)
    assert all(h["episodes"] >= 2 and h["steps"] >= 20 for h in history)
    assert all(np.isfinite(h["loss"]) for h in history)
    pushed = sorted(p.name for p in (tmp_path / "pushed").iterdir())
    assert [p[:3] for p in pushed] == ["v2-", "v3-"]
    v2 = PolicyBundle.load(tmp_path / "pushed" / pushed[0])
    assert v2.manifest["parent"] == first.id and v2.version == 2
    assert any(not np.allclose(v2.weights[k], first.weights[k]) for k in first.weights)

    # The recording: rewards from the simulator's progress plus the time term, probabilities
    # recorded for every policy step.
    with EpisodeStore(db, readonly=True) as store:
        driven = [e.id for e in store.episodes() if e.policy_version == first.label]
        episodes = [store.load_episode(i) for i in driven]
    assert len(episodes) == 2 and all(len(e) >= 4 for e in episodes)
    rewards = np.concatenate([e.rewards for e in episodes])
    assert np.abs(rewards + 0.01).max() > 1e-4  # progress moved the reward off the time term
    assert all((e.sources == "policy").all() and np.isfinite(e.probs).all() for e in episodes)

    # Importance correction: with the network that drove, the recomputed log-probabilities equal
    # the behaviour's (LiteRT float on the robot vs Keras here): the ratio is ~1 at every step.
    net = build_policy(first.spec)
    net.set_named_weights(first.weights)
    batch = episode_batch(net, episodes, cfg)
    out = net.sequence_model(
        {
            "frames": tf.convert_to_tensor(batch["obs"]),
            "prev_actions": tf.one_hot(batch["prev"], first.spec.num_actions),
            "episode_starts": tf.convert_to_tensor(batch["starts"]),
            "h0": tf.convert_to_tensor(batch["h0"]),
            "c0": tf.convert_to_tensor(batch["c0"]),
        }
    )
    logp = np.asarray(tf.gather(tf.nn.log_softmax(out["logits"]), batch["actions"], batch_dims=2))
    real = batch["policy_mask"] == 1
    assert real.sum() == sum(len(e) for e in episodes)
    # Not exactly: the recording keeps JPEG frames, the policy saw the raw ones.
    np.testing.assert_allclose(logp[real], batch["logp"][real], atol=2e-2)


def test_episode_batch_terminal_vs_cut_episodes_and_interventions():
    """A failed episode's last step is terminal (no bootstrap); an episode this loop cut short is
    bootstrapped from its last value; an operator's intervention is kept in the sequence but out
    of the policy loss; the behaviour log-probabilities are the recorded ones."""
    from types import SimpleNamespace

    from malpi.policy.spec import PolicySpec

    spec = PolicySpec(obs_dim=3, bottleneck=0, lstm_units=8, num_actions=3)
    net = build_policy(spec, seed=1)
    rng = np.random.default_rng(0)

    class Ep(SimpleNamespace):  # the fields of recorder.store.EpisodeData that are used
        def __len__(self):
            return len(self.actions)

    def episode(T, failed):
        probs = rng.dirichlet(np.ones(3), T).astype(np.float32)
        sources = np.array(["policy"] * T, dtype="<U12")
        sources[2] = "intervention"
        return Ep(
            frames=rng.normal(size=(T, 3)).astype(np.float32),
            actions=rng.integers(0, 3, T),
            probs=probs,
            sources=sources,
            rewards=np.ones(T, np.float32),
            info=SimpleNamespace(terminated=failed),
        )

    eps = [episode(11, True), episode(6, False)]
    cfg = RobotLoopConfig(db="", seq_len=4, gamma=0.5, gae_lambda=0.0)
    batch = episode_batch(net, eps, cfg)
    assert batch["actions"].shape == (3 + 2, 4)  # ceil(11/4) + ceil(6/4) sequences
    assert batch["mask"].sum() == 17 and batch["policy_mask"].sum() == 15
    assert batch["policy_mask"][0, 2] == 0 and batch["mask"][0, 2] == 1
    ok = batch["policy_mask"] == 1
    chosen = np.concatenate([e.probs[np.arange(len(e)), e.actions] for e in eps])
    flat_mask = np.concatenate([np.delete(np.arange(11), 2), 11 + np.delete(np.arange(6), 2)])
    np.testing.assert_allclose(
        np.sort(batch["logp"][ok]), np.sort(np.log(chosen[flat_mask])), rtol=1e-6
    )
    # lambda 0: advantage = r + gamma * V(next) - V. Failed episode's last step (seq 2, index 2):
    v_fail_last = batch["values"][2, 2]
    assert batch["advantages"][2, 2] == pytest.approx(1.0 - v_fail_last, abs=1e-5)
    # The cut episode's last step (seq 4, index 1): bootstrapped from its own value.
    v_cut_last = batch["values"][4, 1]
    assert batch["advantages"][4, 1] == pytest.approx(1.0 + 0.5 * v_cut_last - v_cut_last, abs=1e-5)


def test_rl_robot_command(tmp_path, capsys):
    """The command line: --policy is pushed when the robot runs another, one iteration."""
    from malpi.cli import main

    start = tmp_path / "b.malpi"
    start.write_bytes(bundles()["b"])
    config = link_config(tmp_path, **{"drivetrain.backend": "sim", "policy.sample": True})
    with running_link(config) as daemon, daemon.client() as client:
        args = ["rl", "robot", daemon.link.command_endpoint, "--insecure", "--policy", str(start)]
        args += ["--iterations", "1", "--episodes", "1", "--episode-seconds", "0.4"]
        args += ["--epochs", "1", "--seq-len", "4", "--db", str(tmp_path / "pulled.sqlite")]
        assert main(args) == 0
        running = client.status().policy_version
    b = PolicyBundle.from_bytes(bundles()["b"])
    assert running.startswith("v2-") and running != b.label
    out = capsys.readouterr().out
    assert out.startswith("iteration 1: 1 episodes") and f"pushed {running}" in out
    with EpisodeStore(tmp_path / "pulled.sqlite", readonly=True) as store:
        assert [e.policy_version for e in store.episodes()] == [b.label]


def test_a_failure_while_driving_leaves_the_car_paused(tmp_path):
    """A lost link (or Ctrl-C) in the middle of an episode: the loop pauses the car, then fails."""
    from malpi.operator.client import LinkTimeout

    start = tmp_path / "a.malpi"
    start.write_bytes(bundles()["a"])

    class LinkDrops:
        def __init__(self, client):
            self.client = client

        def __getattr__(self, name):
            return getattr(self.client, name)

        def end_episode(self, *a, **kw):
            raise LinkTimeout("no reply (test)")

    config = link_config(tmp_path, **{"drivetrain.backend": "sim"})
    cfg = RobotLoopConfig(db=str(tmp_path / "p.sqlite"), policy=str(start), episode_seconds=0.3)
    with running_link(config) as daemon, daemon.client() as client:
        with pytest.raises(LinkTimeout):
            run_robot_loop("", cfg, client=LinkDrops(client))
        assert client.status().mode == "paused"
