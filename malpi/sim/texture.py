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
        image = _floor(rng, self.style, h, w, ppm)
        self._paint_track(image, rng)
        self.levels = [image]
        for _ in range(levels - 1):
            self.levels.append(cv2.pyrDown(self.levels[-1]))
        # seen beyond the edge of the floor image (the far distance): the average floor
        self.border: tuple[float, float, float] = tuple(float(c) for c in image.mean(axis=(0, 1)))

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

    def _paint_track(self, image: np.ndarray, rng: np.random.Generator) -> None:
        t, st = self.track, self.style
        left, right = self._pts(t.left_edge), self._pts(t.right_edge)
        nxt = np.roll(np.arange(t.n), -1)
        quads = np.stack([left, left[nxt], right[nxt], right], axis=1)
        road = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(road, list(quads), 255, cv2.LINE_8, 4)
        grain = rng.normal(0, st.grain * 0.6, (256, 256)).astype(np.float32)
        surface = np.empty_like(image)
        surface[:] = st.road
        surface = _add_tiled(surface, grain)
        image[road > 0] = surface[road > 0]
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


def _floor(rng: np.random.Generator, st: FloorStyle, h: int, w: int, ppm: float) -> np.ndarray:
    image = np.empty((h, w, 3), np.uint8)
    image[:] = st.floor
    # large-scale shading: a coarse random field blown up smoothly (~0.5 m blobs)
    cell = max(4, int(0.5 * ppm))
    coarse = rng.normal(0, st.blotch, (h // cell + 2, w // cell + 2)).astype(np.float32)
    shade = cv2.resize(coarse, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)
    shade = shade[cell : cell + h, cell : cell + w]
    if st.boards:
        board = max(2, int(0.14 * ppm))
        tint = rng.normal(0, 14, h // board + 1).astype(np.float32)
        shade = shade + np.repeat(tint, board)[:h, None]
        shade[::board] -= 35  # the gaps between boards
    grain = rng.normal(0, st.grain, (256, 256)).astype(np.float32)
    out = image.astype(np.float32) + shade[..., None]
    return _add_tiled(np.clip(out, 0, 255).astype(np.uint8), grain)


def _add_tiled(image: np.ndarray, tile: np.ndarray) -> np.ndarray:
    """Add a repeating noise tile (cheap fine texture that need not be unique)."""
    h, w = image.shape[:2]
    reps = (h // tile.shape[0] + 1, w // tile.shape[1] + 1)
    noise = np.tile(tile, reps)[:h, :w, None]
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
