"""The systemd notify protocol against a real datagram socket: READY, STATUS, WATCHDOG, STOPPING."""

import os
import socket
import time

import pytest
from daemon_helpers import (
    SlowBackend,
    make_policy_file,
    moving,
    robot_config,
    running_robot,
    wait_until,
)

from malpi.daemon.control.notify import Notifier


class NotifySocket:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.01)
        self.path = str(path)
        self.received: list[tuple[float, dict]] = []

    def drain(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.received
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append((time.monotonic(), fields))

    def with_key(self, key):
        return [(t, f) for t, f in self.drain() if key in f]


@pytest.fixture
def notify(tmp_path):
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.sock.close()


def test_notifier_is_a_no_op_outside_systemd():
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False


def test_abstract_socket_address_and_watchdog_pid(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": "@malpi-test", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert n.enabled and n.watchdog_interval is None  # the watchdog is for another process
    n = Notifier(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert n.watchdog_interval == 2.0


def test_daemon_speaks_the_protocol_and_feeds_the_watchdog_only_while_healthy(tmp_path, notify):
    # A long overrun streak before the latch, so the test sees a loop that keeps overrunning.
    config = robot_config(tmp_path, make_policy_file(tmp_path), **{"safety.max_overruns": 1000})
    notifier = Notifier({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(int(0.3e6))})
    with running_robot(config, notifier=notifier) as (robot, factory, events, result):
        ready = notify.with_key("READY")
        assert ready and ready[0][1]["READY"] == "1" and "paused" in ready[0][1].get("STATUS", "")
        time.sleep(0.5)
        pings = notify.with_key("WATCHDOG")
        assert len(pings) >= 3  # every 0.1 s (a third of WATCHDOG_USEC) while healthy
        assert any("paused" in f.get("STATUS", "") for _, f in notify.drain())

        robot.loop.set_mode("auto").result(2)
        wait_until(lambda: moving(factory))
        fast = robot.loop.policy._backend
        robot.loop.policy._backend = SlowBackend(fast, 1.6)
        time.sleep(0.15)
        n_before = len(notify.with_key("WATCHDOG"))
        time.sleep(0.6)  # overrunning every period: no watchdog pings at all
        assert len(notify.with_key("WATCHDOG")) == n_before
        assert robot.loop.stats.overrun_streak > 5
        robot.loop.policy._backend = fast  # healthy again: the pings resume
        time.sleep(0.4)
        assert len(notify.with_key("WATCHDOG")) >= n_before + 2
    stopping = notify.with_key("STOPPING")
    assert stopping and "stopping" in stopping[-1][1]["STATUS"]
