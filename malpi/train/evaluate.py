"""Is the new policy better? Measured through the runtime the robot uses, before it goes near one.

Two measures, both through :class:`~malpi.policy.runtime.StepPolicy` (LiteRT
the daemon's backend by default), one frame at a time with the LSTM
state carried, exactly as the daemon runs it:

- **as a predictor** (offline): on held-out episodes, fed the frames and the
  actions actually taken before each step, how often its most probable action
  is the target (next-action accuracy), and the mean log-likelihood per step
  of the target. By default the held-out episodes are the expert driving the
  held-out evaluation tracks, which no training data comes from.
- **as a driver** (closed loop): on each evaluation track (``STANDARD_EVAL_SEEDS``
  by default: seeds 1000-1009, never trained on) from the start line, until it
  has driven ``laps`` laps, left the track, or run out of steps: laps, whether
  it left the track, mean and largest cross-track error, mean speed, and the
  path it drove (for the pictures).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from malpi.actions import NO_ACTION
from malpi.policy.bundle import PolicyBundle

log = logging.getLogger(__name__)

DEFAULT_CAR = "differential"  # the daemon's simulated car (malpi.config SimConfig.car)


@dataclass
class DriveResult:
    track_seed: int
    laps: int
    left_track: bool
    steps: int
    time_s: float
    mean_cte: float  # m, mean |cross-track error|
    max_cte: float
    mean_speed: float  # m/s, progress along the track per second
    half_width: float  # m: the track's; |cte| beyond it is off the track
    trajectory: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 2)))

    def completed(self, laps: int) -> bool:
        return self.laps >= laps and not self.left_track

    def to_dict(self) -> dict[str, Any]:
        return {
            "track": self.track_seed,
            "laps": self.laps,
            "left_track": self.left_track,
            "steps": self.steps,
            "time_s": round(self.time_s, 2),
            "mean_cte_m": round(self.mean_cte, 4),
            "max_cte_m": round(self.max_cte, 4),
            "mean_speed_mps": round(self.mean_speed, 3),
        }


def sim_env(track_seed: int, bundle: PolicyBundle, car: str, car_noise: float, max_steps: int):
    """The evaluation env of a track: start line, forward, plain rendering at the policy's size."""
    from malpi.sim.car import CarParams
    from malpi.sim.env import make_eval_env
    from malpi.sim.render import CameraSpec

    spec = bundle.spec
    return make_eval_env(
        track_seed,
        actions=bundle.actions,
        car=CarParams(drivetrain=car, noise=car_noise),
        camera=CameraSpec(width=spec.image_width, height=spec.image_height),
        max_steps=max_steps,
    )


def drive_track(
    policy: Any,
    track_seed: int,
    laps: int = 3,
    max_steps: int = 3000,
    car: str = DEFAULT_CAR,
    car_noise: float = 1.0,
    seed: int = 0,
) -> DriveResult:
    """Let ``policy`` (a StepPolicy) drive one evaluation track."""
    env = sim_env(track_seed, policy.bundle, car, car_noise, max_steps)
    obs, info = env.reset(seed=seed)
    policy.reset()
    prev = NO_ACTION
    path = [info["pose"][:2]]
    ctes: list[float] = []
    left = False
    while True:
        action = policy.step(obs, prev).action
        obs, _, terminated, truncated, info = env.step(action)
        prev = action
        path.append(info["pose"][:2])
        ctes.append(abs(info["cte"]))
        if terminated:
            left = True
            break
        if truncated or info["laps"] >= laps:
            break
    world = env.world
    return DriveResult(
        track_seed=track_seed,
        laps=int(info["laps"]),
        left_track=left,
        steps=len(ctes),
        time_s=float(info["time"]),
        mean_cte=float(np.mean(ctes)) if ctes else 0.0,
        max_cte=float(np.max(ctes)) if ctes else 0.0,
        mean_speed=float(world.travelled / max(info["time"], 1e-9)),
        half_width=float(world.track.half_width),
        trajectory=np.asarray(path, np.float64),
    )


def closed_loop(
    bundle: PolicyBundle,
    seeds: Iterable[int] | None = None,
    backend: str = "auto",
    laps: int = 3,
    max_steps: int = 3000,
    car: str = DEFAULT_CAR,
    car_noise: float = 1.0,
    seed: int = 0,
) -> list[DriveResult]:
    """Drive every track in ``seeds`` (default: the standard evaluation set)."""
    from malpi.policy.runtime import StepPolicy
    from malpi.sim.track import STANDARD_EVAL_SEEDS

    policy = StepPolicy(bundle, backend=backend)
    results = []
    for s in STANDARD_EVAL_SEEDS if seeds is None else seeds:
        r = drive_track(policy, int(s), laps, max_steps, car, car_noise, seed)
        log.info(
            "track %d: %d laps%s, mean |cte| %.3f m, %.2f m/s",
            r.track_seed,
            r.laps,
            " (left the track)" if r.left_track else "",
            r.mean_cte,
            r.mean_speed,
        )
        results.append(r)
    return results


# -- the policy as a predictor --------------------------------------------------------------------


@dataclass
class HeldOut:
    """An episode to score the policy on: frames, the actions taken, the targets."""

    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (T,) taken (the next step's previous action)
    targets: np.ndarray  # (T,)
    weights: np.ndarray  # (T,)


def expert_drives(
    bundle: PolicyBundle,
    seeds: Iterable[int] | None = None,
    steps: int = 600,
    car: str = DEFAULT_CAR,
    car_noise: float = 1.0,
    seed: int = 0,
) -> list[HeldOut]:
    """The expert driving each evaluation track from the start line (held-out episodes)."""
    from malpi.sim.track import STANDARD_EVAL_SEEDS

    out = []
    for s in STANDARD_EVAL_SEEDS if seeds is None else seeds:
        env = sim_env(int(s), bundle, car, car_noise, steps)
        obs, _ = env.reset(seed=seed)
        frames, actions = [], []
        for _ in range(steps):
            a = env.expert_action()
            frames.append(obs)
            actions.append(a)
            obs, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                break
        a = np.asarray(actions, np.int64)
        out.append(HeldOut(f"expert@{s}", np.stack(frames), a, a, np.ones(len(a), np.float32)))
    return out


def held_out_from_episodes(episodes: Sequence[Any]) -> list[HeldOut]:
    """Recorded episodes (``malpi.train.episodes.Episode``) with their frames decoded."""
    from malpi.recorder.codec import decode_jpeg

    return [
        HeldOut(
            e.origin,
            np.stack([decode_jpeg(j) for j in e.jpegs]),
            e.actions,
            e.targets,
            e.weights,
        )
        for e in episodes
        if e.trained_steps
    ]


def next_action_metrics(
    bundle: PolicyBundle, episodes: Sequence[HeldOut], backend: str = "auto"
) -> dict[str, Any]:
    """Next-action accuracy, log-likelihood per step and the confusion matrix (weighted by step)."""
    from malpi.policy.runtime import StepPolicy

    policy = StepPolicy(bundle, backend=backend)
    n = bundle.spec.num_actions
    confusion = np.zeros((n, n))
    loglik = 0.0
    for ep in episodes:
        policy.reset()
        prev = NO_ACTION
        for t in range(len(ep.actions)):
            probs = policy.step(ep.frames[t], prev).probs
            w = float(ep.weights[t])
            target = int(ep.targets[t])
            confusion[target, int(np.argmax(probs))] += w
            loglik += w * math.log(max(float(probs[target]), 1e-12))
            prev = int(ep.actions[t])
    total = max(confusion.sum(), 1e-9)
    return {
        "next_action_accuracy": float(np.trace(confusion) / total),
        "log_likelihood_per_step": loglik / total,
        "steps": int(round(confusion.sum())),
        "confusion": confusion.tolist(),
    }


# -- the report -----------------------------------------------------------------------------------


def evaluate_bundle(
    bundle: PolicyBundle,
    backend: str = "auto",
    seeds: Iterable[int] | None = None,
    laps: int = 3,
    max_steps: int = 3000,
    car: str = DEFAULT_CAR,
    car_noise: float = 1.0,
    held_out: Sequence[HeldOut] | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], list[DriveResult]]:
    """The report ``malpi eval`` prints (JSON-ready) and the drives behind it."""
    from malpi.policy.runtime import resolve_backend
    from malpi.sim.track import STANDARD_EVAL_SEEDS

    backend = resolve_backend(bundle, backend)  # the report names what ran

    seeds = list(STANDARD_EVAL_SEEDS if seeds is None else seeds)
    started = time.monotonic()
    drives = closed_loop(bundle, seeds, backend, laps, max_steps, car, car_noise, seed)
    if held_out is None:
        held_out = expert_drives(bundle, seeds, car=car, car_noise=car_noise, seed=seed)
    predictor = next_action_metrics(bundle, held_out, backend) if held_out else {}
    report = {
        "bundle": bundle.label,
        "backend": backend,
        "car": car,
        "laps_target": laps,
        "tracks": len(drives),
        "laps_mean": float(np.mean([d.laps for d in drives])) if drives else 0.0,
        "offtrack_episodes": sum(d.left_track for d in drives),
        "completed_tracks": sum(d.completed(laps) for d in drives),
        "mean_cte_m": round(float(np.mean([d.mean_cte for d in drives])), 4) if drives else None,
        "mean_speed_mps": round(float(np.mean([d.mean_speed for d in drives])), 3)
        if drives
        else None,
        "next_action_accuracy": predictor.get("next_action_accuracy"),
        "log_likelihood_per_step": predictor.get("log_likelihood_per_step"),
        "held_out_steps": predictor.get("steps", 0),
        "confusion": predictor.get("confusion"),
        "actions": bundle.actions.names,
        "per_track": [d.to_dict() for d in drives],
        "seconds": round(time.monotonic() - started, 1),
    }
    return report, drives
