"""The operator window and a robot that is not there, goes away or comes back (issue 13).

A real daemon on the simulator serves its link on fixed loopback ports, so that the window can
be opened before it starts and outlive it; pygame draws headless (SDL dummy driver).
"""

import contextlib
import os
import socket
import time

import numpy as np
import pytest
from daemon_helpers import wait_until
from extras import NEEDS_PYGAME
from link_helpers import bundles, link_config, running_link

from malpi.operator.client import RobotClient

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
pygame = pytest.importorskip("pygame", reason=NEEDS_PYGAME)

from malpi.operator import overlay  # noqa: E402
from malpi.operator.teleop import LOST_AFTER, MODE_COLOURS, Teleop  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ports(tmp_path):
    """Fixed loopback endpoints, and a daemon config that serves on them."""
    cmd, tel = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    return cmd, tel, link_config(tmp_path, **{"link.command": cmd, "link.telemetry": tel})


@contextlib.contextmanager
def window(cmd: str, tel: str):
    client = RobotClient(command=cmd, telemetry=tel, insecure=True)
    ui = Teleop(client, size=(320, 240), fps=60)
    try:
        yield ui
    finally:
        ui.close()
        client.close()


def step_until(ui, cond, timeout):
    """Run the window until ``cond()``; the time it took."""
    return wait_until(lambda: (ui.step(), cond())[1], timeout, interval=0)


def run_for(ui, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ui.step()


def pixels(ui):
    return pygame.surfarray.array3d(ui.screen).transpose(1, 0, 2)


def test_a_lost_link_is_shown_within_two_seconds_and_the_badge_claims_nothing(ports):
    cmd, tel, config = ports
    with window(cmd, tel) as ui:
        with running_link(config) as d:
            step_until(ui, lambda: ui.state == "live" and ui.frames_received >= 2, 10)
            with d.client() as other:
                other.set_mode("auto")
            step_until(ui, lambda: ui.mode == "auto" and ui.recording, 3)
            assert ui.badge()[0] == "AUTO" and ui.badge()[3]  # AUTO ● REC, live
            assert tuple(pixels(ui)[12, 12]) == MODE_COLOURS["auto"]
        stopped = time.monotonic()  # the daemon has stopped: nothing more comes
        took = step_until(ui, lambda: ui.state == "lost", 3)
        assert time.monotonic() - stopped <= 2.0, f"link lost shown after {took:.1f} s"
        label, fill, _, rec = ui.badge()
        assert label == "?" and not rec and fill not in MODE_COLOURS.values()
        run_for(ui, 0.1)
        image = pixels(ui)
        assert tuple(image[12, 12]) == overlay.UNKNOWN_FILL  # the badge is grey, not green
        banner = np.all(image == overlay.BANNER_FILL, axis=-1).sum()
        assert banner > 3000, "no red link-lost banner"
        assert any("link lost" in e for e in ui.events)
        assert ui.robot_said and "stopped" in ui.robot_said  # the daemon said it stopped
        # While lost, holding a key sends nothing (each would only wait for its timeout).
        sent = len(ui.drive_times)
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP, mod=0))
        run_for(ui, 0.3)
        assert len(ui.drive_times) == sent
        assert time.monotonic() - ui.last_heard >= LOST_AFTER


def test_the_window_waits_for_the_robot_and_reconnects_after_a_restart(ports):
    cmd, tel, config = ports
    with window(cmd, tel) as ui:
        run_for(ui, 1.0)  # no robot yet: the window is up and says what it tries
        assert ui.state == "waiting" and ui.running and ui.tries >= 1
        assert "no reply" in ui.last_error and cmd.removeprefix("tcp://") in ui.last_error
        assert ui.badge()[0] == "?"
        with running_link(config) as d:
            step_until(ui, lambda: ui.state == "live", 5)
            with d.client() as other:
                assert ui.actions == other.status().actions
            step_until(ui, lambda: ui.frames_received >= 2, 5)
            # The boot policy is shown beside the running one (the real status fields).
            assert ui.boot_policy_version == ui.policy_version is not None
            assert ui.boot_policy_source.startswith("policy.path")
            assert overlay.policy_lines(ui)[-1] == (
                f"boots: {ui.policy_version} ({ui.boot_policy_source})"
            )
        step_until(ui, lambda: ui.state == "lost", 3)
        frames = ui.frames_received
        with running_link(config) as d:  # the robot restarts on the same ports
            step_until(ui, lambda: ui.state == "live", 5)
            assert any(e.startswith("link back after") for e in ui.events)
            step_until(ui, lambda: ui.frames_received > frames, 5)  # telemetry again
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_m, mod=0))
            step_until(ui, lambda: d.robot.loop.mode == "manual", 3)  # commands again
            assert ui.badge()[0] == "MANUAL"


def test_a_pushed_policy_that_is_not_kept_shows_what_boots(ports):
    cmd, tel, config = ports
    with window(cmd, tel) as ui, running_link(config) as d:
        step_until(ui, lambda: ui.state == "live", 5)
        booted = ui.policy_version
        with d.client() as other:
            other.load_policy(bundles()["b"], timeout=60)
        # The status telemetry (1 Hz) or the window's probe brings the new state.
        step_until(ui, lambda: ui.policy_version not in (None, booted), 5)
        assert ui.policy_source and "not kept" in ui.policy_source
        running, boots = overlay.policy_lines(ui)
        assert running.startswith(f"policy {ui.policy_version} (")
        assert boots.startswith(f"boots: {booted} (policy.path ")


def test_replies_without_telemetry_are_not_a_live_link(ports):
    """The robot's link process answers status requests from what the control loop last told it,
    also when that loop has stopped: only telemetry proves the robot live."""
    cmd, tel, config = ports
    with running_link(config):
        with window(cmd, f"tcp://127.0.0.1:{free_port()}") as ui:  # not its telemetry port
            run_for(ui, 2.5)
            assert ui.state == "waiting" and ui.tries >= 2
            assert "no telemetry comes from" in ui.last_error
        with window(cmd, tel) as ui:
            step_until(ui, lambda: ui.state == "live", 5)
            ui.client._sub.disconnect(tel)  # the telemetry stops; the commands go on
            step_until(ui, lambda: ui.state == "lost", 2.5)
            assert ui.commands_ok and ui.badge()[0] == "?"
            ui.client._sub.connect(tel)
            step_until(ui, lambda: ui.state == "live", 5)
