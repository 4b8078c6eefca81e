"""The operator window, headless (SDL dummy driver): video in, drive commands out, a screenshot with overlay."""

import os
import time

import numpy as np
import pytest
from daemon_helpers import PERIOD, duty, moving, wait_until
from extras import NEEDS_PYGAME
from link_helpers import link_config, running_link

from malpi.protocol.schema import ActionInfo

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
pygame = pytest.importorskip("pygame", reason=NEEDS_PYGAME)

from malpi.operator.teleop import MODE_COLOURS, Teleop, choose_action  # noqa: E402

TABLE = [
    ActionInfo(name=n, steering=s, throttle=t)
    for n, s, t in [
        ("hard_left", -0.8, 0.45),
        ("left", -0.35, 0.6),
        ("straight", 0.0, 0.7),
        ("right", 0.35, 0.6),
        ("hard_right", 0.8, 0.45),
    ]
]


def test_keys_map_to_the_nearest_action():
    assert choose_action(TABLE, 0.0, 1.0) == 2  # up
    assert choose_action(TABLE, -1.0, 1.0) == 0  # left alone: hardest left
    assert choose_action(TABLE, -0.5, 1.0) == 1  # up + left: gentle left
    assert choose_action(TABLE, 0.5, 1.0) == 3
    assert choose_action(TABLE, 1.0, 1.0) == 4
    assert choose_action(TABLE, 0.0, -1.0) is None  # no reverse in the table: stop
    with_reverse = [*TABLE, ActionInfo(name="back", steering=0.0, throttle=-0.5)]
    assert choose_action(with_reverse, 0.0, -1.0) == 5


def key(kind, k):
    pygame.event.post(pygame.event.Event(kind, key=k, mod=0, unicode="", scancode=0))


def run_for(ui, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ui.step()


def test_teleop_shows_video_drives_and_saves_a_screenshot(tmp_path):
    shot = tmp_path / "teleop.png"
    with running_link(link_config(tmp_path)) as d, d.client() as client:
        ui = Teleop(client, size=(320, 240), fps=60)
        try:
            wait_until(lambda: (ui.step(), ui.frames_received >= 3)[1], 5.0, interval=0)
            key(pygame.KEYDOWN, pygame.K_m)  # paused -> manual
            run_for(ui, 0.2)
            assert d.robot.loop.mode == "manual" and ui.mode == "manual"
            key(pygame.KEYDOWN, pygame.K_UP)  # hold "up": straight on
            start = time.monotonic()
            wait_until(lambda: (ui.step(), moving(d.factory))[1], 2.0, interval=0)
            run_for(ui, 1.0)
            held = [t for t in ui.drive_times if t >= start]
            rate = (len(held) - 1) / (held[-1] - held[0])
            assert rate >= 10.0, f"drive commands at {rate:.1f} Hz"
            assert duty(d.factory)[17] == pytest.approx(0.7)  # straight: both sides at 0.7
            assert moving(d.factory) and ui.last_step.source == "human"
            ui.save_screenshot(shot)
            key(pygame.KEYUP, pygame.K_UP)  # released: no more commands, the deadman stops it
            run_for(ui, 0.05)
            sent = len(ui.drive_times)
            released = time.monotonic()
            wait_until(lambda: (ui.step(), not moving(d.factory))[1], 2.0, interval=0)
            assert time.monotonic() - released <= 0.3 + 3 * PERIOD + 0.15
            assert len(ui.drive_times) == sent
            key(pygame.KEYDOWN, pygame.K_c)  # recording off
            run_for(ui, 0.1)
            assert not d.robot.loop.recording
            key(pygame.KEYDOWN, pygame.K_r)  # reset episode
            episode = d.robot.loop.episode
            run_for(ui, 0.1)
            assert d.robot.loop.episode == episode + 1
        finally:
            ui.close()
    check_screenshot(shot, (320, 240))


def check_screenshot(path, video_size):
    """The picture shows the camera and the overlay (mode badge, probability panel)."""
    pygame.display.init()
    image = pygame.surfarray.array3d(pygame.image.load(str(path))).transpose(1, 0, 2)
    w, h = video_size
    assert image.shape == (h + 44, w, 3)
    video = image[100 : h - 100, :, :]  # between the overlays: the rendered track
    assert video.std() > 10 and len(np.unique(video.reshape(-1, 3), axis=0)) > 50
    assert tuple(image[12, 12]) == MODE_COLOURS["manual"]  # the mode badge
    panel = image[h - 90 : h - 20, :, :]  # the probability bars (the straight one taken: yellow)
    assert ((panel[..., 0] > 200) & (panel[..., 1] > 150) & (panel[..., 2] < 100)).sum() > 50


class Pad:
    """A stand-in gamepad: a left stick and four buttons."""

    def __init__(self, x=0.0, y=0.0, buttons=()):
        self.axes, self.buttons = [x, y], set(buttons)

    def get_numaxes(self):
        return 2

    def get_axis(self, i):
        return self.axes[i]

    def get_numbuttons(self):
        return 4

    def get_button(self, i):
        return int(i in self.buttons)


def test_gamepad_stick_and_stop_button():
    pygame.display.init()
    ui = Teleop.__new__(Teleop)  # only the input mapping, no window or robot
    ui.pg, ui.held, ui.actions = pygame, set(), TABLE
    ui.joystick = Pad()
    assert ui.wish() == (False, 0.0, 0.0)  # centred: nothing held, nothing sent
    ui.joystick = Pad(x=0.05, y=-0.1)
    assert ui.wish() == (False, 0.0, 0.0)  # inside the dead zone
    ui.joystick = Pad(y=-0.9)  # stick forward
    stop, steer, throttle = ui.wish()
    assert not stop and choose_action(TABLE, steer, throttle) == 2
    ui.joystick = Pad(x=-1.0, y=-0.5)
    assert choose_action(TABLE, *ui.wish()[1:]) == 0
    ui.joystick = Pad(x=0.45)  # steering alone drives forward, gently right
    assert choose_action(TABLE, *ui.wish()[1:]) == 3
    ui.joystick = Pad(x=1.0, buttons={0})  # A held: stop wins
    assert ui.wish()[0] is True
    ui.held = {pygame.K_LEFT}  # the keyboard wins over the stick
    ui.joystick = Pad(x=1.0)
    assert choose_action(TABLE, *ui.wish()[1:]) == 0


def test_a_refused_drive_is_shown(tmp_path):
    """The operator sees a refused drive (issue 12.1) in the window's event strip."""
    with running_link(link_config(tmp_path)) as d, d.client() as client:
        ui = Teleop(client, size=(320, 240), fps=60)
        try:
            client.drive(None, seq=10**6)  # this connection's counter is far ahead...
            client._last_seq = 0  # ...and the client forgot (a restarted counter, a bug)
            key(pygame.KEYDOWN, pygame.K_m)
            run_for(ui, 0.2)
            key(pygame.KEYDOWN, pygame.K_UP)
            wait_until(lambda: (ui.step(), any("refused" in e for e in ui.events))[1], 2.0, 0)
            assert any("stale sequence number" in e for e in ui.events)
            assert not moving(d.factory)
        finally:
            ui.close()
