"""``malpi rl robot``: learn from what the robot drove, push the result, drive again.

One iteration:

1. the robot drives ``episodes`` episodes of ``episode_seconds`` in auto mode
   with the current policy (this loop ends each one through the link; an
   operator may end one earlier as "failed", which the recording marks as
   terminal with the ``[reward] failed`` penalty);
2. the car is paused and those episodes are pulled over the link
   (``get_episode``) into a local episode database, rows exactly as the
   robot recorded them;
3. the policy is updated off-line with PPO whose "old" policy is the
   *behaviour* policy: the probabilities the robot recorded for each step.
   The ratio pi_new(a|s) / mu(a|s) is the importance correction, clipped as in
   PPO; steps the policy did not choose (an operator's intervention) stay in
   the sequences (the LSTM must see them) but are left out of the policy loss;
4. the new bundle (version + 1, parent = the old one) is pushed through the
   link, the robot swaps it in (a new episode starts), and the loop goes on.

The LSTM states at the start of each training sequence and the value
baseline are recomputed with the network before each update (the robot does
not record its LSTM state): exact for the policy the robot ran, up to its
int8 quantisation. An episode that ended without failing is truncated, not
terminated: it is bootstrapped from the value of its last step. The robot must
sample its actions (``policy.sample = true``) for the recorded probabilities to
be the behaviour policy's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import previous_actions
from malpi.policy.bundle import PolicyBundle

log = logging.getLogger(__name__)


@dataclass
class RobotLoopConfig:
    db: str = "robot-episodes.sqlite"  # the local database the episodes are pulled into
    policy: str | None = None  # the bundle to start from (pushed if the robot runs another)
    iterations: int = 10
    episodes: int = 4
    episode_seconds: float = 20.0
    epochs: int = 4
    minibatches: int = 1
    seq_len: int = 32
    learning_rate: float = 1e-4
    clip: float = 0.2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    reward_scale: float = 1.0
    min_steps: int = 4  # shorter episodes are skipped
    out_dir: str | None = None  # keep every pushed bundle here too
    insecure: bool = False
    keys: str | None = None
    timeout: float = 5.0
    seed: int = 0

    @classmethod
    def from_args(cls, args: Any) -> RobotLoopConfig:
        return cls(
            db=args.db,
            policy=args.policy,
            iterations=args.iterations,
            episodes=args.episodes,
            episode_seconds=args.episode_seconds,
            epochs=args.epochs,
            seq_len=args.seq_len,
            learning_rate=args.lr,
            out_dir=args.out_dir,
            insecure=args.insecure,
            keys=args.keys,
        )


def episode_batch(net: Any, episodes: list[Any], cfg: RobotLoopConfig) -> dict[str, np.ndarray]:
    """Training sequences from recorded episodes (``EpisodeData``), for ``ppo.Learner.update``."""
    import tensorflow as tf

    from malpi.rl.ppo import gae, make_sequences

    spec = net.spec
    u, L = spec.lstm_units, cfg.seq_len
    parts = []
    for ep in episodes:
        T = len(ep)
        obs = ep.frames if spec.is_image else ep.frames.astype(np.float32)
        actions = ep.actions.astype(np.int32)
        prev = previous_actions(actions)
        starts = np.zeros(T, np.float32)
        starts[0] = 1.0
        # The network's values and its LSTM state at every sequence start (zero at the episode's).
        h = np.zeros((T, u), np.float32)
        c = np.zeros((T, u), np.float32)
        values = np.zeros(T, np.float32)
        hk, ck = np.zeros((1, u), np.float32), np.zeros((1, u), np.float32)
        for k in range(0, T, L):
            h[k], c[k] = hk[0], ck[0]
            out = net.sequence_model(
                {
                    "frames": tf.convert_to_tensor(obs[None, k : k + L]),
                    "prev_actions": tf.one_hot(prev[None, k : k + L], spec.num_actions),
                    "episode_starts": tf.convert_to_tensor(starts[None, k : k + L]),
                    "h0": tf.convert_to_tensor(hk),
                    "c0": tf.convert_to_tensor(ck),
                }
            )
            values[k : k + L] = np.asarray(out["value"])[0, :, 0]
            hk, ck = np.asarray(out["h"]), np.asarray(out["c"])
        # The behaviour policy's log-probability of each action, where the policy chose it.
        chosen = ep.probs[np.arange(T), actions]
        by_policy = (ep.sources == "policy") & np.isfinite(chosen) & (chosen > 0)
        logp = np.where(by_policy, np.log(np.where(by_policy, chosen, 1.0)), 0.0).astype(np.float32)
        terminated = np.zeros(T, bool)
        truncated = np.zeros(T, bool)
        final_values = np.zeros(T, np.float32)
        if ep.info.terminated:
            terminated[-1] = True
        else:  # cut short, not failed: bootstrap (from the last step's value, the best we have)
            truncated[-1] = True
            final_values[-1] = values[-1]
        rewards = (ep.rewards * cfg.reward_scale).astype(np.float32)
        adv, ret = gae(
            rewards[:, None],
            values[:, None],
            terminated[:, None],
            truncated[:, None],
            final_values[:, None],
            np.zeros(1, np.float32),
            cfg.gamma,
            cfg.gae_lambda,
        )
        rollout = {
            "obs": obs[:, None],
            "prev": prev[:, None],
            "starts": starts[:, None],
            "actions": actions[:, None],
            "logp": logp[:, None],
            "values": values[:, None],
            "advantages": adv,
            "returns": ret,
            "h": h[:, None],
            "c": c[:, None],
        }
        parts.append(make_sequences(rollout, L, policy_mask=by_policy[:, None]))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def pull_driven(client: Any, db: str, ids: list[int], label: str, min_steps: int) -> list[Any]:
    """The robot's episodes ``ids`` (those ``label`` drove, of ``min_steps`` or more), pulled
    over the link into ``db`` and read back as ``EpisodeData``."""
    from malpi.operator.pull import pull_episodes
    from malpi.recorder.store import EpisodeStore

    # The recorder writes an episode's ending a moment after end_episode returns: wait for it.
    pulled = pull_episodes(client, db, ids=ids, wait=10.0)
    if pulled.running:
        log.warning("episodes %s were still being recorded; left out", pulled.running)
    with EpisodeStore(db, readonly=True) as store:
        infos = [store.episode(i) for i in pulled.local_ids.values()]
        return [
            store.load_episode(e.id)
            for e in infos
            if e.policy_version == label and e.step_count >= min_steps
        ]


def _wait_for_recorder(client: Any, timeout: float = 10.0) -> None:
    """Until the robot's recorder has written every queued step (the database is then complete)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rec = client.status().recorder
        if rec is None or rec.queue == 0:
            return
        time.sleep(0.1)
    log.warning("the robot's recorder still has steps queued; reading what is on disk")


def _drive(client: Any, cfg: RobotLoopConfig) -> list[int | None]:
    """``cfg.episodes`` episodes in auto mode; the car is paused again however this ends."""
    client.set_mode("auto")
    try:
        client.reset_episode()  # a fresh episode with this policy
        ended = []
        for _ in range(cfg.episodes):
            time.sleep(cfg.episode_seconds)
            ended.append(client.end_episode("finished").ended)
    except BaseException:  # Ctrl-C, a lost link: never leave the car driving on its own
        try:
            client.set_mode("paused")
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.error("could not pause the robot (%s): it may still be driving in auto", exc)
        raise
    client.set_mode("paused")
    return ended


def run_robot_loop(host: str, cfg: RobotLoopConfig, client: Any = None) -> list[dict[str, Any]]:
    """Run ``cfg.iterations`` iterations against the robot at ``host``; one summary per iteration."""
    from malpi.operator.client import RobotClient
    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy
    from malpi.protocol import schema
    from malpi.rl.ppo import Learner, PPOConfig

    own = client is None
    if own:
        client = RobotClient(host, insecure=cfg.insecure, keys=cfg.keys, timeout=cfg.timeout)
    try:
        status = client.status()
        actions = schema.action_table(status.actions)
        if cfg.policy is None:
            raise ValueError(
                "give --policy: the bundle the robot runs (or should start from); "
                "the link does not send the robot's policy back"
            )
        bundle = PolicyBundle.load(cfg.policy)
        if status.policy_version != bundle.label:
            log.info("robot runs %s; pushing %s to start from", status.policy_version, bundle.label)
            client.load_policy(bundle.to_bytes())
        net = build_policy(bundle.spec)
        net.set_named_weights(bundle.weights)
        learner = Learner(
            net,
            PPOConfig(
                epochs=cfg.epochs,
                minibatches=cfg.minibatches,
                learning_rate=cfg.learning_rate,
                clip=cfg.clip,
                vf_coef=cfg.vf_coef,
                ent_coef=cfg.ent_coef,
                seed=cfg.seed,
            ),
        )
        rng = np.random.default_rng(cfg.seed)
        if not status.recording:
            client.record(True)
        history: list[dict[str, Any]] = []
        for iteration in range(1, cfg.iterations + 1):
            # 1. Drive.
            ended = _drive(client, cfg)
            _wait_for_recorder(client)

            # 2. Fetch what was driven.
            expect = [i for i in ended if i is not None]
            episodes = pull_driven(client, cfg.db, expect, bundle.label, cfg.min_steps)
            if not episodes:
                raise RuntimeError(
                    f"the robot recorded no episodes of {bundle.label} with at least "
                    f"{cfg.min_steps} steps this iteration (is it recording?)"
                )
            steps = sum(len(e) for e in episodes)
            returns = [float(e.rewards.sum()) for e in episodes]
            chosen = [e.actions[e.sources == "policy"] for e in episodes]
            probs = [e.probs[e.sources == "policy"] for e in episodes]
            n_policy = sum(len(a) for a in chosen)
            n_argmax = sum(
                int((a == np.argmax(np.nan_to_num(p, nan=-1.0), axis=1)).sum())
                for a, p in zip(chosen, probs, strict=True)
            )
            if n_policy > 50 and n_argmax == n_policy:
                log.warning(
                    "every policy action was the most probable one: the robot seems to drive "
                    "greedily (policy.sample = false), while the importance weights assume sampling"
                )

            # 3. Learn.
            batch = episode_batch(net, episodes, cfg)
            stats = learner.update(batch, cfg.learning_rate, cfg.clip, rng)

            # 4. Push.
            new = make_bundle(
                net,
                actions,
                provenance={
                    "made_by": "malpi rl robot",
                    "iteration": iteration,
                    "episodes": len(episodes),
                    "steps": steps,
                    "mean_return": round(float(np.mean(returns)), 4),
                },
                version=bundle.version + 1,
                control_hz=bundle.control_hz,  # it learnt from the robot, driving at that rate
                parent=bundle.id,
            )
            if cfg.out_dir:
                new.save(Path(cfg.out_dir) / f"{new.label}.malpi")
            reply = client.load_policy(new.to_bytes())
            log.info(
                "iteration %d: %d episodes, %d steps, mean return %.3f, kl %.4f -> robot runs %s",
                iteration,
                len(episodes),
                steps,
                np.mean(returns),
                stats["approx_kl"],
                reply.version,
            )
            history.append(
                {
                    "iteration": iteration,
                    "episodes": len(episodes),
                    "steps": steps,
                    "mean_return": float(np.mean(returns)),
                    "policy_driven": bundle.label,
                    "pushed": reply.version,
                    **{k: float(v) for k, v in stats.items()},
                }
            )
            bundle = new
        if history:  # pushes run but are not kept: the car still boots what it booted before
            log.info(
                "the robot runs %s until it restarts; malpi push HOST --keep keeps it",
                history[-1]["pushed"],
            )
        return history
    finally:
        if own:
            client.close()
