#!/usr/bin/env python3
"""Draw the README's wiring pictures: docs/images/wiring_hbridge.png and wiring_servo_esc.png.

    python tools/draw_wiring.py [--out docs/images]

The pins come from the defaults of malpi/config.py (DifferentialConfig, ServoConfig), so the
pictures show what `malpi setup` offers first. OpenCV only (the sim/train/robot extras have
it); nothing is downloaded and the same OpenCV draws the same pixels every time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from malpi.config import DifferentialConfig, ServoConfig

# The 40-pin header: physical pin -> what it is. BCM numbers are "GPIOn".
HEADER = {
    1: "3V3",
    2: "5V",
    3: "GPIO2",
    4: "5V",
    5: "GPIO3",
    6: "GND",
    7: "GPIO4",
    8: "GPIO14",
    9: "GND",
    10: "GPIO15",
    11: "GPIO17",
    12: "GPIO18",
    13: "GPIO27",
    14: "GND",
    15: "GPIO22",
    16: "GPIO23",
    17: "3V3",
    18: "GPIO24",
    19: "GPIO10",
    20: "GND",
    21: "GPIO9",
    22: "GPIO25",
    23: "GPIO11",
    24: "GPIO8",
    25: "GND",
    26: "GPIO7",
    27: "GPIO0",
    28: "GPIO1",
    29: "GPIO5",
    30: "GND",
    31: "GPIO6",
    32: "GPIO12",
    33: "GPIO13",
    34: "GND",
    35: "GPIO19",
    36: "GPIO16",
    37: "GPIO26",
    38: "GPIO20",
    39: "GND",
    40: "GPIO21",
}


def physical_pin(bcm: int) -> int:
    """The header pin of BCM GPIO ``bcm``."""
    for pin, name in HEADER.items():
        if name == f"GPIO{bcm}":
            return pin
    raise ValueError(f"GPIO{bcm} is not on the 40-pin header")


S = 2  # drawn at twice the size, then reduced: smooth lines and letters
W, H = 960, 600
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_BOLD = cv2.FONT_HERSHEY_DUPLEX


def bgr(hex_rgb: str) -> tuple[int, int, int]:
    v = int(hex_rgb.lstrip("#"), 16)
    return (v & 255, (v >> 8) & 255, v >> 16)


WHITE = bgr("#ffffff")
INK = bgr("#202020")
GREY = bgr("#8a8a8a")
LIGHT = bgr("#e8e8e8")
BOARD = bgr("#2f7d46")
BOARD_EDGE = bgr("#1d5530")
GOLD = bgr("#d9b44a")
RED = bgr("#d62828")
BLACK = bgr("#111111")
WIRES = {  # signal wire colours
    "a": bgr("#f08c00"),  # orange
    "b": bgr("#e6c619"),  # yellow
    "c": bgr("#1f6fd1"),  # blue
    "d": bgr("#8e44ad"),  # purple
    "e": bgr("#e8e8e8"),  # white
}


class Canvas:
    """A white picture with drawing in 1x coordinates (scaled by S inside)."""

    def __init__(self, w: int = W, h: int = H) -> None:
        self.img = np.full((h * S, w * S, 3), 255, np.uint8)

    @staticmethod
    def _p(x: float, y: float) -> tuple[int, int]:
        return int(round(x * S)), int(round(y * S))

    def rect(self, x0, y0, x1, y1, fill, edge=None, width=2, radius=8) -> None:
        r = radius * S
        a, b = self._p(x0, y0)
        c, d = self._p(x1, y1)
        for colour, grow in ((edge, 0), (fill, -width * S)) if edge else ((fill, 0),):
            aa, bb, cc, dd, rr = a - grow, b - grow, c + grow, d + grow, max(r + grow, 0)
            cv2.rectangle(self.img, (aa + rr, bb), (cc - rr, dd), colour, -1, cv2.LINE_AA)
            cv2.rectangle(self.img, (aa, bb + rr), (cc, dd - rr), colour, -1, cv2.LINE_AA)
            for cx, cy in (
                (aa + rr, bb + rr),
                (cc - rr, bb + rr),
                (aa + rr, dd - rr),
                (cc - rr, dd - rr),
            ):
                if rr:
                    cv2.circle(self.img, (cx, cy), rr, colour, -1, cv2.LINE_AA)

    def circle(self, x, y, r, fill, edge=None, width=1.5) -> None:
        cv2.circle(self.img, self._p(x, y), int(r * S), fill, -1, cv2.LINE_AA)
        if edge is not None:
            cv2.circle(self.img, self._p(x, y), int(r * S), edge, int(width * S), cv2.LINE_AA)

    def line(self, pts, colour, width=3.0, outline=True, dashed=False) -> None:
        pts = [self._p(x, y) for x, y in pts]
        if dashed:
            segs = []
            for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
                n = max(1, int(np.hypot(x1 - x0, y1 - y0) / (10 * S)))
                for i in range(0, n, 2):
                    t0, t1 = i / n, min(i + 1, n) / n
                    segs.append(
                        (
                            (int(x0 + (x1 - x0) * t0), int(y0 + (y1 - y0) * t0)),
                            (int(x0 + (x1 - x0) * t1), int(y0 + (y1 - y0) * t1)),
                        )
                    )
            for a, b in segs:
                cv2.line(self.img, a, b, colour, int(width * S), cv2.LINE_AA)
            return
        arr = [np.array(pts, np.int32)]
        if outline:  # a thin dark edge keeps light wires visible on white
            cv2.polylines(self.img, arr, False, INK, int((width + 1.5) * S), cv2.LINE_AA)
        cv2.polylines(self.img, arr, False, colour, int(width * S), cv2.LINE_AA)

    def text(self, s, x, y, size=13, colour=INK, bold=False, anchor="l") -> None:
        """``size``: the height of a capital in 1x pixels; (x, y) is the baseline's start/centre/end."""
        font = FONT_BOLD if bold else FONT
        scale = size * S / 22.0
        thick = max(1, int(round(scale * (1.6 if bold else 1.5))))
        (tw, _), _ = cv2.getTextSize(s, font, scale, thick)
        px, py = self._p(x, y)
        if anchor == "c":
            px -= tw // 2
        elif anchor == "r":
            px -= tw
        cv2.putText(self.img, s, (px, py), font, scale, colour, thick, cv2.LINE_AA)

    def text_width(self, s, size=13, bold=False) -> float:
        font = FONT_BOLD if bold else FONT
        scale = size * S / 22.0
        thick = max(1, int(round(scale * (1.6 if bold else 1.5))))
        return cv2.getTextSize(s, font, scale, thick)[0][0] / S

    def save(self, path: Path) -> None:
        small = cv2.resize(
            self.img, (self.img.shape[1] // S, self.img.shape[0] // S), interpolation=cv2.INTER_AREA
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), small, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise OSError(f"could not write {path}")


# -- the Raspberry Pi ---------------------------------------------------------------------------

PITCH = 21.0  # header rows, 1x pixels


class Pi:
    """A Pi seen from above, turned so that its 40-pin header runs down its right edge.

    Pin 1 is at the top; odd pins in the inner (left) column, even pins on the board's edge.
    """

    def __init__(self, c: Canvas, x0: float, y0: float, x1: float, y1: float) -> None:
        self.c, self.x0, self.y0, self.x1, self.y1 = c, x0, y0, x1, y1
        self.even_x = x1 - 18
        self.odd_x = self.even_x - PITCH
        self.top = y0 + 40

    def pin_xy(self, pin: int) -> tuple[float, float]:
        row = (pin - 1) // 2
        return (self.odd_x if pin % 2 else self.even_x), self.top + row * PITCH

    def draw(self, used: dict[int, tuple[int, int, int]], title: str) -> None:
        c = self.c
        c.rect(self.x0, self.y0, self.x1, self.y1, BOARD, BOARD_EDGE, width=2, radius=14)
        # the header's plastic and its pins
        c.rect(
            self.odd_x - 12,
            self.top - 12,
            self.even_x + 12,
            self.top + 19 * PITCH + 12,
            bgr("#1a1a1a"),
            radius=3,
        )
        for pin, name in HEADER.items():
            x, y = self.pin_xy(pin)
            fill = {"GND": bgr("#5a5a5a"), "5V": RED, "3V3": bgr("#f0a030")}.get(name, GOLD)
            if pin in used:
                c.circle(x, y, 7.5, used[pin], WHITE, 1.5)
            elif pin == 1:
                c.rect(x - 5, y - 5, x + 5, y + 5, fill, radius=0)
            else:
                c.circle(x, y, 4.5, fill)
        c.text("1", self.odd_x - 22, self.top + 5, 11, WHITE, anchor="r")
        c.text("2", self.even_x + 22, self.top + 5, 11, INK)
        c.text("39", self.odd_x - 22, self.top + 19 * PITCH + 5, 11, WHITE, anchor="r")
        c.text("40", self.even_x + 22, self.top + 19 * PITCH + 5, 11, INK)
        c.text("40-pin header", self.odd_x - 22, self.top - 18, 11, WHITE, anchor="r")
        c.text(title, self.x0 + 16, self.y1 - 16, 14, WHITE, bold=True)

    def labels(self, pins: list[tuple[int, tuple[int, int, int], str]]) -> None:
        """'pin N: GPIOm' left of the header at the pin's row, pushed down a row when two pins
        share one; the dot's colour is the pin's and its wire's."""
        c = self.c
        lx = self.odd_x - 30
        last = -1e9
        for pin, colour, extra in sorted(pins):
            y = max(self.pin_xy(pin)[1], last + PITCH)
            last = y
            s = f"pin {pin}: {HEADER[pin]}{extra}"
            w = c.text_width(s, 12, bold=True)
            c.rect(lx - w - 26, y - 9, lx + 4, y + 9, WHITE, radius=4)
            c.circle(lx - w - 14, y, 5, colour, INK, 1)
            c.text(s, lx, y + 5, 12, INK, bold=True, anchor="r")

    def exit_route(self, pin: int, out_x: float) -> list[tuple[float, float]]:
        """From a pin to the board's edge: an odd pin's wire slips between two even pins."""
        x, y = self.pin_xy(pin)
        if pin % 2 == 0:
            return [(x, y), (out_x, y)]
        mid = (self.odd_x + self.even_x) / 2
        return [(x, y), (mid, y), (mid, y - PITCH / 2), (out_x, y - PITCH / 2)]

    def csi(self, camera_x: float, cy: float) -> None:
        """The camera's CSI connector on the board, its ribbon, and the camera module."""
        c = self.c
        sx = self.x0 + 30
        c.rect(sx, cy - 34, sx + 12, cy + 34, bgr("#f2f2f2"), INK, 1, radius=2)
        c.text("CSI", sx + 22, cy - 8, 11, WHITE, bold=True)
        c.text("camera", sx + 22, cy + 8, 11, WHITE)
        c.text("connector", sx + 22, cy + 23, 11, WHITE)
        ribbon = np.array(
            [
                [sx + 2, cy - 28],
                [sx + 2, cy + 28],
                [camera_x + 40, cy + 58],
                [camera_x + 40, cy - 2],
            ],
            np.float64,
        )
        cv2.fillPoly(c.img, [(ribbon * S).astype(np.int32)], bgr("#d9a441"), cv2.LINE_AA)
        cam_y = cy + 30
        c.rect(camera_x - 40, cam_y - 45, camera_x + 40, cam_y + 45, BOARD, BOARD_EDGE, 2, 6)
        c.circle(camera_x, cam_y, 17, bgr("#101010"), bgr("#707070"), 3)
        c.circle(camera_x - 5, cam_y - 5, 4, bgr("#5b6f8f"))
        c.text("Pi camera", camera_x, cam_y + 68, 13, INK, bold=True, anchor="c")
        c.text("module", camera_x, cam_y + 85, 13, INK, bold=True, anchor="c")

    def power(self) -> None:
        c = self.c
        px, py = self.x0, self.y0 + 70
        c.rect(px - 10, py - 12, px + 14, py + 12, bgr("#c0c0c0"), INK, 1, radius=4)
        c.line([(px - 10, py), (px - 95, py)], bgr("#333333"), 5)
        c.text("USB-C: the Pi's", px - 88, py - 38, 12, INK, anchor="c")
        c.text("own 5 V supply", px - 88, py - 22, 12, INK, anchor="c")


def terminal(c: Canvas, x, y, label, side="l", colour=INK) -> None:
    """A screw terminal or header pin on a module's edge, labelled inside the module."""
    c.circle(x, y, 6, bgr("#c9c9c9"), INK, 1.5)
    if side == "l":
        c.text(label, x + 12, y + 5, 12, colour, bold=True)
    elif side == "r":
        c.text(label, x - 12, y + 5, 12, colour, bold=True, anchor="r")
    else:  # below the terminal: label above it, inside the module
        c.text(label, x, y - 12, 12, colour, bold=True, anchor="c")


def motor(c: Canvas, x, y, label) -> None:
    c.circle(x, y, 30, bgr("#b8b8b8"), INK, 2)
    c.circle(x, y, 11, bgr("#8a8a8a"), INK, 1.5)
    c.text("M", x, y + 6, 15, INK, bold=True, anchor="c")
    c.text(label, x, y + 52, 13, INK, bold=True, anchor="c")


def battery(c: Canvas, x0, y0, x1, y1, lines, plus_left=True):
    """A battery pack; returns its + and - terminal points (on its top edge)."""
    c.rect(x0, y0, x1, y1, bgr("#3b5b8c"), INK, 2, radius=6)
    for i, s in enumerate(lines):
        c.text(s, (x0 + x1) / 2, y0 + 34 + 17 * i, 12, WHITE, bold=i == 0, anchor="c")
    left, right = (x0 + 22, y0), (x1 - 22, y0)
    plus, minus = (left, right) if plus_left else (right, left)
    c.text("+", plus[0] + (8 if plus_left else -18), y0 + 18, 14, WHITE, bold=True)
    c.text("-", minus[0] + (-16 if plus_left else 8), y0 + 18, 14, WHITE, bold=True)
    return plus, minus


def dot(c: Canvas, x, y) -> None:
    c.circle(x, y, 5, INK)


# -- the pictures -------------------------------------------------------------------------------


SUBTITLE_PINS = "pin n: its place on the header; GPIOn: the BCM number, what malpi setup asks for"


def draw_hbridge(path: Path) -> None:
    cfg = DifferentialConfig()
    c = Canvas(W, 625)
    c.text("Differential car: two motors on an H-bridge", 20, 32, 19, INK, bold=True)
    c.text(
        'drivetrain "differential", driver "in_in" (L298N, DRV8833, TB6612, ...)', 20, 54, 12, GREY
    )
    c.text(SUBTITLE_PINS, 20, 72, 12, GREY)

    pi = Pi(c, 175, 90, 470, 610)
    signals = [  # config key, BCM pin, bridge input, colour
        ("left_forward", cfg.left_forward, "IN1", WIRES["a"]),
        ("left_backward", cfg.left_backward, "IN2", WIRES["b"]),
        ("right_forward", cfg.right_forward, "IN3", WIRES["c"]),
        ("right_backward", cfg.right_backward, "IN4", WIRES["d"]),
    ]
    gnd_pin = 20  # below the four signals: no wire crosses another
    used = {physical_pin(bcm): col for _, bcm, _, col in signals}
    used[gnd_pin] = BLACK
    pi.draw(used, "Raspberry Pi 4 / 5")
    pi.csi(80, 330)
    pi.power()
    pi.labels([(physical_pin(bcm), col, "") for _, bcm, _, col in signals] + [(gnd_pin, BLACK, "")])

    # the H-bridge module
    bx0, by0, bx1, by1 = 620, 130, 790, 450
    c.rect(bx0, by0, bx1, by1, bgr("#b3261e"), INK, 2, radius=8)
    c.text("H-bridge", (bx0 + bx1) / 2, by0 + 28, 15, WHITE, bold=True, anchor="c")
    ins_y = [200, 240, 280, 320]
    for (key, _, name, _), y in zip(signals, ins_y, strict=True):
        terminal(c, bx0, y, name, "l", WHITE)
        c.text(key, bx0 + 52, y + 5, 11, bgr("#ffd9d6"))

    # wires from the header to the bridge, turning where they cannot cross
    out_x = pi.x1 + 14
    bus_x = [585, 570, 555, 540]
    for (_, bcm, _, col), y, bx in zip(signals, ins_y, bus_x, strict=True):
        route = pi.exit_route(physical_pin(bcm), out_x)
        ey = route[-1][1]
        c.line(route + [(bx, ey), (bx, y), (bx0 - 6, y)], col, 3.5)

    # power: the battery to VM and GND; the Pi's GND joins the battery's minus
    gnd_x, vm_x = bx0 + 45, bx1 - 45
    terminal(c, gnd_x, by1, "GND", "b", WHITE)
    terminal(c, vm_x, by1, "VM +", "b", WHITE)
    plus, minus = battery(
        c, 600, 525, 810, 605, ["motor battery", "the motors' voltage"], plus_left=False
    )
    join_y = 490
    gx, gy = pi.pin_xy(gnd_pin)
    c.line(
        [(gx, gy), (525, gy), (525, join_y), (gnd_x, join_y), (gnd_x, by1 + 6)],
        BLACK,
        3.5,
        outline=False,
    )
    c.line([(minus[0], minus[1]), (minus[0], join_y)], BLACK, 4.5, outline=False)
    dot(c, minus[0], join_y)
    c.text("shared GND", 530, join_y - 8, 12, INK, bold=True)
    c.line(
        [(plus[0], plus[1]), (plus[0], join_y), (vm_x, join_y), (vm_x, by1 + 6)],
        RED,
        4.5,
        outline=False,
    )

    # motors
    outs = [("OUT1", 175), ("OUT2", 215), ("OUT3", 360), ("OUT4", 400)]
    for name, y in outs:
        terminal(c, bx1, y, name, "r", WHITE)
    motor(c, 890, 195, "left motor")
    motor(c, 890, 380, "right motor")
    mc = bgr("#555555")
    for y, ty in ((175, 185), (215, 205), (360, 370), (400, 390)):
        c.line([(bx1 + 6, y), (845, y), (862, ty)], mc, 3.5, outline=False)
    c.save(path)


def draw_servo_esc(path: Path) -> None:
    cfg = ServoConfig()
    c = Canvas(W, 625)
    c.text("RC car: steering servo and ESC", 20, 32, 19, INK, bold=True)
    c.text('drivetrain "servo": the ESC\'s BEC powers the servo, never the Pi', 20, 54, 12, GREY)
    c.text(SUBTITLE_PINS, 20, 72, 12, GREY)

    pi = Pi(c, 175, 90, 470, 610)
    steer_pin, esc_pin, gnd_pin, five_v = (
        physical_pin(cfg.steering_pin),
        physical_pin(cfg.throttle_pin),
        34,
        4,
    )
    used = {steer_pin: WIRES["a"], esc_pin: WIRES["e"], gnd_pin: BLACK}
    pi.draw(used, "Raspberry Pi 4 / 5")
    pi.csi(80, 330)
    pi.power()
    pi.labels(
        [
            (steer_pin, WIRES["a"], " steering"),
            (esc_pin, WIRES["e"], " ESC"),
            (gnd_pin, BLACK, ""),
            (five_v, RED, " (and 2): free"),
        ]
    )

    # servo and ESC, each with its three-wire lead (signal, + red, - black) on its left
    bx0, bx1 = 690, 830
    sy0, sy1 = 150, 240
    ey0, ey1 = 310, 420
    c.rect(bx0, sy0, bx1, sy1, bgr("#3a3a3a"), INK, 2, radius=6)
    c.text("steering", (bx0 + bx1) / 2 + 12, sy0 + 40, 14, WHITE, bold=True, anchor="c")
    c.text("servo", (bx0 + bx1) / 2 + 12, sy0 + 60, 14, WHITE, bold=True, anchor="c")
    c.rect(bx0, ey0, bx1, ey1, bgr("#2b4a7a"), INK, 2, radius=6)
    c.text("ESC", (bx0 + bx1) / 2 + 12, ey0 + 36, 16, WHITE, bold=True, anchor="c")
    c.text("with BEC", (bx0 + bx1) / 2 + 12, ey0 + 56, 12, WHITE, anchor="c")
    c.text("(5-6 V out)", (bx0 + bx1) / 2 + 12, ey0 + 74, 12, WHITE, anchor="c")
    order = ("S", "+", "-")
    s_y = {k: sy0 + 22 + 22 * i for i, k in enumerate(order)}
    e_y = {k: ey0 + 22 + 22 * i for i, k in enumerate(order)}
    for k in order:
        terminal(c, bx0, s_y[k], k, "l", WHITE)
        terminal(c, bx0, e_y[k], k, "l", WHITE)

    # the common rails (a strip of header pins or a breadboard): BEC + and GND
    rp_x, rg_x = 630, 655
    gy = pi.pin_xy(gnd_pin)[1]
    c.line([(rp_x, s_y["+"]), (rp_x, e_y["+"])], RED, 4, outline=False)
    c.line([(rg_x, s_y["-"]), (rg_x, gy)], BLACK, 4, outline=False)
    for k, x, col in (("+", rp_x, RED), ("-", rg_x, BLACK)):
        c.line([(x, s_y[k]), (bx0 - 6, s_y[k])], col, 3.5, outline=False)
        c.line([(x, e_y[k]), (bx0 - 6, e_y[k])], col, 3.5, outline=False)
        dot(c, x, s_y[k])
        dot(c, x, e_y[k])
    c.text("BEC +", rp_x - 8, 275, 12, RED, bold=True, anchor="r")

    # signals and ground from the header
    out_x = pi.x1 + 14
    r = pi.exit_route(steer_pin, out_x)
    c.line(r + [(560, r[-1][1]), (560, s_y["S"]), (bx0 - 6, s_y["S"])], WIRES["a"], 3.5)
    r = pi.exit_route(esc_pin, out_x)
    route = r + [(590, r[-1][1]), (590, e_y["S"]), (bx0 - 6, e_y["S"])]
    # it passes over the rails: a white gap either side shows it is not joined to them
    c.line(route[-2:], WHITE, 11, outline=False)
    c.line(route, WIRES["e"], 3.5)
    gx = pi.pin_xy(gnd_pin)[0]
    c.line([(gx, gy), (rg_x, gy)], BLACK, 3.5, outline=False)
    dot(c, rg_x, gy)
    c.text("common GND", 600, gy + 22, 12, INK, bold=True)

    # NOT to the Pi's 5 V
    fx, fy = pi.pin_xy(five_v)
    c.line([(fx, fy), (rp_x, fy), (rp_x, s_y["+"] - 8)], RED, 2.5, dashed=True)
    mx, my = 515, fy
    cv2.line(c.img, c._p(mx - 13, my - 13), c._p(mx + 13, my + 13), RED, 5 * S, cv2.LINE_AA)
    cv2.line(c.img, c._p(mx - 13, my + 13), c._p(mx + 13, my - 13), RED, 5 * S, cv2.LINE_AA)
    c.text("never join the BEC + to the Pi's 5 V", 490, fy - 22, 12, RED, bold=True)

    # the power side: battery in, motor out
    plus, minus = battery(c, 700, 525, 910, 605, ["drive battery", "NiMH / LiPo"])
    c.line(
        [(plus[0], plus[1]), (plus[0], 480), (bx0 + 50, 480), (bx0 + 50, ey1)],
        RED,
        5,
        outline=False,
    )
    c.line(
        [(minus[0], minus[1]), (minus[0], 470), (bx0 + 100, 470), (bx0 + 100, ey1)],
        BLACK,
        5,
        outline=False,
    )
    motor(c, 905, 365, "")
    c.text("drive motor", 905, 318, 13, INK, bold=True, anchor="c")
    mc = bgr("#555555")
    for y, ty in ((345, 352), (365, 365), (385, 378)):
        c.line([(bx1, y), (862, y), (877, ty)], mc, 3, outline=False)
    c.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "images"
    )
    args = ap.parse_args()
    for name, draw in (
        ("wiring_hbridge.png", draw_hbridge),
        ("wiring_servo_esc.png", draw_servo_esc),
    ):
        draw(args.out / name)
        print(args.out / name, (args.out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
