"""A bundle pushed in parts: assembled in order from one client at a time, bounded, and loaded
once its last part arrives; a bad part names what is wrong and abandons the upload.

All but the last test run on the robot install (no TensorFlow)."""

import pytest

from malpi.daemon.link.upload import Uploads
from malpi.operator.client import RobotError
from malpi.policy.bundle import PolicyBundle
from malpi.protocol import schema
from malpi.protocol.schema import LoadPolicy, ProtocolError

V = schema.PROTOCOL_VERSION


def part(data: bytes, offset: int, size: int, total: int | None = None) -> LoadPolicy:
    total = len(data) if total is None else total
    return LoadPolicy(
        v=V, bundle=memoryview(data[offset : offset + size]), offset=offset, total=total
    )


def test_parts_in_order_make_the_bundle():
    data = bytes(range(256)) * 40
    up = Uploads()
    got = [up.add(b"a", part(data, o, 1000), now=0.0) for o in range(0, len(data), 1000)]
    assert [r for _, r in got[:-1]] == list(range(1000, len(data), 1000))
    assert all(whole is None for whole, _ in got[:-1])
    assert bytes(got[-1][0]) == data and got[-1][1] == len(data)


def test_a_part_out_of_order_is_invalid_and_abandons_the_upload():
    data = b"x" * 3000
    up = Uploads()
    up.add(b"a", part(data, 0, 1000), now=0.0)
    with pytest.raises(ProtocolError, match="expected offset 1000") as err:
        up.add(b"a", part(data, 2000, 1000), now=0.0)
    assert err.value.code == "invalid"
    with pytest.raises(ProtocolError, match="no upload from this client is open"):
        up.add(b"a", part(data, 1000, 1000), now=0.0)


def test_a_part_past_the_end_or_a_bundle_over_the_limit_is_refused():
    up = Uploads(limit=5000)
    with pytest.raises(ProtocolError, match="runs past") as err:
        up.add(b"a", part(b"x" * 3000, 0, 3000, total=2000), now=0.0)
    assert err.value.code == "invalid"
    with pytest.raises(ProtocolError) as err:
        up.add(b"a", part(b"x" * 10, 0, 10, total=5001), now=0.0)
    assert err.value.code == "too_large"


def test_one_upload_at_a_time_until_it_goes_quiet():
    data = b"x" * 3000
    up = Uploads(timeout=30.0)
    up.add(b"a", part(data, 0, 1000), now=0.0)
    with pytest.raises(ProtocolError) as err:
        up.add(b"b", part(data, 0, 1000), now=10.0)
    assert err.value.code == "busy"
    assert up.add(b"b", part(data, 0, 1000), now=31.0) == (None, 1000)  # a's went quiet
    with pytest.raises(ProtocolError, match="no upload from this client"):
        up.add(b"a", part(data, 1000, 1000), now=31.0)


def test_a_bundle_pushed_in_parts_is_loaded(tmp_path, monkeypatch):
    from daemon_helpers import moving, wait_until
    from link_helpers import bundles, link_config, running_link

    data = bundles()["b"]
    monkeypatch.setattr(schema, "PART_BYTES", 16 * 1024)  # the client's part size
    assert len(data) > 3 * schema.PART_BYTES
    with running_link(link_config(tmp_path)) as d, d.client() as c:
        c.set_mode("auto")
        wait_until(lambda: moving(d.factory))
        reply = c.load_policy(data)
        assert reply.version == PolicyBundle.from_bytes(data, check_models=False).label
        assert d.robot.loop.policy.version == reply.version and moving(d.factory)
        # By hand: every part but the last is acknowledged with what the robot holds.
        first = c.request(part(data, 0, 1000))
        assert isinstance(first, schema.PolicyPartReply)
        assert (first.received, first.total) == (1000, len(data))
        with pytest.raises(RobotError, match="expected offset 1000"):
            c.request(part(data, 5000, 1000))
        assert c.ping()
