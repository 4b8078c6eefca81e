"""Episodes -> ``tf.data`` of fixed-length training sequences.

All frames of a set of episodes are laid end to end in a :class:`FrameTable`
(JPEG bytes, previous action, target, weight, episode-start flag). An epoch is
a :class:`Plan`: the sequences to feed, in order, as rows of frame indices.
Three ways to cut episodes into sequences, one per way of handling the LSTM
state of a long episode (``SequenceConfig.mode``):

- ``zero``: windows of ``length`` steps every ``stride`` steps, each started
  from a zero state (the seed post's stateless training). Shuffled.
- ``tbptt``: truncated back-propagation through time. The shuffled episodes
  are dealt onto ``batch`` lanes and laid end to end; batch k holds chunk k of
  every lane, and the trainer carries each lane's LSTM state from one chunk to
  the next (the episode-start flag resets it exactly where a new episode
  begins). Every step is trained on once per epoch, with all its history.
- ``burnin``: R2D2's stored state. Windows as in ``zero``, but each starts from
  the state the network last computed for that point of the episode (a table
  the trainer keeps up to date), and its first ``burn_in`` steps only warm the
  state up (no loss) because that stored state is stale.

The pipeline: a Python generator yields each sequence's JPEG bytes and labels
(cheap), ``map`` decodes and augments in parallel, then batch and prefetch.
Padding (an episode shorter than a window, the end of a lane) is a blank frame
with weight 0 and a set episode-start flag, so it neither trains nor leaks state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from malpi.actions import NO_ACTION
from malpi.train.augment import NO_AUGMENTATION, Augmentation, augment_frames
from malpi.train.episodes import Episode

log = logging.getLogger(__name__)

STATE_MODES = ("zero", "tbptt", "burnin")


@dataclass(frozen=True)
class SequenceConfig:
    mode: str = "burnin"  # the best driver at equal compute (docs/trainer.md)
    length: int = 32  # steps per sequence (the unrolled length of the LSTM)
    stride: int = 24  # zero/burnin: steps between window starts (<= length - burn_in)
    burn_in: int = 8  # burnin: warm-up steps without loss (not at an episode start)

    def __post_init__(self) -> None:
        if self.mode not in STATE_MODES:
            raise ValueError(f"sequence mode must be one of {STATE_MODES}, not {self.mode!r}")
        if self.length < 1 or self.stride < 1:
            raise ValueError("sequence length and stride must be positive")
        if self.mode == "burnin":
            if not 0 <= self.burn_in < self.length:
                raise ValueError("burn_in must be in [0, length)")
            if self.stride > self.length - self.burn_in:
                raise ValueError(
                    "burnin needs stride <= length - burn_in, or steps are never trained"
                )
        elif self.mode == "zero" and self.stride > self.length:
            raise ValueError("zero needs stride <= length, or steps are never trained")


class FrameTable:
    """Every frame of ``episodes`` end to end, plus one blank frame for padding."""

    def __init__(self, episodes: Sequence[Episode], image_shape: tuple[int, int]):
        from malpi.recorder.codec import encode_jpeg

        if not episodes:
            raise ValueError("no episodes")
        self.episodes = list(episodes)
        self.image_shape = tuple(image_shape)
        lengths = np.array([len(e) for e in episodes], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.size = int(self.offsets[-1])
        self.blank = self.size  # the padding frame's index
        blank = encode_jpeg(np.zeros((*image_shape, 3), np.uint8))
        self.jpegs: list[bytes] = [j for e in episodes for j in e.jpegs] + [blank]
        self.prev = np.concatenate([e.prev_actions for e in episodes] + [[NO_ACTION]])
        self.targets = np.concatenate([e.targets for e in episodes] + [[0]])
        self.weights = np.concatenate([e.weights for e in episodes] + [[0.0]]).astype(np.float32)
        starts = np.zeros(self.size + 1, np.float32)
        starts[self.offsets[:-1]] = 1.0
        starts[self.blank] = 1.0
        self.starts = starts
        self.aug_keys = np.array([_key_int(e.key) for e in episodes], np.int64)

    def __len__(self) -> int:
        return self.size

    def episode_range(self, i: int) -> tuple[int, int]:
        return int(self.offsets[i]), int(self.offsets[i + 1])


def _key_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class Plan:
    """The sequences of one epoch, in feeding order."""

    kind: str  # "windows" or "lanes"
    index: np.ndarray  # (n, L) int64 frame indices
    mask: np.ndarray  # (n, L) float32: 0 where a step only warms the state up
    slot: np.ndarray  # (n,) int64: stored-state slot the window starts from (-1: zero state)
    next_slot: np.ndarray  # (n,) int64: slot of the state `stride` steps in (-1: none)
    aug_key: np.ndarray  # (n,) int64: augmentation identity (the episode's)
    batch: int  # sequences per (global) batch
    steps: int  # batches in the epoch

    def rows_for(self, pipeline: int, pipelines: int) -> np.ndarray:
        """Row numbers one input pipeline (one worker) feeds, in order.

        Lanes stay with their pipeline (chunk k of lane j always goes to the same
        worker, so its carried state is there); windows are dealt round robin.
        """
        if self.batch % pipelines:
            raise ValueError(f"batch {self.batch} does not divide among {pipelines} workers")
        if self.kind == "lanes":
            per = self.batch // pipelines
            lanes = np.arange(pipeline * per, (pipeline + 1) * per)
            return (np.arange(self.steps)[:, None] * self.batch + lanes[None, :]).ravel()
        rows = np.arange(self.steps * self.batch)
        return rows[rows % pipelines == pipeline]


def window_plan(
    table: FrameTable, config: SequenceConfig, batch: int, rng: np.random.Generator | None
) -> Plan:
    """Windows every ``stride`` steps of every episode (shuffled when ``rng`` is given)."""
    L, S = config.length, config.stride
    burn = config.burn_in if config.mode == "burnin" else 0
    rows, masks, slots, nexts, keys = [], [], [], [], []
    for e in range(len(table.episodes)):
        a, b = table.episode_range(e)
        starts = list(range(a, b, S))
        first_slot = len(slots)
        for k, p in enumerate(starts):
            idx = np.arange(p, p + L)
            idx[idx >= b] = table.blank
            rows.append(idx)
            m = np.ones(L, np.float32)
            if p > a:  # the stored state is stale: warm it up first (not at an episode start)
                m[:burn] = 0.0
            masks.append(m)
            slots.append(first_slot + k if p > a else -1)
            nexts.append(first_slot + k + 1 if k + 1 < len(starts) else -1)
            keys.append(table.aug_keys[e])
    n = len(rows)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    steps = n // batch
    if steps == 0:
        raise ValueError(f"{n} windows do not make one batch of {batch}")
    order = order[: steps * batch]
    return Plan(
        "windows",
        np.stack(rows)[order],
        np.stack(masks)[order],
        np.array(slots, np.int64)[order],
        np.array(nexts, np.int64)[order],
        np.array(keys, np.int64)[order],
        batch,
        steps,
    )


def num_window_slots(table: FrameTable, config: SequenceConfig) -> int:
    """How many stored-state slots the window plan of ``table`` uses."""
    return sum(-(-len(e) // config.stride) for e in table.episodes)


def lane_plan(table: FrameTable, length: int, lanes: int, rng: np.random.Generator | None) -> Plan:
    """Episodes dealt onto ``lanes`` streams (shuffled when ``rng`` is given), cut in chunks."""
    n_ep = len(table.episodes)
    order = rng.permutation(n_ep) if rng is not None else np.arange(n_ep)
    streams: list[list[int]] = [[] for _ in range(lanes)]
    fill = np.zeros(lanes, np.int64)
    for e in order:  # the next episode goes to the emptiest lane: lanes end about together
        j = int(np.argmin(fill))
        streams[j].append(int(e))
        fill[j] += len(table.episodes[e])
    steps = max(1, int(-(-fill.max() // length)))
    index = np.full((lanes, steps * length), table.blank, np.int64)
    keys = np.zeros((lanes, steps), np.int64)
    for j, eps in enumerate(streams):
        pos = 0
        for e in eps:
            a, b = table.episode_range(e)
            index[j, pos : pos + b - a] = np.arange(a, b)
            first, last = pos // length, (pos + b - a - 1) // length
            keys[j, first : last + 1] = table.aug_keys[e]
            pos += b - a
    chunks = index.reshape(lanes, steps, length).transpose(1, 0, 2).reshape(-1, length)
    n = steps * lanes
    return Plan(
        "lanes",
        chunks,
        np.ones((n, length), np.float32),
        np.full(n, -1, np.int64),
        np.full(n, -1, np.int64),
        keys.T.reshape(-1),
        lanes,
        steps,
    )


def make_plan(
    table: FrameTable, config: SequenceConfig, batch: int, rng: np.random.Generator | None
) -> Plan:
    if config.mode == "tbptt":
        return lane_plan(table, config.length, batch, rng)
    return window_plan(table, config, batch, rng)


class StateTable:
    """Stored LSTM states for the ``burnin`` mode, one per window start (zero until computed)."""

    def __init__(self, slots: int, units: int):
        self.h = np.zeros((max(slots, 1), units), np.float32)
        self.c = np.zeros((max(slots, 1), units), np.float32)

    def read(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        if slot < 0:
            return np.zeros_like(self.h[0]), np.zeros_like(self.c[0])
        return self.h[slot], self.c[slot]

    def write(self, slots: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
        ok = slots >= 0
        self.h[slots[ok]] = h[ok]
        self.c[slots[ok]] = c[ok]


def make_dataset(
    table: FrameTable,
    plan: Plan,
    num_actions: int,
    batch: int,
    *,
    epoch: int = 0,
    skip_batches: int = 0,
    pipeline: int = 0,
    pipelines: int = 1,
    augmentation: Augmentation = NO_AUGMENTATION,
    states: StateTable | None = None,
    seed: int = 0,
):
    """The ``tf.data.Dataset`` of one epoch for one input pipeline: dicts of batched tensors
    (frames uint8 (b, L, H, W, 3), prev_actions (b, L, A), episode_starts, targets, weights,
    slot, next_slot, and h0/c0 when ``states`` is given). ``batch`` is this pipeline's
    batch per ``next()`` (per replica under a distribution strategy); ``skip_batches``
    global batches are skipped (resuming mid-epoch)."""
    import tensorflow as tf

    rows = plan.rows_for(pipeline, pipelines)
    per_step = len(rows) // plan.steps
    rows = rows[skip_batches * per_step :]
    length = plan.index.shape[1]
    h, w = table.image_shape
    units = states.h.shape[1] if states is not None else 0

    def generate() -> Iterator[dict]:
        jpegs = table.jpegs
        for r in rows:
            idx = plan.index[r]
            item = {
                "jpegs": np.array([jpegs[i] for i in idx], dtype=object),
                "prev": table.prev[idx].astype(np.int32),
                "targets": table.targets[idx].astype(np.int32),
                "weights": table.weights[idx] * plan.mask[r],
                "starts": table.starts[idx],
                "seed": np.array([plan.aug_key[r], seed * 100003 + epoch], np.int64),
                "slot": np.int64(plan.slot[r]),
                "next_slot": np.int64(plan.next_slot[r]),
            }
            if states is not None:
                item["h0"], item["c0"] = states.read(int(plan.slot[r]))
            yield item

    signature = {
        "jpegs": tf.TensorSpec((length,), tf.string),
        "prev": tf.TensorSpec((length,), tf.int32),
        "targets": tf.TensorSpec((length,), tf.int32),
        "weights": tf.TensorSpec((length,), tf.float32),
        "starts": tf.TensorSpec((length,), tf.float32),
        "seed": tf.TensorSpec((2,), tf.int64),
        "slot": tf.TensorSpec((), tf.int64),
        "next_slot": tf.TensorSpec((), tf.int64),
    }
    if states is not None:
        signature["h0"] = tf.TensorSpec((units,), tf.float32)
        signature["c0"] = tf.TensorSpec((units,), tf.float32)

    def materialise(item):
        frames = tf.map_fn(
            lambda b: tf.ensure_shape(
                tf.io.decode_jpeg(b, channels=3, dct_method="INTEGER_ACCURATE"), (h, w, 3)
            ),
            item.pop("jpegs"),
            fn_output_signature=tf.TensorSpec((h, w, 3), tf.uint8),
        )
        seed_ = item.pop("seed")
        if augmentation.enabled:
            frames = tf.numpy_function(
                lambda f, sd: augment_frames(f, sd, augmentation),
                [frames, seed_],
                tf.uint8,
                stateful=False,
            )
            frames = tf.ensure_shape(frames, (length, h, w, 3))
        item["frames"] = frames
        item["prev_actions"] = tf.one_hot(item.pop("prev"), num_actions)  # -1 -> all zeros
        item["episode_starts"] = item.pop("starts")
        return item

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    ds = ds.map(materialise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Each worker builds its own share (rows_for); tf.distribute must not shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)
