"""What ``malpi teleop`` draws: the video, the overlay over it, and the screens for a missing link.

Kept apart from the window's loop (``teleop.py``) so that the look can be changed, and its
colours checked, without the link. Every text sits on a fill of its own (a solid one, or a
translucent dark one whose worst case, over a white video pixel, is checked): never straight on
the video, where a yellow road line or the sky can take it away. ``COLOUR_PAIRS`` lists each
text/fill pair and the tests hold each to the WCAG 2 AA ratio for text (4.5:1).
"""

from __future__ import annotations

import time
from typing import Any

RGB = tuple[int, int, int]

# Mode badges: light fills under dark text (white on these greens and blues was below 3:1).
MODE_COLOURS: dict[str, RGB] = {
    "paused": (200, 200, 200),
    "manual": (120, 190, 255),
    "auto": (110, 220, 140),
}
DARK_TEXT: RGB = (16, 16, 16)
LIGHT_TEXT: RGB = (255, 255, 255)
DIM_TEXT: RGB = (185, 185, 185)  # figures that are no longer live (link lost)
UNKNOWN_FILL: RGB = (95, 95, 95)  # the badge when the mode is not known: grey, not a mode colour
TAKEN_FILL: RGB = (250, 200, 40)  # the action the motors got: its bar and its label
OTHER_FILL: RGB = (90, 170, 250)  # the other actions' bars (no text on them)
FAULT_FILL: RGB = (150, 20, 20)
BANNER_FILL: RGB = (165, 20, 20)
STRIP_FILL: RGB = (28, 28, 28)  # under the video: events and keys
EVENT_TEXT: RGB = (220, 220, 160)
HINT_TEXT: RGB = (160, 160, 160)
BACKGROUND: RGB = (16, 16, 16)
REC_DOT: RGB = (230, 40, 40)
PANEL_ALPHA = 190  # the dark panels' opacity over the video


def composite(fill: RGB, alpha: int, under: RGB = (255, 255, 255)) -> RGB:
    """The colour a translucent ``fill`` makes over ``under`` (by default the worst case, white)."""
    a = alpha / 255
    return tuple(round(f * a + u * (1 - a)) for f, u in zip(fill, under, strict=True))


def luminance(rgb: RGB) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""

    def linear(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: RGB, b: RGB) -> float:
    """WCAG 2 contrast ratio of two colours, 1 to 21 (4.5 is the minimum for normal text)."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


PANEL_WORST: RGB = composite((0, 0, 0), PANEL_ALPHA)  # a dark panel over a white pixel

# Every text/fill pair the overlay draws (translucent fills at their worst, over white).
COLOUR_PAIRS: dict[str, tuple[RGB, RGB]] = {
    **{f"badge {mode}": (DARK_TEXT, fill) for mode, fill in MODE_COLOURS.items()},
    "badge unknown": (LIGHT_TEXT, UNKNOWN_FILL),
    "selected action label": (DARK_TEXT, TAKEN_FILL),
    "panel text": (LIGHT_TEXT, PANEL_WORST),
    "panel text, link lost": (DIM_TEXT, PANEL_WORST),
    "who chose the action": (TAKEN_FILL, PANEL_WORST),
    "faults": (LIGHT_TEXT, FAULT_FILL),
    "link lost banner": (LIGHT_TEXT, BANNER_FILL),
    "events": (EVENT_TEXT, STRIP_FILL),
    "keys": (HINT_TEXT, STRIP_FILL),
    "waiting screen": (LIGHT_TEXT, BACKGROUND),
    "waiting screen, details": (DIM_TEXT, BACKGROUND),
}

KEYS_HINT = "arrows/WASD drive  space stop  m mode  r reset  f failed  c record  p shot  q quit"

# What the car does on its own when the operator's link is gone, by the last mode seen
# (docs/protocol.md, Driving): only manual has a deadman; auto drives on.
AFTER_LOSS = {
    "manual": "MANUAL: the car stops by its own deadman",
    "auto": "AUTO: its policy may still be driving the car",
    "paused": "PAUSED: the car stays stopped",
}


def badge(state: str, mode: str | None, recording: bool) -> tuple[str, RGB, RGB, bool]:
    """The mode badge: (label, fill, text colour, show REC). Only a live link shows a mode."""
    if state != "live" or mode not in MODE_COLOURS:
        return "?", UNKNOWN_FILL, LIGHT_TEXT, False
    return mode.upper(), MODE_COLOURS[mode], DARK_TEXT, recording


def policy_lines(ui: Any) -> list[str]:
    """The running policy and where it comes from, and the one the robot boots (when it says)."""
    running = f"policy {ui.policy_version or '-'}"
    if ui.policy_source:
        running += f" ({ui.policy_source})"
    if ui.boot_policy_source is None:  # a robot older than the boot policy fields
        return [running]
    return [running, f"boots: {ui.boot_policy_version or 'no policy'} ({ui.boot_policy_source})"]


def elide(font: Any, text: str, width: int) -> str:
    """``text`` cut in the middle with an ellipsis to fit ``width`` pixels (paths keep their
    file name)."""
    if font.size(text)[0] <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        head = (keep + 1) // 2
        cut = text[:head] + "…" + text[len(text) - (keep - head) :]
        if font.size(cut)[0] <= width:
            return cut
    return "…"


def wrap(font: Any, text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken at spaces."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if line and font.size(candidate)[0] > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


class Overlay:
    """Draws a ``Teleop``'s state into its window (it reads the window's attributes)."""

    def __init__(self, pg: Any, screen: Any, video_size: tuple[int, int]):
        self.pg, self.screen, self.video_size = pg, screen, video_size
        self.font = pg.font.Font(None, 22)
        self.big = pg.font.Font(None, 30)
        self.small = pg.font.Font(None, 18)

    def draw(self, ui: Any) -> None:
        pg, screen = self.pg, self.screen
        w, h = self.video_size
        screen.fill(BACKGROUND)
        if ui.frame_surface is not None:
            screen.blit(ui.frame_surface, (0, 0))
            if ui.state != "live":  # the last picture, dimmed: it is not live
                veil = pg.Surface((w, h), pg.SRCALPHA)
                veil.fill((0, 0, 0, 120))
                screen.blit(veil, (0, 0))
        if ui.state == "waiting":
            self._waiting(ui, w, h)
        else:
            if ui.frame_surface is None:
                self._text(self.big, "waiting for video…", (w // 2 - 90, h // 2), DIM_TEXT)
            self._hud(ui, w, h)
            self._probabilities(ui, w, h)
            if ui.state == "lost":
                self._lost(ui, w, h)
        self._strip(ui, w, h)

    # -- the parts ---------------------------------------------------------------------

    def _strip(self, ui: Any, w: int, h: int) -> None:
        """Under the video: the latest events and the keys."""
        self.pg.draw.rect(self.screen, STRIP_FILL, (0, h, w, 44))
        for i, line in enumerate(list(ui.events)[-2:]):
            self._text(self.small, elide(self.small, line, w - 16), (8, h + 4 + i * 14), EVENT_TEXT)
        self._text(self.small, elide(self.small, KEYS_HINT, w - 16), (8, h + 30), HINT_TEXT)

    def _waiting(self, ui: Any, w: int, h: int) -> None:
        """Before the robot ever answered: what the window tries, and that it keeps trying."""
        target = ui.client.command_endpoint.removeprefix("tcp://")
        y = max(12, h // 2 - 90)
        for line in wrap(self.big, f"waiting for {target}…", w - 32):
            self._text(self.big, line, (16, y), LIGHT_TEXT)
            y += 28
        security = "CURVE" if ui.client.curve else "plain"
        details = [
            f"commands {ui.client.command_endpoint}, telemetry {ui.client.telemetry_endpoint} "
            f"({security})",
            f"try {ui.tries}, {time.monotonic() - ui.started:.0f} s"
            + (f": {ui.last_error}" if ui.last_error else ""),
            "it connects when the robot's daemon answers; q, Esc or closing the window quits",
        ]
        for text in details:
            y += 6
            for line in wrap(self.font, text, w - 32):
                self._text(self.font, line, (16, y), DIM_TEXT)
                y += 18

    def _lost(self, ui: Any, w: int, h: int) -> None:
        """The link-lost banner: since when, what the car does meanwhile, what is tried."""
        ago = time.monotonic() - ui.last_heard if ui.last_heard is not None else 0.0
        target = ui.client.command_endpoint.removeprefix("tcp://")
        title = f"LINK LOST — last seen {ago:.0f} s ago"
        font = self.big if self.big.size(title)[0] <= w - 40 else self.font
        lines = [
            f"the robot said: {ui.robot_said}"
            if ui.robot_said
            else AFTER_LOSS.get(ui.mode, "the car stops by its own deadman in manual mode"),
            f"retrying {target} (try {ui.tries})",
        ]
        if ui.last_error:
            lines.append(ui.last_error)
        body = [row for text in lines for row in wrap(self.small, text, w - 40)]
        height = font.get_height() + 10 + 15 * len(body)
        box = self.pg.Rect(12, max(44, h // 2 - height // 2 - 20), w - 24, height + 8)
        self.pg.draw.rect(self.screen, BANNER_FILL, box, border_radius=6)
        self.pg.draw.rect(self.screen, LIGHT_TEXT, box, 2, border_radius=6)
        self._text(font, title, (box.x + 10, box.y + 8), LIGHT_TEXT)
        y = box.y + 12 + font.get_height()
        for row in body:
            self._text(self.small, row, (box.x + 10, y), LIGHT_TEXT)
            y += 15

    def _hud(self, ui: Any, w: int, h: int) -> None:
        pg, screen = self.pg, self.screen
        status, step = ui.last_status, ui.last_step
        live = ui.state == "live"
        colour = LIGHT_TEXT if live else DIM_TEXT
        label, fill, ink, rec = badge(ui.state, ui.mode, ui.recording)
        box = pg.Rect(8, 8, 96, 28)
        pg.draw.rect(screen, fill, box, border_radius=6)
        text = self.big.render(label, True, ink)
        screen.blit(text, (box.centerx - text.get_width() // 2, box.y + 5))
        if rec:
            self._chip(self.font, "REC", (110, 12), LIGHT_TEXT, dot=REC_DOT)
        elif not live:
            self._chip(self.font, "link lost", (110, 12), LIGHT_TEXT)
        episode = step.episode if step else status.episode if status else 0
        n = step.step if step else 0
        left = [f"episode {episode}  step {n}", *policy_lines(ui)]
        self._panel([elide(self.font, s, w - 232) for s in left], (8, 42), colour)
        rate = f"{status.rate_hz:.1f} Hz" if status else "- Hz"
        missed = status.missed_periods if status else 0
        lat = step.latency_ms if step else {}
        right = [f"loop {rate}  missed {missed}", f"inference {lat.get('inference', 0):.1f} ms"]
        if "frame_to_motor" in lat:
            right.append(f"frame to motor {lat['frame_to_motor']:.0f} ms")
        if ui.frame_info is not None:
            right.append(f"video age {max(0.0, time.time() - ui.frame_info.t) * 1000:.0f} ms")
        right.append(f"link {ui.rtt_ms:.1f} ms" if ui.rtt_ms is not None and live else "link -")
        if status is not None and status.cpu_temp_c is not None:
            right.append(f"cpu {status.cpu_temp_c:.0f} °C")
        self._panel(right, (w - 200, 8), colour, width=192)
        faults = (step.faults if step else list(status.faults) if status else []) or []
        if live and not ui.commands_ok:
            faults = ["no reply to commands", *faults]
        if faults and live:
            self._panel(
                [elide(self.font, "FAULTS: " + ", ".join(faults), w - 28)],
                (8, h - 130),
                LIGHT_TEXT,
                width=w - 16,
                fill=FAULT_FILL,
            )

    def _probabilities(self, ui: Any, w: int, h: int) -> None:
        """One bar per action: its probability above it (on the dark panel, never on the bar),
        its name under it; the action taken has a yellow bar and a yellow label in dark text."""
        pg, screen = self.pg, self.screen
        step = ui.last_step if ui.state == "live" else None
        n = len(ui.actions)
        bar_w = min(110, (w - 16) // max(n, 1) - 6)
        top = h - 100
        overlay = pg.Surface((w, 100), pg.SRCALPHA)
        overlay.fill((0, 0, 0, PANEL_ALPHA))
        screen.blit(overlay, (0, top))
        probs = step.probs if step and step.probs else None
        full = 48
        for i, a in enumerate(ui.actions):
            x = 8 + i * (bar_w + 6)
            p = probs[i] if probs and i < len(probs) else 0.0
            self._text(self.small, f"{p:.2f}" if probs else "-", (x + 2, top + 6), LIGHT_TEXT)
            pg.draw.rect(screen, (90, 90, 90), (x, top + 22, bar_w, full), 1)
            taken = step is not None and step.action == i
            height = int(full * max(0.0, min(1.0, p)))
            fill = TAKEN_FILL if taken else OTHER_FILL
            pg.draw.rect(screen, fill, (x, top + 22 + full - height, bar_w, height))
            name = elide(self.small, a.name, bar_w - 6)
            if taken:
                pg.draw.rect(screen, TAKEN_FILL, (x, top + 74, bar_w, 18), border_radius=4)
                self._text(self.small, name, (x + 3, top + 77), DARK_TEXT)
            else:
                self._text(self.small, name, (x + 3, top + 77), LIGHT_TEXT)
        if step is not None:
            who = step.source or "stopped"
            value = f"  value {step.value:+.2f}" if step.value is not None else ""
            label = self.small.render(f"{who}{value}", True, TAKEN_FILL)
            x, y = w - label.get_width() - 12, top - label.get_height() - 8
            chip = pg.Surface((label.get_width() + 8, label.get_height() + 6), pg.SRCALPHA)
            chip.fill((0, 0, 0, PANEL_ALPHA))
            screen.blit(chip, (x - 4, y - 3))
            screen.blit(label, (x, y))

    # -- pieces ---------------------------------------------------------------------------

    def _panel(self, lines, pos, colour=LIGHT_TEXT, width=None, fill=None) -> None:
        pg = self.pg
        lh = 18
        width = width or max(self.font.size(s)[0] for s in lines) + 12
        box = pg.Surface((width, lh * len(lines) + 8), pg.SRCALPHA)
        box.fill((*fill, 255) if fill else (0, 0, 0, PANEL_ALPHA))
        self.screen.blit(box, pos)
        for i, line in enumerate(lines):
            self._text(self.font, line, (pos[0] + 6, pos[1] + 5 + i * lh), colour)

    def _chip(self, font, text, pos, colour, dot: RGB | None = None) -> None:
        """A short text on a dark rounded fill of its own (a red dot first for REC)."""
        pg = self.pg
        pad = 18 if dot else 0
        tw, th = font.size(text)
        chip = pg.Surface((tw + 12 + pad, th + 8), pg.SRCALPHA)
        pg.draw.rect(chip, (0, 0, 0, PANEL_ALPHA), chip.get_rect(), border_radius=6)
        if dot:
            pg.draw.circle(chip, dot, (12, chip.get_height() // 2), 6)
        self.screen.blit(chip, pos)
        self._text(font, text, (pos[0] + 6 + pad, pos[1] + 5), colour)

    def _text(self, font, text, pos, colour) -> None:
        self.screen.blit(font.render(text, True, colour), pos)
