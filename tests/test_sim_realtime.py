"""The hardware twins: SimCamera and SimDrivetrain sharing one real-time world."""

from __future__ import annotations

import math
import time

import pytest

from malpi.actions import DEFAULT_ACTIONS, MotorCommand
from malpi.camera.sim import SimCamera
from malpi.drivetrain.guarded import DrivetrainClosed
from malpi.drivetrain.sim import SimDrivetrain
from malpi.sim import realtime
from malpi.sim.car import CarParams
from malpi.sim.realtime import RealTimeWorld


def _moved(a, b) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def test_camera_and_drivetrain_share_a_real_time_world():
    world = RealTimeWorld(track_seed=1000, seed=0)
    cam = SimCamera(world, fps=30)
    drive = SimDrivetrain(world)
    try:
        cam.start()
        first = cam.wait_newer(-1, timeout=2.0)
        assert first is not None and first.image.shape == (120, 160, 3)
        assert world.running
        start = world.pose()
        time.sleep(0.2)
        assert _moved(world.pose(), start) < 1e-6  # no command: the car stands still

        drive.apply(DEFAULT_ACTIONS.command(DEFAULT_ACTIONS.index("straight")))
        time.sleep(0.6)
        assert _moved(world.pose(), start) > 0.2  # real time: ~0.4 m in 0.6 s at lagged speed
        newer = cam.wait_newer(first.index, timeout=1.0)
        assert newer is not None and newer.timestamp > first.timestamp
        assert (newer.image != first.image).any()  # the view moved with the car

        drive.stop()
        # the motor lag lets it coast for a moment (~1.5 s), then it is at rest
        deadline = time.monotonic() + 5.0
        while abs(world.info()["speed"]) > 0.01 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert abs(world.info()["speed"]) <= 0.01
        here = world.pose()
        time.sleep(0.3)
        assert _moved(world.pose(), here) < 0.01
    finally:
        cam.close()
        drive.close()
    assert not world.running  # the last user let go: the physics thread is gone


def test_drivetrain_contract_stop_is_idempotent_bad_commands_stop_and_closed_refuses():
    world = RealTimeWorld(track_seed=1001, seed=0)
    drive = SimDrivetrain(world)
    drive.apply(MotorCommand(0.0, 0.5))
    with pytest.raises(ValueError):
        drive.apply(MotorCommand(float("nan"), 0.5))
    assert world.world.command == MotorCommand(0.0, 0.0)  # a bad command stops the car
    drive.stop()
    drive.stop()
    drive.close()
    drive.close()
    drive.stop()  # still safe after close
    with pytest.raises(DrivetrainClosed):
        drive.apply(MotorCommand(0.0, 0.5))
    assert not world.running


def test_a_car_that_leaves_the_track_is_put_back():
    world = RealTimeWorld(track_seed=1000, seed=0, physics_hz=200, respawn_after=0.2)
    drive = SimDrivetrain(world)
    try:
        drive.apply(MotorCommand(1.0, 0.6))  # circles off the road
        deadline = time.monotonic() + 5
        while world.respawns == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert world.respawns >= 1
    finally:
        drive.close()


def test_shared_world_joins_separately_built_backends():
    realtime.reset_shared_world()
    try:
        drive = SimDrivetrain(track_seed=1002, car=CarParams(drivetrain="differential"))
        cam = SimCamera()
        assert cam.world is drive.world and drive.world.world.track.seed == 1002
        cam.close()
        drive.close()
    finally:
        realtime.reset_shared_world()


def test_the_daemons_lap_count_restarts_with_each_episode(tmp_path):
    """`malpi drive --sim`'s status line shows laps of this episode, not since the daemon began."""
    from daemon_helpers import make_policy_file, robot_config, running_robot, wait_until

    config = robot_config(tmp_path, make_policy_file(tmp_path), **{"drivetrain.backend": "sim"})
    with running_robot(config) as (robot, _, _, _):
        world = robot.sim_world
        with world.lock:  # as if the (paused, so resting) car had driven 2.5 laps
            world.world.travelled += 2.5 * world.world.track.length
        assert world.info()["laps"] == 2
        robot.loop.reset_episode().result(5)
        wait_until(lambda: world.info()["laps"] == 0)
        assert world.info()["progress"] == pytest.approx(0.0, abs=0.01)
