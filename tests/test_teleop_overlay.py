"""What the operator reads: the overlay's colours are legible, and a missing pygame says what to
install. The colour checks and the message need no pygame (the robot install runs them)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from extras import needs_pygame

from malpi.operator import overlay
from malpi.operator.overlay import COLOUR_PAIRS, contrast_ratio
from malpi.protocol.schema import ActionInfo, StepMsg

AA = 4.5  # WCAG 2 AA, normal text


def test_contrast_ratio_is_wcags():
    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast_ratio((255, 255, 255), (255, 255, 255)) == pytest.approx(1.0)
    assert contrast_ratio((118, 118, 118), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)
    # What the selected action bar had: white on yellow, unreadable.
    assert contrast_ratio((255, 255, 255), (250, 200, 40)) < 2


def test_the_selected_action_bar_has_dark_text_on_its_light_fill():
    text, fill = COLOUR_PAIRS["selected action label"]
    assert fill == overlay.TAKEN_FILL
    assert contrast_ratio(text, fill) >= AA


@pytest.mark.parametrize("name", sorted(COLOUR_PAIRS))
def test_every_text_on_the_overlay_is_legible(name):
    """Each text/fill pair the overlay draws, translucent panels at their worst (over white)."""
    text, fill = COLOUR_PAIRS[name]
    assert contrast_ratio(text, fill) >= AA, f"{name}: {contrast_ratio(text, fill):.2f}:1"


def fake_window(**kw):
    """The attributes the overlay reads, for a live link with the straight action taken."""
    actions = [
        ActionInfo(name=n, steering=s, throttle=0.6)
        for n, s in [("hard_left", -0.8), ("left", -0.35), ("straight", 0.0), ("right", 0.35)]
    ]
    step = StepMsg(
        v=1, t=0.0, episode=1, step=5, mode="auto", action=2, source="policy",
        probs=[0.0, 0.0, 1.0, 0.0], value=0.5, faults=[], latency_ms={"inference": 1.0},
    )  # fmt: skip
    return SimpleNamespace(
        **{
            "state": "live", "frame_surface": None, "frame_info": None, "events": [],
            "last_status": None, "last_step": step, "mode": "auto", "recording": True,
            "policy_version": "v1-abc", "policy_source": None, "boot_policy_version": None,
            "boot_policy_source": None, "rtt_ms": 1.0, "commands_ok": True, "actions": actions,
            **kw,
        }
    )  # fmt: skip


@needs_pygame
def test_the_drawn_selected_label_is_dark_on_yellow_and_the_bar_carries_no_text():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import numpy as np
    import pygame

    pygame.display.init()
    pygame.font.init()
    w, h = 320, 240
    screen = pygame.Surface((w, h + 44))
    ui = fake_window()
    overlay.Overlay(pygame, screen, (w, h)).draw(ui)
    image = pygame.surfarray.array3d(screen).transpose(1, 0, 2).astype(int)
    bar_w = min(110, (w - 16) // 4 - 6)
    x = 8 + 2 * (bar_w + 6)  # the third action: straight, taken with probability 1
    top = h - 100
    label = image[top + 75 : top + 91, x + 1 : x + bar_w - 1].reshape(-1, 3)
    is_fill = np.all(label == overlay.TAKEN_FILL, axis=-1)
    assert is_fill.mean() > 0.5, "the selected label has no yellow fill"
    ink = label[~is_fill]
    assert len(ink) > 20, "no text on the selected label"
    darkest = tuple(ink[ink.sum(axis=1).argmin()])
    assert contrast_ratio(darkest, overlay.TAKEN_FILL) >= AA
    assert ink.sum(axis=1).max() < sum(overlay.TAKEN_FILL) + 30  # no white text on it
    bar = image[top + 24 : top + 22 + 48 - 1, x + 2 : x + bar_w - 2].reshape(-1, 3)
    assert np.all(bar == overlay.TAKEN_FILL), "something is drawn on the full bar"


def test_teleop_without_pygame_names_the_operator_extra():
    """`malpi teleop` on an install without pygame (the robot's) says which extra brings it."""
    code = (
        "import sys; sys.modules['pygame'] = None\n"  # as if not installed: import fails
        "from malpi.cli import main\n"
        "raise SystemExit(main(['teleop', '127.0.0.1:9', '--insecure']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("malpi: error: malpi teleop needs pygame, from the operator extra")
    assert "pip install 'malpi[operator]'" in error and "-e '.[operator]'" in error
    assert "No module named" not in out.stderr and "halted" not in out.stderr
