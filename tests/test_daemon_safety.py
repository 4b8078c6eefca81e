"""The daemon stops the motors, and says why, on every kind of failure (pins on gpiozero's mock factory)."""

import os
import signal
import threading
import time

import numpy as np
import pytest
from daemon_helpers import (
    PERIOD,
    SlowBackend,
    duty,
    make_policy_file,
    moving,
    robot_config,
    running_robot,
    wait_until,
)

from malpi.recorder.store import EpisodeStore

STOP_WITHIN = 2 * PERIOD + 0.03  # two periods, plus scheduling slack on a loaded 2-core machine


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    return make_policy_file(tmp_path_factory.mktemp("policy"))


@pytest.fixture
def config(tmp_path, policy_file):
    return robot_config(tmp_path, policy_file)


def drive_auto(robot, factory):
    robot.loop.set_mode("auto").result(2)
    wait_until(lambda: moving(factory))


def test_boots_paused_and_never_moves_unless_told(config):
    with running_robot(config) as (robot, factory, events, _):
        time.sleep(10 * PERIOD)
        assert robot.loop.mode == "paused"
        assert all(v == 0 for v in duty(factory).values())
        assert robot.loop.stats.periods >= 10
        drive_auto(robot, factory)  # told: now it moves
        robot.loop.set_mode("paused").result(2)
        wait_until(lambda: not moving(factory), STOP_WITHIN)


def test_stale_frame_stops_the_car_until_frames_return(config):
    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)
        robot.camera.close()  # the camera stops delivering
        took = wait_until(lambda: not moving(factory), 1.0)
        assert took <= config.safety.max_frame_age_ms / 1000 + STOP_WITHIN
        assert "old" in events.safety_stop("stale_frame")["message"]
        time.sleep(5 * PERIOD)
        assert not moving(factory)


def test_policy_error_stops_and_latches_until_rearmed(config):
    class Exploding:
        def run(self, obs, prev, h, c):
            raise RuntimeError("tensor arena corrupted")

    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)
        good = robot.loop.policy._backend
        robot.loop.policy._backend = Exploding()  # fault injected at the inference boundary
        wait_until(lambda: not moving(factory), STOP_WITHIN)
        assert "tensor arena corrupted" in events.safety_stop("policy_error")["message"]
        assert robot.loop.mode == "paused"
        robot.loop.policy._backend = (
            good  # the cause is gone, but a latched fault waits for an operator
        )
        time.sleep(5 * PERIOD)
        assert not moving(factory)
        reply = robot.loop.set_mode("auto").result(2)
        assert reply["rearmed"] == ["policy_error"]
        wait_until(lambda: moving(factory))


def test_non_finite_policy_output_stops(config):
    class NaN:
        def run(self, obs, prev, h, c):
            return np.full(5, np.nan, np.float32), 0.0, h, c

    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)
        robot.loop.policy._backend = NaN()
        wait_until(lambda: not moving(factory), STOP_WITHIN)
        assert "non-finite" in events.safety_stop("policy_error")["message"]


def test_deadman_stops_manual_driving(config):
    with running_robot(config) as (robot, factory, events, _):
        robot.loop.set_mode("manual").result(2)
        time.sleep(3 * PERIOD)
        assert not moving(factory)  # manual mode with no operator: stopped
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # the operator holds "straight" at 20 Hz
            robot.loop.drive(2)
            last = time.monotonic()
            time.sleep(0.05)
        assert duty(factory)[17] == pytest.approx(0.7) and duty(factory)[22] == pytest.approx(0.7)
        wait_until(lambda: not moving(factory), 2.0)
        took = time.monotonic() - last
        assert (
            config.safety.deadman_ms / 1000 - 0.01
            <= took
            <= config.safety.deadman_ms / 1000 + STOP_WITHIN
        )
        assert "no drive command" in events.safety_stop("deadman")["message"]
        robot.loop.drive(2)  # the operator is back: the condition clears
        wait_until(lambda: moving(factory), 1.0)


def test_exception_in_another_thread_stops_and_latches(config):
    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)

        def broken():
            raise OSError("i2c bus gone")

        t = threading.Thread(target=broken, name="imu-reader")
        t.start()
        t.join()
        wait_until(lambda: not moving(factory), STOP_WITHIN)
        stop = events.safety_stop("thread_crash")
        assert "imu-reader" in stop["message"] and "i2c bus gone" in stop["message"]
        time.sleep(5 * PERIOD)
        assert not moving(factory) and robot.loop.mode == "paused"


def test_camera_thread_crash_stops(config):
    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)
        world = robot.camera.world

        def broken_render():
            raise RuntimeError("sensor timeout")

        world.render = broken_render
        wait_until(lambda: not moving(factory), STOP_WITHIN)
        assert "sensor timeout" in events.safety_stop("thread_crash")["message"]


def test_overrunning_loop_stops_and_starves_the_watchdog(tmp_path, policy_file):
    config = robot_config(tmp_path, policy_file, **{"safety.max_overruns": 5})
    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)
        robot.loop.policy._backend = SlowBackend(robot.loop.policy._backend, 1.5)
        n = config.safety.max_overruns
        wait_until(lambda: not moving(factory), (n + 2) * PERIOD * 1.5 + 0.5)
        assert f"{n} times in a row" in events.safety_stop("overrun")["message"]
        assert robot.loop.stats.missed_periods >= n


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_motors_and_ends_the_loop(config, sig):
    """Real signals need the main thread: the loop runs here, a timer sends the signal."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from malpi.daemon.control.build import build_robot

    factory = MockFactory(pin_class=MockPWMPin)
    robot = build_robot(config, pin_factory=factory)
    robot.loop.set_mode("auto")
    marks: dict = {}

    def watcher():
        wait_until(lambda: moving(factory))
        marks["sent"] = time.monotonic()
        os.kill(os.getpid(), sig)
        wait_until(lambda: not moving(factory), 1.0)
        marks["stopped"] = time.monotonic()

    w = threading.Thread(target=watcher)
    w.start()
    try:
        rc = robot.loop.run()
    finally:
        w.join(5)
        robot.close()
    assert rc == 0
    assert marks["stopped"] - marks["sent"] <= STOP_WITHIN
    assert all(v == 0 for v in duty(factory).values())
    assert signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL) or callable(
        signal.getsignal(sig)
    )
    factory.reset()


def test_sources_are_recorded_policy_human_intervention(config):
    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)
        time.sleep(10 * PERIOD)
        for _ in range(1, 6):  # an intervention: the operator steers hard left while in auto
            robot.loop.drive(0)
            time.sleep(PERIOD)
        time.sleep(config.safety.deadman_ms / 1000 + 4 * PERIOD)
        robot.loop.set_mode("manual").result(2)
        for _ in range(6, 12):
            robot.loop.drive(4)
            time.sleep(PERIOD)
        episode = robot.loop.episode
    store = EpisodeStore(config.recording.path)
    steps = list(store.iter_steps(store.episodes()[-1].id))
    sources = [s.source for s in steps]
    assert "policy" in sources and "intervention" in sources and "human" in sources
    assert {s.action for s in steps if s.source == "intervention"} == {0}
    assert {s.action for s in steps if s.source == "human"} == {4}
    assert all(s.probs is not None and s.probs.shape == (5,) for s in steps if s.source == "policy")
    assert len(store.episodes()) == episode


def test_reset_episode_zeroes_the_state_and_starts_a_new_recorded_episode(config):
    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)
        time.sleep(5 * PERIOD)
        assert np.abs(robot.loop.policy.h).max() > 0
        before = robot.loop.episode

        def reset_and_peek():
            robot.loop._new_episode("finished", reason="test")
            return robot.loop.policy.h.copy(), robot.loop.prev_action

        h, prev = robot.loop.submit(reset_and_peek).result(2)
        assert not h.any() and prev == -1
        reply = robot.loop.reset_episode().result(2)
        assert reply["episode"] == before + 2
        assert events.of("event", "episode_reset")


def test_a_full_garbage_collection_does_not_stall_the_loop(config):
    """What exists when the loop starts (here TensorFlow's heap, ~0.3 s to walk) is frozen out
    of the collector: full collections while driving cost no periods (unfrozen: ~36 missed)."""
    import gc

    with running_robot(config) as (robot, factory, events, _):
        drive_auto(robot, factory)
        missed = robot.loop.stats.missed_periods
        for _ in range(3):
            gc.collect()
            time.sleep(0.1)
        assert robot.loop.stats.missed_periods - missed <= 3  # slack for a busy machine
        status = robot.loop.status()
        assert (status["mode"], status["faults"]) == ("auto", {}) and moving(factory)
    assert not gc.get_freeze_count()  # the loop gave the heap back to the collector
