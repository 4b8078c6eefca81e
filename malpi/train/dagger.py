"""DAgger: let the policy drive, ask the expert what it should have done, aggregate, retrain.

Behaviour cloning only ever sees the expert's states; a policy that makes a
small mistake soon sees states the expert never visited, and drifts off. Each
DAgger iteration:

1. **roll out** the current policy in the simulator on training tracks, through
   the same step runtime the robot uses (LiteRT), the LSTM state carried; at
   each step the expert takes over with probability ``beta`` (decaying over
   the iterations), so the first iterations still get round the track;
2. **label** every visited state with the expert's action (the state, not the
   frame, is labelled, so the label is exact);
3. **aggregate**: the roll-outs are written by the recorder into a database
   next to the demonstrations (``source`` = policy or human, the labels in the
   episode's configuration, see :mod:`malpi.train.demos`);
4. **retrain** on everything gathered so far, starting from the current weights.

On the real car the same aggregation takes the car's recordings: the policy
drives, the operator corrects it, and each correction is a step with
``source = "intervention"``: its action is the label, weighted up
(``StepWeights.intervention``), while the policy's own steps are context only.
Pass those databases as ``extra_data`` (``malpi train dagger --data car.sqlite``),
or retrain on them directly with ``malpi train bc --init CURRENT.malpi``.

The roll-outs are :class:`~malpi.workers.Workers` jobs, one per episode with a
random generator of its own (see :mod:`malpi.train.demos`): here, or as Ray
tasks with ``--ray``, the same episodes. Writing and retraining stay here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable
from malpi.policy.bundle import PolicyBundle
from malpi.policy.spec import PolicySpec
from malpi.train.demos import (
    Choice,
    EpisodeJob,
    SimEpisode,
    SimSetup,
    drive_job,
    open_recorder,
    write_episode,
)
from malpi.train.evaluate import one_cv2_thread, step_policy
from malpi.workers import Workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaggerConfig:
    iterations: int = 3
    seeds: Sequence[int] = tuple(range(500, 1000))  # training tracks the roll-outs use
    episodes: int = 30  # roll-outs per iteration (each on the next unused track seed)
    steps: int = 600  # control steps per roll-out at most
    beta: float = 0.3  # chance the expert acts at a step, first iteration
    beta_decay: float = 0.5  # beta shrinks by this factor every iteration
    backend: str = "litert_float"  # the step runtime that drives the roll-outs
    takeover: float | None = 0.7  # the expert takes over this far off (fraction of half-width)
    release: float = 0.25  # ... and hands back this close to the centre line
    sim: SimSetup = field(default_factory=SimSetup)

    def beta_at(self, iteration: int) -> float:
        return self.beta * self.beta_decay**iteration


class PolicyDriver:
    """The policy drives, its LSTM state carried. The expert acts instead

    - with probability ``beta`` at any step (classic DAgger's mixture), recorded
      as the demonstrator's (``human``);
    - as an operator would: when the car is more than ``takeover`` of the
      half-width off the centre line it takes over until the car is back within
      ``release`` of it (recorded as ``intervention``). The roll-out keeps going
      instead of ending at the first mistake, and the states just before each
      take-over, labelled, are exactly what the policy has to learn.
    """

    def __init__(
        self,
        policy: Any,
        beta: float,
        rng: np.random.Generator,
        takeover: float | None = 0.7,
        release: float = 0.25,
    ):
        self.policy, self.beta, self.rng = policy, beta, rng
        self.takeover, self.release = takeover, release
        self._expert_driving = False

    def __call__(
        self, obs: np.ndarray, prev: int, expert: int, step: int, info: dict[str, Any]
    ) -> Choice:
        if step == 0:
            self.policy.reset()
            self._expert_driving = False
        # The policy steps every time, fed what was really done, so its state stays true.
        r = self.policy.step(obs, prev)
        if self.takeover is not None:
            off = abs(info["cte"]) / info["half_width"]
            limit = self.release if self._expert_driving else self.takeover
            self._expert_driving = off > limit
            if self._expert_driving:
                return Choice(expert, "intervention", r.probs, r.value)
        if self.beta > 0 and self.rng.uniform() < self.beta:
            return Choice(expert, "human", r.probs, r.value)
        return Choice(r.action, "policy", r.probs, r.value)


def rollout_episode(
    shared: tuple[PolicyBundle, DaggerConfig, float], job: EpisodeJob
) -> tuple[SimEpisode, dict[str, Any]]:
    """The Workers job: one roll-out of the bundle at ``beta``, every state labelled."""
    bundle, config, beta = shared
    # built once per process and bundle (PolicyDriver resets its state at every episode's start)
    policy = step_policy(bundle, config.backend)

    def mixture(rng: np.random.Generator) -> PolicyDriver:
        return PolicyDriver(policy, beta, rng, config.takeover, config.release)

    with one_cv2_thread():
        return drive_job(config.sim, job, config.steps, bundle.actions, mixture)


def roll_out(
    bundle: PolicyBundle,
    database: str | os.PathLike[str],
    seeds: Sequence[int],
    config: DaggerConfig,
    beta: float,
    seed: int = 0,
    iteration: int = 0,
    workers: Workers | None = None,
) -> dict[str, Any]:
    """Drive ``bundle`` on each track in ``seeds``, label with the expert, append to ``database``.

    Episode ``i`` draws from its own generator, seeded by ``(seed, iteration, track, i)``; the
    episodes run on ``workers`` (here, by default) and are written here, in order."""
    workers = workers or Workers()
    jobs = [EpisodeJob(int(t), i, (seed, iteration, int(t), i)) for i, t in enumerate(seeds)]
    recorder = open_recorder(database, config.steps)
    stats = {
        "episodes": 0,
        "steps": 0,
        "policy_steps": 0,
        "disagreements": 0,
        "takeover_steps": 0,
        "left_track": 0,
    }
    started = time.monotonic()
    episode_config = {"driver": "policy", "dagger": {"iteration": iteration, "beta": beta}}
    try:
        for ep, sim_info in workers.map(rollout_episode, jobs, (bundle, config, beta)):
            write_episode(
                recorder,
                ep,
                bundle.actions,
                {"simulator": sim_info, **episode_config},
                config.sim.dt,
                policy_version=bundle.label,
            )
            own = np.array([s == "policy" for s in ep.sources])
            stats["episodes"] += 1
            stats["steps"] += len(ep)
            stats["policy_steps"] += int(own.sum())
            stats["disagreements"] += int((np.array(ep.actions) != np.array(ep.labels))[own].sum())
            stats["takeover_steps"] += sum(s == "intervention" for s in ep.sources)
            stats["left_track"] += int(ep.terminated)
    finally:
        recorder.close()
    if recorder.error is not None:
        raise RuntimeError(f"writing roll-outs failed: {recorder.error}")
    stats["seconds"] = round(time.monotonic() - started, 1)
    stats["agreement"] = round(1 - stats["disagreements"] / max(stats["policy_steps"], 1), 4)
    log.info(
        "DAgger roll-outs (beta %.2f): %d episodes, %d steps, %d taken over by the expert, "
        "%d left the track, policy agreed with the expert on %.1f%% of its steps, %.0f s",
        beta,
        stats["episodes"],
        stats["steps"],
        stats["takeover_steps"],
        stats["left_track"],
        100 * stats["agreement"],
        stats["seconds"],
    )
    return stats


def dagger(
    spec: PolicySpec,
    actions: ActionTable,
    weights: dict[str, np.ndarray],
    data: Sequence[str | os.PathLike[str]],
    workdir: str | os.PathLike[str],
    config: DaggerConfig,
    train_config: Any,
    extra_data: Sequence[str | os.PathLike[str]] = (),
    val_fraction: float = 0.1,
    strategy: Any = None,
    seed: int = 0,
    workers: Workers | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Run ``config.iterations`` DAgger iterations from ``weights``; returns the final weights
    and a record per iteration. Resumable: finished iterations are skipped on a rerun.
    The roll-outs run on ``workers`` (here, by default); the training runs here."""
    from malpi.train.bc import Trainer, export_bundle, load_weights
    from malpi.train.episodes import load_episodes, split_episodes

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rollouts = workdir / "rollouts.sqlite"
    record: list[dict[str, Any]] = []
    seeds = list(config.seeds)
    for it in range(config.iterations):
        itdir = workdir / f"iter-{it + 1}"
        done = itdir / "done.json"
        if done.exists():  # resumed: this iteration finished before
            record.append(json.loads(done.read_text()))
            weights = load_weights(itdir / "weights.npz")
            continue
        itdir.mkdir(parents=True, exist_ok=True)
        marker = itdir / "rollouts.json"
        if marker.exists():
            stats = json.loads(marker.read_text())
        else:
            bundle = export_bundle(
                weights,
                spec,
                actions,
                itdir / "policy.malpi",
                {"dagger_iteration": it},
                control_hz=1.0 / config.sim.dt,
            )
            chunk = seeds[it * config.episodes : (it + 1) * config.episodes]
            if len(chunk) < config.episodes:
                raise ValueError(f"DAgger needs {config.iterations * config.episodes} track seeds")
            stats = roll_out(
                bundle, rollouts, chunk, config, config.beta_at(it), seed, it + 1, workers
            )
            marker.write_text(json.dumps(stats))
        episodes = load_episodes(
            [*data, rollouts, *extra_data], actions, (spec.image_height, spec.image_width)
        )
        train, val = split_episodes(episodes, val_fraction)
        trainer = Trainer(
            spec, actions, train_config, itdir / "train", strategy, init_weights=weights
        )
        progress = trainer.fit(train, val)
        weights = trainer.weights()
        from malpi.train.bc import save_weights

        save_weights(itdir / "weights.npz", weights)
        row = {
            "iteration": it + 1,
            "beta": config.beta_at(it),
            "rollouts": stats,
            "train_episodes": len(train),
            "train_steps": sum(len(e) for e in train),
            "val_nll": progress.best_val_nll if val else None,
            "history": progress.history,
        }
        done.write_text(json.dumps(row, default=float))
        record.append(row)
    return weights, record
