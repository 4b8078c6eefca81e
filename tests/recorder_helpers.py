"""Deterministic steps for the recorder tests: every field derives from (episode, step index),
so a stored row can be checked without remembering what was recorded."""

from __future__ import annotations

import numpy as np

from malpi.actions import DEFAULT_ACTIONS
from malpi.recorder import EpisodeMeta, Step, StoredStep
from malpi.recorder.schema import SOURCES

H, W = 120, 160
N_ACTIONS = len(DEFAULT_ACTIONS)
FRAME_TOLERANCE = 3.0  # mean absolute error of a JPEG round trip at quality 90 on these images


def frame_for(episode: int, i: int, h: int = H, w: int = W) -> np.ndarray:
    """A smooth image (JPEG-friendly) whose brightness and a block's position encode (episode, i)."""
    base = (i * 37 + episode * 11) % 160 + 20
    ramp = np.linspace(0, 40, w, dtype=np.float32)[None, :, None]
    img = np.empty((h, w, 3), dtype=np.float32)
    img[...] = base + ramp + np.array([0, 25, 50], dtype=np.float32)
    x = (i * 13) % (w - 24)
    img[40:64, x : x + 24] = 255 - img[40:64, x : x + 24]
    return np.clip(img, 0, 255).astype(np.uint8)


def probs_for(episode: int, i: int) -> np.ndarray:
    logits = np.sin(np.arange(N_ACTIONS) * 1.7 + i * 0.3 + episode)
    p = np.exp(logits)
    return (p / p.sum()).astype(np.float32)


def step_for(episode: int, i: int, *, with_policy: bool = True) -> Step:
    capture = 1000.0 + episode * 100.0 + i * 0.02
    return Step(
        frame=frame_for(episode, i),
        action=(i * 7 + episode) % N_ACTIONS,
        source=SOURCES[(i + episode) % 3],
        capture_time=capture,
        action_time=capture + 0.004,
        probs=probs_for(episode, i) if with_policy else None,
        value=float(np.float32(i * 0.25 - episode)) if with_policy else None,
        reward=(i % 4) * 0.5,
        done=False,
        policy_version=f"v{episode}" if with_policy else None,
    )


def meta_for(episode_hint: int = 0) -> EpisodeMeta:
    return EpisodeMeta(
        action_table=DEFAULT_ACTIONS,
        config={"loop": {"rate_hz": 20}, "hint": episode_hint},
        policy_version=f"bundle-{episode_hint}",
        notes=f"test episode {episode_hint}",
    )


def frame_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def check_stored(
    s: StoredStep, episode: int, i: int, *, last: bool = False, final_reward: float = 0.0,
    with_policy: bool = True,
) -> None:  # fmt: skip
    """Assert a row read back equals what step_for(episode, i) recorded (frame within tolerance)."""
    want = step_for(episode, i, with_policy=with_policy)
    assert s.step == i
    assert s.action == want.action
    assert s.source == want.source
    assert s.capture_time == want.capture_time
    assert s.action_time == want.action_time
    assert s.policy_version == want.policy_version
    assert s.value == want.value
    if with_policy:
        assert s.probs is not None and s.probs.dtype == np.float32
        np.testing.assert_array_equal(s.probs, want.probs)
    else:
        assert s.probs is None
    assert s.reward == want.reward + (final_reward if last else 0.0)
    assert s.done is last
    assert s.frame is not None and s.frame.shape == (H, W, 3) and s.frame.dtype == np.uint8
    err = frame_error(s.frame, want.frame)
    assert err < FRAME_TOLERANCE, f"episode {episode} step {i}: frame differs by {err:.2f}"


def crash_child_main(db: str, log_path: str, run: int, rate_hz: float = 50.0) -> None:
    """The process the crash test kills: records episodes of deterministic steps forever.

    Every event is logged to ``log_path`` with its time.monotonic(), by one unbuffered
    write each (which a SIGKILL cannot tear): "O t" once the recorder is open, "S ep t"
    after start_episode, "R ep i t" *before* record() (so any step on disk is in the log),
    "D ep i t" if it was dropped, "E ep outcome final t" after end_episode.
    """
    import os
    import random
    import time

    from malpi.recorder import Recorder

    rng = random.Random(run)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(*fields: object) -> None:
        os.write(fd, (" ".join(map(str, fields)) + f" {time.monotonic()!r}\n").encode())

    rec = Recorder(db)
    log("O")
    period = 1.0 / rate_hz
    due = time.monotonic()
    while True:
        ep = rec.start_episode(meta_for(run))
        log("S", ep)
        for i in range(rng.randint(10, 80)):
            step = step_for(ep, i)
            log("R", ep, i)
            if rec.record(step) is None:
                log("D", ep, i)
            due += period
            time.sleep(max(0.0, due - time.monotonic()))
        outcome = rng.choice(["finished", "failed", "aborted"])
        final = -10.0 if outcome == "failed" else None
        rec.end_episode(outcome, final)
        log("E", ep, outcome, final)


def run_cli(monkeypatch, capsys):
    """``malpi ...`` in-process with only the recorder's commands registered (the command must
    work whatever else is, or is not yet, registered): run(*argv) -> (exit code, stdout,
    stderr). The body of the test modules' ``malpi`` fixture."""
    from malpi import cli as malpi_cli

    monkeypatch.setattr(malpi_cli, "AREAS", ["malpi.recorder.cli"])

    def run(*argv: str) -> tuple[int, str, str]:
        code = malpi_cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
