#!/usr/bin/env python3
"""Write the small DonkeyCar tubs the importer's tests read (tests/data/donkey-tub/).

Run by hand with DonkeyCar's own tub writers, in a virtual environment of its own (donkeycar
5.3 wants Python 3.11 and numpy < 2; MaLPi's tests never install it). How the committed
tubs were made::

    python3 -m venv /tmp/dk && /tmp/dk/bin/pip install donkeycar==5.3.0 'numpy<2' pillow
    rm -rf tests/data/donkey-tub && /tmp/dk/bin/python tools/make-donkey-tub.py tests/data/donkey-tub

It writes

- ``OUT/v2``: a tub v2 (``donkeycar.parts.tub_v2.Tub``) of two sessions (the writer starts
  a new session id each time a tub is opened): 26 records, then 24, written at about
  20 Hz (the writer stamps ``_timestamp_ms`` from the wall clock itself), 160x120 RGB
  frames saved by the writer as JPEG; ``user/angle`` sweeps left and right, ``user/throttle``
  varies, ``user/mode`` is ``user`` in the first session and ``local_angle`` / ``local``
  in the second, which also has ``pilot/angle`` and ``pilot/throttle`` (the inputs
  DonkeyCar's ``RECORD_DURING_AI`` adds; the writer leaves out the None values of the first
  session); records 3 and 30 are deleted with the writer's ``delete_records``;
- ``OUT/v1``: a tub v1 (``donkeycar.parts.datastore.Tub``, archived in 5.3 but shipped) of
  10 records, record 4 excluded with its ``exclude_index`` / ``write_exclude``.

The frames are simple road pictures drawn with numpy: sky, grass, a grey road whose centre
line bends the way the angle steers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

W, H = 160, 120
INPUTS = ["cam/image_array", "user/angle", "user/throttle", "user/mode"]
TYPES = ["image_array", "float", "float", "str"]
# What DonkeyCar's complete.py adds with RECORD_DURING_AI = True: the pilot's outputs.
AI_INPUTS = [*INPUTS, "pilot/angle", "pilot/throttle"]
AI_TYPES = [*TYPES, "float", "float"]


def road(angle: float, t: int) -> np.ndarray:
    """A 120x160 RGB picture of a road seen from the car, bending with ``angle``."""
    img = np.zeros((H, W, 3), np.uint8)
    img[: H // 3] = (135, 190, 235)  # sky
    img[H // 3 :] = (70, 140, 60)  # grass
    for y in range(H // 3, H):
        depth = (y - H // 3) / (H - H // 3)  # 0 at the horizon, 1 at the bottom
        centre = W / 2 + angle * 50 * (1 - depth) ** 2
        half = 8 + 70 * depth
        lo, hi = int(max(0, centre - half)), int(min(W, centre + half))
        img[y, lo:hi] = (110, 110, 110)
        if (y + t) // 6 % 2 == 0:  # dashed centre line, moving as the car drives
            c = int(centre)
            img[y, max(0, c - 1) : c + 2] = (240, 240, 240)
    return img


def write_v2(out: Path) -> None:
    from donkeycar.parts.tub_v2 import Tub

    sessions = [(26, ["user"]), (24, ["local_angle", "local"])]
    for n, modes in sessions:
        tub = Tub(str(out), inputs=AI_INPUTS, types=AI_TYPES, metadata=["made_by:make-donkey-tub"])
        for i in range(n):
            angle = float(np.sin(i / 4.0))  # -1 = full left in DonkeyCar
            throttle = 0.3 + 0.2 * float(np.cos(i / 5.0))
            pilot = modes != ["user"]  # no pilot ran in the first session: None, left out
            tub.write_record(
                {
                    "cam/image_array": road(angle, i),
                    "user/angle": angle,
                    "user/throttle": throttle,
                    "user/mode": modes[i % len(modes)],
                    "pilot/angle": -angle * 0.9 if pilot else None,
                    "pilot/throttle": 0.35 if pilot else None,
                }
            )
            time.sleep(0.05)  # DonkeyCar's default 20 Hz; the writer stamps the time itself
        if n == 24:
            tub.delete_records([3, 30])
        tub.close()


def write_v1(out: Path) -> None:
    from donkeycar.parts.datastore import Tub

    tub = Tub(str(out), inputs=INPUTS, types=TYPES)
    for i in range(10):
        angle = -0.8 + 0.16 * i
        tub.put_record(
            {
                "cam/image_array": road(angle, i),
                "user/angle": angle,
                "user/throttle": 0.4,
                "user/mode": "user",
            }
        )
        time.sleep(0.05)
    tub.exclude_index(4)
    tub.write_exclude()


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/donkey-tub")
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; remove it first", file=sys.stderr)
        return 1
    write_v2(out / "v2")
    write_v1(out / "v1")
    print(f"wrote {out}/v2 and {out}/v1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
