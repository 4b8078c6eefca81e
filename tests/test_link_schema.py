"""The schema: round trips, error codes, and docs/protocol.md kept true to it."""

import re
import sys
import types
from pathlib import Path

import msgspec
import pytest

from malpi.protocol import schema

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()

REQUESTS = [
    schema.Ping(v=1, id=1),
    schema.GetStatus(v=1),
    schema.SetMode(v=1, id=2, mode="auto"),
    schema.Drive(v=1, id=3, action=None, seq=0),
    schema.Drive(v=1, action=4, seq=2**63 - 1),
    schema.ResetEpisode(v=1),
    schema.EndEpisode(v=1, outcome="failed", final_reward=-1.5),
    schema.EndEpisode(v=1, outcome="finished"),
    schema.Record(v=1, on=False),
    schema.LoadPolicy(v=1, bundle=b"PK\x03\x04" + bytes(100)),
    schema.RollbackPolicy(v=1, id=9),
    schema.LoadPolicy(v=1, bundle=b"PK", keep=True),
    schema.KeepPolicy(v=1, id=10),
]


@pytest.mark.parametrize("msg", REQUESTS, ids=lambda m: type(m).__name__)
def test_requests_round_trip(msg):
    assert schema.decode_request(schema.encode(msg)) == msg


def test_replies_round_trip():
    replies = [
        schema.Pong(id=1, server_time=1.5),
        schema.ModeReply(mode="auto", previous="paused", rearmed=["overrun"]),
        schema.DriveReply(accepted=False, mode="paused", reason="stale sequence number 3"),
        schema.EpisodeReply(episode=4),
        schema.EndEpisodeReply(episode=5, ended=4, outcome="failed"),
        schema.RecordReply(recording=True, episode=2),
        schema.PolicyReply(
            version="v2-a", previous="v1-b", episode=3, load_ms=12.5, persisted=True
        ),
        schema.RollbackReply(
            version="v1-b", previous=None, episode=4, load_ms=1.0, persisted=False
        ),
        schema.KeepReply(
            boot_policy_version="v2-a",
            boot_policy_source="kept in the store, pushed 2026-12-04T03:50Z",
            previous_boot="v1-b",
            changed=True,
        ),
        schema.ErrorReply(id=7, code="busy", message="a load is running"),
    ]
    for r in replies:
        assert schema.decode_reply(schema.encode(r)) == r


@pytest.mark.parametrize(
    "raw, code, fragment",
    [
        (b"\xc1", "malformed", "not a msgpack message"),
        (msgspec.msgpack.encode([1, 2]), "malformed", "a request is a msgpack map"),
        (msgspec.msgpack.encode({"v": 1}), "unknown_type", "no 'type'"),
        (
            msgspec.msgpack.encode({"type": "fly", "v": 1}),
            "unknown_type",
            "unknown request type 'fly'",
        ),
        (msgspec.msgpack.encode({"type": "ping", "v": 3}), "bad_version", "protocol version 3"),
        (msgspec.msgpack.encode({"type": "ping"}), "invalid", "missing required field `v`"),
        (msgspec.msgpack.encode({"type": "ping", "v": 1, "x": 0}), "invalid", "unknown field `x`"),
        (
            msgspec.msgpack.encode({"type": "drive", "v": 1, "action": -1, "seq": 1}),
            "invalid",
            "$.action",
        ),
        (msgspec.msgpack.encode({"type": "record", "v": 1, "on": "yes"}), "invalid", "$.on"),
        (
            msgspec.msgpack.encode(
                {"type": "end_episode", "v": 1, "outcome": "failed", "final_reward": float("inf")}
            ),
            "invalid",
            "final_reward must be finite",
        ),
        (b"\xa2\x80\x80", "malformed", "msgpack"),  # a string (of invalid UTF-8)
        (b"\x91" * 5000 + b"\x00", "malformed", "a request is a msgpack map"),
        (  # a map whose first field nests deeper than the robot decodes
            b"\x82\xa3pad" + b"\x91" * 5000 + b"\x00\xa4type\xa4ping",
            "malformed",
            "nested too deeply",
        ),
        (
            msgspec.msgpack.encode({"type": "ping", "v": 1, "pad": "x" * 70000}),
            "too_large",
            "65536",
        ),
    ],
)
def test_bad_requests_get_the_right_code(raw, code, fragment):
    with pytest.raises(schema.ProtocolError) as info:
        schema.decode_request(raw)
    assert info.value.code == code and fragment in info.value.message


def test_a_large_load_policy_is_allowed_up_to_the_bundle_limit():
    big = schema.encode(schema.LoadPolicy(v=1, bundle=bytes(1_000_000)))
    assert len(schema.decode_request(big).bundle) == 1_000_000


def test_telemetry_round_trips_from_the_loops_payloads():
    step = {
        "t": 1.0, "episode": 1, "step": 2, "mode": "auto", "action": None, "source": None,
        "probs": None, "value": None, "faults": ["stale_frame"], "latency_ms": {"inference": 0.1},
    }  # fmt: skip
    assert schema.decode_telemetry("step", schema.encode_telemetry("step", step)).faults == [
        "stale_frame"
    ]
    status = {
        "t": 1.0, "mode": "paused", "episode": 1, "step": 0, "recording": False,
        "policy_version": None, "rate_hz": 20.0, "periods": 5, "missed_periods": 0, "faults": {},
        "recorder": {"written": 1, "dropped": 0, "queue": 2},
    }  # fmt: skip
    s = schema.decode_telemetry(
        "status", schema.encode_telemetry("status", status, cpu_temp_c=51.2)
    )
    assert s.recorder.queue == 2 and s.cpu_temp_c == 51.2
    event = {"t": 1.0, "kind": "safety_stop", "message": "x", "fault": "deadman", "n": 3}
    e = schema.decode_telemetry("event", schema.encode_telemetry("event", event))
    assert e.details == {"fault": "deadman", "n": 3}
    with pytest.raises(ValueError):
        schema.encode_telemetry("video", {})


# -- docs/protocol.md -------------------------------------------------------------------


def test_the_document_names_every_message_field_and_code():
    missing = [t for t in schema.REQUEST_TAGS if f"`{t}`" not in DOC]
    missing += [c for c in schema.ERROR_CODES if f"`{c}`" not in DOC]
    structs = [*schema.REQUEST_TYPES, *schema.TELEMETRY_TYPES.values()]
    structs += [schema.StatusReply, schema.PolicyReply, schema.ModeReply, schema.DriveReply]
    structs += [schema.KeepReply]
    structs += [schema.EndEpisodeReply, schema.RecordReply, schema.ActionInfo, schema.RecorderInfo]
    structs += [schema.EpisodeList, schema.EpisodeSummary, schema.EpisodeChunk, schema.StepRecord]
    for cls in structs:
        missing += [f"{cls.__name__}.{f}" for f in cls.__struct_fields__ if f"`{f}`" not in DOC]
    missing += [t for t in schema.TOPICS if f"`{t}`" not in DOC]
    assert not missing, f"docs/protocol.md does not mention {missing}"
    assert f"protocol (version {schema.PROTOCOL_VERSION})" in DOC


def test_the_documents_hex_examples_are_what_the_code_sends():
    blocks = re.findall(r"```hex (request|reply|telemetry) (\w+)\n(.*?)```", DOC, re.S)
    assert len(blocks) >= 6
    for kind, name, text in blocks:
        data = bytes.fromhex(text.replace("\n", " "))
        if kind == "request":
            msg = schema.decode_request(data)
            assert msg.__struct_config__.tag == name
        elif kind == "reply":
            msg = schema.decode_reply(data)
            assert msg.__struct_config__.tag == name
        else:
            msg = schema.decode_telemetry(name, data)
        assert schema.encode(msg) == data  # byte for byte what the robot would send


def test_the_documents_python_client_drives_the_robot(tmp_path, monkeypatch):
    """The example written against the document alone (plain pyzmq + msgpack, CURVE) works."""
    from daemon_helpers import moving
    from link_helpers import link_config, running_link

    from malpi.protocol.keys import authorize, init_keys

    code = DOC.split("```python\n", 1)[1].split("```", 1)[0]
    fake = types.ModuleType("msgpack")  # msgpack's API, by msgspec (msgpack is not installed)
    fake.packb = msgspec.msgpack.encode
    fake.unpackb = msgspec.msgpack.decode
    monkeypatch.setitem(sys.modules, "msgpack", fake)
    # The files the example reads from its working directory: its key pair, the robot's key.
    robot_keys = tmp_path / "robot-keys"
    init_keys(robot_keys, "server")
    client = init_keys(tmp_path, "client")
    authorize(str(client.path), robot_keys / "authorized", "example")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server.key").write_bytes((robot_keys / "server.key").read_bytes())
    config = link_config(tmp_path, **{"link.curve": True, "link.keys_dir": str(robot_keys)})
    with running_link(config) as d:
        cmd_port = d.link.command_endpoint.rsplit(":", 1)[1]
        tel_port = d.link.telemetry_endpoint.rsplit(":", 1)[1]
        code = code.replace('ROBOT = "robot.local"', 'ROBOT = "127.0.0.1"')
        code = code.replace("zmq.DEALER, 5555", f"zmq.DEALER, {cmd_port}")
        code = code.replace("zmq.SUB, 5556", f"zmq.SUB, {tel_port}")
        code = code.replace("range(40)", "range(12)")  # 0.6 s is enough
        seen = []
        d.robot.telemetry.add_sink(
            lambda t, p: seen.append(p.get("source")) if t == "step" else None
        )
        printed = []
        scope = {"print": lambda *a: printed.append(a)}
        try:
            exec(compile(code, "docs/protocol.md", "exec"), scope)
        finally:
            if "ctx" in scope:  # a context left to the garbage collector could block in term()
                scope["ctx"].destroy(linger=0)
        assert printed and printed[-1][:2] == ("manual", "human")
        assert "human" in seen and d.robot.loop.mode == "paused" and not moving(d.factory)


def test_too_large_and_other_errors_echo_the_request_id():
    """Issue 11.6: a too_large reply carried id 0; a bundle just over 64 MiB was 'rejected'."""
    with pytest.raises(schema.ProtocolError) as info:
        schema.decode_request(
            msgspec.msgpack.encode({"type": "ping", "v": 1, "id": 41, "pad": "x" * 70000})
        )
    assert (info.value.code, info.value.request_id) == ("too_large", 41)
    over = schema.encode(schema.LoadPolicy(v=1, id=42, bundle=bytes(schema.MAX_BUNDLE_BYTES + 1)))
    with pytest.raises(schema.ProtocolError) as info:
        schema.decode_request(over)
    assert (info.value.code, info.value.request_id) == ("too_large", 42)
    assert "a bundle may be at most" in info.value.message
    with pytest.raises(schema.ProtocolError) as info:
        schema.decode_request(msgspec.msgpack.encode({"type": "record", "v": 1, "id": 43, "on": 5}))
    assert (info.value.code, info.value.request_id) == ("invalid", 43)


def test_decode_bombs_are_refused_without_being_built():
    """A load_policy whose bundle is 16 MiB of empty arrays (a list each, decoded naively: about
    900 MB) is refused at its first element, and its id still echoed."""
    import resource

    from malpi.bench.attacks import array_bomb

    bomb = array_bomb(16 * 1024 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(schema.ProtocolError) as info:
        schema.decode_request(bomb)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert (info.value.code, info.value.request_id) == ("invalid", 7)
    assert "Expected `bytes`, got `array`" in info.value.message
    assert grew_mb < 50, f"decoding the bomb grew the peak memory by {grew_mb:.0f} MB"
