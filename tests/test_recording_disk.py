"""A full or failing disk is never a crash: recording stops (an event, a note in status), the car
stays drivable, and recording resumes when there is room again (issues 11.4 and 12.3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from daemon_helpers import PERIOD, make_policy_file, moving, robot_config, running_robot, wait_until

from malpi.recorder.store import EpisodeStore


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return make_policy_file(tmp_path_factory.mktemp("policy"))


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 1e6


def steps_in(db: Path) -> int:
    with EpisodeStore(db, readonly=True) as store:
        return store.count_steps()


def test_below_the_free_space_floor_recording_pauses_and_resumes(tmp_path, policy):
    # A floor just under what is free now: a filler file takes the disk below it.
    floor = free_mb(tmp_path) - 100
    config = robot_config(tmp_path, policy, **{"recording.min_free_mb": floor})
    db = Path(config.recording.path)
    with running_robot(config) as (robot, factory, events, result):
        robot.loop.set_mode("auto").result(2)
        wait_until(lambda: moving(factory))
        wait_until(lambda: robot.recorder.stats.steps_written > 10, 5)
        filler = tmp_path / "filler"
        with filler.open("wb") as f:  # 200 MB: 100 MB below the floor
            for _ in range(200):
                f.write(b"\0" * 1_000_000)
            f.flush()
            os.fsync(f.fileno())
        wait_until(lambda: events.of("event", "recording_stopped"), 5)
        stopped = events.of("event", "recording_stopped")[-1]
        assert "recording.min_free_mb" in stopped["message"]
        status = robot.loop.status()
        assert not status["recording"] and robot.loop.recording_note
        assert robot.loop.mode == "auto" and not status["faults"] and moving(factory)
        time.sleep(1.0)  # what was queued before is committed (every 0.5 s)...
        written = steps_in(db)
        time.sleep(20 * PERIOD)
        assert steps_in(db) == written  # ...and nothing more meanwhile
        # Recording cannot be switched on while there is no room, and says why.
        with pytest.raises(RuntimeError, match="cannot record now: only"):
            robot.loop.set_recording(True).result(2)
        filler.unlink()
        wait_until(lambda: events.of("event", "recording_resumed"), 5)
        assert robot.loop.recording and robot.loop.recording_note is None
        wait_until(lambda: steps_in(db) > written + 10, 5)
        assert not result


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB filesystem of its own (tmpfs; needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)])
    if made.returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_stops_recording_not_driving(tmp_path, small_disk, policy):
    """No floor: SQLite itself runs out of room. The writer's failure switches recording off,
    the car keeps driving, and recording comes back once there is room and it is asked for."""
    spare = small_disk / "spare"
    spare.write_bytes(b"\0" * 2_500_000)  # what will be freed later
    config = robot_config(
        tmp_path,
        policy,
        **{"recording.path": str(small_disk / "episodes.sqlite"), "recording.min_free_mb": 0.0},
    )
    with running_robot(config) as (robot, factory, events, result):
        robot.loop.set_mode("auto").result(2)
        wait_until(lambda: moving(factory))
        wait_until(lambda: events.of("event", "recording_stopped"), 60)
        stopped = events.of("event", "recording_stopped")[-1]
        assert "full" in stopped["message"].lower(), stopped
        assert not robot.loop.recording and robot.loop.mode == "auto"
        assert not robot.loop.status()["faults"] and moving(factory)
        robot.loop.set_mode("manual").result(2)  # re-arming changes nothing of it
        robot.loop.drive(2)
        time.sleep(3 * PERIOD)
        assert moving(factory) and not robot.loop.status()["faults"]
        robot.loop.set_mode("auto").result(2)
        spare.unlink()
        with pytest.raises(RuntimeError, match="cannot record now"):
            robot.loop.set_recording(True).result(2)  # asks the recorder to try again
        wait_until(lambda: events.of("event", "recording_resumed"), 10)
        assert robot.loop.recording
        written = robot.recorder.stats.steps_written
        wait_until(lambda: robot.recorder.stats.steps_written > written, 5)
        assert not result
