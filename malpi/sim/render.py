"""The car's forward camera: a pinhole camera on a fixed mount, looking at the floor.

Because the mount is fixed, every camera pixel below the horizon always sees
the same point of the ground *in the car's frame*. Those points are computed
once; rendering a frame is then one affine transform of them by the car's pose
(cv2.transform) and one bilinear lookup into the floor texture (cv2.remap) per
mip level. Far rows, where one pixel covers many centimetres of floor, sample a
blurred level, so dashes do not shimmer. Above the horizon is a plain wall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from malpi.sim.texture import TrackTexture


@dataclass(frozen=True)
class CameraSpec:
    """Defaults: a wide-angle Pi camera (Camera Module 3 Wide cropped to 4:3, about 90 x 74
    degrees, lens distortion not modelled) 18 cm above the floor on a small RC car."""

    width: int = 160
    height: int = 120
    hfov_deg: float = 90.0  # horizontal field of view; vertical follows from square pixels
    mount_height: float = 0.18  # m above the floor
    tilt_deg: float = 18.0  # downwards from horizontal
    forward: float = 0.12  # m ahead of the car's reference point (rear axle / wheel axis)
    max_range: float = 12.0  # m; floor further away fades into the far colour

    @property
    def focal(self) -> float:
        return (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)

    @property
    def vfov_deg(self) -> float:
        return math.degrees(2 * math.atan((self.height / 2) / self.focal))

    def horizon_row(self) -> float:
        """Image row (may be fractional or negative) where the floor meets the horizon."""
        return (self.height - 1) / 2 - self.focal * math.tan(math.radians(self.tilt_deg))

    def with_mount(self, height: float | None = None, tilt_deg: float | None = None) -> CameraSpec:
        return CameraSpec(
            self.width,
            self.height,
            self.hfov_deg,
            self.mount_height if height is None else height,
            self.tilt_deg if tilt_deg is None else tilt_deg,
            self.forward,
            self.max_range,
        )

    def ground_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 2) floor point of every pixel in the car frame (x forward, y left), and a
        mask of the rows that see the floor within max_range."""
        f = self.focal
        u = np.arange(self.width) - (self.width - 1) / 2
        v = np.arange(self.height) - (self.height - 1) / 2
        xc, yc = np.meshgrid(u / f, v / f)  # camera ray: right, down, forward = 1
        t = math.radians(self.tilt_deg)
        fwd = math.cos(t) - yc * math.sin(t)
        up = -math.sin(t) - yc * math.cos(t)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(up < 0, self.mount_height / -up, np.inf)
        gx = self.forward + scale * fwd
        gy = -scale * xc
        # whole rows, so the far haze is a horizontal band, as the eye expects
        ok = np.isfinite(scale) & (
            scale[:, self.width // 2 : self.width // 2 + 1] <= self.max_range
        )
        return np.stack([gx, gy], axis=-1), ok


@dataclass(frozen=True)
class _Band:
    r0: int
    r1: int
    level: int
    points: np.ndarray  # (rows*W, 1, 2) float32 car-frame floor points


class CameraRenderer:
    """Renders the camera image of one track texture for any car pose."""

    def __init__(self, texture: TrackTexture, spec: CameraSpec | None = None):
        self.texture = texture
        self.spec = spec or CameraSpec()
        self._build()

    def _build(self) -> None:
        sp, tex = self.spec, self.texture
        self.floor_row, top, self.bands = _geometry(sp, tex.ppm, len(tex.levels))
        self._border = tuple(tex.border)
        # the fixed part of the picture: wall above the horizon, floor haze down to floor_row
        self.background = np.empty((self.floor_row, sp.width, 3), np.uint8)
        self.background[:top] = _wall(sp.width, top)
        self.background[top:] = np.array(self._border, np.float32).astype(np.uint8)

    def render(
        self, x: float, y: float, heading: float, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The (H, W, 3) uint8 RGB image seen from the car at (x, y, heading)."""
        sp, tex = self.spec, self.texture
        if out is None:
            out = np.empty((sp.height, sp.width, 3), np.uint8)
        if self.floor_row:
            out[: self.floor_row] = self.background
        c, s = math.cos(heading), math.sin(heading)
        for b in self.bands:
            k = tex.ppm / (1 << b.level)
            off = 0.5 / (1 << b.level) - 0.5  # pyrDown pixel centres sit between level-0 pixels
            m = np.array(
                [
                    [c * k, -s * k, (x - tex.x0) * k + off],
                    [-s * k, -c * k, (tex.y0 - y) * k + off],
                ]
            )
            mp = cv2.transform(b.points, m).reshape(b.r1 - b.r0, sp.width, 2)
            cv2.remap(
                tex.levels[b.level],
                mp,
                None,
                cv2.INTER_LINEAR,
                dst=out[b.r0 : b.r1],
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=self._border,
            )
        return out


@lru_cache(maxsize=32)
def _geometry(sp: CameraSpec, ppm: float, nlevels: int) -> tuple[int, int, tuple[_Band, ...]]:
    """(first floor row, first row below the horizon, bands of rows per mip level) of a
    camera spec: the same for every track, so worked out once."""
    pts, ok = sp.ground_points()
    pts = np.where(ok[..., None], pts, np.nan)  # NaN only in the haze rows
    # floor area one pixel covers, in level-0 texture pixels: picks the mip level per row
    dx = np.abs(np.diff(pts[..., 0], axis=0, append=np.nan))
    dy = np.abs(np.diff(pts[..., 1], axis=1, append=np.nan))
    with np.errstate(invalid="ignore"):
        foot = np.sqrt(dx * dy) * ppm
    top = min(sp.height, max(0, int(math.floor(sp.horizon_row())) + 1))
    rows = np.flatnonzero(ok[:, 0])
    floor_row = int(rows[0]) if len(rows) else sp.height
    levels = []
    for r in range(floor_row, sp.height):
        fr = foot[r][np.isfinite(foot[r])]
        fp = float(np.median(fr)) if fr.size else 1.0
        levels.append(int(np.clip(math.floor(math.log2(max(fp, 1.0))), 0, nlevels - 1)))
    bands = []
    r = floor_row
    while r < sp.height:
        lvl = levels[r - floor_row]
        r1 = r + 1
        while r1 < sp.height and levels[r1 - floor_row] == lvl:
            r1 += 1
        band = np.ascontiguousarray(pts[r:r1], dtype=np.float32).reshape(-1, 1, 2)
        band.setflags(write=False)  # shared between renderers
        bands.append(_Band(r, r1, lvl, band))
        r = r1
    return floor_row, top, tuple(bands)


def _wall(width: int, rows: int) -> np.ndarray:
    """A plain room wall with a skirting board at the bottom: something above the horizon."""
    wall = np.empty((rows, width, 3), np.uint8)
    if rows == 0:
        return wall
    t = np.linspace(0, 1, rows)[:, None]
    top, bottom = np.array([205, 208, 212]), np.array([178, 180, 184])
    wall[:] = (top * (1 - t) + bottom * t).astype(np.uint8)[:, None, :]
    wall[-max(1, rows // 8) :] = (95, 90, 85)
    return wall
