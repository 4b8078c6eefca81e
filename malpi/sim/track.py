"""Procedural closed race tracks from an integer seed.

A track is a random star-shaped polygon whose corners are rounded with circular
arcs of random radius (tight hairpins to sweeping bends, and the straights in
between), lightly smoothed so curvature ramps in and out like a real track. The
centre line is sampled at a fixed spacing; everything else (edges, progress,
cross-track error) is measured against it. Units are metres and radians, the
world frame has x east, y north, headings anticlockwise from +x. The direction
of travel is the order of the centre-line samples (anticlockwise overall).

Seeds 0-999 are for training, 1000-1099 are held out for evaluation and
1000-1009 are the standard evaluation set (see docs/simulator.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

TRAIN_SEEDS = range(0, 1000)
EVAL_SEEDS = range(1000, 1100)
STANDARD_EVAL_SEEDS = range(1000, 1010)

SPACING = 0.02  # m between centre-line samples
MIN_RADIUS = 0.8  # m, tightest bend of the centre line; the car turns tighter than this
MAX_RADIUS = 3.0
MIN_GAP = 0.5  # m of floor between two parts of the track that pass near each other


@dataclass(frozen=True)
class Projection:
    """Where a point lies relative to the centre line."""

    index: int  # nearest centre-line sample
    s: float  # arc length of the foot point, in [0, length)
    cte: float  # signed cross-track error, positive = left of the centre line
    heading: float  # centre-line direction at the foot point


class Track:
    """A closed centre line with a constant width, and its geometry queries."""

    def __init__(self, seed: int, points: np.ndarray, width: float):
        self.seed = int(seed)
        self.forward: Track = self  # the track as generated; differs for reversed()
        self.width = float(width)
        self.half_width = self.width / 2
        pts = np.asarray(points, dtype=np.float64)
        self.n = len(pts)
        self.points = pts
        nxt = np.roll(pts, -1, axis=0)
        seg = nxt - pts
        self.seg_len = np.hypot(seg[:, 0], seg[:, 1])
        self.length = float(self.seg_len.sum())
        self.s = np.concatenate([[0.0], np.cumsum(self.seg_len)[:-1]])
        # central-difference tangents: smoother than the forward segment direction
        d = nxt - np.roll(pts, 1, axis=0)
        self.heading = np.arctan2(d[:, 1], d[:, 0])
        self.tangent = np.stack([np.cos(self.heading), np.sin(self.heading)], axis=1)
        self.normal = np.stack([-self.tangent[:, 1], self.tangent[:, 0]], axis=1)  # points left
        dh = np.angle(np.exp(1j * (np.roll(self.heading, -1) - np.roll(self.heading, 1))))
        self.curvature = dh / (self.seg_len + np.roll(self.seg_len, 1))
        # plain-float copies and a wrapped copy for the per-step queries (numpy scalar
        # indexing is slow in a Python loop)
        self._xy = pts.tolist()
        self._s = self.s.tolist()
        self._seg = self.seg_len.tolist()
        self._pad = 60
        self._wrapped = np.concatenate([pts[-self._pad :], pts, pts[: self._pad]])
        self.left_edge = pts + self.normal * self.half_width
        self.right_edge = pts - self.normal * self.half_width
        edges = np.concatenate([self.left_edge, self.right_edge])
        self.bounds = (*edges.min(axis=0), *edges.max(axis=0))  # xmin, ymin, xmax, ymax

    def __repr__(self) -> str:
        return f"Track(seed={self.seed}, length={self.length:.1f} m, width={self.width:.2f} m)"

    # -- queries -----------------------------------------------------------------

    def point_at(self, s: float) -> tuple[float, float, float]:
        """(x, y, heading) of the centre line at arc length s (wrapped), interpolated."""
        s = s % self.length
        i = int(np.searchsorted(self.s, s, side="right")) - 1
        f = (s - self.s[i]) / self.seg_len[i]
        j = (i + 1) % self.n
        x = self.points[i, 0] + f * (self.points[j, 0] - self.points[i, 0])
        y = self.points[i, 1] + f * (self.points[j, 1] - self.points[i, 1])
        dh = math.remainder(self.heading[j] - self.heading[i], math.tau)
        return float(x), float(y), float(self.heading[i] + f * dh)

    def nearest_index(self, x: float, y: float, hint: int | None = None) -> int:
        """Index of the nearest centre-line sample; with a hint, only within +-window samples.

        The windowed search is both faster and right where the track passes near
        itself: the car cannot jump to the other branch between two steps.
        """
        w = self._pad
        if hint is None or 2 * w + 1 >= self.n:
            d = (self.points[:, 0] - x) ** 2 + (self.points[:, 1] - y) ** 2
            return int(np.argmin(d))
        p = self._wrapped[hint : hint + 2 * w + 1]  # samples hint-w .. hint+w
        d = (p[:, 0] - x) ** 2 + (p[:, 1] - y) ** 2
        return (hint - w + int(d.argmin())) % self.n

    def project(self, x: float, y: float, hint: int | None = None) -> Projection:
        """Foot point of (x, y) on the centre line: arc length, cross-track error, heading."""
        i = self.nearest_index(x, y, hint)
        # refine on whichever neighbouring segment the point projects onto
        best = None
        for a in ((i - 1) % self.n, i):
            ax, ay = self._xy[a]
            bx, by = self._xy[(a + 1) % self.n]
            ex, ey = bx - ax, by - ay
            seg2 = ex * ex + ey * ey
            f = min(1.0, max(0.0, ((x - ax) * ex + (y - ay) * ey) / seg2))
            px, py = ax + f * ex, ay + f * ey
            d2 = (x - px) ** 2 + (y - py) ** 2
            if best is None or d2 < best[0]:
                best = (d2, a, f, px, py, ex, ey)
        assert best is not None
        d2, a, f, px, py, ex, ey = best
        cross = ex * (y - py) - ey * (x - px)  # > 0 when the point is left of the segment
        cte = math.copysign(math.sqrt(d2), cross) if d2 > 0 else 0.0
        s = (self._s[a] + f * self._seg[a]) % self.length
        return Projection(i, float(s), float(cte), float(math.atan2(ey, ex)))

    def progress_delta(self, s_from: float, s_to: float) -> float:
        """Signed arc length travelled from s_from to s_to, the short way round."""
        return math.remainder(s_to - s_from, self.length)

    def stats(self) -> dict[str, float]:
        k = np.abs(self.curvature)
        return {
            "seed": self.seed,
            "length_m": round(self.length, 2),
            "width_m": round(self.width, 3),
            "min_radius_m": round(float(1 / max(k.max(), 1e-9)), 3),
            "straight_fraction": round(float((k < 0.05).mean()), 3),
            "size_x_m": round(float(self.bounds[2] - self.bounds[0]), 2),
            "size_y_m": round(float(self.bounds[3] - self.bounds[1]), 2),
        }

    def reversed(self) -> Track:
        """The same track driven the other way round (starting at the same point)."""
        pts = np.concatenate([self.points[:1], self.points[:0:-1]])
        track = Track(self.seed, pts, self.width)
        track.forward = self.forward
        return track


# -- generation --------------------------------------------------------------------


def generate_track(seed: int, max_attempts: int = 200) -> Track:
    """The track for this seed: the same seed always gives the same track."""
    # own stream, independent of any environment RNG
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7261636B]))
    for attempt in range(max_attempts):
        width = float(rng.uniform(0.6, 1.0))
        pts = _candidate(rng, width)
        if pts is None or not _clear_of_itself(pts, width):
            continue
        track = Track(seed, pts, width)
        log.debug("track %d accepted after %d attempts: %s", seed, attempt + 1, track)
        return track
    raise RuntimeError(f"no valid track found for seed {seed} in {max_attempts} attempts")


def _candidate(rng: np.random.Generator, width: float) -> np.ndarray | None:
    n = int(rng.integers(5, 12))
    size = rng.uniform(3.0, 5.0)
    ang = 2 * np.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n
    ang = np.sort(ang + rng.uniform(0, 2 * np.pi))
    # deep dents make S-bends and hairpins; stretching makes long straights
    rad = size * rng.uniform(rng.uniform(0.3, 0.6), 1.0, n)
    corners = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    stretch = rng.uniform(1.0, 1.8)
    turn = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    corners = (corners * [stretch, 1 / np.sqrt(stretch)]) @ rot.T
    # squared uniform favours tight bends without making them all tight
    fillet = MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * rng.uniform(0, 1, n) ** 2
    return _rounded_polygon(corners, fillet, width)


def _rounded_polygon(corners: np.ndarray, fillet: np.ndarray, width: float) -> np.ndarray | None:
    n = len(corners)
    edge = np.roll(corners, -1, axis=0) - corners  # edge i goes from corner i to i+1
    edge_len = np.hypot(edge[:, 0], edge[:, 1])
    if edge_len.min() < 1.0:
        return None
    edir = edge / edge_len[:, None]
    hin = np.arctan2(np.roll(edir, 1, axis=0)[:, 1], np.roll(edir, 1, axis=0)[:, 0])
    hout = np.arctan2(edir[:, 1], edir[:, 0])
    turn = np.angle(np.exp(1j * (hout - hin)))  # signed turn at each corner, + = left
    if np.abs(turn).max() > math.radians(150):
        return None
    r = np.maximum(fillet, max(MIN_RADIUS, (width + MIN_GAP) / 2))
    # tangent distance from each corner; shrink radii where two arcs would overlap on an edge
    for _ in range(2):
        d = r * np.tan(np.abs(turn) / 2)
        over = (d + np.roll(d, -1)) / (0.9 * edge_len)
        for i in np.nonzero(over > 1)[0]:
            for j in (i, (i + 1) % n):
                r[j] = max(MIN_RADIUS, r[j] / over[i])
    d = r * np.tan(np.abs(turn) / 2)
    if np.any(d + np.roll(d, -1) > 0.9 * edge_len):
        return None
    out: list[np.ndarray] = []
    for i in range(n):
        # arc around corner i, from the tangent point on the incoming edge to the outgoing one
        a = corners[i] - np.roll(edir, 1, axis=0)[i] * d[i]
        side = math.copysign(1.0, turn[i])
        h0 = hin[i]
        centre = a + side * r[i] * np.array([-math.sin(h0), math.cos(h0)])
        m = max(2, int(abs(turn[i]) * r[i] / SPACING))
        h = h0 + turn[i] * np.arange(m) / m
        out.append(centre + side * r[i] * np.stack([np.sin(h), -np.cos(h)], axis=1))
        # straight to the next arc
        b = corners[i] + edir[i] * d[i]
        c = corners[(i + 1) % n] - edir[i] * d[(i + 1) % n]
        k = max(1, int(np.hypot(*(c - b)) / SPACING))
        out.append(b + (c - b) * (np.arange(k) / k)[:, None])
    pts = np.concatenate(out)
    pts = _smooth_closed(pts, sigma=0.12 / SPACING)
    return _resample_closed(pts, SPACING)


def _smooth_closed(pts: np.ndarray, sigma: float) -> np.ndarray:
    """Circular Gaussian smoothing: curvature ramps in over ~0.3 m instead of jumping."""
    half = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([pts[-half:], pts, pts[:half]])
    return np.stack([np.convolve(padded[:, c], k, mode="valid") for c in range(2)], axis=1)


def _resample_closed(pts: np.ndarray, spacing: float) -> np.ndarray:
    closed = np.concatenate([pts, pts[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(16, int(round(s[-1] / spacing)))
    t = np.arange(n) * (s[-1] / n)
    return np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], axis=1)


def _clear_of_itself(pts: np.ndarray, width: float) -> bool:
    """No two parts of the road closer than width + MIN_GAP, except along the road itself."""
    step = 5  # 10 cm resolution is plenty for this check
    p = pts[::step]
    m = len(p)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(axis=2)
    i, j = np.indices((m, m))
    sep = np.abs(i - j)
    sep = np.minimum(sep, m - sep) * step * SPACING  # arc-length separation
    clearance = width + MIN_GAP
    # along a bend of radius >= MIN_RADIUS the chord only reaches `clearance` after ~pi/2 * clearance
    near_along = sep < math.pi / 2 * max(clearance, 2 * MIN_RADIUS)
    return bool(np.all((d2 >= clearance**2) | near_along))
