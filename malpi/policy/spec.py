"""The architecture spec of the recurrent policy, and what follows from it without TensorFlow.

The spec travels inside every policy bundle. From it alone the robot can tell
the weight shapes to expect, the parameter count and the multiply-adds per
step, so a bundle is validated before any runtime is built.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np


class SpecError(ValueError):
    """A spec that cannot describe a policy; the message names the field."""


@dataclass(frozen=True)
class ConvLayer:
    filters: int
    kernel: int
    stride: int


@dataclass(frozen=True)
class PolicySpec:
    """Hyper-parameters of the CNN + LSTM policy.

    The default is sized for a Pi: the conv stack ends small (6 x 8 x 64) and a
    64-unit bottleneck feeds the LSTM, so the int8 step model is ~0.33 MB and
    fits in the caches. The seed's model (``SEED_SPEC``) feeds all 11,264 conv
    features to the LSTM: 5.9 M parameters, 99.5 % of them in one kernel.
    """

    image_height: int = 120
    image_width: int = 160
    conv: tuple[ConvLayer, ...] = (
        ConvLayer(16, 8, 4),
        ConvLayer(32, 4, 2),
        ConvLayer(64, 3, 2),
    )
    bottleneck: int = 64  # units of a Dense layer between CNN and LSTM; 0 = none
    lstm_units: int = 128
    num_actions: int = 5
    obs_dim: int = 0  # > 0: a vector observation of this size instead of an image
    # False: a feed-forward layer of lstm_units in place of the LSTM (no memory; a control for
    # experiments). The step model keeps its (h, c) inputs and outputs so every runtime is the same.
    recurrent: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        def positive(name: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SpecError(f"spec.{name} must be a positive integer, got {value!r}")

        positive("lstm_units", self.lstm_units)
        positive("num_actions", self.num_actions)
        if (
            isinstance(self.bottleneck, bool)
            or not isinstance(self.bottleneck, int)
            or self.bottleneck < 0
        ):
            raise SpecError(f"spec.bottleneck must be an integer >= 0, got {self.bottleneck!r}")
        if not isinstance(self.recurrent, bool):
            raise SpecError(f"spec.recurrent must be true or false, got {self.recurrent!r}")
        if isinstance(self.obs_dim, bool) or not isinstance(self.obs_dim, int) or self.obs_dim < 0:
            raise SpecError(f"spec.obs_dim must be an integer >= 0, got {self.obs_dim!r}")
        if self.is_image:
            positive("image_height", self.image_height)
            positive("image_width", self.image_width)
            h, w = self.image_height, self.image_width
            for i, layer in enumerate(self.conv):
                for name in ("filters", "kernel", "stride"):
                    positive(f"conv[{i}].{name}", getattr(layer, name))
                h, w = (
                    (h - layer.kernel) // layer.stride + 1,
                    (w - layer.kernel) // layer.stride + 1,
                )
                if h < 1 or w < 1:
                    raise SpecError(
                        f"spec.conv[{i}] leaves no output for a {self.image_height}x{self.image_width} image"
                    )

    @property
    def is_image(self) -> bool:
        return self.obs_dim == 0

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return (self.image_height, self.image_width, 3) if self.is_image else (self.obs_dim,)

    def conv_output_shape(self) -> tuple[int, int, int]:
        h, w, c = self.image_height, self.image_width, 3
        for layer in self.conv:
            h = (h - layer.kernel) // layer.stride + 1
            w = (w - layer.kernel) // layer.stride + 1
            c = layer.filters
        return h, w, c

    @property
    def feature_size(self) -> int:
        """Size of the per-frame feature vector fed to the LSTM (before the previous action)."""
        if self.bottleneck:
            return self.bottleneck
        if self.is_image:
            return math.prod(self.conv_output_shape())
        return self.obs_dim

    def weight_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every weight array, in the canonical order bundles store them."""
        shapes: list[tuple[str, tuple[int, ...]]] = []
        if self.is_image:
            cin = 3
            for i, layer in enumerate(self.conv):
                shapes.append((f"conv{i}/kernel", (layer.kernel, layer.kernel, cin, layer.filters)))
                shapes.append((f"conv{i}/bias", (layer.filters,)))
                cin = layer.filters
            flat = math.prod(self.conv_output_shape())
        else:
            flat = self.obs_dim
        if self.bottleneck:
            shapes.append(("bottleneck/kernel", (flat, self.bottleneck)))
            shapes.append(("bottleneck/bias", (self.bottleneck,)))
        u = self.lstm_units
        lstm_in = self.feature_size + self.num_actions
        if self.recurrent:
            shapes += [
                ("lstm/kernel", (lstm_in, 4 * u)),
                ("lstm/recurrent_kernel", (u, 4 * u)),
                ("lstm/bias", (4 * u,)),
            ]
        else:
            shapes += [("feedforward/kernel", (lstm_in, u)), ("feedforward/bias", (u,))]
        shapes += [
            ("policy/kernel", (u, self.num_actions)),
            ("policy/bias", (self.num_actions,)),
            ("value/kernel", (u, 1)),
            ("value/bias", (1,)),
        ]
        return shapes

    @property
    def params(self) -> int:
        return sum(math.prod(s) for _, s in self.weight_shapes())

    @property
    def macs_per_step(self) -> int:
        """Multiply-adds of one step model call (convs, dense layers, LSTM, heads)."""
        macs = 0
        if self.is_image:
            h, w, cin = self.image_height, self.image_width, 3
            for layer in self.conv:
                h = (h - layer.kernel) // layer.stride + 1
                w = (w - layer.kernel) // layer.stride + 1
                macs += h * w * layer.filters * layer.kernel * layer.kernel * cin
                cin = layer.filters
            flat = h * w * cin
        else:
            flat = self.obs_dim
        if self.bottleneck:
            macs += flat * self.bottleneck
        u = self.lstm_units
        if self.recurrent:
            macs += 4 * u * (self.feature_size + self.num_actions + u)
        else:
            macs += u * (self.feature_size + self.num_actions)
        macs += u * (self.num_actions + 1)
        return macs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv"] = [[c.filters, c.kernel, c.stride] for c in self.conv]
        if d["recurrent"]:
            del d["recurrent"]  # the default; manifests written before the option stay identical
        if not d["extra"]:
            del d["extra"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicySpec:
        if not isinstance(data, dict):
            raise SpecError("spec must be a table/object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"spec has unknown field(s) {sorted(unknown)}")
        kwargs = dict(data)
        if "conv" in kwargs:
            conv = kwargs["conv"]
            if not isinstance(conv, list | tuple):
                raise SpecError("spec.conv must be a list of [filters, kernel, stride]")
            layers = []
            for i, c in enumerate(conv):
                if not isinstance(c, list | tuple) or len(c) != 3:
                    raise SpecError(f"spec.conv[{i}] must be [filters, kernel, stride], got {c!r}")
                layers.append(ConvLayer(*c))
            kwargs["conv"] = tuple(layers)
        return cls(**kwargs)


DEFAULT_SPEC = PolicySpec()

SEED_SPEC = PolicySpec(
    conv=(ConvLayer(16, 8, 4), ConvLayer(32, 4, 2), ConvLayer(64, 3, 1)),
    bottleneck=0,
    lstm_units=128,
)
"""The architecture of the MaLPi seed post: all conv features straight into LSTM(128)."""


def random_observation(spec: PolicySpec, rng: np.random.Generator) -> np.ndarray:
    """A smooth random image (or vector) that moves a network more than white noise does."""
    if not spec.is_image:
        return rng.normal(size=spec.observation_shape).astype(np.float32)
    h, w = spec.image_height, spec.image_width
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = blocks.repeat(-(-h // 6), axis=0).repeat(-(-w // 8), axis=1)[:h, :w]
    noise = rng.integers(-20, 21, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
