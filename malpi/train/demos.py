"""Driving in the simulator and writing it down as recordings: expert demonstrations.

Simulator episodes go through the same :class:`~malpi.recorder.Recorder` as
the car's, into the same SQLite format, so the trainer has one pipeline for
real and simulated driving. Each step stores the frame, the action *taken*
and who chose it; the expert's label for every step goes into the episode's
configuration (:data:`~malpi.train.episodes.LABELS_KEY`), because the action
taken and the right action differ whenever someone other than the expert
drove: an injected perturbation here, the policy in DAgger.

Perturbations (as in DART): now and then a random action is held for a few
steps while the label stays the expert's, so the data shows the car drifting
off the ideal line and how to come back, which pure expert driving never does.

Each episode is a :class:`~malpi.workers.Workers` job (:class:`EpisodeJob`):
a pure function of the configuration and the job, its random draws (looks,
start, perturbations) from a generator of its own, so the episodes come out
the same whether they run here one after another or as Ray tasks
(``--ray``); this process writes them, in order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import DEFAULT_ACTIONS, NO_ACTION, ActionTable
from malpi.sim import DEFAULT_DT
from malpi.train.episodes import LABELS_KEY
from malpi.workers import Workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimSetup:
    """How the simulator is set up for data collection."""

    car: str = "differential"  # the daemon's simulated car (malpi.config SimConfig.car)
    car_noise: float = 1.0  # trim, gain errors, speed and yaw noise (1 = the sim's default)
    randomize: float = 0.5  # fraction of episodes with randomised lighting/colour/blur/noise
    dt: float = DEFAULT_DT  # control period (s): the daemon's 20 Hz loop
    image: tuple[int, int] = (120, 160)  # camera (height, width): the policy's input

    def make_env(self, track_seed: int, steps: int, randomize: bool, actions: ActionTable):
        from malpi.sim.car import CarParams
        from malpi.sim.env import TrackEnv
        from malpi.sim.render import CameraSpec

        return TrackEnv(
            track_seeds=[track_seed],
            actions=actions,
            car=CarParams(drivetrain=self.car, noise=self.car_noise),
            camera=CameraSpec(width=self.image[1], height=self.image[0]),
            dt=self.dt,
            max_steps=steps,
            random_start=True,
            random_direction=True,
            randomize=randomize,
        )


@dataclass(frozen=True)
class Choice:
    """What a driver did at one step."""

    action: int
    source: str  # human (the demonstrator) | policy | intervention
    probs: np.ndarray | None = None
    value: float | None = None


Driver = Callable[[np.ndarray, int, int, int, dict[str, Any]], Choice]
"""(observation, previous action, expert's action, step, env info) -> Choice. The info
is the env's (cte, speed, ...) plus ``half_width``, the track's."""


@dataclass
class SimEpisode:
    """One simulated episode in memory, before it is written."""

    track_seed: int
    frames: list[np.ndarray]
    actions: list[int]
    labels: list[int]
    sources: list[str]
    probs: list[np.ndarray | None]
    values: list[float | None]
    rewards: list[float]
    poses: list[tuple[float, float, float]]
    terminated: bool
    laps: int

    def __len__(self) -> int:
        return len(self.actions)


def drive_episode(env: Any, driver: Driver, env_seed: int) -> SimEpisode:
    """Run one episode of ``env`` (a TrackEnv) with ``driver``, labelling every step with the expert."""
    obs, info = env.reset(seed=env_seed)
    track_seed = int(info["track_seed"])
    half_width = float(env.unwrapped.world.track.half_width)
    ep = SimEpisode(track_seed, [], [], [], [], [], [], [], [], False, 0)
    prev = NO_ACTION
    while True:
        label = env.unwrapped.expert_action()
        choice = driver(obs, prev, label, len(ep), {**info, "half_width": half_width})
        ep.frames.append(obs)
        ep.poses.append(tuple(info["pose"]))
        obs, reward, terminated, truncated, info = env.step(choice.action)
        ep.actions.append(choice.action)
        ep.labels.append(label)
        ep.sources.append(choice.source)
        ep.probs.append(choice.probs)
        ep.values.append(choice.value)
        ep.rewards.append(float(reward))
        prev = choice.action
        if terminated or truncated:
            ep.terminated, ep.laps = bool(terminated), int(info["laps"])
            return ep


@dataclass(frozen=True)
class EpisodeJob:
    """One simulated episode as a job: its track, its index, and the entropy of its own
    random generator (the run's seed and what places the episode in the run)."""

    track_seed: int
    episode: int
    entropy: tuple[int, ...]

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(list(self.entropy))


def drive_job(
    sim: SimSetup,
    job: EpisodeJob,
    steps: int,
    actions: ActionTable,
    make_driver: Callable[[np.random.Generator], Driver],
) -> tuple[SimEpisode, dict[str, Any]]:
    """Drive the episode ``job`` describes; every random draw comes from the job's own
    generator (looks, start, and the driver's), so it depends on nothing else."""
    rng = job.rng()
    randomize = bool(rng.uniform() < sim.randomize)
    env = sim.make_env(job.track_seed, steps, randomize, actions)
    env_seed = int(rng.integers(2**31))
    ep = drive_episode(env, make_driver(rng), env_seed)
    env.close()
    sim_info = {
        **asdict(sim),
        "track_seed": job.track_seed,
        "env_seed": env_seed,
        "randomized": randomize,
    }
    return ep, sim_info


def write_episode(
    recorder: Any,
    ep: SimEpisode,
    actions: ActionTable,
    config: dict[str, Any],
    dt: float,
    policy_version: str | None = None,
) -> int:
    """Write a simulated episode through the recorder (frames as JPEG, labels in the config)."""
    from malpi.recorder import EpisodeMeta, Step

    meta = EpisodeMeta(
        action_table=actions,
        config={**config, LABELS_KEY: [int(a) for a in ep.labels]},
        policy_version=policy_version,
        notes=f"simulator, track {ep.track_seed}",
    )
    episode_id = recorder.start_episode(meta)
    t0 = time.monotonic()
    last = len(ep) - 1
    for i in range(len(ep)):
        t = t0 + i * dt  # simulated time, so the recording reads like a 20 Hz drive
        recorder.record(
            Step(
                frame=ep.frames[i],
                action=int(ep.actions[i]),
                source=ep.sources[i],
                capture_time=t,
                action_time=t + 0.001,
                probs=ep.probs[i],
                value=ep.values[i],
                reward=ep.rewards[i],
                done=ep.terminated and i == last,
                policy_version=policy_version if ep.sources[i] == "policy" else None,
            )
        )
    recorder.end_episode("failed" if ep.terminated else "finished")
    if not recorder.flush(timeout=60.0):
        raise RuntimeError(f"the recorder failed writing episode {episode_id}: {recorder.error}")
    dropped = recorder.stats.steps_dropped
    if dropped:
        raise RuntimeError(f"the recorder dropped {dropped} steps; raise its queue size")
    return episode_id


def open_recorder(path: str | os.PathLike[str], max_steps: int) -> Any:
    """A recorder whose queue holds a whole episode: simulated steps arrive faster than real time."""
    from malpi.recorder import Recorder

    return Recorder(Path(path), queue_size=max_steps + 16, commit_interval=2.0)


# -- the expert's demonstrations ----------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    """Expert demonstrations on a set of training tracks."""

    seeds: Sequence[int] = tuple(range(0, 40))
    steps: int = 600  # control steps per episode (30 s at 20 Hz)
    episodes_per_track: int = 1
    perturb_prob: float = 0.04  # chance per step of starting a perturbation
    perturb_steps: int = 3  # a perturbation holds a random action for 1..this many steps
    sim: SimSetup = SimSetup()


class ExpertWithPerturbations:
    """The expert drives; now and then a random action is held for a few steps."""

    def __init__(self, num_actions: int, prob: float, max_hold: int, rng: np.random.Generator):
        self.num_actions, self.prob, self.max_hold, self.rng = num_actions, prob, max_hold, rng
        self._left, self._action = 0, 0

    def __call__(
        self, obs: np.ndarray, prev: int, expert: int, step: int, info: dict[str, Any]
    ) -> Choice:
        if self._left == 0 and self.prob > 0 and self.rng.uniform() < self.prob:
            self._left = int(self.rng.integers(1, self.max_hold + 1))
            self._action = int(self.rng.integers(self.num_actions))
        if self._left > 0:
            self._left -= 1
            return Choice(self._action, "human")
        return Choice(expert, "human")


def demo_episode(
    shared: tuple[DemoConfig, ActionTable], job: EpisodeJob
) -> tuple[SimEpisode, dict[str, Any]]:
    """The Workers job: one perturbed expert episode and its simulator settings."""
    from malpi.train.evaluate import one_cv2_thread  # renders as fast, with less CPU

    config, actions = shared

    def expert(rng: np.random.Generator) -> Driver:
        return ExpertWithPerturbations(len(actions), config.perturb_prob, config.perturb_steps, rng)

    with one_cv2_thread():
        ep, sim_info = drive_job(config.sim, job, config.steps, actions, expert)
    return ep, {**sim_info, "episode": job.episode}


def record_demos(
    path: str | os.PathLike[str],
    config: DemoConfig = DemoConfig(),
    actions: ActionTable = DEFAULT_ACTIONS,
    seed: int = 0,
    workers: Workers | None = None,
) -> dict[str, Any]:
    """Drive the expert on ``config.seeds`` and append the episodes to the database ``path``.

    The episodes run on ``workers`` (here, by default); they are written here, in order."""
    workers = workers or Workers()
    jobs = [
        EpisodeJob(int(t), k, (seed, int(t), k))
        for t in config.seeds
        for k in range(config.episodes_per_track)
    ]
    recorder = open_recorder(path, config.steps)
    stats = {"episodes": 0, "steps": 0, "left_track": 0}
    started = time.monotonic()
    try:
        for ep, sim_info in workers.map(demo_episode, jobs, (config, actions)):
            episode_config = {
                "simulator": sim_info,
                "driver": "expert",
                "perturb_prob": config.perturb_prob,
            }
            write_episode(recorder, ep, actions, episode_config, config.sim.dt)
            stats["episodes"] += 1
            stats["steps"] += len(ep)
            stats["left_track"] += int(ep.terminated)
    finally:
        recorder.close()
    if recorder.error is not None:
        raise RuntimeError(f"recording demonstrations failed: {recorder.error}")
    stats["seconds"] = round(time.monotonic() - started, 1)
    log.info(
        "demonstrations: %d episodes, %d steps in %.1f s -> %s",
        stats["episodes"],
        stats["steps"],
        stats["seconds"],
        path,
    )
    return stats
