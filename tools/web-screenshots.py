#!/usr/bin/env python3
"""The README's pictures of the browser console, from the real thing: ``malpi drive --sim`` (the
shipped policy driving, recording as it does by default), ``malpi web`` on loopback, and Debian's headless Chromium at a
phone's and a desktop's size. Writes docs/images/web-phone.png and web-desktop.png.

    python tools/web-screenshots.py [--out docs/images] [--seconds 60]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}  # fmt: skip
DESKTOP = {"viewport": {"width": 1280, "height": 800}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "images"))
    p.add_argument("--seconds", type=float, default=60.0, help="driving before the pictures")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    cmd, tel, web = free_port(), free_port(), free_port()
    link = [
        f"--set=link.command='tcp://127.0.0.1:{cmd}'",
        f"--set=link.telemetry='tcp://127.0.0.1:{tel}'",
    ]
    drive = subprocess.Popen(
        [sys.executable, "-m", "malpi", "drive", "--sim", "--quiet", *link,
         f"--set=recording.path='{tmp / 'episodes.sqlite'}'", f"--set=policy.store='{tmp / 'store'}'"],
    )  # fmt: skip
    console = subprocess.Popen(
        [sys.executable, "-m", "malpi", "web", "--no-login", "--insecure",
         "--listen", f"127.0.0.1:{web}", *link],
    )  # fmt: skip
    try:
        time.sleep(8)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            pages = []
            for size in (PHONE, DESKTOP):
                page = browser.new_context(**size).new_page()
                page.goto(f"http://127.0.0.1:{web}/")
                page.wait_for_selector("#console:not([hidden])")
                pages.append(page)
            time.sleep(args.seconds)
            for name, page in zip(("web-phone.png", "web-desktop.png"), pages, strict=True):
                page.screenshot(path=str(Path(args.out) / name), full_page=page is pages[0])
                print(Path(args.out) / name)
            browser.close()
    finally:
        for proc in (console, drive):
            proc.terminate()
            proc.wait(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
