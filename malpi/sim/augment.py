"""Per-episode randomisation of how the camera sees the world (for robust policies).

Drawn once per episode: brightness, contrast, colour balance, blur, sensor
noise level, and a small change of the camera mount (height, tilt) as if the
camera had been knocked. Sensor noise changes every frame. Off by default:
the plain rendering is what evaluation uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from malpi.sim.render import CameraSpec


@dataclass(frozen=True)
class Randomization:
    """Ranges the per-episode draw comes from (uniform unless said otherwise)."""

    brightness: tuple[float, float] = (0.65, 1.35)
    contrast: tuple[float, float] = (0.75, 1.25)
    colour: float = 0.12  # max relative change of each channel's gain
    blur_prob: float = 0.3  # chance that an episode is out of focus
    blur_sigma: tuple[float, float] = (0.5, 1.3)  # pixels
    noise_sigma: tuple[float, float] = (0.0, 8.0)  # grey levels, per frame
    tilt_jitter_deg: float = 2.5
    height_jitter: float = 0.015  # m


class Appearance:
    """One episode's draw; ``apply`` changes a rendered frame in place."""

    def __init__(self, r: Randomization, rng: np.random.Generator, shape: tuple[int, int, int]):
        b = rng.uniform(*r.brightness)
        c = rng.uniform(*r.contrast)
        gains = b * c * (1 + rng.uniform(-r.colour, r.colour, 3))
        bias = 128.0 * b * (1 - c)
        # one 3x4 colour matrix: out = gain * in + bias, per channel
        self.matrix = np.hstack([np.diag(gains), np.full((3, 1), bias)])
        self.blur = float(rng.uniform(*r.blur_sigma)) if rng.uniform() < r.blur_prob else 0.0
        sigma = rng.uniform(*r.noise_sigma)
        # a small bank of noise frames, picked at random per frame: fresh noise each
        # frame would cost more than the rendering
        self.noise = None
        if sigma > 0.5:
            bank = rng.standard_normal((4, *shape), dtype=np.float32) * sigma
            self.noise = bank.astype(np.int16)
        self.tilt = float(rng.uniform(-r.tilt_jitter_deg, r.tilt_jitter_deg))
        self.height = float(rng.uniform(-r.height_jitter, r.height_jitter))
        self._rng = rng

    def camera(self, spec: CameraSpec) -> CameraSpec:
        return spec.with_mount(spec.mount_height + self.height, spec.tilt_deg + self.tilt)

    def apply(self, image: np.ndarray) -> np.ndarray:
        cv2.transform(image, self.matrix, dst=image)
        if self.blur:
            cv2.GaussianBlur(image, (0, 0), self.blur, dst=image)
        if self.noise is not None:
            k = int(self._rng.integers(len(self.noise)))
            cv2.add(image, self.noise[k], dst=image, dtype=cv2.CV_8U)
        return image
