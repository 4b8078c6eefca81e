"""``malpi bench sim``: how fast the simulator runs on one core, next to CarRacing-v3.

Everything is pinned to one CPU (and OpenCV to one thread) for the duration,
so the figures are per core: a trainer with N cores can run about N envs.
Rates are per second of this process's CPU time, what the core does for it
alone, so other work sharing the core does not lower them;
``wall_steps_per_s`` and ``core_share`` (CPU / wall time) say what the wall
clock saw. Four environments are measured in one run, each for ``seconds``, resets
included (``envs`` in the JSON, in this order):

- ``training``: the env the trainers drive, as ``malpi rl sim`` builds it
  (the 1000 training tracks, a new one drawn at every reset; the daemon's
  differential car with its noise; 120 x 160 camera; 500-step episodes;
  ``malpi train``'s demonstrations and DAgger use the same car and camera, a
  new track every episode), driven by the expert, which keeps the
  car on the road for whole episodes as training's drivers do and labels
  every step as demonstrations and DAgger do (its cost is included). The
  headline figure; the ratios are computed against it.
- ``training_random``: the same env with random actions: they leave the road
  within tens of steps, so nearly every reset pays for a new track (the worst
  case, a figure of reset cost more than of training).
- ``one_track``: ``gymnasium.make("MaLPi/Track-v0", track_seeds=[1000])``
  (the registered defaults: steering car, 1000-step episodes) with random
  actions: one track whose floor stays cached, so resets are nearly free; the
  README's earlier headline.
- ``carracing``: ``gymnasium.make("CarRacing-v3")`` with gymnasium's default
  settings (continuous actions, 96 x 96, 1000-step episodes) and random
  actions, as its authors publish it; when Box2D is importable.

``parts`` splits a step: ``render_us``, ``dynamics_us`` (the training car),
``expert_us``, and ``new_track_reset_ms`` (a reset onto a track neither
generated nor drawn before in the process); ``materials_once_s`` is what a
process pays once, before the rows, for the floor styles' material tiles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ONE_TRACK_SEED = 1000  # the first standard evaluation track
FRESH_TRACK_SEEDS = range(1090, 1100)  # held out and never drawn above: not cached yet

LABELS = {
    "training": "training env, expert driving",
    "training_random": "training env, random actions",
    "one_track": "one cached track, random actions",
    "carracing": "CarRacing-v3 (gymnasium defaults), random",
}
WHAT = {
    "training": "malpi rl sim's env (1000 training tracks, a new one each reset; differential "
    "car; 120x160; 500-step episodes), the expert driving and labelling every step "
    "as demonstrations and DAgger do",
    "training_random": "the same env, random actions: they leave the road within tens of "
    "steps, so a new track at nearly every reset (the worst case)",
    "one_track": "MaLPi/Track-v0 defaults (steering car, 120x160) on track 1000 only, "
    "its floor cached: the earlier headline",
    "carracing": "gymnasium.make('CarRacing-v3'): continuous actions, 96x96, 1000-step episodes",
}


@contextlib.contextmanager
def one_core() -> Iterator[int | None]:
    """Pin this process to one CPU (yielded) and OpenCV to one thread, restoring both after."""
    import cv2

    threads = cv2.getNumThreads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cv2.setNumThreads(1)
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})
    try:
        yield min(affinity) if affinity else None
    finally:
        cv2.setNumThreads(threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


def _timed(step: Callable[[], None], seconds: float) -> tuple[int, float, float]:
    """Call ``step`` for ``seconds`` of wall time: (calls, wall seconds, CPU seconds)."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        for _ in range(50):
            step()
        n += 50
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n, dt, time.process_time() - c0


def _rate(step: Callable[[], None], seconds: float) -> float:
    """Calls per second of this process's CPU time (what one core of its own would do)."""
    n, _, cpu = _timed(step, seconds)
    return n / cpu


def _env_rate(env: Any, seconds: float, driver: str = "random", seed: int = 0) -> dict[str, Any]:
    """Steps/s of ``env`` for ``seconds`` (resets included) and the episodes that ended."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    expert = env.unwrapped.expert_action if driver == "expert" else None
    ended: list[int] = []
    length = 0

    def step() -> None:
        nonlocal length
        action = expert() if expert is not None else env.action_space.sample()
        _, _, terminated, truncated, _ = env.step(action)
        length += 1
        if terminated or truncated:
            ended.append(length)
            length = 0
            env.reset()

    n, wall, cpu = _timed(step, seconds)
    limit = env.spec.max_episode_steps if env.spec is not None else None
    if limit is None:
        limit = getattr(env.unwrapped, "max_steps", None)
    return {
        "steps_per_s": round(n / cpu, 1),
        "wall_steps_per_s": round(n / wall, 1),
        "core_share": round(cpu / wall, 2),
        "episodes_ended": len(ended),
        "mean_episode_steps": round(float(np.mean(ended)), 1) if ended else None,
        "max_episode_steps": limit,
        "driver": driver,
    }


# The env training drives (malpi.sim may not import malpi.rl or malpi.train, which import it:
# tests/test_bench_smoke.py checks these against them): ``malpi rl sim``'s defaults
# (``SimFineTuneConfig`` and ``env_fns`` in malpi/rl/sim.py: every track of the training pool,
# no randomised looks) with the shipped policy's camera, the car and camera that ``malpi train``
# records demonstrations and DAgger rounds with (``SimSetup`` in malpi/train/demos.py).
TRAINING_CAR = "differential"  # the daemon's simulated car
TRAINING_CAR_NOISE = 1.0
TRAINING_IMAGE = (120, 160)  # (height, width): the default policy's input
TRAINING_MAX_STEPS = 500


def training_env() -> Any:
    """The environment ``malpi rl sim`` fine-tunes in (without its reward wrapper, which only
    adds a constant per step and a penalty on leaving the road)."""
    from malpi.sim.car import CarParams
    from malpi.sim.env import TrackEnv
    from malpi.sim.render import CameraSpec

    return TrackEnv(
        car=CarParams(drivetrain=TRAINING_CAR, noise=TRAINING_CAR_NOISE),
        camera=CameraSpec(height=TRAINING_IMAGE[0], width=TRAINING_IMAGE[1]),
        max_steps=TRAINING_MAX_STEPS,
        randomize=False,
    )


def _carracing(seconds: float) -> dict[str, Any]:
    import gymnasium as gym

    try:
        import Box2D  # noqa: F401

        env = gym.make("CarRacing-v3")
    except Exception as exc:  # ImportError, or gymnasium's DependencyNotInstalled
        log.info("CarRacing-v3 not measured: %s", exc)
        return {"skipped": f"{exc} (pip install -e '.[bench]')"}
    try:
        row = _env_rate(env, seconds)
        row["resolution"] = list(env.observation_space.shape[:2])
        u = env.unwrapped  # gymnasium's defaults, as measured
        row["settings"] = {
            k: getattr(u, k) for k in ("continuous", "domain_randomize", "lap_complete_percent")
        }
    finally:
        env.close()
    return row


def bench_sim(seconds: float = 3.0, carracing: bool = True) -> dict[str, Any]:
    import gymnasium as gym

    import malpi.sim.env  # noqa: F401  (registers the ids)
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.sim.expert import Expert
    from malpi.sim.texture import STYLES, _materials
    from malpi.sim.world import World

    out: dict[str, Any] = {
        "seconds_per_measurement": seconds,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    envs: dict[str, dict[str, Any]] = {}
    parts: dict[str, float] = {}
    with one_core() as cpu:
        out["cpu"] = cpu
        # once per process, not per track: every floor style's material tiles (a trainer's
        # first seconds; left in, they would be charged to whichever row met a style first)
        c0 = time.process_time()
        for style in STYLES:
            _materials(style, 100.0)
        parts["materials_once_s"] = round(time.process_time() - c0, 2)

        env = training_env()
        track = env.unwrapped
        resolution = [track.camera_spec.height, track.camera_spec.width]
        envs["training"] = {**_env_rate(env, seconds, "expert"), "resolution": resolution}
        # another env seed: a different sequence of tracks, not the ones just drawn
        envs["training_random"] = {**_env_rate(env, seconds, seed=1), "resolution": resolution}
        c0 = time.process_time()
        for s in FRESH_TRACK_SEEDS:
            track.reset(options={"track_seed": s})
        per_reset = (time.process_time() - c0) / len(FRESH_TRACK_SEEDS)
        parts["new_track_reset_ms"] = round(per_reset * 1e3, 1)
        car = track.car_params
        env.close()

        env = gym.make("MaLPi/Track-v0", track_seeds=[ONE_TRACK_SEED])
        spec = env.unwrapped.camera_spec
        envs["one_track"] = {**_env_rate(env, seconds), "resolution": [spec.height, spec.width]}
        env.close()

        if carracing:
            envs["carracing"] = _carracing(seconds)

        world = World(ONE_TRACK_SEED, car, rng=np.random.default_rng(0))
        world.render()
        expert = Expert(DEFAULT_ACTIONS)
        commands = [a.command for a in DEFAULT_ACTIONS]
        i = 0

        def dyn() -> None:
            nonlocal i
            i += 1
            world.step(commands[i % len(commands)], 0.05)
            if not world.on_track:
                world.reset()

        parts["dynamics_us"] = round(1e6 / _rate(dyn, seconds / 3), 1)
        parts["render_us"] = round(1e6 / _rate(world.render, seconds / 3), 1)
        world.reset()
        parts["expert_us"] = round(1e6 / _rate(lambda: expert.act(world), seconds / 3), 1)

    base = envs["training"]["steps_per_s"]
    cr = envs.get("carracing", {}).get("steps_per_s")
    for name, row in envs.items():
        row["label"], row["what"] = LABELS[name], WHAT[name]
        if "steps_per_s" in row:
            row["x_training"] = round(row["steps_per_s"] / base, 2)
            row["x_carracing"] = round(row["steps_per_s"] / cr, 1) if cr else None
    out["envs"] = envs
    out["parts"] = parts
    return out


def _n(v: Any, spec: str = ",.0f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def table(r: dict[str, Any]) -> str:
    cpu = r.get("cpu")
    lines = [
        f"simulator, one core{f' (cpu {cpu})' if cpu is not None else ''}, "
        f"{r['seconds_per_measurement']:g} s each, resets included",
        "steps per second of the process's CPU time (had core: CPU / wall time)",
    ]
    head = ("env", "steps/s", "vs training", "vs CarRacing", "episode steps (limit)", "had core")
    rows = [head]
    for row in r["envs"].values():
        if "steps_per_s" not in row:
            rows.append((row["label"], "not measured", "", "", "", ""))
            continue
        rows.append(
            (
                row["label"],
                _n(row["steps_per_s"]),
                _n(row["x_training"], ".2f", "x"),
                _n(row["x_carracing"], ".1f", "x"),
                f"{_n(row['mean_episode_steps'])} ({_n(row['max_episode_steps'])})",
                _n(row["core_share"] * 100, ".0f", "%"),
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
    for row in rows:
        rest = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        lines.append("  " + "  ".join(cells).rstrip())
    lines.append("")
    notes = [f"{row['label']}: {row['what']}" for row in r["envs"].values()]
    notes += [
        f"{row['label']} not measured: {row['skipped']}"
        for row in r["envs"].values()
        if "skipped" in row
    ]
    p = r["parts"]
    notes.append(
        f"a step's parts (training car, 120x160): render {_n(p['render_us'])} us, dynamics + "
        f"progress {_n(p['dynamics_us'])} us, expert {_n(p['expert_us'])} us; "
        f"a reset onto a new track {_n(p['new_track_reset_ms'], '.1f')} ms; once per "
        f"process, before the rows: the floors' materials {_n(p['materials_once_s'], '.2f')} s"
    )
    for note in notes:
        lines += textwrap.wrap(note, 96, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)
