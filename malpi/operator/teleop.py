"""``malpi teleop HOST``: watch and drive the robot from a pygame window.

The window shows the live camera (the ``frame`` topic) with an overlay: mode,
recording, episode and step, policy version, loop rate, latencies, faults,
and the policy's action probabilities with the action taken and who chose it.

Keys: arrows or WASD drive (up = straight on, left/right alone = hard turn,
up+left/right = gentle turn, down = reverse if the action table has it);
space = stop (held: keeps the car stopped, also in auto); m = next mode
(paused -> manual -> auto); r = reset the episode; f = end the episode as
failed; c = recording on/off; p = screenshot; q or Esc = quit. A gamepad's
left stick drives; A = stop, B = reset, X = recording, Y = mode.

While a key or the stick is held, drive commands go out at ``drive_hz``
(20 Hz by default, at least 10) so the robot's deadman stays fed; when it is
released they stop, and in manual mode the robot stops within the deadman time.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from malpi.operator.client import LinkTimeout, RobotClient, RobotError
from malpi.protocol import schema

log = logging.getLogger(__name__)

MODES = ("paused", "manual", "auto")
MODE_COLOURS = {"paused": (120, 120, 120), "manual": (40, 140, 230), "auto": (40, 180, 90)}
DEADZONE = 0.2
DRIVE_TIMEOUT = 0.25  # s: a drive reply slower than this is counted as lost, the UI goes on


def choose_action(actions: list[schema.ActionInfo], steer: float, throttle: float) -> int | None:
    """The action nearest to a wish: ``steer`` in [-1, 1] (negative = left), ``throttle`` sign.

    Forward wishes pick among forward actions, reverse among reverse ones
    (None = stop when the table has none). ``steer`` is scaled to the table's
    sharpest turn, so full left is its hardest left.
    """
    want_reverse = throttle < 0
    pool = [
        (i, a)
        for i, a in enumerate(actions)
        if (a.throttle < 0 if want_reverse else a.throttle > 0)
    ]
    if not pool:
        return None
    widest = max(abs(a.steering) for _, a in pool) or 1.0
    target = max(-1.0, min(1.0, steer)) * widest
    return min(pool, key=lambda ia: (abs(ia[1].steering - target), -abs(ia[1].throttle)))[0]


class Teleop:
    """The operator window. ``step()`` runs one frame of the UI (tests call it directly)."""

    def __init__(
        self,
        client: RobotClient,
        size: tuple[int, int] = (640, 480),
        drive_hz: float = 20.0,
        fps: float = 30.0,
        title: str = "MaLPi",
    ):
        import pygame

        if drive_hz < 10:
            raise ValueError("drive_hz must be at least 10: the robot's deadman needs it")
        self.pg = pygame
        self.client = client
        self.drive_period = 1.0 / drive_hz
        self.fps = fps
        pygame.display.init()
        pygame.font.init()
        pygame.joystick.init()
        self.video_size = size
        self.screen = pygame.display.set_mode((size[0], size[1] + 44))
        pygame.display.set_caption(title)
        self.font = pygame.font.Font(None, 22)
        self.big = pygame.font.Font(None, 30)
        self.small = pygame.font.Font(None, 18)
        self.clock = pygame.time.Clock()
        self.held: set[int] = set()
        self.joystick = None
        self.frame_surface = None
        self.frame_info: schema.FrameMsg | None = None
        self.last_step: schema.StepMsg | None = None
        self.last_status: schema.StatusMsg | None = None
        self.events: deque[str] = deque(maxlen=3)
        self.rtt_ms: float | None = None
        self.link_ok = True
        self.drive_times: list[float] = []  # when each drive command went out (tests, the overlay)
        self.frames_received = 0
        self.running = True
        self._next_drive = 0.0
        self._last_contact = 0.0
        self._connect_joystick()
        status = client.status()
        self.actions = status.actions
        self.mode = status.mode
        self.recording = status.recording
        self.policy_version = status.policy_version
        client.subscribe(["frame", "step", "status", "event"])

    # -- one UI frame ----------------------------------------------------------------

    def step(self) -> None:
        self._handle_input()
        self._receive()
        self._drive()
        self._ping()
        self.draw()
        self.pg.display.flip()
        self.clock.tick(self.fps)

    def run(self, seconds: float | None = None, screenshot: str | os.PathLike | None = None) -> int:
        end = None if seconds is None else time.monotonic() + seconds
        while self.running and (end is None or time.monotonic() < end):
            self.step()
        if screenshot:
            self.save_screenshot(screenshot)
        self.close()
        return 0

    def save_screenshot(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pg.image.save(self.screen, str(path))
        log.info("screenshot saved to %s", path)
        return path

    def close(self) -> None:
        self.pg.display.quit()

    # -- input -------------------------------------------------------------------------

    def _connect_joystick(self) -> None:
        if self.pg.joystick.get_count() > 0 and self.joystick is None:
            self.joystick = self.pg.joystick.Joystick(0)
            log.info("gamepad: %s", self.joystick.get_name())

    def _handle_input(self) -> None:
        pg = self.pg
        for event in pg.event.get():
            if event.type == pg.QUIT:
                self.running = False
            elif event.type == pg.KEYDOWN:
                self.held.add(event.key)
                self._key(event.key)
            elif event.type == pg.KEYUP:
                self.held.discard(event.key)
            elif event.type == pg.JOYDEVICEADDED:
                self._connect_joystick()
            elif event.type == pg.JOYBUTTONDOWN:
                {1: self._reset, 2: self._toggle_record, 3: self._next_mode}.get(
                    event.button, lambda: None
                )()

    def _key(self, key: int) -> None:
        pg = self.pg
        actions = {
            pg.K_m: self._next_mode,
            pg.K_r: self._reset,
            pg.K_f: self._failed,
            pg.K_c: self._toggle_record,
            pg.K_p: lambda: self.save_screenshot(f"malpi-{time.strftime('%Y%m%d-%H%M%S')}.png"),
            pg.K_q: self._quit,
            pg.K_ESCAPE: self._quit,
        }
        if key in actions:
            actions[key]()

    def _quit(self) -> None:
        self.running = False

    def wish(self) -> tuple[bool, float, float]:
        """(stop, steer, throttle) from the keys and the gamepad; (False, 0, 0) = nothing held."""
        pg, held = self.pg, self.held
        js = self.joystick
        if pg.K_SPACE in held or (js is not None and js.get_numbuttons() and js.get_button(0)):
            return True, 0.0, 0.0
        left = bool(held & {pg.K_LEFT, pg.K_a})
        right = bool(held & {pg.K_RIGHT, pg.K_d})
        up = bool(held & {pg.K_UP, pg.K_w})
        down = bool(held & {pg.K_DOWN, pg.K_s})
        steer = (right - left) * (0.5 if up or down else 1.0)
        throttle = float(up - down)
        if steer or throttle:
            return False, steer, throttle if throttle else 1.0
        if js is not None and js.get_numaxes() >= 2:
            x, y = js.get_axis(0), -js.get_axis(1)
            if abs(x) > DEADZONE or abs(y) > DEADZONE:
                return False, x if abs(x) > DEADZONE else 0.0, -1.0 if y < -DEADZONE else 1.0
        return False, 0.0, 0.0

    # -- commands ------------------------------------------------------------------------

    def _drive(self) -> None:
        stop, steer, throttle = self.wish()
        if not stop and not steer and not throttle:
            return
        now = time.monotonic()
        if now < self._next_drive:
            return
        self._next_drive = max(self._next_drive + self.drive_period, now)
        action = None if stop else choose_action(self.actions, steer, throttle)
        t0 = time.perf_counter()
        try:
            reply = self.client.drive(action, timeout=DRIVE_TIMEOUT)
            self.rtt_ms = (time.perf_counter() - t0) * 1000
            self.link_ok = True
            if not reply.accepted:
                self.events.append(f"drive refused: {reply.reason}")
        except LinkTimeout:
            self.link_ok = False
        except RobotError as exc:
            self.events.append(f"drive refused: {exc.message}")
        self.drive_times.append(now)
        self._last_contact = now
        del self.drive_times[:-200]

    def _ping(self) -> None:
        """While not driving, a ping a second keeps the link figure (and "link lost") current."""
        now = time.monotonic()
        if now - self._last_contact < 1.0:
            return
        self._last_contact = now
        t0 = time.perf_counter()
        try:
            self.client.request(schema.Ping(v=schema.PROTOCOL_VERSION), DRIVE_TIMEOUT)
            self.rtt_ms, self.link_ok = (time.perf_counter() - t0) * 1000, True
        except LinkTimeout:
            self.link_ok = False

    def _command(self, what: str, fn, *args) -> Any:
        try:
            reply = fn(*args)
            self.link_ok = True
            return reply
        except RobotError as exc:
            self.events.append(f"{what}: {exc.code}: {exc.message}")
        except LinkTimeout:
            self.link_ok = False
            self.events.append(f"{what}: no reply")
        return None

    def _next_mode(self) -> None:
        mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)] if self.mode in MODES else "paused"
        reply = self._command("mode", self.client.set_mode, mode)
        if reply is not None:
            self.mode = reply.mode

    def _reset(self) -> None:
        self._command("reset", self.client.reset_episode)

    def _failed(self) -> None:
        self._command("end episode", self.client.end_episode, "failed")

    def _toggle_record(self) -> None:
        reply = self._command("record", self.client.record, not self.recording)
        if reply is not None:
            self.recording = reply.recording

    # -- telemetry ------------------------------------------------------------------------

    def _receive(self) -> None:
        for _ in range(200):  # drain what arrived since the last UI frame, bounded
            msg = self.client.receive(0)
            if msg is None:
                return
            topic, body = msg
            if topic == "frame":
                self._frame(body)
            elif topic == "step":
                self.last_step = body
                self.mode = body.mode
            elif topic == "status":
                self.last_status = body
                self.mode, self.recording = body.mode, body.recording
                self.policy_version = body.policy_version
            elif topic == "event":
                self.events.append(f"{body.kind}: {body.message}")

    def _frame(self, msg: schema.FrameMsg) -> None:
        try:
            image = self.pg.image.load(io.BytesIO(msg.data), "frame.jpg")
        except Exception as exc:  # a bad frame is skipped, the window goes on
            log.debug("frame %d not decodable: %s", msg.index, exc)
            return
        self.frame_surface = self.pg.transform.smoothscale(image.convert(), self.video_size)
        self.frame_info = msg
        self.frames_received += 1

    # -- drawing ---------------------------------------------------------------------------

    def draw(self) -> None:
        pg, screen = self.pg, self.screen
        w, h = self.video_size
        screen.fill((16, 16, 16))
        if self.frame_surface is not None:
            screen.blit(self.frame_surface, (0, 0))
        else:
            self._text(self.big, "waiting for video...", (w // 2 - 100, h // 2), (200, 200, 200))
        self._hud(w, h)
        self._probabilities(w, h)
        # The strip under the video: the latest events and the keys.
        pg.draw.rect(screen, (28, 28, 28), (0, h, w, 44))
        for i, line in enumerate(list(self.events)[-2:]):
            self._text(self.small, line[:110], (8, h + 4 + i * 14), (220, 220, 160))
        self._text(
            self.small,
            "arrows/WASD drive  space stop  m mode  r reset  f failed  c record  p shot  q quit",
            (8, h + 30),
            (150, 150, 150),
        )

    def _hud(self, w: int, h: int) -> None:
        pg, screen = self.pg, self.screen
        status, step = self.last_status, self.last_step
        mode = self.mode
        badge = pg.Rect(8, 8, 96, 28)
        pg.draw.rect(screen, MODE_COLOURS.get(mode, (200, 60, 60)), badge, border_radius=6)
        self._text(self.big, mode.upper(), (badge.x + 8, badge.y + 4), (255, 255, 255))
        if self.recording:
            pg.draw.circle(screen, (230, 40, 40), (122, 22), 8)
            self._text(self.font, "REC", (134, 15), (255, 255, 255), shadow=True)
        episode = step.episode if step else status.episode if status else 0
        n = step.step if step else 0
        lines = [f"episode {episode}  step {n}", f"policy {self.policy_version or '-'}"]
        self._panel(lines, (8, 42))
        rate = f"{status.rate_hz:.1f} Hz" if status else "- Hz"
        missed = status.missed_periods if status else 0
        lat = step.latency_ms if step else {}
        right = [f"loop {rate}  missed {missed}"]
        right.append(f"inference {lat.get('inference', 0):.1f} ms")
        if "frame_to_motor" in lat:
            right.append(f"frame to motor {lat['frame_to_motor']:.0f} ms")
        if self.frame_info is not None:
            right.append(f"video age {max(0.0, time.time() - self.frame_info.t) * 1000:.0f} ms")
        right.append(
            f"link {self.rtt_ms:.1f} ms" if self.rtt_ms is not None and self.link_ok else "link -"
        )
        if status is not None and status.cpu_temp_c is not None:
            right.append(f"cpu {status.cpu_temp_c:.0f} °C")
        self._panel(right, (w - 200, 8), width=192)
        faults = (step.faults if step else list(status.faults) if status else []) or []
        if not self.link_ok:
            faults = ["link lost", *faults]
        if faults:
            self._panel(
                ["FAULTS: " + ", ".join(faults)], (8, h - 150), colour=(255, 90, 90), width=w - 16
            )

    def _probabilities(self, w: int, h: int) -> None:
        pg, screen = self.pg, self.screen
        step = self.last_step
        n = len(self.actions)
        bar_w = min(110, (w - 16) // max(n, 1) - 6)
        top = h - 96
        overlay = pg.Surface((w, 96), pg.SRCALPHA)
        overlay.fill((0, 0, 0, 140))
        screen.blit(overlay, (0, top))
        probs = step.probs if step and step.probs else None
        for i, a in enumerate(self.actions):
            x = 8 + i * (bar_w + 6)
            p = probs[i] if probs and i < len(probs) else 0.0
            full = 56
            pg.draw.rect(screen, (70, 70, 70), (x, top + 10, bar_w, full), 1)
            taken = step is not None and step.action == i
            colour = (250, 200, 40) if taken else (90, 170, 250)
            height = int(full * max(0.0, min(1.0, p)))
            pg.draw.rect(screen, colour, (x, top + 10 + full - height, bar_w, height))
            self._text(self.small, f"{p:.2f}" if probs else "-", (x + 2, top + 12), (255, 255, 255))
            self._text(self.small, a.name[:14], (x, top + 72), (230, 230, 230))
        if step is not None:
            who = step.source or "stopped"
            value = f"  value {step.value:+.2f}" if step.value is not None else ""
            label = self.small.render(f"{who}{value}", True, (250, 200, 40))
            screen.blit(label, (w - label.get_width() - 8, top - label.get_height() - 2))

    def _panel(self, lines, pos, colour=(255, 255, 255), width=None) -> None:
        pg = self.pg
        lh = 18
        width = width or max(self.font.size(s)[0] for s in lines) + 12
        box = pg.Surface((width, lh * len(lines) + 8), pg.SRCALPHA)
        box.fill((0, 0, 0, 150))
        self.screen.blit(box, pos)
        for i, line in enumerate(lines):
            self._text(self.font, line, (pos[0] + 6, pos[1] + 5 + i * lh), colour)

    def _text(self, font, text, pos, colour, shadow=False) -> None:
        if shadow:
            self.screen.blit(font.render(text, True, (0, 0, 0)), (pos[0] + 1, pos[1] + 1))
        self.screen.blit(font.render(text, True, colour), pos)
