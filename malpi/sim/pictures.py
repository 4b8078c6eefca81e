"""Pictures a person can look at: the track from above, camera strips, a chase view.

Trajectory files (for ``malpi sim map --trajectory``) are either ``.npy``
arrays of shape (N, 2+) whose first two columns are x, y in metres (world
frame), or ``.csv`` files with a header row that names at least ``x`` and
``y`` columns (others, such as ``t``, ``heading``, ``speed``, are ignored).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from malpi.sim.track import Track
from malpi.sim.world import World, texture_for

TRAJECTORY_COLOUR = (230, 40, 40)
CAR_COLOUR = (220, 30, 30)


# -- image files ---------------------------------------------------------------------------


def save_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB image; the format (and its options) from the suffix: PNG, JPEG, …"""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 9]
    elif suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    else:
        params = []  # OpenCV's defaults for the format
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    except cv2.error as exc:  # e.g. a suffix OpenCV has no writer for
        raise OSError(f"could not write {path}: {exc}") from exc
    if not ok:
        raise OSError(f"could not write {path}")
    return path


# -- trajectory files ----------------------------------------------------------------------


def save_trajectory(
    path: str | Path, rows: np.ndarray, columns: Sequence[str] = ("x", "y")
) -> None:
    """Write a trajectory: ``.npy`` (the array as is) or ``.csv`` (with a header row)."""
    path = Path(path)
    rows = np.asarray(rows, dtype=np.float64)
    if path.suffix.lower() == ".npy":
        np.save(path, rows)
        return
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([[f"{v:.4f}" for v in r] for r in rows])


def load_trajectory(path: str | Path) -> np.ndarray:
    """(N, 2) x, y in metres from a ``.npy`` or ``.csv`` trajectory file."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        a = np.load(path)
        if a.ndim != 2 or a.shape[1] < 2:
            raise ValueError(f"{path}: expected an (N, 2+) array of x, y; got shape {a.shape}")
        return a[:, :2].astype(np.float64)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty trajectory file")
    header = [h.strip().lower() for h in rows[0]]
    if "x" not in header or "y" not in header:
        raise ValueError(f"{path}: the header row must name 'x' and 'y' columns; got {rows[0]}")
    ix, iy = header.index("x"), header.index("y")
    try:
        return np.array([[float(r[ix]), float(r[iy])] for r in rows[1:] if r], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: bad trajectory row: {exc}") from None


# -- the map --------------------------------------------------------------------------------


def track_map(
    track: Track, trajectory: np.ndarray | None = None, max_px: int = 800, margin: float = 0.5
) -> np.ndarray:
    """RGB top-down picture of the track (start line, direction arrow, 1 m scale bar), with
    ``trajectory`` (N, 2) drawn over it when given."""
    tex = texture_for(track)
    xmin, ymin, xmax, ymax = track.bounds
    if trajectory is not None and len(trajectory):
        xmin, ymin = min(xmin, trajectory[:, 0].min()), min(ymin, trajectory[:, 1].min())
        xmax, ymax = max(xmax, trajectory[:, 0].max()), max(ymax, trajectory[:, 1].max())
    xmin, ymin, xmax, ymax = xmin - margin, ymin - margin, xmax + margin, ymax + margin
    scale = max_px / max(xmax - xmin, ymax - ymin)  # output pixels per metre
    w, h = int(round((xmax - xmin) * scale)), int(round((ymax - ymin) * scale))
    # one mip level coarser than the output: a smooth floor (and a small PNG), lines still clear
    level = int(np.clip(math.ceil(math.log2(tex.ppm / scale)), 0, len(tex.levels) - 1))
    k = tex.ppm / (1 << level)
    off = 0.5 / (1 << level) - 0.5
    # output pixel (c, r) -> world (xmin + c/scale, ymax - r/scale) -> texture level pixel
    m = np.array(
        [[k / scale, 0, (xmin - tex.x0) * k + off], [0, k / scale, (tex.y0 - ymax) * k + off]]
    )
    image = cv2.warpAffine(
        tex.levels[level],
        m,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tex.border,
    )

    def px(xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return np.round(
            np.stack([(xy[..., 0] - xmin) * scale, (ymax - xy[..., 1]) * scale], -1) * 16
        ).astype(np.int32)

    if trajectory is not None and len(trajectory) > 1:
        thick = max(2, int(round(0.03 * scale)))
        cv2.polylines(image, [px(trajectory)], False, TRAJECTORY_COLOUR, thick, cv2.LINE_AA, 4)
    # direction of travel: an arrow along the centre line just after the start
    x0, y0, hd = track.point_at(0.3)
    tip = (x0 + 0.6 * math.cos(hd), y0 + 0.6 * math.sin(hd))
    cv2.arrowedLine(
        image,
        tuple(px(np.array([x0, y0]))),
        tuple(px(np.array(tip))),
        (30, 120, 255),
        max(2, int(0.03 * scale)),
        cv2.LINE_AA,
        4,
        0.35,
    )
    # 1 m scale bar, bottom left
    bx, by = int(0.2 * scale), h - int(0.2 * scale)
    cv2.line(image, (bx, by), (bx + int(scale), by), (20, 20, 20), max(2, int(0.02 * scale)))
    cv2.putText(
        image, "1 m", (bx, by - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA
    )
    cv2.putText(
        image,
        f"track {track.seed}  {track.length:.1f} m",
        (bx, int(0.3 * scale) + 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.55,
        (20, 20, 20),
        1,
        cv2.LINE_AA,
    )
    return image


# -- camera strips and chase view ------------------------------------------------------------------


def camera_strip(
    frames: Sequence[np.ndarray], labels: Sequence[str] | None = None, cols: int = 4, scale: int = 2
) -> np.ndarray:
    """Frames side by side (``cols`` per row), enlarged ``scale`` times, with optional labels."""
    if not frames:
        raise ValueError("no frames")
    h, w = frames[0].shape[:2]
    gap = 4
    rows = math.ceil(len(frames) / cols)
    out = np.full(
        (rows * (h * scale + gap) - gap, cols * (w * scale + gap) - gap, 3), 255, np.uint8
    )
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        big = cv2.resize(f, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        if labels:
            size = 0.3 + 0.12 * scale  # readable at any enlargement
            for colour, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined text
                cv2.putText(big, labels[i], (6, int(10 + 6 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                            size, colour, thick, cv2.LINE_AA)  # fmt: skip
        y, x = r * (h * scale + gap), c * (w * scale + gap)
        out[y : y + h * scale, x : x + w * scale] = big
    return out


def chase_view(world: World, size: int = 256, metres: float = 4.0) -> np.ndarray:
    """Top-down view centred on the car, car pointing up, with the car drawn: for videos."""
    tex = texture_for(world.track, world.ppm)
    st = world.car.state
    k = tex.ppm
    cx, cy = (st.x - tex.x0) * k, (tex.y0 - st.y) * k
    s = metres * k / size  # texture pixels per output pixel
    # output pixel (u, v) -> texture pixel, with the heading pointing up the picture:
    # up = forward, right = heading - 90 degrees; texture rows grow southwards
    c, sn = math.cos(st.heading), math.sin(st.heading)
    half = size / 2
    m = np.array(
        [
            [s * sn, -s * c, cx - s * (sn * half - c * half)],
            [s * c, s * sn, cy - s * (c * half + sn * half)],
        ]
    )
    image = cv2.warpAffine(
        tex.image,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tex.border,
    )
    p = world.car.params
    scale = size / metres
    lw, ww = p.length * scale, p.width * scale
    body = np.array([[-ww / 2, -lw / 2], [ww / 2, -lw / 2], [ww / 2, lw / 2], [-ww / 2, lw / 2]])
    body = (body + [size / 2, size / 2]).astype(np.int32)
    cv2.fillPoly(image, [body], CAR_COLOUR, cv2.LINE_AA)
    cv2.line(image, (size // 2, size // 2), (size // 2, int(size / 2 - lw / 2)), (255, 255, 255), 2)
    return image
