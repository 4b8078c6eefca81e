"""``malpi sim`` pictures (``malpi bench sim``: tests/test_bench_smoke.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from extras import needs_gym

from malpi.cli import main
from malpi.sim.cli import parse_seeds
from malpi.sim.pictures import load_trajectory, save_trajectory


def test_map_with_expert_drive_and_trajectory_files(tmp_path, capsys):
    out, traj = tmp_path / "map.png", tmp_path / "drive.csv"
    assert main(["sim", "map", "--seed", "1000", "--out", str(out), "--drive-expert",
                 "--save-trajectory", str(traj), "--size", "300"]) == 0  # fmt: skip
    picture = cv2.imread(str(out))
    assert picture is not None and max(picture.shape[:2]) == 300
    xy = load_trajectory(traj)
    assert xy.shape[1] == 2 and len(xy) > 50
    np.save(tmp_path / "drive.npy", xy)
    again = tmp_path / "again.png"
    assert main(["sim", "map", "--seed", "1000", "--out", str(again), "--trajectory",
                 str(tmp_path / "drive.npy"), "--size", "300"]) == 0  # fmt: skip
    # the drawn path is the red line: present in the picture with a trajectory only
    plain = tmp_path / "plain.png"
    assert main(["sim", "map", "--seed", "1000", "--out", str(plain), "--size", "300"]) == 0
    red = lambda im: ((im[..., 2] > 180) & (im[..., 1] < 80) & (im[..., 0] < 80)).sum()  # noqa: E731
    assert red(cv2.imread(str(again))) > 200 and red(cv2.imread(str(plain))) < 20
    assert "expert drove 1 lap" in capsys.readouterr().out


@needs_gym
def test_view_writes_a_strip_of_camera_frames(tmp_path):
    out = tmp_path / "view.png"
    assert main(["sim", "view", "--seed", "1001", "--out", str(out), "--frames", "4",
                 "--every", "5", "--cols", "2", "--scale", "1"]) == 0  # fmt: skip
    picture = cv2.imread(str(out))
    assert picture.shape == (2 * 120 + 4, 2 * 160 + 4, 3)


def test_trajectory_csv_needs_x_and_y(tmp_path):
    save_trajectory(tmp_path / "t.csv", np.array([[0.0, 1.0, 2.0]]), ("t", "x", "y"))
    assert load_trajectory(tmp_path / "t.csv").tolist() == [[1.0, 2.0]]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="'x' and 'y'"):
        load_trajectory(tmp_path / "bad.csv")


def test_parse_seeds():
    assert parse_seeds("1000-1003,7") == [1000, 1001, 1002, 1003, 7]


def test_expert_command_reports_laps(capsys):
    assert main(["sim", "expert", "--seeds", "1000", "--laps", "1"]) == 0
    assert "1000" in capsys.readouterr().out


@needs_gym
def test_the_simulator_imports_no_tensorflow_or_robot_libraries():
    import subprocess
    import sys

    code = (
        "import sys, malpi.sim.env, malpi.sim.demo, malpi.camera.sim, malpi.drivetrain.sim\n"
        "bad = [m for m in ('tensorflow', 'keras', 'gpiozero', 'zmq') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
