"""Small data and configurations for the trainer tests: tiny images, a few short episodes."""

from __future__ import annotations

import numpy as np
from policy_helpers import TINY_SPEC

from malpi.actions import DEFAULT_ACTIONS
from malpi.recorder import EpisodeMeta, Recorder, Step
from malpi.train.augment import NO_AUGMENTATION
from malpi.train.bc import TrainConfig
from malpi.train.data import SequenceConfig
from malpi.train.demos import DemoConfig, SimSetup, record_demos
from malpi.train.episodes import Episode

IMAGE = (TINY_SPEC.image_height, TINY_SPEC.image_width)
TINY_SIM = SimSetup(image=IMAGE, randomize=0.5)


def tiny_demos(path, tracks=(0, 1, 2, 3), steps: int = 60, seed: int = 0) -> dict:
    """Expert demonstrations on a few training tracks at the tiny spec's image size."""
    config = DemoConfig(seeds=tracks, steps=steps, sim=TINY_SIM)
    return record_demos(path, config, DEFAULT_ACTIONS, seed=seed)


def tiny_config(mode: str = "tbptt", **changes) -> TrainConfig:
    base = TrainConfig(
        sequence=SequenceConfig(mode=mode, length=8, stride=6, burn_in=2),
        batch_size=4,
        epochs=2,
        learning_rate=3e-3,
        patience=0,
        augmentation=NO_AUGMENTATION,
        checkpoint_every=4,
        log_every=2,
        progress=False,
    )
    return TrainConfig(**{**base.__dict__, **changes})


def synthetic_episode(key: str, n: int, seed: int = 0) -> Episode:
    """An episode without frames worth looking at (for split and plan tests)."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 5, n)
    return Episode(
        key=key,
        origin=key,
        jpegs=[b""] * n,
        actions=actions,
        targets=actions.copy(),
        weights=np.ones(n, np.float32),
        sources=np.array(["human"] * n),
    )


def operator_recording(path, episodes: int = 2, steps: int = 20) -> None:
    """A 'real car' database: the policy drives, an operator intervenes now and then."""
    from recorder_helpers import frame_for

    with Recorder(path, queue_size=4096) as rec:
        for e in range(episodes):
            rec.start_episode(EpisodeMeta(action_table=DEFAULT_ACTIONS, config={"car": "test"}))
            for i in range(steps):
                source = "intervention" if i % 5 == 4 else "policy"
                rec.record(
                    Step(
                        frame=frame_for(e, i, *IMAGE),
                        action=(i + e) % 5,
                        source=source,
                        capture_time=float(i),
                        action_time=float(i) + 0.01,
                    )
                )
            rec.end_episode("finished")
