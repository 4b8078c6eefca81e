"""``malpi bench sim``: how fast the simulator runs on one core, next to CarRacing-v3.

Everything is pinned to one CPU (and OpenCV to one thread) for the duration,
so the figure is per core: a trainer with N cores can run about N envs.

- ``steps_per_s``: ``gymnasium.make("MaLPi/Track-v0")`` on one track, random
  actions, resets included (the random driver leaves the track often): render
  at 120 x 160 + dynamics + reward + gymnasium wrappers, the issue's figure.
- ``steps_per_s_track_pool``: the default env, which draws a new track from
  the 1000 training seeds at every reset, so short episodes pay for drawing
  new floors (the cost is reported as ``new_track_reset_ms``).
- ``render_us`` / ``dynamics_us``: the two parts of a step.
- ``carracing_steps_per_s``: CarRacing-v3 (96 x 96) with random actions, when
  gymnasium's Box2D extra is importable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Pin this process to one CPU and OpenCV to one thread, restoring both afterwards."""
    import cv2

    threads = cv2.getNumThreads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cv2.setNumThreads(1)
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})
    try:
        yield
    finally:
        cv2.setNumThreads(threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


def _rate(step: Callable[[], None], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(50):
            step()
        n += 50
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def _env_rate(env: Any, seconds: float, seed: int = 0) -> tuple[float, int]:
    env.reset(seed=seed)
    env.action_space.seed(seed)
    resets = 0

    def step() -> None:
        nonlocal resets
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
            resets += 1

    return _rate(step, seconds), resets


def bench_sim(seconds: float = 3.0, carracing: bool = True) -> dict[str, Any]:
    import gymnasium as gym

    import malpi.sim.env  # noqa: F401  (registers the ids)
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.sim.track import STANDARD_EVAL_SEEDS
    from malpi.sim.world import World

    out: dict[str, Any] = {"seconds_per_measurement": seconds, "resolution": [120, 160]}
    with one_core():
        seed = STANDARD_EVAL_SEEDS[0]
        env = gym.make("MaLPi/Track-v0", track_seeds=[seed])
        rate, resets = _env_rate(env, seconds)
        out["steps_per_s"] = round(rate, 1)
        out["resets_during_steps_per_s"] = resets
        env.close()

        world = World(seed, rng=np.random.default_rng(0))
        world.render()
        commands = [a.command for a in DEFAULT_ACTIONS]
        i = 0

        def dyn() -> None:
            nonlocal i
            i += 1
            world.step(commands[i % 5], 0.05)
            if not world.on_track:
                world.reset()

        out["dynamics_us"] = round(1e6 / _rate(dyn, seconds / 3), 1)
        out["render_us"] = round(1e6 / _rate(lambda: world.render(), seconds / 3), 1)

        env = gym.make("MaLPi/Track-v0")
        rate, resets = _env_rate(env, seconds)
        out["steps_per_s_track_pool"] = round(rate, 1)
        unwrapped = env.unwrapped
        t0 = time.perf_counter()
        for s in range(900, 910):  # neither track nor floor cached yet
            unwrapped.reset(options={"track_seed": s})
        out["new_track_reset_ms"] = round((time.perf_counter() - t0) / 10 * 1e3, 1)
        env.close()

        if carracing:
            try:
                import Box2D  # noqa: F401

                env = gym.make("CarRacing-v3")
            except Exception as exc:  # ImportError, or gymnasium's DependencyNotInstalled
                log.info("CarRacing-v3 not measured: %s", exc)
                out["carracing_skipped"] = str(exc)
            else:
                rate, _ = _env_rate(env, seconds)
                out["carracing_steps_per_s"] = round(rate, 1)
                out["speedup_vs_carracing"] = round(out["steps_per_s"] / rate, 1)
                env.close()
    return out


def table(r: dict[str, Any]) -> str:
    rows = [
        ("MaLPi/Track-v0, one track, 120x160 (steps/s)", r.get("steps_per_s")),
        ("  of which render (us/step)", r.get("render_us")),
        ("  of which dynamics + progress (us/step)", r.get("dynamics_us")),
        ("MaLPi/Track-v0, new track every reset (steps/s)", r.get("steps_per_s_track_pool")),
        ("  reset onto a new track (ms)", r.get("new_track_reset_ms")),
        ("CarRacing-v3, 96x96 (steps/s)", r.get("carracing_steps_per_s", "not installed")),
        ("speed-up over CarRacing-v3", r.get("speedup_vs_carracing", "-")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["simulator, one core, random actions, resets included"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
