"""Every command and every telemetry topic, over real sockets on loopback, against a daemon on the simulator."""

import threading
import time

import numpy as np
import pytest
import zmq
from daemon_helpers import PERIOD, duty, moving, wait_until
from link_helpers import link_config, raw_request, request_bytes, running_link

from malpi.operator.client import RobotError
from malpi.protocol import schema
from malpi.recorder.store import EpisodeStore


@pytest.fixture
def daemon(tmp_path):
    with running_link(link_config(tmp_path)) as d:
        yield d


def test_ping_and_status(daemon):
    with daemon.client() as c:
        pong = c.ping()
        assert isinstance(pong, schema.Pong) and abs(pong.server_time - time.time()) < 5
        s = c.status()
    assert s.mode == "paused" and s.episode == 1 and not s.faults and not s.curve
    assert [a.name for a in s.actions] == ["hard_left", "left", "straight", "right", "hard_right"]
    assert s.policy_version == daemon.robot.loop.policy.version
    assert s.policy_source.endswith("a.malpi")
    assert s.recording and s.recorder is not None and s.periods > 0


def test_set_mode_replies_and_announces(daemon):
    with daemon.client() as c:
        c.subscribe(["event"])
        time.sleep(0.2)  # the subscription reaches the publisher
        reply = c.set_mode("manual")
        assert (reply.mode, reply.previous, reply.rearmed) == ("manual", "paused", [])
        assert daemon.robot.loop.mode == "manual"
        with pytest.raises(RobotError, match="invalid: set_mode: Invalid enum value 'fast'"):
            c.set_mode("fast")
        events = [m for _, m in c.telemetry(["event"], seconds=0.5)]
    kinds = [e.kind for e in events]
    assert "mode" in kinds and any(e.details.get("mode") == "manual" for e in events)


def test_drive_feeds_the_deadman_and_stops_without_it(daemon):
    factory = daemon.factory
    with daemon.client() as c:
        c.set_mode("manual")
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # the operator holds "straight" at 20 Hz
            reply = c.drive(2)
            assert reply.accepted and reply.mode == "manual"
            time.sleep(0.05)
        assert duty(factory)[17] == pytest.approx(0.7) and duty(factory)[22] == pytest.approx(0.7)
        last = time.monotonic()
        wait_until(lambda: not moving(factory), 2.0)
        assert time.monotonic() - last <= 0.3 + 3 * PERIOD + 0.1  # the deadman stopped it
        # Stale sequence numbers are refused; None stops; an action outside the table is invalid.
        stale = c.drive(2, seq=5)
        assert not stale.accepted and "stale sequence number" in stale.reason
        c.drive(2)
        wait_until(lambda: moving(factory), 1.0)
        c.drive(None)
        wait_until(lambda: not moving(factory), 4 * PERIOD + 0.1)
        with pytest.raises(RobotError, match="invalid: action 7 is outside the table of 5"):
            c.drive(7)


def test_a_stop_is_never_refused_and_sequence_numbers_are_per_client(daemon):
    """Issue 12.1: one operator's (or a stepped clock's) large sequence numbers neither lock
    another operator out nor stop a stop; a refused drive says so."""
    with daemon.client() as a, daemon.client() as b:
        a.set_mode("auto")
        wait_until(lambda: moving(daemon.factory))
        assert a.drive(2, seq=10**15).accepted  # e.g. the old wall-clock microseconds
        assert b.drive(2, seq=1).accepted  # another operator counts from 1: its own order
        refused = a.drive(2, seq=5)  # a's own clock stepped back
        assert not refused.accepted and "stale sequence number 5" in refused.reason
        time.sleep(0.1)
        stop = a.drive(None, seq=3)  # stale too, but a stop
        assert stop.accepted
        wait_until(lambda: not moving(daemon.factory), 4 * PERIOD + 0.1)
        wait_until(lambda: daemon.link.stats.get("drives_refused", 0) >= 1, 2.0)  # heartbeats
        c = daemon.client()  # a new connection starts its own count
        assert c.drive(None).accepted and c.drive(2).accepted
        c.close()


def test_episodes_and_recording(daemon, tmp_path):
    loop = daemon.robot.loop
    with daemon.client() as c:
        c.set_mode("auto")
        wait_until(lambda: moving(daemon.factory))
        time.sleep(5 * PERIOD)
        first = loop.recorder.episode_id
        assert c.reset_episode().episode == 2
        time.sleep(5 * PERIOD)
        failed = loop.recorder.episode_id
        reply = c.end_episode("failed", final_reward=-1.0)
        assert (reply.episode, reply.ended, reply.outcome) == (3, failed, "failed")
        time.sleep(5 * PERIOD)
        off = c.record(False)
        assert not off.recording and off.episode == 4 and not loop.recording
        assert c.record(True).recording
        with pytest.raises(RobotError, match="invalid"):
            c.end_episode("exploded")
        # A refused float field: the reply still echoes the request's id (v and id are encoded
        # first), so the client gets the error, not a time-out.
        with pytest.raises(RobotError, match="final_reward must be finite"):
            c.end_episode("failed", final_reward=float("nan"))
    loop.recorder.flush()
    store = EpisodeStore(tmp_path / "episodes.sqlite")
    by_id = {e.id: e for e in store.episodes()}
    assert by_id[first].outcome == "finished" and by_id[failed].outcome == "failed"
    assert by_id[failed].final_reward == -1.0


def test_record_without_a_recorder_is_refused(tmp_path):
    with running_link(link_config(tmp_path, **{"recording.path": ""})) as d, d.client() as c:
        with pytest.raises(RobotError, match="refused: recording is not configured"):
            c.record(True)
        assert c.record(False).recording is False


def test_every_topic_is_published_and_decodes(daemon):
    import cv2

    with daemon.client() as c:
        c.subscribe()
        time.sleep(0.2)
        c.set_mode("auto")
        got: dict[str, list] = {t: [] for t in schema.TOPICS}
        for topic, msg in c.telemetry(seconds=1.5):
            got[topic].append(msg)
    assert all(isinstance(m, schema.StepMsg) for m in got["step"])
    assert len(got["step"]) >= 0.6 * 1.5 / PERIOD  # every period
    policy_steps = [m for m in got["step"] if m.source == "policy"]
    assert policy_steps and len(policy_steps[-1].probs) == 5
    assert (
        abs(sum(policy_steps[-1].probs) - 1) < 0.01 and "inference" in policy_steps[-1].latency_ms
    )
    frames = got["frame"]
    assert len(frames) >= 10 and all(isinstance(f, schema.FrameMsg) for f in frames)
    image = cv2.imdecode(np.frombuffer(frames[-1].data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (frames[-1].height, frames[-1].width, 3) == (48, 64, 3)
    assert image.std() > 5  # a rendered track, not a blank
    assert got["status"] and got["status"][-1].policy_version == daemon.robot.loop.policy.version
    assert any(e.kind == "mode" and e.details["mode"] == "auto" for e in got["event"])


def test_silence_on_the_telemetry_is_reported(daemon):
    with daemon.client() as c:
        # No event comes while nothing happens: the stream says so every `idle` seconds.
        items = list(c.telemetry(["event"], seconds=1.0, idle=0.3))
        assert items and all(i is None for i in items) and 2 <= len(items) <= 3
        steps = list(c.telemetry(["step"], count=5, idle=0.3))  # 50 Hz: never idle
        assert len(steps) == 5 and None not in steps


def test_several_clients_at_once_and_a_req_client(daemon):
    errors = []

    def hammer(i):
        try:
            with daemon.client() as c:
                for _ in range(100):
                    assert c.ping().id > 0
                    assert c.status().mode in ("paused", "manual")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)  # a REQ client: its empty delimiter frame is echoed back
    req.setsockopt(zmq.LINGER, 0)
    req.connect(daemon.link.command_endpoint)
    for i in range(50):
        req.send(request_bytes(type="ping", id=1000 + i))
        assert req.poll(2000)
        assert schema.decode_reply(req.recv()).id == 1000 + i
    req.close()
    for t in threads:
        t.join(30)
    assert not errors
    # A DEALER may send the delimiter too, or not.
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(daemon.link.command_endpoint)
    assert raw_request(dealer, [b"", request_bytes(type="ping", id=5)]).id == 5
    assert raw_request(dealer, [request_bytes(type="ping", id=6)]).id == 6
    ctx.destroy(linger=0)


def test_a_slow_subscriber_never_stalls_the_loop(tmp_path):
    config = link_config(tmp_path, **{"link.telemetry_hwm": 5, "link.frame_rate_hz": 60.0})
    with running_link(config) as d:
        ctx = zmq.Context()
        stuck = ctx.socket(zmq.SUB)  # subscribes to everything and never reads
        stuck.setsockopt(zmq.RCVHWM, 1)
        stuck.setsockopt(zmq.RCVBUF, 4096)
        stuck.setsockopt(zmq.SUBSCRIBE, b"")
        stuck.connect(d.link.telemetry_endpoint)
        with d.client() as c:
            c.set_mode("auto")
        loop = d.robot.loop
        periods, publish_ms = loop.stats.periods, []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            publish_ms.append(loop.stats.last_stages_ms.get("publish", 0.0))
            time.sleep(PERIOD / 2)
        elapsed = time.monotonic() - t0
        # The loop's time in telemetry stays tiny while the subscriber's queue is full,
        # and the loop keeps its rate (a little slack for a machine shared with others).
        assert np.median(publish_ms) < 1.0 and np.percentile(publish_ms, 95) < 5.0
        assert loop.stats.periods - periods >= 0.85 * elapsed / PERIOD
        assert moving(d.factory) and not loop.faults.any
        ctx.destroy(linger=0)  # a subscriber that vanishes changes nothing either
        time.sleep(5 * PERIOD)
        with d.client() as c:
            assert c.status().faults == {} and c.status().mode == "auto"


def test_a_bug_in_the_links_housekeeping_does_not_end_it(tmp_path):
    """Issue 12.6: the link is the only way to re-arm (or pause) the car; an exception in its
    serving loop is logged and serving goes on."""
    with running_link(link_config(tmp_path), in_process=True) as d, d.client() as c:
        server = d.link.server
        real = server._expire
        failures = []

        def buggy():
            if len(failures) < 3:
                failures.append(1)
                raise RuntimeError("a bug in housekeeping")
            real()

        server._expire = buggy
        wait_until(lambda: len(failures) == 3, 2.0)
        assert c.ping()
        assert c.set_mode("auto").mode == "auto"
        wait_until(lambda: moving(d.factory))
        assert c.set_mode("paused").mode == "paused"
