"""The robot's reward source: what reward each recorded step gets, for learning later.

The daemon records every step's reward (``Step.reward``) when ``[reward]`` is
configured: weighted progress where something can measure it (the simulator
knows how far the car went along the track; a real car needs odometry), a
per-step time reward, and a per-step reward while off the road (where that is
measurable). The operator's "episode failed" command over the link ends the
episode with a terminal reward: the one the operator sent, else
``[reward] failed``; the recording adds it to the episode's last step.

Nothing here imports TensorFlow or hardware code: the daemon builds it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any, Protocol

log = logging.getLogger(__name__)


class ProgressMeter(Protocol):
    def travelled(self) -> float:
        """Metres along the course since some origin (signed: backwards is negative)."""
        ...

    def on_track(self) -> bool: ...


class SimMeter:
    """Progress and road contact read from the simulator's real-time world."""

    def __init__(self, rt_world: Any):
        self.rt = rt_world

    def travelled(self) -> float:
        with self.rt.lock:
            return float(self.rt.world.travelled)

    def on_track(self) -> bool:
        with self.rt.lock:
            return bool(self.rt.world.on_track)


class RewardSource:
    """Per-step rewards: ``progress`` x metres + ``time`` + ``off_track`` when off the road."""

    def __init__(
        self,
        progress: float = 1.0,
        time: float = 0.0,
        off_track: float = 0.0,
        failed: float = -1.0,
        meter: ProgressMeter | None = None,
    ):
        self.progress, self.time, self.off_track, self.failed = progress, time, off_track, failed
        self.meter = meter
        self._last: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, reward_config: Any, meter: ProgressMeter | None = None) -> RewardSource:
        r = reward_config
        return cls(r.progress, r.time, r.off_track, r.failed, meter)

    def start_episode(self) -> None:
        """Progress is counted from here."""
        with self._lock:
            self._last = self.meter.travelled() if self.meter is not None else None

    def step_reward(self) -> float:
        """The reward of the step just taken (called once per recorded step)."""
        reward = self.time
        if self.meter is not None:
            with self._lock:
                now = self.meter.travelled()
                if self._last is not None:
                    reward += self.progress * (now - self._last)
                self._last = now
            if self.off_track and not self.meter.on_track():
                reward += self.off_track
        return float(reward)


class RewardingRecorder:
    """A Recorder whose steps get the reward source's reward; everything else passes through.

    An episode ended as ``failed`` without a terminal reward gets ``failed``.
    """

    def __init__(self, recorder: Any, source: RewardSource):
        self._recorder = recorder
        self.source = source

    def start_episode(self, meta: Any) -> Any:
        self.source.start_episode()
        return self._recorder.start_episode(meta)

    def record(self, step: Any) -> Any:
        return self._recorder.record(replace(step, reward=step.reward + self.source.step_reward()))

    def end_episode(self, outcome: str = "finished", final_reward: float | None = None) -> Any:
        if outcome == "failed" and final_reward is None:
            final_reward = self.source.failed
        return self._recorder.end_episode(outcome, final_reward)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder, name)
