"""The console's Calibrate tab against the real daemon (the simulator's camera, gpiozero's mock
pins): its routes over HTTP, then the page in headless Chromium; motors read off the pins."""

from __future__ import annotations

import threading

import pytest
from daemon_helpers import duty, moving, wait_until
from link_helpers import link_config, running_link
from web_helpers import DESKTOP, PHONE, Http, browser, login, running_console

from malpi.calibration import overlay_path, read_overlay

D = "drivetrain.differential."
LEFT_FWD = 17


@pytest.fixture
def console(tmp_path):
    with running_link(link_config(tmp_path)) as daemon, running_console(daemon) as console:
        yield console


@pytest.fixture
def http(console):
    client = Http(console)
    assert client.login()[0] == 200
    yield client
    client.close()


def in_thread(fn, *args, **kw):
    box: dict = {}
    box["thread"] = threading.Thread(target=lambda: box.update(result=fn(*args, **kw)), daemon=True)
    box["thread"].start()
    return box


def test_the_calibration_is_read_through_the_robot(http):
    status, body = http.get("/api/calibration")
    assert status == 200 and body["backend"] == "differential"
    assert [a["key"] for a in body["adjustments"]] == [D + "min_speed", D + "max_speed",
                                                     D + "steering_trim"]  # fmt: skip
    assert [o["name"] for o in body["outputs"]][:2] == ["left wheel", "right wheel"]
    assert body["max_power"] == 0.5 and body["max_seconds"] == 3.0


def test_a_motor_test_runs_the_wheel_and_answers_when_it_has_ended(http, console):
    factory = console.daemon.factory
    box = in_thread(http.post, "/api/calibration/test",
                    {"output": "left wheel", "power": 0.4, "seconds": 0.6})  # fmt: skip
    wait_until(lambda: moving(factory), 3.0)
    assert duty(factory)[LEFT_FWD] == pytest.approx(0.4)
    box["thread"].join(5)
    status, body = box["result"]
    assert status == 200 and body["completed"] and body["output"] == "left wheel"
    assert not moving(factory)


def test_the_stop_button_ends_a_test_at_once(http, console):
    factory = console.daemon.factory
    box = in_thread(http.post, "/api/calibration/test",
                    {"output": "right wheel", "power": 0.3, "seconds": 3})  # fmt: skip
    wait_until(lambda: moving(factory), 3.0)
    assert http.post("/api/stop")[0] == 200
    wait_until(lambda: not moving(factory), 0.5)
    box["thread"].join(5)
    status, body = box["result"]
    assert status == 200 and not body["completed"] and body["stopped_by"] == "mode set to paused"


def test_tests_and_changes_are_refused_outside_paused(http, console):
    assert http.post("/api/mode", {"mode": "manual"})[0] == 200
    status, body = http.post("/api/calibration/test", {"output": "left wheel"})
    assert (status, body["error"]) == (409, "refused") and "paused" in body["message"]
    status, body = http.post("/api/calibration/set", {"key": D + "min_speed", "value": 0.1})
    assert (status, body["error"]) == (409, "refused")
    assert not moving(console.daemon.factory)


@pytest.mark.parametrize(
    ("path", "body", "match"),
    [
        ("test", {"output": "left wheel", "power": 0.9}, "<= 0.5"),
        ("test", {"output": "left wheel", "seconds": 10}, "<= 3.0"),
        ("test", {"output": "left wheel", "power": "lots"}, "power: missing or not"),
        ("test", {"output": "left wheel", "power": True}, "power: missing or not"),
        ("test", {"power": 0.2}, "output: missing or not str"),
        ("test", {"output": "the horn"}, "no output 'the horn'"),
        ("set", {"key": D + "min_speed", "value": 1e308}, "outside the calibration's range"),
        ("set", {"key": D + "pwm_frequency", "value": 50}, "is not adjustable here"),
        ("set", {"key": D + "min_speed"}, "value: missing or not"),
        ("set", {"key": ["x"], "value": 1}, "key: missing or not str"),
    ],
)
def test_bad_requests_are_refused_saying_why(http, console, path, body, match):
    status, reply = http.post(f"/api/calibration/{path}", body)
    assert status == 400 and reply["error"] == "invalid" and match in reply["message"], reply
    assert not moving(console.daemon.factory)
    assert console.daemon.robot.drivetrain.min_speed == 0.0


def test_non_finite_numbers_never_reach_the_robot(http):
    for path, text in [("test", '{"output": "left wheel", "power": NaN}'),
                       ("set", '{"key": "' + D + 'min_speed", "value": Infinity}')]:  # fmt: skip
        status, reply = http.request("POST", f"/api/calibration/{path}", data=text,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        assert status == 400 and "finite" in reply["message"]


def test_a_change_applies_and_is_kept(http, console):
    status, body = http.post("/api/calibration/set", {"key": D + "min_speed", "value": 0.12})
    assert status == 200 and body["value"] == 0.12 and body["persisted"]
    robot = console.daemon.robot
    assert robot.drivetrain.min_speed == 0.12
    assert read_overlay(overlay_path(robot.config)) == {D + "min_speed": 0.12}


def test_changes_need_the_session_and_its_csrf_token_and_this_site(console):
    anonymous = Http(console)
    assert anonymous.get("/api/calibration")[0] == 401
    assert anonymous.post("/api/calibration/test", {"output": "left wheel"})[0] == 401
    anonymous.login()
    assert anonymous.post("/api/calibration/test", {"output": "left wheel"}, csrf=False)[0] == 403
    status, body = anonymous.post("/api/calibration/set", {"key": D + "min_speed", "value": 0.1},
                                  headers={"Origin": "https://evil.example"})  # fmt: skip
    assert (status, body["error"]) == (403, "cross_site")
    anonymous.close()
    assert not moving(console.daemon.factory)
    assert console.daemon.robot.drivetrain.min_speed == 0.0


# -- the page, in headless Chromium --------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


def open_tab(chromium, console, viewport):
    page = login(chromium.new_page(**viewport), console)
    page.click("[data-tab=calibrate]")
    page.wait_for_selector("#tab-calibrate .cal-run")
    return page


def test_the_page_runs_a_wheel_only_once_the_wheels_are_off_the_ground(console, chromium):
    factory = console.daemon.factory
    page = open_tab(chromium, console, PHONE)
    run = "#tab-calibrate button[data-output='left wheel']"
    assert page.is_disabled(run)  # not before the wheels are off the ground
    page.check("#cal-wheels-up")
    assert not page.is_disabled(run)
    assert page.is_disabled("button[data-output='straight ahead']")  # that one: on the floor
    page.click(run)
    wait_until(lambda: moving(factory), 3.0)
    assert duty(factory)[LEFT_FWD] == pytest.approx(0.3)  # the power slider's default
    result = page.wait_for_selector("#tab-calibrate .cal-result:has-text('Ran')", timeout=5000)
    assert not moving(factory)  # the reply came when the test had ended
    assert result.inner_text().endswith("Did the LEFT wheel turn FORWARD?")
    # As in malpi setup, each change of a value runs its trial (the wheels are off the ground).
    page.click(f"#tab-calibrate [data-key='{D}min_speed'] button.plus")
    wait_until(lambda: moving(factory), 3.0)
    assert duty(factory)[LEFT_FWD] == pytest.approx(0.02, abs=0.002)
    wait_until(lambda: not moving(factory), 3.0)
    # Fits a phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.close()


def test_the_page_adjusts_a_value_and_its_stop_button_ends_a_test(console, chromium):
    factory, robot = console.daemon.factory, console.daemon.robot
    page = open_tab(chromium, console, DESKTOP)
    row = f"#tab-calibrate [data-key='{D}min_speed']"
    page.click(f"{row} button.plus")
    page.wait_for_selector(f"{row} .cal-value:has-text('0.02')")
    assert robot.drivetrain.min_speed == 0.02
    page.wait_for_selector("text=kept for the next boot")
    page.check("#cal-on-floor")
    page.click("#tab-calibrate button[data-output='straight ahead']")
    wait_until(lambda: moving(factory), 3.0)
    page.click("#tab-calibrate .cal-stop")
    wait_until(lambda: not moving(factory), 1.0)
    page.wait_for_selector("text=Stopped after", timeout=5000)
    page.close()
