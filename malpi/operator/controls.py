"""What the operator's keys and gamepad ask for, and the action of the robot's table nearest to it.

Arrows or WASD: up = straight on, left/right alone = hard turn, up+left/right = gentle turn,
down = reverse if the action table has it; space = stop. A gamepad's left stick drives (outside
a dead zone) and its A button stops. The keyboard wins over the stick.
"""

from __future__ import annotations

from typing import Any

from malpi.protocol import schema

DEADZONE = 0.2  # of the stick's travel: a stick at rest is never quite centred


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


def wish(pg: Any, held: set[int], js: Any) -> tuple[bool, float, float]:
    """(stop, steer, throttle) from the keys ``held`` (pygame key codes) and the gamepad ``js``
    (None: none); (False, 0, 0) = nothing held."""
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
