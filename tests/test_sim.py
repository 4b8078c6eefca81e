"""The simulator: tracks, car, world, camera, expert (no gymnasium: the robot install runs these;
the gymnasium environment and demonstrations are in test_sim_env.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from malpi.actions import DEFAULT_ACTIONS, MotorCommand
from malpi.sim.car import Car, CarParams
from malpi.sim.expert import Expert, drive_laps
from malpi.sim.render import CameraSpec
from malpi.sim.track import (
    EVAL_SEEDS,
    MIN_RADIUS,
    SPACING,
    STANDARD_EVAL_SEEDS,
    TRAIN_SEEDS,
    generate_track,
)
from malpi.sim.world import World

STRAIGHT = DEFAULT_ACTIONS.index("straight")
HARD_RIGHT = DEFAULT_ACTIONS.index("hard_right")


# -- tracks ------------------------------------------------------------------------------


def test_seed_ranges_are_disjoint_and_documented_sizes():
    assert set(TRAIN_SEEDS).isdisjoint(EVAL_SEEDS)
    assert list(STANDARD_EVAL_SEEDS) == list(range(1000, 1010))
    assert set(STANDARD_EVAL_SEEDS) <= set(EVAL_SEEDS)


def test_same_seed_same_track_other_seed_other_track():
    a, b, c = generate_track(1003), generate_track(1003), generate_track(1004)
    assert np.array_equal(a.points, b.points) and a.width == b.width
    assert a.points.shape != c.points.shape or not np.allclose(a.points, c.points)


@pytest.mark.parametrize("seed", [*STANDARD_EVAL_SEEDS, 0, 1, 2, 3, 4, 5, 999])
def test_tracks_are_closed_drivable_and_varied(seed):
    t = generate_track(seed)
    gaps = np.hypot(*(np.roll(t.points, -1, axis=0) - t.points).T)
    assert gaps.max() < 1.5 * SPACING  # closed: the last point joins the first
    assert 0.6 <= t.width <= 1.0
    assert 8 < t.length < 60
    k = np.abs(t.curvature)
    assert 1 / k.max() >= 0.9 * MIN_RADIUS  # no bend tighter than the car can take
    assert (k < 0.05).any() and (k > 0.5).any()  # straights and proper bends


def test_projection_cross_track_error_and_arc_length():
    t = generate_track(1001)
    x, y, h = t.point_at(5.0)
    p = t.project(x - math.sin(h) * 0.2, y + math.cos(h) * 0.2)  # 0.2 m to the left
    assert p.cte == pytest.approx(0.2, abs=0.01)
    assert p.s == pytest.approx(5.0, abs=0.03)
    assert t.progress_delta(t.length - 0.1, 0.2) == pytest.approx(0.3)


def test_reversed_track_runs_the_other_way():
    t = generate_track(1002)
    r = t.reversed()
    assert r.length == pytest.approx(t.length)
    assert math.cos(r.heading[0] - t.heading[0]) < -0.9


# -- car -------------------------------------------------------------------------------------


@pytest.mark.parametrize("drivetrain", ["steering", "differential"])
def test_positive_steering_turns_right_and_speed_is_limited(drivetrain):
    car = Car(CarParams(drivetrain=drivetrain, noise=0.0))
    car.reset(0.0, 0.0, 0.0)
    for _ in range(8):
        car.step(MotorCommand(0.3, 0.6), 0.05)
    assert -math.pi / 2 < car.state.heading < -0.1  # clockwise = right
    car.reset(0.0, 0.0, 0.0)
    for _ in range(60):
        car.step(MotorCommand(0.0, 1.0), 0.05)
    assert car.state.speed <= car.params.max_speed + 1e-9
    assert car.state.speed > 0.9 * car.params.max_speed


def test_actuator_lag():
    car = Car(CarParams(noise=0.0))
    car.reset(0.0, 0.0, 0.0)
    car.step(MotorCommand(1.0, 1.0), 0.05)
    assert 0 < car.state.a0 < 1.0  # the servo is on its way, not there
    assert 0 < car.state.speed < 0.3 * car.params.max_speed  # the motor spins up slowly


# -- world and camera ------------------------------------------------------------------------


def test_world_state_round_trip_reproduces_the_future():
    w = World(1000, CarParams(noise=0.0))
    for _ in range(30):
        w.step(DEFAULT_ACTIONS.command(STRAIGHT))
    snap = w.get_state()
    for _ in range(20):
        w.step(DEFAULT_ACTIONS.command(HARD_RIGHT))
    after = w.car.state
    w.set_state(snap)
    for _ in range(20):
        w.step(DEFAULT_ACTIONS.command(HARD_RIGHT))
    assert w.car.state == after


def test_the_car_stops_at_the_wall_round_the_floor():
    w = World(1000, CarParams(noise=0.0))
    x1, y1 = w.floor[2], (w.floor[1] + w.floor[3]) / 2
    w.car.put(x1 - 0.5, y1, 0.0)  # facing the east wall
    for _ in range(40):
        w.step(MotorCommand(0.0, 1.0))
    assert w.car.state.x <= x1 and w.car.state.speed == 0.0
    assert not w.on_track and math.isfinite(w.cte)


def test_camera_frame_shape_dtype_and_it_changes_when_turning():
    spec = CameraSpec(width=80, height=60)
    w = World(1000, camera=spec)
    st = w.car.state
    a = w.renderer.render(st.x, st.y, st.heading).copy()
    b = w.renderer.render(st.x, st.y, st.heading + 0.15)
    assert a.shape == b.shape == (60, 80, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    # the road is there: dark asphalt fills the bottom middle of the picture
    assert a[-10:, 30:50].mean() < a[:10].mean()


# -- expert ----------------------------------------------------------------------------------


@pytest.mark.parametrize("drivetrain", ["steering", "differential"])
def test_expert_completes_three_laps_on_every_standard_eval_track(drivetrain):
    for seed in STANDARD_EVAL_SEEDS:
        w = World(seed, CarParams(drivetrain=drivetrain), rng=np.random.default_rng(seed))
        r = drive_laps(w, Expert(DEFAULT_ACTIONS), laps=3)
        assert r["laps"] >= 3 and r["on_track"], (seed, r)
        assert r["max_cte_m"] < w.track.half_width, (seed, r)


def test_expert_labels_states_as_it_drives_them_and_leaves_the_world_alone():
    w = World(1005, rng=np.random.default_rng(0))
    e = Expert()
    states, actions = [], []
    for _ in range(80):
        states.append(w.get_state())
        actions.append(e.act(w))
        w.step(DEFAULT_ACTIONS.command(actions[-1]))
    now = w.get_state()
    assert list(e.label(w, states)) == actions
    assert w.get_state() == now
