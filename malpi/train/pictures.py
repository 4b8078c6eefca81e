"""Pictures of training and evaluation (PNG, drawn with OpenCV: no plotting library needed).

- ``training_curves``: training loss per logged batch, validation log-likelihood
  and accuracy per epoch (from a trainer's ``history.json``);
- ``confusion_picture``: the confusion matrix of target vs predicted action,
  each row normalised, with counts;
- ``trajectory_grid`` / ``trajectory_picture``: the paths driven on the
  evaluation tracks over each track's map, green where it finished the laps,
  red where it left the track.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

WHITE = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def save_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an RGB image (PNG, or the format the suffix names)."""
    from malpi.sim.pictures import save_image

    return save_image(path, rgb)


def _text(img, s: str, org, scale: float = 0.45, colour=INK, thick: int = 1) -> None:
    import cv2

    cv2.putText(
        img,
        s,
        (int(org[0]), int(org[1])),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        colour,
        thick,
        cv2.LINE_AA,
    )


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str,
    size: tuple[int, int] = (520, 300),
) -> np.ndarray:
    """One chart: named series of (x, y) points, autoscaled axes, a legend."""
    import cv2

    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 56, 12, 28, 36
    pts = [p for s in series.values() for p in s if math.isfinite(p[1])]
    _text(img, title, (left, 18), 0.5)
    if not pts:
        _text(img, "no data", (w // 2 - 30, h // 2))
        return img
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or 0.1
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float, y: float) -> tuple[int, int]:
        return (
            int(left + (x - x0) / (x1 - x0) * (w - left - right)),
            int(h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)),
        )

    for i in range(5):  # horizontal grid lines with their values
        y = y0 + (y1 - y0) * i / 4
        a, b = px(x0, y), px(x1, y)
        cv2.line(img, a, b, GRID, 1)
        _text(img, f"{y:.3g}", (4, a[1] + 4), 0.38)
    cv2.rectangle(img, px(x0, y1), px(x1, y0), INK, 1)
    _text(img, f"{x0:g}", (left - 4, h - bottom + 16), 0.38)
    _text(img, f"{x1:g}", (w - right - 40, h - bottom + 16), 0.38)
    _text(img, xlabel, (w // 2 - 30, h - 6), 0.4)
    for i, (name, s) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        good = [p for p in s if math.isfinite(p[1])]
        if len(good) > 1:
            cv2.polylines(
                img, [np.array([px(*p) for p in good], np.int32)], False, colour, 2, cv2.LINE_AA
            )
        for p in good if len(good) <= 30 else []:
            cv2.circle(img, px(*p), 3, colour, -1, cv2.LINE_AA)
        _text(img, name, (w - right - 150, top + 16 + 16 * i), 0.4, colour)
    return img


def training_curves(history: dict[str, Any]) -> np.ndarray:
    """Training loss per logged batch; validation NLL and accuracy per epoch (with train's)."""
    curve = history.get("curve", [])
    epochs = history.get("history", [])
    loss = line_chart(
        {"train loss (batches)": [(step, loss) for step, loss, _ in curve]},
        "training loss",
        "batch",
    )
    nll = line_chart(
        {
            "train NLL": [(r["epoch"], r.get("train_nll", math.nan)) for r in epochs],
            "validation NLL": [(r["epoch"], r.get("val_nll", math.nan)) for r in epochs],
        },
        "negative log-likelihood per step",
        "epoch",
    )
    acc = line_chart(
        {
            "train accuracy": [(r["epoch"], r.get("train_accuracy", math.nan)) for r in epochs],
            "validation accuracy": [(r["epoch"], r.get("val_accuracy", math.nan)) for r in epochs],
        },
        "next-action accuracy",
        "epoch",
    )
    return np.concatenate([loss, nll, acc], axis=1)


def confusion_picture(
    confusion: Sequence[Sequence[float]], names: Sequence[str], title: str = ""
) -> np.ndarray:
    """Rows: the target action; columns: the predicted one. Shade = row fraction."""
    import cv2

    m = np.asarray(confusion, np.float64)
    n = len(names)
    cell, left, top = 64, 100, 90
    img = np.full((top + n * cell + 20, left + n * cell + 20, 3), 255, np.uint8)
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
    _text(img, title or "confusion (rows: target, columns: predicted)", (8, 20), 0.45)
    for j, name in enumerate(names):
        _text(img, name[:10], (left + j * cell + 4, top - 10), 0.36)
        _text(img, name[:12], (6, top + j * cell + cell // 2 + 4), 0.38)
    for i in range(n):
        for j in range(n):
            shade = int(255 - 200 * rows[i, j])
            colour = (shade, shade, 255) if i != j else (shade, 255, shade)
            a = (left + j * cell, top + i * cell)
            cv2.rectangle(img, a, (a[0] + cell - 2, a[1] + cell - 2), colour, -1)
            _text(img, f"{rows[i, j]:.2f}", (a[0] + 12, a[1] + 28), 0.45)
            _text(img, f"{int(round(m[i, j]))}", (a[0] + 12, a[1] + 48), 0.35, (90, 90, 90))
    return img


def trajectory_picture(drive: Any, laps: int, max_px: int = 360) -> np.ndarray:
    """One evaluation drive over its track's map, with a caption."""
    from malpi.sim.pictures import track_map
    from malpi.sim.world import track_for_seed

    img = track_map(track_for_seed(drive.track_seed), drive.trajectory, max_px=max_px)
    ok = drive.completed(laps)
    caption = (
        f"{drive.laps} laps, |cte| {drive.mean_cte:.2f} m, {drive.mean_speed:.2f} m/s"
        if ok
        else f"LEFT THE TRACK after {drive.laps} laps ({drive.steps} steps)"
    )
    bar = np.full((24, img.shape[1], 3), 255, np.uint8)
    _text(bar, caption, (6, 17), 0.45, (20, 130, 20) if ok else (200, 30, 30))
    return np.concatenate([img, bar], axis=0)


def trajectory_grid(
    drives: Sequence[Any], laps: int, cols: int = 5, max_px: int = 300
) -> np.ndarray:
    """Every drive's picture in a grid (padded to equal cell sizes)."""
    pics = [trajectory_picture(d, laps, max_px) for d in drives]
    ch = max(p.shape[0] for p in pics)
    cw = max(p.shape[1] for p in pics)
    rows = math.ceil(len(pics) / cols)
    out = np.full((rows * (ch + 6), min(cols, len(pics)) * (cw + 6), 3), 255, np.uint8)
    for i, p in enumerate(pics):
        r, c = divmod(i, cols)
        y, x = r * (ch + 6), c * (cw + 6)
        out[y : y + p.shape[0], x : x + p.shape[1]] = p
    return out


def write_training_pictures(workdir: str | os.PathLike[str]) -> list[Path]:
    """curves.png (and confusion.png of the best validation epoch) in a training workdir."""
    import json

    workdir = Path(workdir)
    written = []
    history = workdir / "history.json"
    if history.exists():
        curves = training_curves(json.loads(history.read_text()))
        written.append(save_png(workdir / "curves.png", curves))
    conf, config = workdir / "confusion.json", workdir / "config.json"
    if conf.exists() and config.exists():
        names = [a["name"] for a in json.loads(config.read_text())["actions"]]
        picture = confusion_picture(
            json.loads(conf.read_text()), names, "validation: target (rows) vs predicted (columns)"
        )
        written.append(save_png(workdir / "confusion.png", picture))
    return written


def write_evaluation_pictures(
    outdir: str | os.PathLike[str], report: dict[str, Any], drives: Sequence[Any]
) -> list[Path]:
    """trajectories.png and confusion.png for an evaluation report."""
    outdir = Path(outdir)
    written = [
        save_png(outdir / "trajectories.png", trajectory_grid(drives, report["laps_target"]))
    ]
    if report.get("confusion"):
        written.append(
            save_png(
                outdir / "confusion.png",
                confusion_picture(
                    report["confusion"],
                    report["actions"],
                    "held-out expert drives: target (rows) vs policy (columns)",
                ),
            )
        )
    return written
