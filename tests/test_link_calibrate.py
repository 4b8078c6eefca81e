"""The motor test and calibration over the link (``calibration``, ``motor_test``,
``set_calibration``): a real daemon on the simulator's camera and gpiozero's mock PWM pins, real
ZeroMQ on loopback; a restart is a new daemon on the same state directory."""

import math
import threading
import time

import pytest
from daemon_helpers import duty, moving, robot_config, running_robot, wait_until
from link_helpers import link_config, policy_file, raw_request, request_bytes, running_link

from malpi.calibration import overlay_path, read_overlay
from malpi.config import ConfigError
from malpi.daemon.control.calibrate import CalibrationError
from malpi.operator.client import RobotError
from malpi.protocol import schema

D = "drivetrain.differential."
LEFT_FWD, LEFT_BACK, RIGHT_FWD, RIGHT_BACK = 17, 27, 22, 23


@pytest.fixture
def daemon(tmp_path):
    with running_link(link_config(tmp_path)) as d:
        yield d


def in_thread(fn, *args, **kw):
    """Run ``fn`` in a thread; returns a dict that gets its "result" or "error"."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc

    box["thread"] = threading.Thread(target=run, daemon=True)
    box["thread"].start()
    return box


def test_calibration_says_what_can_be_tested_and_adjusted(daemon, tmp_path):
    with daemon.client() as c:
        cal = c.calibration()
    assert cal.backend == "differential" and cal.testing is None
    assert (cal.max_power, cal.max_seconds) == (0.5, 3.0)
    assert cal.file == str(tmp_path / "calibration.toml")
    assert [(a.key, a.value) for a in cal.adjustments] == [
        (D + "min_speed", 0.0), (D + "max_speed", 1.0), (D + "steering_trim", 0.0)
    ]  # fmt: skip
    trim = cal.adjustments[2]
    assert (trim.step, trim.low, trim.high) == (0.02, -0.5, 0.5) and trim.help
    outputs = {o.name: o for o in cal.outputs}
    assert list(outputs) == ["left wheel", "right wheel", "min speed", "straight ahead"]
    assert outputs["left wheel"].question == "Did the LEFT wheel turn FORWARD?"
    assert not outputs["left wheel"].on_floor and outputs["left wheel"].uses_power
    assert (
        outputs["straight ahead"].on_floor
        and outputs["straight ahead"].adjusts == D + "steering_trim"
    )
    assert outputs["min speed"].adjusts == D + "min_speed" and not outputs["min speed"].uses_power


def test_a_motor_test_runs_one_wheel_for_its_time_then_stops_and_is_not_recorded(daemon):
    factory, loop = daemon.factory, daemon.robot.loop
    with daemon.client() as c, daemon.client() as watcher:
        watcher.subscribe(["step", "event"])
        time.sleep(0.2)  # the subscription reaches the publisher
        t0 = time.monotonic()
        box = in_thread(c.motor_test, "left wheel", 0.3, 1.0)
        wait_until(lambda: moving(factory), 2.0)
        pins = duty(factory)
        assert pins[LEFT_FWD] == pytest.approx(0.3)  # half power steering + half throttle
        assert pins[LEFT_BACK] == pins[RIGHT_FWD] == pins[RIGHT_BACK] == 0
        box["thread"].join(5)
        took = time.monotonic() - t0
        assert not moving(factory)  # stopped when the reply came
        reply = box["result"]
        assert isinstance(reply, schema.MotorTestReply)
        assert reply.completed and reply.stopped_by is None and reply.output == "left wheel"
        assert 0.95 <= reply.ran_s <= 1.0 and took < 2.0
        messages = list(watcher.telemetry(["step", "event"], seconds=0.3))
    steps = [m for t, m in messages if t == "step"]
    assert any(s.source == "test" and s.action is None and s.mode == "paused" for s in steps)
    kinds = [m.kind for t, m in messages if t == "event"]
    assert "motor_test" in kinds and "motor_test_ended" in kinds
    assert loop.step_index == 0  # nothing recorded: a test is not a step


def test_the_trim_trial_drives_straight_ahead_at_the_power_asked(daemon):
    factory = daemon.factory
    with daemon.client() as c:
        box = in_thread(c.motor_test, "straight ahead", 0.4, 0.5)
        wait_until(lambda: moving(factory), 2.0)
        pins = duty(factory)
        assert pins[LEFT_FWD] == pytest.approx(0.4) and pins[RIGHT_FWD] == pytest.approx(0.4)
        box["thread"].join(5)
    assert box["result"].completed and not moving(factory)


def test_motor_tests_and_calibration_are_refused_outside_paused(daemon):
    with daemon.client() as c:
        for mode in ("manual", "auto"):
            c.set_mode(mode)
            with pytest.raises(RobotError, match="refused: a motor test runs only in paused"):
                c.motor_test("left wheel")
            with pytest.raises(RobotError, match="refused: calibration changes only in paused"):
                c.set_calibration(D + "min_speed", 0.1)
        c.set_mode("paused")
    assert daemon.robot.drivetrain.min_speed == 0.0


@pytest.mark.parametrize("how", ["mode", "stop", "drive"])
def test_a_mode_change_or_a_drive_command_stops_a_test_at_once(daemon, how):
    factory = daemon.factory
    with daemon.client() as c, daemon.client() as other:
        box = in_thread(c.motor_test, "right wheel", 0.5, 3.0)
        wait_until(lambda: moving(factory), 2.0)
        assert duty(factory)[RIGHT_FWD] == pytest.approx(0.5)
        t0 = time.monotonic()
        if how == "mode":
            other.set_mode("manual")
        elif how == "stop":
            other.set_mode("paused")  # the console's stop button
        else:
            other.drive(None)  # a stop from any operator
        took = wait_until(lambda: not moving(factory), 1.0)
        box["thread"].join(5)
    reply = box["result"]
    assert not reply.completed and reply.ran_s < 2.0 and took < 0.5
    expected = {
        "mode": "mode set to manual",
        "stop": "mode set to paused",
        "drive": "drive command",
    }
    assert reply.stopped_by == expected[how]
    assert time.monotonic() - t0 < 1.0


def test_a_second_test_while_one_runs_is_busy_and_the_calibration_says_which(daemon):
    with daemon.client() as c, daemon.client() as other:
        box = in_thread(c.motor_test, "left wheel", 0.2, 1.5)
        wait_until(lambda: moving(daemon.factory), 2.0)
        assert other.calibration().testing == "left wheel"
        with pytest.raises(RobotError, match="busy: the left wheel test is running"):
            other.motor_test("right wheel")
        box["thread"].join(5)
    assert box["result"].completed


def test_a_latched_fault_refuses_a_test_until_re_armed(daemon):
    loop = daemon.robot.loop
    loop.submit(lambda: loop._latch("overrun", "a test's latched fault")).result(2)
    with daemon.client() as c:
        with pytest.raises(RobotError, match=r"refused: a latched fault \(overrun\)"):
            c.motor_test("left wheel")
        assert c.set_mode("paused").rearmed == ["overrun"]
        assert c.motor_test("left wheel", 0.1, 0.2).completed


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"output": "left wheel", "power": 0.9}, r"Expected `float` <= 0.5 - at `\$.power`"),
        ({"output": "left wheel", "seconds": 10}, r"Expected `float` <= 3.0 - at `\$.seconds`"),
        ({"output": "left wheel", "power": math.nan}, r"at `\$.power`"),
        ({"output": "left wheel", "seconds": math.inf}, r"at `\$.seconds`"),
        ({"output": "left wheel", "power": -0.1}, r"Expected `float` > 0.0"),
        ({"output": "nowhere"}, "no output 'nowhere'; this robot's: left wheel, right wheel"),
        ({"output": "x" * 65}, "length <= 64"),
        ({"output": "left wheel", "extra": 1}, "unknown field `extra`"),
    ],
)
def test_motor_test_bounds_and_names_are_enforced(daemon, fields, match):
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.link.command_endpoint)
    try:
        reply = raw_request(sock, [request_bytes(type="motor_test", id=7, **fields)])
    finally:
        sock.close()
    assert isinstance(reply, schema.ErrorReply) and reply.id == 7
    assert reply.code == "invalid" and __import__("re").search(match, reply.message), reply.message
    assert not moving(daemon.factory)


def test_a_calibration_value_applies_at_once_and_survives_a_restart(tmp_path):
    config = link_config(tmp_path)
    with running_link(config) as d, d.client() as c:
        reply = c.set_calibration(D + "min_speed", 0.2)
        assert (reply.key, reply.value, reply.previous) == (D + "min_speed", 0.2, 0.0)
        assert reply.persisted and reply.note is None and reply.file == str(overlay_path(config))
        assert d.robot.drivetrain.min_speed == 0.2  # the running drivetrain's
        assert c.calibration().adjustments[0].value == 0.2
        # Its trial shows it: the smallest throttle turns the wheels at min_speed.
        box = in_thread(c.motor_test, "min speed", 0.3, 0.5)
        wait_until(lambda: moving(d.factory), 2.0)
        assert duty(d.factory)[LEFT_FWD] == pytest.approx(0.2, abs=0.002)
        box["thread"].join(5)
        c.set_calibration(D + "steering_trim", -0.04)
    assert read_overlay(overlay_path(config)) == {D + "min_speed": 0.2, D + "steering_trim": -0.04}
    text = overlay_path(config).read_text()
    assert text.startswith("# Calibration set on the running car")
    assert "drivetrain.differential.min_speed = 0.2\n" in text
    assert not list(tmp_path.glob(".calibration-*"))  # no temporary file left behind
    with running_link(config) as d, d.client() as c:  # the next boot
        assert (d.robot.drivetrain.min_speed, d.robot.drivetrain.steering_trim) == (0.2, -0.04)
        values = {a.key: a.value for a in c.calibration().adjustments}
        assert values[D + "min_speed"] == 0.2 and values[D + "steering_trim"] == -0.04
        assert d.robot.config.drivetrain.differential.min_speed == 0.2


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (
            D + "min_speed",
            1e308,
            r"min_speed: 1e\+308 is outside the calibration's range \[0, 0.5\]",
        ),
        (D + "steering_trim", -0.9, r"steering_trim: -0.9 is outside the calibration's range"),
        (D + "max_speed", 0.05, "outside the calibration's range"),
        ("drivetrain.servo.max_speed", 0.5, "is not adjustable here; this robot's: drivetrain.d"),
        ("drivetrain.backend", 1.0, "is not adjustable here"),
        ("policy.path", 0.0, "is not adjustable here"),
        ("__class__", 0.0, "is not adjustable here"),
    ],
)
def test_calibration_values_are_validated_naming_the_key(daemon, key, value, match):
    with daemon.client() as c, pytest.raises(RobotError, match=match) as err:
        c.set_calibration(key, value)
    assert err.value.code == "invalid"
    assert daemon.robot.drivetrain.min_speed == 0.0 and daemon.robot.drivetrain.max_speed == 1.0
    assert not overlay_path(daemon.robot.config).exists()


def test_the_configuration_s_own_validation_judges_a_value(daemon):
    with daemon.client() as c:
        c.set_calibration(D + "min_speed", 0.3)
        with pytest.raises(RobotError, match=r"invalid: drivetrain.differential.max_speed: need "
                           r"0 <= min_speed < max_speed <= 1"):  # fmt: skip
            c.set_calibration(D + "max_speed", 0.25)
    assert daemon.robot.drivetrain.max_speed == 1.0


@pytest.mark.parametrize(
    ("value", "match"),
    [(math.nan, "value must be finite"), (math.inf, "value must be finite"),
     ("0.2", "Expected `float`, got `str`"), (None, "Expected `float`, got `None`"),
     (True, "Expected `float`, got `bool`")],
)  # fmt: skip
def test_set_calibration_attacks_are_invalid(daemon, value, match):
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.link.command_endpoint)
    try:
        body = request_bytes(type="set_calibration", id=3, key=D + "min_speed", value=value)
        reply = raw_request(sock, [body])
    finally:
        sock.close()
    assert isinstance(reply, schema.ErrorReply) and reply.code == "invalid", reply
    assert match in reply.message and reply.id == 3
    assert daemon.robot.drivetrain.min_speed == 0.0


def test_a_calibration_that_cannot_be_kept_still_applies_and_says_so(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    config = link_config(tmp_path, **{"policy.store": str(blocker / "store")})
    with running_link(config) as d, d.client() as c:
        reply = c.set_calibration(D + "max_speed", 0.8)
        assert not reply.persisted and reply.note.startswith("applied, but not kept")
        assert d.robot.drivetrain.max_speed == 0.8


def test_a_corrupt_overlay_stops_the_boot_naming_the_file(tmp_path):
    from malpi.daemon.control.build import build_robot

    config = link_config(tmp_path)
    path = overlay_path(config)
    for text, match in [
        ("min_speed = [", "not valid TOML"),
        ("drivetrain.differential.pins = 3\n", "is not a calibration key"),
        ('drivetrain.differential.min_speed = "fast"\n', "expected a number"),
        ("drivetrain.differential.min_speed = 2.0\n", "min_speed < max_speed"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=match) as err:
            build_robot(config)
        assert str(path) in str(err.value) and "remove the file" in str(err.value)


def test_the_daemon_stopping_ends_a_test_with_the_outputs_stopped(tmp_path):
    config = robot_config(tmp_path, policy_file(tmp_path), **{"policy.store": str(tmp_path / "s")})
    with running_robot(config) as (robot, factory, _events, _):
        future = robot.loop.calibrate("motor_test", output="left wheel", power=0.3, seconds=3.0)
        wait_until(lambda: moving(factory), 2.0)
        robot.loop.request_stop("test over")
        assert not moving(factory)
        result = future.result(3)
    assert not result["completed"] and result["stopped_by"].startswith("the daemon is stopping")


def test_a_servo_car_is_calibrated_live(tmp_path):
    config = robot_config(tmp_path, policy_file(tmp_path), **{
        "policy.store": str(tmp_path / "store"), "drivetrain.backend": "servo",
    })  # fmt: skip
    with running_robot(config) as (robot, factory, _events, _):
        loop = robot.loop
        cal = loop.calibrate("calibration").result(2)
        assert [a["key"].rpartition(".")[2] for a in cal["adjustments"]] == [
            "steering_center_us", "steering_min_us", "steering_max_us", "throttle_neutral_us",
            "max_speed",
        ]  # fmt: skip
        names = [o["name"] for o in cal["outputs"]]
        assert names == ["steering", "throttle", "steering center", "steering min",
                         "steering max", "throttle neutral"]  # fmt: skip
        width = lambda pin: factory.pin(pin).state * 20000  # noqa: E731 - µs in a 20 ms frame
        assert width(12) == pytest.approx(1500, abs=1)
        loop.calibrate("set_calibration", key="drivetrain.servo.steering_center_us",
                       value=1540).result(5)  # fmt: skip
        wait_until(lambda: abs(width(12) - 1540) < 1, 1.0)
        # A new end of the range remakes the servo's output; its trial reaches it.
        loop.calibrate("set_calibration", key="drivetrain.servo.steering_min_us", value=900).result(
            5
        )
        future = loop.calibrate("motor_test", output="steering min", power=0.1, seconds=0.5)
        wait_until(lambda: abs(width(12) - 900) < 1, 2.0)
        assert future.result(3)["completed"]
        wait_until(lambda: abs(width(12) - 1540) < 1, 1.0)  # centred again
        with pytest.raises(CalibrationError, match="expected a whole number"):
            loop.calibrate("set_calibration", key="drivetrain.servo.throttle_neutral_us",
                           value=1500.5).result(5)  # fmt: skip
        with pytest.raises(CalibrationError, match=r"steering_min_us: need 500 <= min < center"):
            loop.calibrate("set_calibration", key="drivetrain.servo.steering_max_us",
                           value=1500).result(5)  # fmt: skip
    assert read_overlay(overlay_path(config)) == {
        "drivetrain.servo.steering_center_us": 1540, "drivetrain.servo.steering_min_us": 900
    }  # fmt: skip


def test_malpi_setup_starts_from_the_kept_calibration_and_then_removes_it(tmp_path, capsys):
    from malpi.calibration import write_overlay
    from malpi.cli import main
    from malpi.config import load_config

    out = tmp_path / "malpi.toml"
    store = f'policy.store="{tmp_path / "state" / "policies"}"'
    common = ["setup", "--yes", "--out", str(out), "--no-motors", "--no-camera", "--set", store]
    assert main([*common, "--drivetrain", "differential"]) == 0
    overlay = overlay_path(load_config(out))
    write_overlay(overlay, {D + "min_speed": 0.25, D + "steering_trim": 0.04})
    # malpi config show shows what malpi drive boots: the overlay over the file.
    assert main(["config", "show", "--config", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"# with the calibration kept in {overlay}: {D}min_speed, {D}steering_trim" in shown
    assert "min_speed = 0.25" in shown
    # A flag wins over the overlay; the rest of it is the starting point, then in the file.
    assert main([*common, "--set", f"{D}steering_trim=-0.02"]) == 0
    said = capsys.readouterr().out
    assert f"removed {overlay}: its calibration is in {out} now" in said
    d = load_config(out).drivetrain.differential
    assert (d.min_speed, d.steering_trim) == (0.25, -0.02) and not overlay.exists()


def test_the_calibration_messages_round_trip_and_are_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    replies = [
        schema.CalibrationReply(
            backend="differential",
            adjustments=[
                schema.Adjustment(
                    key=D + "min_speed", value=0.1, step=0.02, low=0.0, high=0.5, help="h"
                )
            ],  # fmt: skip
            outputs=[
                schema.TestOutput(
                    name="left wheel",
                    question="q",
                    on_floor=False,
                    adjusts=None,
                    seconds=1.0,
                    uses_power=True,
                )
            ],  # fmt: skip
            max_power=0.5,
            max_seconds=3.0,
            file="/x/calibration.toml",
            testing="left wheel",
        ),  # fmt: skip
        schema.MotorTestReply(
            output="left wheel",
            power=0.3,
            seconds=1.0,
            ran_s=0.4,
            completed=False,
            stopped_by="drive command",
        ),  # fmt: skip
        schema.SetCalibrationReply(
            key=D + "min_speed", value=0.2, previous=0.0, persisted=False, file="/x", note="n"
        ),  # fmt: skip
    ]
    for r in replies:
        assert schema.decode_reply(schema.encode(r)) == r
    for msg in (schema.MotorTest(v=1, output="left wheel"), schema.GetCalibration(v=1, id=4),
                schema.SetCalibration(v=1, key=D + "min_speed", value=1)):  # fmt: skip
        assert schema.decode_request(schema.encode(msg)) == msg
    structs = [schema.CalibrationReply, schema.Adjustment, schema.TestOutput,
               schema.MotorTestReply, schema.SetCalibrationReply]  # fmt: skip
    missing = [f"{c.__name__}.{f}" for c in structs for f in c.__struct_fields__
               if f"`{f}`" not in doc]  # fmt: skip
    assert not missing


def test_the_python_client_gets_the_robots_refusal_not_a_time_out(daemon):
    # Its requests put v and id first, so that even an error reply found before decoding the
    # fields (a bound broken) echoes the request's id.
    with daemon.client() as c:
        t0 = time.monotonic()
        with pytest.raises(RobotError, match=r"invalid: motor_test: Expected `float` <= 0.5"):
            c.motor_test("left wheel", power=0.9)
        with pytest.raises(RobotError, match="invalid: set_calibration: value must be finite"):
            c.set_calibration(D + "min_speed", math.nan)
        assert time.monotonic() - t0 < 1.0
