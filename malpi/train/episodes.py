"""Episodes as the trainer sees them: frames, the actions taken, the targets, and step weights.

One interface over every source of driving data:

- recorder databases (``.sqlite``): real-car recordings and everything the
  trainer writes itself (simulator demonstrations, DAgger roll-outs), read
  through :class:`malpi.recorder.EpisodeStore`;
- simulator demonstration files (``.npz`` from ``malpi sim demo``).

The policy's inputs are the frame and the action *taken* at the previous step
(what the car really did, as on the robot); its target at each step is the
*label*. For operator data the label is the action taken, weighted by who
chose it (an operator's intervention says most about what the policy got
wrong, so it weighs more; the policy's own steps are context only by
default). Simulator episodes carry an expert label for every step in the
episode's configuration under :data:`LABELS_KEY`, so a DAgger roll-out keeps
what the policy did *and* what the expert would have done.

The train/validation split is by episode, decided by a hash of the episode's
UUID: no window of a validation episode is ever trained on, and an episode
stays on its side however many other episodes are added later (DAgger).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable, previous_actions

log = logging.getLogger(__name__)

LABELS_KEY = "trainer_labels"
"""Episode config key: the expert's action at every step index (a list of ints)."""

SKIPPED_OUTCOMES = ("running", "aborted")
"""Episodes not trained on: still being recorded, or discarded by the operator."""


@dataclass(frozen=True)
class StepWeights:
    """Loss weight of a step, by who chose its action (``labelled``: an expert label exists)."""

    human: float = 1.0
    intervention: float = 3.0
    policy: float = 0.0  # the policy's own choice: a target only if someone labelled it
    labelled: float = 1.0

    def for_sources(self, sources: np.ndarray) -> np.ndarray:
        table = {"human": self.human, "intervention": self.intervention, "policy": self.policy}
        return np.array([table.get(str(s), 0.0) for s in sources], np.float32)


@dataclass
class Episode:
    """One episode, T steps. ``jpegs[t]`` is the frame the action ``actions[t]`` was chosen on."""

    key: str  # stable identity (the recording's UUID): the split and the augmentation use it
    origin: str  # where it came from, for messages: "file.sqlite#12"
    jpegs: list[bytes]
    actions: np.ndarray  # int64 (T,): the action taken (the next step's "previous action")
    targets: np.ndarray  # int64 (T,): what the policy should have chosen
    weights: np.ndarray  # float32 (T,): loss weight per step (0 = context only)
    sources: np.ndarray  # str (T,): human | policy | intervention
    labelled: bool = False  # targets are expert labels, not the actions taken
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the simulator's track seed
    control_hz: float | None = None  # the control rate it was recorded at, where known

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def prev_actions(self) -> np.ndarray:
        """The policy's previous-action input: NO_ACTION at the start, then actions[:-1]."""
        return previous_actions(self.actions)

    @property
    def trained_steps(self) -> int:
        return int(np.count_nonzero(self.weights > 0))


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and the problem."""


def load_episodes(
    paths: Iterable[str | os.PathLike[str]],
    actions: ActionTable,
    image_shape: tuple[int, int] | None = None,
    weights: StepWeights | None = None,
) -> list[Episode]:
    """Every usable episode in ``paths`` (``.sqlite`` databases and ``.npz`` demonstrations).

    Raises DataError for an episode recorded with another action table or
    frame size than the policy's: mixing them would teach the wrong actions.
    """
    weights = weights or StepWeights()
    out: list[Episode] = []
    for path in paths:
        path = Path(path)
        if path.suffix.lower() == ".npz":
            out.append(read_demonstration(path, actions, weights))
        else:
            out.extend(read_store(path, actions, weights))
    if image_shape is not None:
        for ep in out:
            check_frame_size(ep, image_shape)
    log.info(
        "%d episodes, %d steps (%d with a target) from %d source(s)",
        len(out),
        sum(len(e) for e in out),
        sum(e.trained_steps for e in out),
        len({e.origin.split("#")[0] for e in out}),
    )
    return out


def read_store(
    path: Path, actions: ActionTable, weights: StepWeights | None = None
) -> list[Episode]:
    """The episodes of one recorder database (JPEGs are kept encoded)."""
    from malpi.recorder import EpisodeStore, StoreError

    weights = weights or StepWeights()
    episodes = []
    try:
        store = EpisodeStore(path, readonly=True)
    except StoreError as exc:
        raise DataError(str(exc)) from exc
    with store:
        for info in store.episodes():
            origin = f"{path}#{info.id}"
            if info.outcome in SKIPPED_OUTCOMES or info.step_count == 0:
                log.debug("skipping %s (%s, %d steps)", origin, info.outcome, info.step_count)
                continue
            if info.action_table != actions:
                raise DataError(
                    f"{origin} was recorded with actions {info.action_table.names}, "
                    f"the policy uses {actions.names}"
                )
            data = store.load_episode(info.id, decode=False)
            labels = info.config.get(LABELS_KEY)
            if labels is not None:
                labels = np.asarray(labels, np.int64)
                if labels.ndim != 1 or len(labels) <= int(data.steps.max()):
                    raise DataError(f"{origin}: {LABELS_KEY} does not cover every step")
                targets = labels[data.steps]
                w = np.full(len(data), weights.labelled, np.float32)
            else:
                targets = data.actions.copy()
                w = weights.for_sources(data.sources)
            _check_range(origin, data.actions, targets, len(actions))
            episodes.append(
                Episode(
                    key=info.uuid,
                    origin=origin,
                    jpegs=data.jpegs,
                    actions=data.actions,
                    targets=targets,
                    weights=w,
                    sources=data.sources,
                    labelled=labels is not None,
                    info=dict(info.config.get("simulator", {})),
                    control_hz=recorded_control_hz(info.config),
                )
            )
    return episodes


def recorded_control_hz(config: dict[str, Any]) -> float | None:
    """The control rate an episode ran at, from its recorded configuration: the daemon's
    ``loop.rate_hz``, or the simulator's ``dt``."""
    rate = config.get("loop", {}).get("rate_hz") if isinstance(config.get("loop"), dict) else None
    sim = config.get("simulator")
    if rate is None and isinstance(sim, dict) and sim.get("dt"):
        rate = 1.0 / float(sim["dt"])
    return None if rate is None else round(float(rate), 6)


def data_control_hz(episodes: Sequence[Episode]) -> float | None:
    """The one control rate the training data ran at (the trained policy's), or None when it is
    unknown or mixed (said in the log: a policy learns the period it is shown)."""
    rates = {e.control_hz for e in episodes if e.control_hz is not None}
    if len(rates) == 1:
        return rates.pop()
    if len(rates) > 1:
        log.warning(
            "the training data mixes control rates %s Hz: the bundle records none", sorted(rates)
        )
    return None


def read_demonstration(
    path: Path, actions: ActionTable, weights: StepWeights | None = None
) -> Episode:
    """A ``malpi sim demo`` file: frames encoded to JPEG as the recorder would store them."""
    from malpi.recorder.codec import encode_jpeg
    from malpi.sim.demo import Demonstration

    weights = weights or StepWeights()
    demo = Demonstration.load(path)
    _check_range(str(path), demo.actions, demo.expert_actions, len(actions))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    return Episode(
        key=f"npz-{digest}",
        origin=str(path),
        jpegs=[encode_jpeg(f) for f in demo.frames],
        actions=demo.actions.astype(np.int64),
        targets=demo.expert_actions.astype(np.int64),
        weights=np.full(len(demo), weights.labelled, np.float32),
        sources=np.full(len(demo), "human", dtype="<U12"),
        labelled=True,
        info={"track_seed": demo.track_seed},
    )


def episode_from_frames(
    key: str,
    frames: np.ndarray,
    actions: np.ndarray,
    targets: np.ndarray,
    sources: Sequence[str] | None = None,
    weight: float = 1.0,
    info: dict[str, Any] | None = None,
) -> Episode:
    """An in-memory episode (e.g. held-out expert drives made for an evaluation)."""
    from malpi.recorder.codec import encode_jpeg

    n = len(actions)
    return Episode(
        key=key,
        origin=key,
        jpegs=[encode_jpeg(f) for f in frames],
        actions=np.asarray(actions, np.int64),
        targets=np.asarray(targets, np.int64),
        weights=np.full(n, weight, np.float32),
        sources=np.asarray(sources if sources is not None else ["human"] * n, dtype="<U12"),
        labelled=True,
        info=info or {},
    )


def check_frame_size(episode: Episode, image_shape: tuple[int, int]) -> None:
    """Raise DataError unless the episode's frames are ``image_shape`` (height, width)."""
    import cv2

    header = cv2.imdecode(np.frombuffer(episode.jpegs[0], np.uint8), cv2.IMREAD_COLOR)
    if header is None:
        raise DataError(f"{episode.origin}: the first frame is not a decodable JPEG")
    if header.shape[:2] != tuple(image_shape):
        raise DataError(
            f"{episode.origin} has {header.shape[0]}x{header.shape[1]} frames, "
            f"the policy takes {image_shape[0]}x{image_shape[1]}"
        )


def _check_range(origin: str, actions: np.ndarray, targets: np.ndarray, n: int) -> None:
    for name, a in (("action", actions), ("label", targets)):
        if len(a) and (a.min() < 0 or a.max() >= n):
            raise DataError(f"{origin}: an {name} is outside the action table of {n}")


# -- the split ---------------------------------------------------------------------------


def in_validation(key: str, fraction: float, salt: str = "") -> bool:
    """Whether the episode ``key`` belongs to the validation side (a stable hash, not a draw)."""
    return _unit_hash(key, salt) < fraction


def split_episodes(
    episodes: Sequence[Episode], val_fraction: float, salt: str = ""
) -> tuple[list[Episode], list[Episode]]:
    """(train, validation), by whole episodes. With a fraction > 0 and at least two
    episodes, validation gets at least one and train keeps at least one."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train = [e for e in episodes if not in_validation(e.key, val_fraction, salt)]
    val = [e for e in episodes if in_validation(e.key, val_fraction, salt)]
    if val_fraction > 0 and len(episodes) >= 2:
        if not val:  # a tiny data set: the episode nearest the threshold goes to validation
            pick = min(train, key=lambda e: _unit_hash(e.key, salt))
            train.remove(pick)
            val.append(pick)
        elif not train:
            pick = max(val, key=lambda e: _unit_hash(e.key, salt))
            val.remove(pick)
            train.append(pick)
    keys_t, keys_v = {e.key for e in train}, {e.key for e in val}
    assert not keys_t & keys_v, "an episode is on both sides of the split"
    return train, val


def _unit_hash(key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# -- class weights -----------------------------------------------------------------------------


def class_weights(
    episodes: Sequence[Episode], num_actions: int, power: float = 0.5, clip: float = 5.0
) -> np.ndarray:
    """Per-action loss weights (float32, mean 1 over the data) that lift rare actions.

    ``power`` 0 = none, 1 = fully balanced (inverse frequency); weights are
    clipped to [1/clip, clip] so an action seen a handful of times cannot dominate.
    """
    counts = np.zeros(num_actions, np.float64)
    for ep in episodes:
        np.add.at(counts, ep.targets, ep.weights.astype(np.float64))
    if power == 0 or counts.sum() == 0:
        return np.ones(num_actions, np.float32)
    freq = counts / counts.sum()
    w = np.where(freq > 0, (1.0 / num_actions / np.maximum(freq, 1e-12)) ** power, 1.0)
    w = np.clip(w, 1.0 / clip, clip)
    w /= float((w * freq).sum()) if (w * freq).sum() > 0 else 1.0  # mean weight 1 per step
    return w.astype(np.float32)


def action_histogram(episodes: Sequence[Episode], num_actions: int) -> np.ndarray:
    """Weighted count of each target action."""
    counts = np.zeros(num_actions, np.float64)
    for ep in episodes:
        np.add.at(counts, ep.targets, ep.weights.astype(np.float64))
    return counts
