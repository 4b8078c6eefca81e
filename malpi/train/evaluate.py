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

Each track is a :class:`~malpi.workers.Workers` job (:func:`track_job`: the drive, then the
expert's held-out drive scored), so ``malpi eval --ray`` runs the tracks as Ray tasks. The jobs
return per-step figures and the calling process adds them up in track order, so the report is
the same, to the last bit, wherever the tracks ran.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from malpi.actions import NO_ACTION
from malpi.policy.bundle import PolicyBundle
from malpi.workers import Workers

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


@dataclass(frozen=True)
class TrackSettings:
    """What every track's job shares besides the bundle (``backend`` already resolved)."""

    backend: str
    laps: int = 3
    max_steps: int = 3000
    car: str = DEFAULT_CAR
    car_noise: float = 1.0
    seed: int = 0
    expert_steps: int = 600  # the held-out expert drive's length


# One step runtime per process, built at its first track of a bundle: a Ray worker runs many
# tracks of the same bundle, and building the interpreter per track would cost about as much as
# a short drive. Only the latest is kept. Its LSTM state is reset at every episode's start, so a
# reused runtime steps as a new one would.
_policy_cache: dict[tuple[str, str], Any] = {}


def step_policy(bundle: PolicyBundle, backend: str) -> Any:
    """This process's StepPolicy of ``bundle`` on ``backend`` (built once, then reused)."""
    from malpi.policy.runtime import StepPolicy

    key = (bundle.sha256, backend)
    if key not in _policy_cache:
        _policy_cache.clear()
        _policy_cache[key] = StepPolicy(bundle, backend=backend)
    return _policy_cache[key]


@contextlib.contextmanager
def one_cv2_thread() -> Iterator[None]:
    """OpenCV on one thread for a job, its setting restored after. Its thread pool makes the
    simulator's rendering no faster (a track of the default policy: 0.63 s either way) but costs
    45 % more CPU, which on Ray takes it from the job on the next core."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def drive_job(shared: tuple[PolicyBundle, TrackSettings], track_seed: int) -> DriveResult:
    """The Workers job of :func:`closed_loop`: the bundle drives one track."""
    bundle, s = shared
    policy = step_policy(bundle, s.backend)
    with one_cv2_thread():
        return drive_track(policy, track_seed, s.laps, s.max_steps, s.car, s.car_noise, s.seed)


def closed_loop(
    bundle: PolicyBundle,
    seeds: Iterable[int] | None = None,
    backend: str = "auto",
    laps: int = 3,
    max_steps: int = 3000,
    car: str = DEFAULT_CAR,
    car_noise: float = 1.0,
    seed: int = 0,
    workers: Workers | None = None,
) -> list[DriveResult]:
    """Drive every track in ``seeds`` (default: the standard evaluation set), one job per track."""
    from malpi.policy.runtime import resolve_backend
    from malpi.sim.track import STANDARD_EVAL_SEEDS

    settings = TrackSettings(
        resolve_backend(bundle, backend), laps, max_steps, car, car_noise, seed
    )
    tracks = [int(s) for s in (STANDARD_EVAL_SEEDS if seeds is None else seeds)]
    results = []
    for r in (workers or Workers()).map(drive_job, tracks, (bundle, settings)):
        _log_drive(r)
        results.append(r)
    return results


def _log_drive(r: DriveResult) -> None:
    log.info(
        "track %d: %d laps%s, mean |cte| %.3f m, %.2f m/s",
        r.track_seed,
        r.laps,
        " (left the track)" if r.left_track else "",
        r.mean_cte,
        r.mean_speed,
    )


# -- the policy as a predictor --------------------------------------------------------------------


@dataclass
class HeldOut:
    """An episode to score the policy on: frames, the actions taken, the targets."""

    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (T,) taken (the next step's previous action)
    targets: np.ndarray  # (T,)
    weights: np.ndarray  # (T,)


def expert_drive(
    bundle: PolicyBundle,
    track_seed: int,
    steps: int = 600,
    car: str = DEFAULT_CAR,
    car_noise: float = 1.0,
    seed: int = 0,
) -> HeldOut:
    """The expert driving one evaluation track from the start line (a held-out episode)."""
    env = sim_env(track_seed, bundle, car, car_noise, steps)
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
    return HeldOut(f"expert@{track_seed}", np.stack(frames), a, a, np.ones(len(a), np.float32))


def expert_job(shared: tuple[PolicyBundle, TrackSettings], track_seed: int) -> HeldOut:
    """The Workers job of :func:`expert_drives`."""
    bundle, s = shared
    with one_cv2_thread():
        return expert_drive(bundle, track_seed, s.expert_steps, s.car, s.car_noise, s.seed)


def expert_drives(
    bundle: PolicyBundle,
    seeds: Iterable[int] | None = None,
    steps: int = 600,
    car: str = DEFAULT_CAR,
    car_noise: float = 1.0,
    seed: int = 0,
    workers: Workers | None = None,
) -> list[HeldOut]:
    """The expert driving each evaluation track from the start line (held-out episodes).

    On Ray each episode's frames (35 MB at 160x120 and 600 steps) come back through the object
    store; :func:`evaluate_bundle` scores them where they are made instead."""
    from malpi.sim.track import STANDARD_EVAL_SEEDS

    settings = TrackSettings("unused", car=car, car_noise=car_noise, seed=seed, expert_steps=steps)
    tracks = [int(s) for s in (STANDARD_EVAL_SEEDS if seeds is None else seeds)]
    return list((workers or Workers()).map(expert_job, tracks, (bundle, settings)))


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


@dataclass
class StepScores:
    """The policy scored on one held-out episode, step by step (added up by :func:`combine`)."""

    targets: np.ndarray  # (T,) int64
    predicted: np.ndarray  # (T,) int64, the most probable action
    weights: np.ndarray  # (T,) float64
    log_probs: np.ndarray  # (T,) float64, log of the target's probability (floored at 1e-12)


def score_episode(policy: Any, ep: HeldOut) -> StepScores:
    """``policy`` fed ``ep``'s frames and the actions taken, its state carried from a reset."""
    policy.reset()
    prev = NO_ACTION
    n = len(ep.actions)
    predicted, log_probs = np.zeros(n, np.int64), np.zeros(n, np.float64)
    for t in range(n):
        probs = policy.step(ep.frames[t], prev).probs
        predicted[t] = int(np.argmax(probs))
        log_probs[t] = math.log(max(float(probs[int(ep.targets[t])]), 1e-12))
        prev = int(ep.actions[t])
    targets = np.asarray(ep.targets, np.int64)
    return StepScores(targets, predicted, np.asarray(ep.weights, np.float64), log_probs)


def combine(scores: Iterable[StepScores], num_actions: int) -> dict[str, Any]:
    """Next-action accuracy, log-likelihood per step and the confusion matrix (weighted by step).

    One running sum over every step in episode order, whichever process scored them, so the
    floats are the same however the episodes were spread."""
    confusion = np.zeros((num_actions, num_actions))
    loglik = 0.0
    for sc in scores:
        for target, pred, w, logp in zip(
            sc.targets.tolist(),
            sc.predicted.tolist(),
            sc.weights.tolist(),
            sc.log_probs.tolist(),
            strict=True,
        ):
            confusion[target, pred] += w
            loglik += w * logp
    total = max(confusion.sum(), 1e-9)
    return {
        "next_action_accuracy": float(np.trace(confusion) / total),
        "log_likelihood_per_step": loglik / total,
        "steps": int(round(confusion.sum())),
        "confusion": confusion.tolist(),
    }


def next_action_metrics(
    bundle: PolicyBundle, episodes: Sequence[HeldOut], backend: str = "auto"
) -> dict[str, Any]:
    """Next-action accuracy, log-likelihood per step and the confusion matrix (weighted by step).

    Scored here: an episode's frames are bigger to send to a worker than scoring them costs."""
    from malpi.policy.runtime import resolve_backend

    policy = step_policy(bundle, resolve_backend(bundle, backend))
    return combine((score_episode(policy, ep) for ep in episodes), bundle.spec.num_actions)


def track_job(
    shared: tuple[PolicyBundle, TrackSettings], track_seed: int
) -> tuple[DriveResult, StepScores]:
    """The Workers job of :func:`evaluate_bundle`: one track driven, and the expert's held-out
    drive of it scored (its frames stay in the worker)."""
    bundle, s = shared
    policy = step_policy(bundle, s.backend)
    with one_cv2_thread():
        drive = drive_track(policy, track_seed, s.laps, s.max_steps, s.car, s.car_noise, s.seed)
        expert = expert_drive(bundle, track_seed, s.expert_steps, s.car, s.car_noise, s.seed)
    return drive, score_episode(policy, expert)


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
    workers: Workers | None = None,
) -> tuple[dict[str, Any], list[DriveResult]]:
    """The report ``malpi eval`` prints (JSON-ready) and the drives behind it.

    ``held_out``: the episodes to score as a predictor (default: the expert driving each track,
    in that track's job); ``workers``: where the tracks run (default: here, in order)."""
    from malpi.policy.runtime import resolve_backend
    from malpi.sim.track import STANDARD_EVAL_SEEDS

    backend = resolve_backend(bundle, backend)  # the report names what ran

    seeds = [int(s) for s in (STANDARD_EVAL_SEEDS if seeds is None else seeds)]
    settings = TrackSettings(backend, laps, max_steps, car, car_noise, seed)
    workers = workers or Workers()
    started = time.monotonic()
    if held_out is None:  # the expert's drives of the same tracks, in the same jobs
        drives, scores = [], []
        for drive, score in workers.map(track_job, seeds, (bundle, settings)):
            _log_drive(drive)
            drives.append(drive)
            scores.append(score)
        predictor = combine(scores, bundle.spec.num_actions)
    else:
        drives = closed_loop(bundle, seeds, backend, laps, max_steps, car, car_noise, seed, workers)
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
