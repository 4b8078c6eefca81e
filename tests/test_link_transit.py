"""Drive commands held up on the way (a link that drops and comes back) are refused, not
obeyed late: each would move the car for a deadman period on a command given long ago."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
from daemon_helpers import moving, wait_until
from link_helpers import link_config, running_link

from malpi.daemon.link.transit import DRIFT, TransitDelay
from malpi.operator.client import LinkTimeout
from malpi.protocol import schema


def test_the_delay_is_measured_against_the_connections_usual_lag():
    t = TransitDelay()
    # The client's clock is 1000 s off the robot's: only differences count.
    assert t.delay(b"a", sent=0.0, now=1000.010) == 0.0
    assert t.delay(b"a", sent=0.05, now=1000.055) == 0.0  # a faster trip lowers the baseline
    assert t.delay(b"a", sent=0.10, now=1000.110) == pytest.approx(0.005, abs=1e-4)
    assert t.delay(b"a", sent=0.15, now=1001.160) == pytest.approx(1.005 - DRIFT * 1.05, abs=1e-4)
    assert t.delay(b"b", sent=5.0, now=1001.2) == 0.0  # another connection has its own
    assert t.delay(b"a", sent=None) == 0.0  # a client that sends no stamp is not judged


def drive(c, action, sent):
    msg = schema.Drive(v=schema.PROTOCOL_VERSION, action=action, seq=c._last_seq + 1)
    c._last_seq += 1
    msg.sent = sent
    return c.request(msg)


def test_a_drive_held_up_in_transit_is_refused_and_a_stop_never(tmp_path):
    with running_link(link_config(tmp_path)) as daemon, daemon.client() as c:
        c.set_mode("manual")
        for _ in range(5):
            assert drive(c, 2, time.monotonic()).accepted
            time.sleep(0.02)
        late = drive(c, 2, time.monotonic() - 1.0)  # sent a second before it arrived
        assert not late.accepted and "held up in transit" in late.reason
        assert drive(c, None, time.monotonic() - 1.0).accepted  # a stop is never refused
        wait_until(lambda: not moving(daemon.factory), 1.0)


def test_drives_queued_while_the_link_hung_do_not_move_the_car(tmp_path):
    with running_link(link_config(tmp_path)) as daemon, daemon.client(timeout=0.1) as c:
        c.set_mode("manual")
        for _ in range(5):
            assert c.drive(2).accepted
            time.sleep(0.05)
        assert moving(daemon.factory)
        pid = daemon.link.pid
        os.kill(pid, signal.SIGSTOP)  # the link hangs (a dropped Wi-Fi): drives pile up
        try:
            stopped_at = time.monotonic()
            while time.monotonic() - stopped_at < 1.2:
                with contextlib.suppress(LinkTimeout):  # nobody answers
                    c.drive(2)  # the operator keeps holding the key
            wait_until(lambda: not moving(daemon.factory), 1.0)  # the deadman stopped it
        finally:
            os.kill(pid, signal.SIGCONT)
        # What was queued arrives now; none of it may move the car.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert not moving(daemon.factory)
            time.sleep(0.005)
