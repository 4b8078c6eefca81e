#!/usr/bin/env python3
"""Open a ``malpi episodes export --format lerobot`` dataset with LeRobot's own reader.

Run by hand, in a virtual environment of its own with ``lerobot`` (it needs torch; MaLPi
does not, and this is not part of the tests). lerobot 0.4.4 pins torch < 2.11; how it was
run with the CPU torch 2.13 (``--no-deps``): docs/data.md, "What LeRobot does with it"::

    python3 -m venv /tmp/lr && /tmp/lr/bin/pip install torch==2.13.0
    /tmp/lr/bin/pip install --no-deps lerobot==0.4.4   # then what its dataset module imports
    malpi episodes export --format lerobot --out /tmp/ds
    /tmp/lr/bin/python tools/check-lerobot.py /tmp/ds --db episodes.sqlite --video-backend pyav

It loads the directory with ``LeRobotDataset(repo_id, root=DIR)`` (offline), checks the
frame and episode counts against meta/info.json, reads the first and last frame of every
episode (video decoded by LeRobot), compares it with the recorded JPEG when ``--db`` is
given (PSNR), every frame with ``--every-frame``, reads a window across an episode start with ``delta_timestamps`` (LeRobot's
padding), and one DataLoader batch. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch: the dataset is local

CAMERA = "observation.images.front"
PSNR_DB = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the exported dataset directory")
    parser.add_argument("--repo-id", default="local/malpi", help="any name (nothing is fetched)")
    parser.add_argument("--db", type=Path, help="the episode database it was exported from")
    parser.add_argument("--video-backend", default=None, help="pyav or torchcodec (LeRobot's)")
    parser.add_argument(
        "--every-frame", action="store_true", help="also read every frame through LeRobot"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    info = json.loads((args.root / "meta/info.json").read_text())
    malpi = json.loads((args.root / "meta/malpi.json").read_text())
    ds = LeRobotDataset(args.repo_id, root=args.root, video_backend=args.video_backend)
    print(ds)
    problems = []
    if (len(ds), ds.num_episodes, ds.fps) != (
        info["total_frames"], info["total_episodes"], info["fps"],
    ):  # fmt: skip
        problems.append(f"frames/episodes/fps {len(ds)}/{ds.num_episodes}/{ds.fps} vs info.json")

    conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) if args.db else None
    worst = float("inf")
    for e, source in zip(ds.meta.episodes, malpi["episodes"], strict=True):
        for index in (e["dataset_from_index"], e["dataset_to_index"] - 1):
            item = ds[index]
            image = item[CAMERA]
            if tuple(image.shape) != (3, *info["features"][CAMERA]["shape"][:2]):
                problems.append(f"frame {index}: shape {tuple(image.shape)}")
            if int(item["episode_index"]) != e["episode_index"]:
                problems.append(f"frame {index}: episode_index {int(item['episode_index'])}")
            if conn is not None:
                import cv2

                row = conn.execute(
                    "SELECT frame FROM steps WHERE episode_id = ? AND step = ?",
                    (source["id"], int(item["step_index"])),
                ).fetchone()
                want = cv2.cvtColor(
                    cv2.imdecode(np.frombuffer(row[0], np.uint8), cv2.IMREAD_COLOR),
                    cv2.COLOR_BGR2RGB,
                ).astype(np.float64)
                got = (image.permute(1, 2, 0).numpy() * 255.0).astype(np.float64)
                mse = float(np.mean((got - want) ** 2))
                psnr = 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)
                worst = min(worst, psnr)
                if psnr < PSNR_DB:
                    problems.append(f"frame {index}: {psnr:.1f} dB from the recorded JPEG")
    print(f"read the first and last frame of {ds.num_episodes} episodes", end="")
    print(f"; worst PSNR against the recorded JPEGs {worst:.1f} dB" if conn else "")

    if args.every_frame:
        for index in range(len(ds)):
            ds[index]  # decodes the video at the frame's timestamp, within LeRobot's tolerance
        print(f"read every frame ({len(ds)})")

    # A window reaching before an episode's start: LeRobot pads it and says so.
    dt = 1.0 / ds.fps
    windowed = LeRobotDataset(
        args.repo_id, root=args.root, video_backend=args.video_backend,
        delta_timestamps={CAMERA: [-dt, 0.0], "action": [0.0, dt]},
    )  # fmt: skip
    start = windowed[int(ds.meta.episodes[-1]["dataset_from_index"])]
    pad = start[f"{CAMERA}_is_pad"].tolist()
    print(f"delta_timestamps at an episode start: images {tuple(start[CAMERA].shape)}, pad {pad}")
    if pad != [True, False]:
        problems.append(f"padding at an episode start {pad}")

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    print(
        "a DataLoader batch:", {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
    )
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
