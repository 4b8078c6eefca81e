"""Generated malformed messages, each answered with an error reply; the daemon drives on untouched."""

import time

import msgspec
import pytest
import zmq
from daemon_helpers import moving, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from link_helpers import link_config, raw_request, request_bytes, running_link

from malpi.protocol import schema

VALID = {  # one valid request of each type, to mutate
    "ping": {},
    "status": {},
    "set_mode": {"mode": "auto"},
    "drive": {"action": 2, "seq": 1},
    "reset_episode": {},
    "end_episode": {"outcome": "failed", "final_reward": -1.0},
    "record": {"on": True},
    "load_policy": {"bundle": b"PK\x03\x04"},
    "rollback_policy": {},
    "keep_policy": {},
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw):
    """A valid request with one thing wrong: a field dropped, added, retyped, or a bad type/v."""
    kind = draw(st.sampled_from(sorted(VALID)))
    msg = {
        "type": kind,
        "v": schema.PROTOCOL_VERSION,
        "id": draw(st.integers(0, 1000)),
        **VALID[kind],
    }
    how = draw(st.sampled_from(["drop", "add", "retype", "type", "version"]))
    if how == "drop":
        msg.pop(draw(st.sampled_from(sorted(k for k in msg if k != "id"))))
    elif how == "add":
        msg[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in msg))] = draw(values)
    elif how == "retype":
        msg[draw(st.sampled_from(sorted(msg)))] = draw(values)
    elif how == "type":
        msg["type"] = draw(
            st.text(max_size=16) | st.sampled_from(["pong", "error", "Ping", "PING"])
        )
    else:
        msg["v"] = draw(st.integers(-5, 10).filter(lambda v: v != schema.PROTOCOL_VERSION))
    return [msgspec.msgpack.encode(msg)]


messages = st.one_of(
    mutated(),
    mutated(),
    values.map(lambda v: [msgspec.msgpack.encode(v)]),  # well-formed msgpack, not a request
    st.binary(max_size=200).map(lambda b: [b]),  # not msgpack at all (mostly)
    st.lists(st.binary(min_size=1, max_size=20), min_size=2, max_size=4),  # too many frames
    st.binary(min_size=1, max_size=40).map(lambda b: [request_bytes(type="ping") + b]),  # trailing
)


def is_valid(frames: list[bytes]) -> bool:
    if len(frames) != 1:
        return False
    try:
        schema.decode_request(frames[0])
    except schema.ProtocolError:
        return False
    return True


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_link(link_config(tmp, **{"link.max_message_bytes": 256 * 1024})) as d:
        with d.client() as c:
            c.set_mode("auto")
        wait_until(lambda: moving(d.factory))
        yield d


@pytest.fixture(scope="module")
def sock(daemon):
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(daemon.link.command_endpoint)
    yield s
    ctx.destroy(linger=0)


N = 1200
seen_codes: dict[str, int] = {}


@settings(
    max_examples=N,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(frames=messages)
def test_malformed_messages_get_error_replies(daemon, sock, frames):
    if is_valid(frames):  # (practically never: generated to be wrong)
        return
    reply = raw_request(sock, frames)
    assert isinstance(reply, schema.ErrorReply), (frames, reply)
    assert reply.code in ("malformed", "unknown_type", "invalid", "bad_version", "too_large")
    assert reply.message
    seen_codes[reply.code] = seen_codes.get(reply.code, 0) + 1


def test_the_daemon_is_untouched_after_the_fuzzing(daemon):
    assert sum(seen_codes.values()) >= 1000, seen_codes
    assert set(seen_codes) == {"malformed", "unknown_type", "invalid", "bad_version"}, seen_codes
    loop = daemon.robot.loop
    assert daemon.link.stats["errors"] >= 1000
    with daemon.client() as c:
        s = c.status()
    # No command slipped through (the events say what happened if one did).
    assert (s.mode, s.faults, s.episode) == ("auto", {}, 1), daemon.events.of("event")
    assert moving(daemon.factory) and loop.policy is not None
    periods = loop.stats.periods
    time.sleep(0.2)
    assert loop.stats.periods > periods


def test_oversized_requests(daemon, sock):
    big_ping = request_bytes(type="ping", id=9, pad=b"x" * 70_000)
    reply = raw_request(sock, [big_ping])
    assert reply.code == "too_large" and "limit is 65536" in reply.message
    # Past link.max_message_bytes (ZMQ_MAXMSGSIZE) the peer is dropped without a reply;
    # its socket reconnects and the next request is answered.
    huge = request_bytes(type="load_policy", bundle=b"x" * 300_000)
    assert raw_request(sock, [huge], timeout=1.0) is None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        reply = raw_request(sock, [request_bytes(type="ping", id=77)], timeout=0.5)
        if reply is not None and reply.id == 77:
            break
    assert isinstance(reply, schema.Pong) and reply.id == 77
    with daemon.client() as c:
        assert c.status().mode == "auto"
