"""The scripted expert driver: pure pursuit on the centre line, snapped to the action table.

It reads ground truth (the car's pose and actuator state, the track), so it is
a teacher, not a competitor. Every control period it:

1. picks a goal on the centre line ``lookahead + gain * speed`` metres ahead of
   the car's foot point and computes the pure-pursuit curvature that reaches it;
2. asks the car model what curvature each forward action would produce by the
   end of the period (the steering servo / motors lag, so an action's effect
   depends on where the actuators are now), and takes the action nearest to
   the goal curvature; the lag turns the alternating discrete choices into an
   average steering, like a pulse-width modulated steering wheel;
3. among actions that steer about equally well, prefers the one whose throttle
   best suits the bends ahead.

The choice is a function of the world state only, so it labels any state a
policy visits (DAgger) exactly as it would drive through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from malpi.actions import DEFAULT_ACTIONS, ActionTable
from malpi.sim.world import World, WorldState


class Expert:
    def __init__(
        self,
        actions: ActionTable = DEFAULT_ACTIONS,
        dt: float = 0.05,
        lookahead: float = 0.35,
        lookahead_gain: float = 0.25,
        lateral_accel: float = 2.5,
    ):
        self.actions = actions
        self.dt = dt
        self.lookahead = lookahead  # m, goal distance at standstill
        self.lookahead_gain = lookahead_gain  # s, extra goal distance per m/s
        self.lateral_accel = lateral_accel  # m/s^2, comfortable cornering limit for speed choice
        self._forward = [i for i, a in enumerate(actions) if a.throttle > 0]
        if not self._forward:
            raise ValueError("the expert needs at least one action with positive throttle")
        self._commands = [actions[i].command for i in self._forward]

    def goal_curvature(self, world: World) -> float:
        """Pure-pursuit curvature (1/m, + = left) towards the goal point on the centre line."""
        st = world.car.state
        ld = self.lookahead + self.lookahead_gain * abs(st.speed)
        gx, gy, _ = world.track.point_at(world.s + ld)
        dx, dy = gx - st.x, gy - st.y
        c, s = math.cos(st.heading), math.sin(st.heading)
        ahead, left = c * dx + s * dy, -s * dx + c * dy
        d2 = ahead * ahead + left * left
        return 2.0 * left / max(d2, 1e-6)

    def target_speed(self, world: World) -> float:
        """Speed at which the tightest bend in the next metre or so stays under the lateral limit."""
        t = world.track
        span = int(1.2 / (t.length / t.n))
        idx = (world.index + np.arange(span)) % t.n
        k = float(np.abs(t.curvature[idx]).max())
        return math.sqrt(self.lateral_accel / max(k, 1e-3))

    def act(self, world: World) -> int:
        """The action index the expert takes in the world's current state."""
        goal = self.goal_curvature(world)
        errs = [abs(world.car.preview_curvature(c, self.dt) - goal) for c in self._commands]
        best = min(errs)
        close = [j for j, e in enumerate(errs) if e <= best + 0.1]
        if len(close) > 1:
            vmax = world.car.params.max_speed
            want = self.target_speed(world)
            close.sort(key=lambda j: abs(self._commands[j].throttle * vmax - want))
        return self._forward[close[0]]

    def label(self, world: World, states: Sequence[WorldState]) -> np.ndarray:
        """The expert's action in each of ``states`` (e.g. those a policy visited), for DAgger.
        The world is left as it was."""
        keep = world.get_state()
        try:
            out = np.empty(len(states), np.int64)
            for i, state in enumerate(states):
                world.set_state(state)
                out[i] = self.act(world)
            return out
        finally:
            world.set_state(keep)


def drive_laps(
    world: World,
    expert: Expert | None = None,
    laps: int = 3,
    dt: float = 0.05,
    max_steps: int | None = None,
) -> dict[str, float | int | bool]:
    """Let the expert drive until ``laps`` are complete or the car leaves the track.
    No rendering: thousands of steps per second."""
    expert = expert or Expert(dt=dt)
    limit = max_steps or int(laps * world.track.length / 0.3 / dt) + 100  # >= 0.3 m/s average
    max_cte, steps = 0.0, 0
    while world.laps < laps and steps < limit:
        world.step(expert.actions.command(expert.act(world)), dt)
        steps += 1
        max_cte = max(max_cte, abs(world.cte))
        if not world.on_track:
            break
    return {
        "laps": world.laps,
        "steps": steps,
        "time_s": round(world.time, 2),
        "max_cte_m": round(max_cte, 3),
        "on_track": world.on_track,
        "mean_speed": round(world.travelled / max(world.time, 1e-9), 3),
    }
