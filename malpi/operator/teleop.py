"""``malpi teleop HOST``: watch and drive the robot from a pygame window.

The window shows the live camera (the ``frame`` topic) with an overlay (``overlay.py``): mode,
recording, episode and step, the running policy and the one that boots, loop rate, latencies,
faults, and the policy's action probabilities with the action taken and who chose it.

Keys: arrows or WASD drive (up = straight on, left/right alone = hard turn,
up+left/right = gentle turn, down = reverse if the action table has it);
space = stop (held: keeps the car stopped, also in auto); m = next mode
(paused -> manual -> auto); r = reset the episode; f = end the episode as
failed; c = recording on/off; p = screenshot; q or Esc = quit. A gamepad's
left stick drives; A = stop, B = reset, X = recording, Y = mode.

While a key or the stick is held, drive commands go out at ``drive_hz``
(20 Hz by default, at least 10) so the robot's deadman stays fed; when it is
released they stop, and in manual mode the robot stops within the deadman time.

The link has three states. *waiting*: the robot has not answered yet (not up, a wrong
address, a key it does not accept); the window says what it tries and keeps trying.
*live*: a status reply came and telemetry keeps coming. *lost*: no telemetry for
``LOST_AFTER`` seconds (less if a command went unanswered too); the window says so instead of
showing the last mode and recording state as if they were current, sends no drive commands,
and goes back to live by itself when the robot answers and its telemetry flows again (the
same daemon, or a restarted one: ZeroMQ reconnects both sockets). Telemetry, not a reply, is
what proves the link live: the robot's link process answers a status request from what the
control loop last told it, also when that loop has stopped.
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
from malpi.operator.controls import choose_action, wish
from malpi.operator.overlay import MODE_COLOURS, Overlay, badge
from malpi.protocol import schema

__all__ = ["MODE_COLOURS", "Teleop", "choose_action", "import_pygame"]

log = logging.getLogger(__name__)

MODES = ("paused", "manual", "auto")
DRIVE_TIMEOUT = 0.25  # s: a drive reply slower than this is counted as lost, the UI goes on
LOST_AFTER = 1.5  # s without telemetry: the link is lost (status alone comes at 1 Hz)
QUIET_AFTER_FAILURE = 0.5  # s of silence that, with an unanswered command, is a lost link too
PROBE_EVERY = 1.0  # s: a status request when no command went out (round trip, mode, policies)
PROBE_TIMEOUT = 0.5
# Connecting. Each try blocks the window for up to its timeout, so while nothing is heard the
# tries are short and rare (the window stays responsive to q and closing); once telemetry
# arrives the robot is up, and the tries are long enough for a slow link's round trip.
TRY_TIMEOUT, TRY_EVERY = 0.25, 2.0
TRY_TIMEOUT_HEARD, TRY_EVERY_HEARD = 1.0, 0.5
OPERATOR_EXTRA = (
    "malpi teleop needs pygame, from the operator extra: pip install 'malpi[operator]' "
    "(in a checkout: pip install -e '.[operator]')"
)


def import_pygame() -> Any:
    """pygame, or an ImportError that says which extra brings it (the robot install has none)."""
    try:
        import pygame
    except ImportError as exc:
        if exc.name != "pygame":  # pygame is there but broken: its own error says more
            raise
        raise ImportError(OPERATOR_EXTRA, name="pygame") from exc
    return pygame


class Teleop:
    """The operator window. ``step()`` runs one frame of the UI (tests call it directly).

    Creating it opens the window; it does not wait for the robot (``step()`` connects)."""

    def __init__(
        self,
        client: RobotClient,
        size: tuple[int, int] = (640, 480),
        drive_hz: float = 20.0,
        fps: float = 30.0,
        title: str = "MaLPi",
    ):
        if drive_hz < 10:
            raise ValueError("drive_hz must be at least 10: the robot's deadman needs it")
        pygame = import_pygame()
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
        self.overlay = Overlay(pygame, self.screen, size)
        self.clock = pygame.time.Clock()
        self.held: set[int] = set()
        self.joystick = None
        self.frame_surface = None
        self.frame_info: schema.FrameMsg | None = None
        self.last_step: schema.StepMsg | None = None
        self.last_status: schema.StatusMsg | schema.StatusReply | None = None
        self.events: deque[str] = deque(maxlen=3)
        self.rtt_ms: float | None = None
        self.drive_times: list[float] = []  # when each drive command went out (tests, the overlay)
        self.frames_received = 0
        self.running = True
        # What the robot said last (the overlay shows it only while the link is live).
        self.actions: list[schema.ActionInfo] = []
        self.mode: str | None = None
        self.recording = False
        self.policy_version: str | None = None
        self.policy_source: str | None = None
        self.boot_policy_version: str | None = None
        self.boot_policy_source: str | None = None
        # The link: see the module's docstring.
        self.synced = False  # a status reply since the link was (re)gained: commands go out
        self.ever_synced = False
        self.started = time.monotonic()
        self.last_heard: float | None = None  # the last telemetry message (monotonic)
        self.lost_since = 0.0  # when the robot was last heard before the link was lost
        self.robot_said: str | None = None  # its last words: the daemon stopped, or crashed
        self.commands_ok = True  # the last command or probe was answered
        self.tries = 0  # connection tries since the robot last answered
        self.last_error: str | None = None
        self._last_try = -float("inf")  # the last connection try: the first goes at once
        self._synced_at = 0.0
        # A status reply that came while no telemetry did: (when, reply, round trip in ms).
        self._answer: tuple[float, schema.StatusReply, float] | None = None
        self._next_drive = 0.0
        self._last_contact = 0.0  # the last command sent, for the idle probe
        self._connect_joystick()
        client.subscribe(["frame", "step", "status", "event"])

    @property
    def state(self) -> str:
        """``waiting`` (never answered), ``live``, or ``lost`` (answered before, silent now)."""
        if self.synced:
            return "live"
        return "lost" if self.ever_synced else "waiting"

    def badge(self) -> tuple[str, tuple, tuple, bool]:
        """The mode badge as drawn: (label, fill, text colour, REC shown)."""
        return badge(self.state, self.mode, self.recording)

    # -- one UI frame ----------------------------------------------------------------

    def step(self) -> None:
        self._receive()
        self._link()
        self._handle_input()
        if self.synced:
            self._drive()
            self._probe()
        self.draw()
        self.pg.display.flip()
        self.clock.tick(self.fps)

    def run(self, seconds: float | None = None, screenshot: str | os.PathLike | None = None) -> int:
        """Run until quit (q, Esc, the window closed) or ``seconds``; Ctrl-C closes the window
        too (KeyboardInterrupt goes on up: the command exits 130)."""
        end = None if seconds is None else time.monotonic() + seconds
        try:
            while self.running and (end is None or time.monotonic() < end):
                self.step()
            if screenshot:
                self.save_screenshot(screenshot)
        finally:
            self.close()
        return 0

    def draw(self) -> None:
        self.overlay.draw(self)

    def save_screenshot(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pg.image.save(self.screen, str(path))
        log.info("screenshot saved to %s", path)
        return path

    def close(self) -> None:
        self.pg.display.quit()

    # -- the link ------------------------------------------------------------------------

    def _link(self) -> None:
        """Notice a lost link; (re)connect when not synced."""
        now = time.monotonic()
        if self.synced:
            quiet = now - max(self.last_heard or 0.0, self._synced_at)
            if quiet > LOST_AFTER or (not self.commands_ok and quiet > QUIET_AFTER_FAILURE):
                self._lose(now, quiet)
            return
        heard = self.last_heard is not None and now - self.last_heard < 1.0
        answered = self._answer is not None and now - self._answer[0] < 1.0
        if heard and answered:  # the reply came just before the first telemetry
            self._synced(*self._answer[1:])
            return
        if now < self._last_try + (TRY_EVERY_HEARD if heard else TRY_EVERY):
            return
        timeout = TRY_TIMEOUT_HEARD if heard else TRY_TIMEOUT
        self.tries += 1
        t0 = time.perf_counter()
        try:
            reply = self.client.request(schema.GetStatus(v=schema.PROTOCOL_VERSION), timeout)
        except LinkTimeout as exc:
            self.last_error = str(exc)
        except RobotError as exc:  # up, but not ready (its control loop has not reported yet)
            self.last_error = f"the robot answered: {exc.message}"
        else:
            rtt_ms = (time.perf_counter() - t0) * 1000
            if heard:
                self._synced(reply, rtt_ms)
            else:  # the link process answers; is the robot's loop (its telemetry) there too?
                first = self._answer is None
                self._answer = (time.monotonic(), reply, rtt_ms)
                self.last_error = (
                    "the robot answers; waiting for its telemetry"
                    if first
                    else f"the robot answers, but no telemetry comes from "
                    f"{self.client.telemetry_endpoint}: its control loop has stopped, or that "
                    "is not its telemetry port (--telemetry-port)"
                )
        self._last_try = time.monotonic()

    def _synced(self, status: schema.StatusReply, rtt_ms: float) -> None:
        now = time.monotonic()
        if self.ever_synced:
            gone = now - self.lost_since
            log.info(
                "link back (%s answered after %d tries)", self.client.command_endpoint, self.tries
            )
            self.events.append(f"link back after {gone:.0f} s")
        else:
            log.info("connected to %s", self.client.command_endpoint)
        self.synced = self.ever_synced = True
        self.commands_ok = True
        self.tries, self.last_error, self.robot_said, self._answer = 0, None, None, None
        self.rtt_ms = rtt_ms
        self._synced_at = self._last_contact = now
        self._status(status)
        self.actions = status.actions  # a restarted robot may have another table

    def _lose(self, now: float, quiet: float) -> None:
        self.synced = False
        self.lost_since = self.last_heard or now
        self.rtt_ms = None
        self._last_try = -float("inf")
        why = f"no telemetry for {quiet:.1f} s"
        why += ", a command went unanswered" if not self.commands_ok else ""
        log.warning("link lost: %s from %s; trying again", why, self.client.command_endpoint)
        self.events.append(f"link lost: {why}")

    def _probe(self) -> None:
        """While not driving, a status request a second: the round trip, and a mode, recording
        state and policies that are true even when telemetry does not arrive."""
        now = time.monotonic()
        if now - self._last_contact < PROBE_EVERY:
            return
        self._last_contact = now
        t0 = time.perf_counter()
        try:
            reply = self.client.request(schema.GetStatus(v=schema.PROTOCOL_VERSION), PROBE_TIMEOUT)
        except LinkTimeout:
            self.commands_ok = False
        except RobotError as exc:
            self.events.append(f"status: {exc.code}: {exc.message}")
        else:
            self.rtt_ms = (time.perf_counter() - t0) * 1000
            self.commands_ok = True
            self._status(reply)
            self.actions = reply.actions

    def _status(self, s: schema.StatusReply | schema.StatusMsg) -> None:
        """Take a status reply's or a status message's state."""
        self.last_status = s
        self.mode, self.recording = s.mode, s.recording
        self.policy_version = s.policy_version
        # Read with defaults: robots older than these fields do not send them.
        self.policy_source = getattr(s, "policy_source", None)
        self.boot_policy_version = getattr(s, "boot_policy_version", None)
        self.boot_policy_source = getattr(s, "boot_policy_source", None)

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
        return wish(self.pg, self.held, self.joystick)

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
            self.commands_ok = True
            if not reply.accepted:
                self.events.append(f"drive refused: {reply.reason}")
        except LinkTimeout:
            self.commands_ok = False
        except RobotError as exc:
            self.events.append(f"drive refused: {exc.message}")
        self.drive_times.append(now)
        self._last_contact = now
        del self.drive_times[:-200]

    def _command(self, what: str, fn, *args) -> Any:
        if not self.synced:  # it would only wait for the timeout; say why nothing happens
            self.events.append(f"{what}: not sent, {self.state}")
            return None
        self._last_contact = time.monotonic()
        try:
            reply = fn(*args)
            self.commands_ok = True
            return reply
        except RobotError as exc:
            self.events.append(f"{what}: {exc.code}: {exc.message}")
        except LinkTimeout:
            self.commands_ok = False
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
            self.last_heard = time.monotonic()
            topic, body = msg
            if topic == "frame":
                self._frame(body)
            elif topic == "step":
                self.last_step = body
                self.mode = body.mode
            elif topic == "status":
                self._status(body)
            elif topic == "event":
                self.events.append(f"{body.kind}: {body.message}")
                if body.kind in ("stopped", "crash"):  # then a lost link is a stopped car
                    self.robot_said = body.message

    def _frame(self, msg: schema.FrameMsg) -> None:
        try:
            image = self.pg.image.load(io.BytesIO(msg.data), "frame.jpg")
        except Exception as exc:  # a bad frame is skipped, the window goes on
            log.debug("frame %d not decodable: %s", msg.index, exc)
            return
        self.frame_surface = self.pg.transform.smoothscale(image.convert(), self.video_size)
        self.frame_info = msg
        self.frames_received += 1
