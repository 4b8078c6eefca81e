"""Image augmentation of whole training sequences (numpy + OpenCV, called from tf.data).

Lighting and framing are drawn once per sequence from its seed (a sequence
looks like one consistent drive, and the same seed gives the same result on
any worker), sensor noise fresh for every frame:

- brightness: a gain in [1 - b, 1 + b];
- contrast: a stretch about mid-grey by [1 - c, 1 + c];
- colour: each channel's gain within +- ``colour``;
- noise: Gaussian, its standard deviation drawn per sequence in [0, ``noise``]
  grey levels, a new pattern every frame;
- shift: the image moved up to ``shift`` pixels each way, edges repeated (a
  camera mount a little off; keep it small: a big shift is a different place
  on the road, and the label would be wrong).

Why OpenCV and not TensorFlow ops: at 160 x 120 the per-frame work is tiny and
TensorFlow's kernels (its Philox normal sampler and symmetric padding above
all) cost ~2.5 ms of CPU per frame, more than training on the frame; these
saturating uint8 OpenCV calls and a pre-drawn noise bank cost ~0.25 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_NOISE_LEVELS = 8  # noise standard deviations are rounded to whole grey levels up to this
_BANK = 6  # pre-drawn noise frames per level
_MARGIN = 16  # noise frames are this much bigger; a random crop makes each frame's pattern new


@dataclass(frozen=True)
class Augmentation:
    brightness: float = 0.25
    contrast: float = 0.2
    colour: float = 0.06
    noise: float = 6.0  # grey levels (standard deviation), at most _NOISE_LEVELS
    shift: int = 2  # pixels
    prob: float = 1.0  # fraction of sequences augmented at all

    @property
    def enabled(self) -> bool:
        any_effect = any((self.brightness, self.contrast, self.colour, self.noise, self.shift))
        return self.prob > 0 and any_effect


NO_AUGMENTATION = Augmentation(0.0, 0.0, 0.0, 0.0, 0, 0.0)


@lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) parts of Gaussian noise, uint8, per level 1.._NOISE_LEVELS."""
    rng = np.random.default_rng(1234)
    g = rng.standard_normal((_BANK, height + _MARGIN, width + _MARGIN, 3)).astype(np.float32)
    levels = np.arange(1, _NOISE_LEVELS + 1, dtype=np.float32)[:, None, None, None, None]
    pos = np.clip(np.round(np.maximum(g, 0) * levels), 0, 255).astype(np.uint8)
    neg = np.clip(np.round(np.maximum(-g, 0) * levels), 0, 255).astype(np.uint8)
    return pos, neg


def augment_frames(frames: np.ndarray, seed: np.ndarray, aug: Augmentation) -> np.ndarray:
    """Augmented copy of uint8 frames (T, H, W, 3); ``seed`` is any int sequence."""
    import cv2

    rng = np.random.default_rng([int(s) & 0xFFFFFFFFFFFF for s in np.ravel(seed)])
    if not aug.enabled or rng.uniform() >= aug.prob:
        return frames
    t_len, h, w = frames.shape[:3]
    gain = rng.uniform(1 - aug.brightness, 1 + aug.brightness)
    con = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    col = rng.uniform(1 - aug.colour, 1 + aug.colour, 3)
    affine = np.zeros((3, 4), np.float32)  # y_c = ((x * gain - 128) * con + 128) * col_c
    for c in range(3):
        affine[c, c] = gain * con * col[c]
        affine[c, 3] = 128.0 * (1 - con) * col[c]
    s = int(aug.shift)
    dy, dx = rng.integers(-s, s + 1, 2) if s else (0, 0)
    level = int(round(rng.uniform(0, min(aug.noise, _NOISE_LEVELS))))
    pos, neg = _noise_bank(h, w)
    picks = rng.integers(0, _BANK, t_len)
    offsets = rng.integers(0, _MARGIN + 1, (t_len, 2))
    out = np.empty_like(frames)
    for t in range(t_len):
        f = cv2.transform(frames[t], affine)
        if s:
            f = cv2.copyMakeBorder(f, s, s, s, s, cv2.BORDER_REPLICATE)
            f = f[s + dy : s + dy + h, s + dx : s + dx + w]
        if level:
            oy, ox = offsets[t]
            k = picks[t]
            f = cv2.add(f, pos[level - 1, k, oy : oy + h, ox : ox + w])
            f = cv2.subtract(f, neg[level - 1, k, oy : oy + h, ox : ox + w])
        out[t] = f
    return out
