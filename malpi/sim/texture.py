"""The floor seen from above: a textured floor with the track painted on it.

The whole track is drawn once into an RGB image (by default 1 cm per pixel),
with a few blurred copies at lower resolutions (a mip-map) so that far-away
road in the camera view is averaged rather than aliased. The camera renderer
only ever samples this image.

Looks are chosen from the track seed, so each track has its own floor: grey
carpet, wooden boards, concrete, a green mat, or bare floor with tape lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from malpi.sim.track import Track

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class FloorStyle:
    name: str
    floor: RGB
    road: RGB
    edge: RGB  # edge lines
    centre: RGB  # dashed centre line
    grain: float  # amplitude of fine floor texture
    blotch: float  # amplitude of large-scale shading
    boards: bool = False  # wooden floorboards


STYLES = (
    FloorStyle("carpet", (118, 116, 112), (52, 54, 58), (235, 235, 230), (235, 200, 40), 14, 10),
    FloorStyle("wood", (156, 112, 70), (60, 60, 62), (240, 240, 240), (240, 240, 240), 8, 8, True),
    FloorStyle("concrete", (165, 163, 155), (78, 80, 84), (250, 250, 250), (245, 190, 30), 10, 16),
    FloorStyle("mat", (64, 118, 72), (70, 72, 74), (245, 245, 245), (245, 215, 60), 8, 6),
    FloorStyle("tape", (132, 128, 120), (112, 110, 106), (240, 240, 240), (60, 110, 220), 10, 10),
)

EDGE_LINE = 0.04  # m, painted line widths
CENTRE_LINE = 0.03
DASH = 0.2  # m, dash length (and gap) of the centre line
EDGE_INSET = 0.035  # m from the road edge to the middle of the edge line


class TrackTexture:
    """The top-down image of one track, its mip levels and the world-to-pixel mapping."""

    def __init__(self, track: Track, ppm: float = 100.0, margin: float = 3.0, levels: int = 4):
        self.track = track
        self.ppm = float(ppm)
        xmin, ymin, xmax, ymax = track.bounds
        self.x0 = xmin - margin  # world x of pixel column 0
        self.y0 = ymax + margin  # world y of pixel row 0 (rows grow southwards)
        w = int(np.ceil((xmax - xmin + 2 * margin) * ppm))
        h = int(np.ceil((ymax - ymin + 2 * margin) * ppm))
        rng = np.random.default_rng(np.random.SeedSequence([track.seed, 0x666C6F6F72]))
        self.style = STYLES[int(rng.integers(len(STYLES)))]
        floor, road = _materials(self.style, self.ppm)
        dy, dx = (int(v) for v in rng.integers(0, TILE, 2))
        image = np.empty((h, w, 3), np.uint8)
        _blit(floor, image, dy, dx)
        self._paint_track(image, road, (dx, dy))
        self.levels = [image]
        for _ in range(levels - 1):
            self.levels.append(cv2.pyrDown(self.levels[-1]))
        # seen beyond the edge of the floor image (the far distance): the average floor
        self.border: tuple[float, float, float] = tuple(float(c) for c in cv2.mean(floor)[:3])

    @property
    def image(self) -> np.ndarray:
        return self.levels[0]

    def world_to_px(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) world metres -> (..., 2) pixel (column, row) in level 0."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 0] - self.x0) * self.ppm, (self.y0 - xy[..., 1]) * self.ppm], -1)

    def _pts(self, xy: np.ndarray) -> np.ndarray:
        # cv2 drawing with 4 fractional bits: sub-pixel accurate lines
        return np.round(self.world_to_px(xy) * 16).astype(np.int32)

    def _paint_track(self, image: np.ndarray, surface: np.ndarray, at: tuple[int, int]) -> None:
        t, st = self.track, self.style
        road = np.zeros(image.shape[:2], np.uint8)
        # the two edges as one even-odd polygon: the ring between them
        cv2.fillPoly(road, [self._pts(t.left_edge), self._pts(t.right_edge)], 255, cv2.LINE_8, 4)
        _blit(surface, image, *at, mask=road)
        lw = max(1, int(round(EDGE_LINE * self.ppm)))
        inset = t.half_width - EDGE_INSET
        for sign in (1, -1):
            edge = self._pts(t.points + sign * inset * t.normal)
            cv2.polylines(image, [edge], True, st.edge, lw, cv2.LINE_AA, 4)
        cw = max(1, int(round(CENTRE_LINE * self.ppm)))
        phase = (t.s // DASH).astype(int) % 2 == 0
        starts = np.nonzero(phase & ~np.roll(phase, 1))[0]
        ends = np.nonzero(phase & ~np.roll(phase, -1))[0]
        centre = self._pts(t.points)
        dashes = []
        for a in starts:
            b = ends[np.searchsorted(ends, a) % len(ends)]
            idx = np.arange(a, b + 1 if b >= a else b + 1 + t.n) % t.n
            dashes.append(centre[idx])
        # the first dash starts at the start line: leave it out so the start line reads clearly
        cv2.polylines(image, dashes[1:], False, st.centre, cw, cv2.LINE_AA, 4)
        self._start_line(image)

    def _start_line(self, image: np.ndarray) -> None:
        """A chequered strip across the road at s = 0."""
        t = self.track
        p, tan, nrm = t.points[0], t.tangent[0], t.normal[0]
        sq = 0.05
        cols = int(t.width / sq)
        for r in range(2):
            for c in range(cols):
                a = p + nrm * (t.half_width - c * sq) + tan * (r * sq)
                quad = np.array([a, a + tan * sq, a + tan * sq - nrm * sq, a - nrm * sq])
                colour = (245, 245, 245) if (r + c) % 2 == 0 else (25, 25, 25)
                cv2.fillPoly(image, [self._pts(quad)], colour, cv2.LINE_AA, 4)


TILE = 1024  # px; floor materials repeat every 10 m, far beyond what the camera sees at once


@lru_cache(maxsize=len(STYLES))
def _materials(style: FloorStyle, ppm: float) -> tuple[np.ndarray, np.ndarray]:
    """Periodic floor and road tiles of a style, made once per process: every track of
    that style copies them (at a random offset) instead of synthesising noise again."""
    rng = np.random.default_rng(np.random.SeedSequence([STYLES.index(style), 0x74696C65]))
    # large-scale shading: low-pass filtered noise (via FFT, so the tile wraps seamlessly)
    f = np.fft.rfft2(rng.normal(0, 1, (TILE, TILE)))
    ky = np.fft.fftfreq(TILE)[:, None]
    kx = np.fft.rfftfreq(TILE)[None, :]
    blob_px = 0.4 * ppm
    shade = np.fft.irfft2(f * np.exp(-((kx**2 + ky**2) * (blob_px * np.pi) ** 2)), s=(TILE, TILE))
    shade *= style.blotch / max(shade.std(), 1e-9)
    if style.boards:
        board = 16
        tint = np.repeat(rng.normal(0, 14, TILE // board), board)[:, None]
        shade = shade + tint
        shade[::board] -= 35  # the gaps between boards
    floor = (
        np.asarray(style.floor, np.float32)
        + (shade + rng.normal(0, style.grain, shade.shape))[..., None]
    )
    road = np.asarray(style.road, np.float32) + rng.normal(0, style.grain * 0.6, (TILE, TILE, 1))
    return (np.clip(floor, 0, 255).astype(np.uint8), np.clip(road, 0, 255).astype(np.uint8))


def _runs(n: int, start: int) -> list[tuple[int, int, int]]:
    """(out_from, tile_from, length) runs covering n output pixels from tile offset start."""
    runs, o, t = [], 0, start % TILE
    while o < n:
        k = min(n - o, TILE - t)
        runs.append((o, t, k))
        o, t = o + k, 0
    return runs


def _blit(
    tile: np.ndarray, dst: np.ndarray, dy: int, dx: int, mask: np.ndarray | None = None
) -> None:
    """Fill dst (where mask is set, if given) from the periodic tile starting at (dy, dx)."""
    h, w = dst.shape[:2]
    for oy, ty, ky in _runs(h, dy):
        for ox, tx, kx in _runs(w, dx):
            src = tile[ty : ty + ky, tx : tx + kx]
            out = dst[oy : oy + ky, ox : ox + kx]
            if mask is None:
                out[:] = src
            else:
                cv2.copyTo(src, mask[oy : oy + ky, ox : ox + kx], out)  # writes into the view
