"""Hot reload over the link: no missed period, bad bundles rejected with the old policy still driving,
one load at a time, the policy store's file format. (Which policy boots: test_link_keep.py.)"""

import io
import sys
import threading
import time
import types
import zipfile

import numpy as np
import pytest
from daemon_helpers import moving, wait_until
from link_helpers import bundles, link_config, running_link
from policy_helpers import edit_weights, rezip

from malpi.daemon.control.build import load_policy_bundle
from malpi.operator.client import RobotError
from malpi.policy.bundle import PolicyBundle
from malpi.policy.store import PolicyStore

RATE = {"loop.rate_hz": 20.0}  # the daemon's default rate


def label(name: str) -> str:
    return PolicyBundle.from_bytes(bundles()[name], check_models=False).label


def test_hot_reload_in_auto_misses_no_period(tmp_path):
    with running_link(link_config(tmp_path, **RATE)) as d, d.client() as c:
        loop = d.robot.loop
        c.subscribe(["step", "event"])
        c.set_mode("auto")
        wait_until(lambda: moving(d.factory))
        time.sleep(0.3)
        missed, periods = loop.stats.missed_periods, loop.stats.periods
        replies = []
        for name in ("b", "a", "b", "a", "b"):
            replies.append(c.load_policy(bundles()[name]))
            assert loop.policy.version == label(name) and moving(d.factory)
        time.sleep(0.2)
        assert loop.stats.missed_periods == missed, "a period was missed during a reload"
        assert loop.stats.periods > periods
        assert [r.version for r in replies] == [label(n) for n in "babab"]
        assert replies[0].previous == label("a")
        # Only "a" boots (policy.path): a push runs, and boots only when kept.
        assert [r.persisted for r in replies] == [n == "a" for n in "babab"]
        # Each swap started a new episode with a reset LSTM state, between two periods.
        assert [r.episode for r in replies] == list(
            range(replies[0].episode, replies[0].episode + 5)
        )
        steps = []
        events = []
        for topic, m in c.telemetry(["step", "event"], seconds=0.3):
            (steps if topic == "step" else events).append(m)
    loaded = [e for e in d.events.of("event", "policy_loaded")]
    assert len(loaded) == 5 and loaded[-1]["version"] == label("b")
    t = np.array([s.t for s in steps])
    assert len(t) > 2 and np.diff(t).max() < 2 / 20.0 + 0.02


def _truncated(data):
    return data[: len(data) // 2]


def _corrupt(data):
    bad = bytearray(data)
    for pos in np.random.default_rng(0).integers(200, len(data) - 200, 20):
        bad[pos] ^= 0x5A
    return bytes(bad)


def _wrong_architecture(data):  # the manifest's spec no longer fits the weights and models
    return rezip(
        data, manifest_edit=lambda m: m["spec"].update(lstm_units=2 * m["spec"]["lstm_units"])
    )


def _wrong_camera(data):  # a bundle for another image size
    return rezip(data, manifest_edit=lambda m: m["spec"].update(image_height=60, image_width=80))


def _wrong_actions(data):
    return rezip(data, manifest_edit=lambda m: m.update(actions=m["actions"][:4]))


def _non_finite(data):
    def poison(w):
        w["lstm/kernel"][3, 7] = np.inf

    return rezip(data, payload_edit=lambda f: edit_weights(f, poison))


def _broken_model(data):  # consistent checksums, but the LiteRT model cannot run
    return rezip(
        data, payload_edit=lambda f: f.update({"integer.tflite": f["integer.tflite"][:4096]})
    )


def _missing_file(data):
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name != "float.tflite":
                dst.writestr(name, src.read(name))
    return out.getvalue()


BAD = [
    (_truncated, "truncated or corrupt"),
    (_corrupt, ""),
    (_wrong_architecture, "has shape"),
    (_wrong_camera, "has shape"),
    (_wrong_actions, "wrong action count"),
    (_non_finite, "lstm/kernel has non-finite values"),
    (_broken_model, "integer.tflite failed its test step"),
    (_missing_file, "missing ['float.tflite']"),
    (lambda data: b"", "truncated or corrupt"),
]


def test_bad_bundles_are_rejected_and_the_old_policy_keeps_driving(tmp_path):
    good = bundles()["b"]
    with running_link(link_config(tmp_path, **RATE)) as d, d.client() as c:
        loop = d.robot.loop
        c.set_mode("auto")
        wait_until(lambda: moving(d.factory))
        running, missed = loop.policy, loop.stats.missed_periods
        episode = loop.episode
        c.subscribe(["event"])  # the link process publishes its rejections itself
        time.sleep(0.3)
        for make, why in BAD:
            with pytest.raises(RobotError) as info:
                c.load_policy(make(good))
            assert info.value.code == "rejected", make.__name__
            assert why in info.value.message, (make.__name__, info.value.message)
            assert loop.policy is running and loop.episode == episode
            assert moving(d.factory) and loop.mode == "auto"
        assert loop.stats.missed_periods == missed
        assert c.status().policy_version == running.version
        rejected = []
        while (msg := c.receive(1.0)) is not None:
            if msg[1].kind == "policy_rejected":
                rejected.append(msg[1].details["reason"])
        assert len(rejected) == len(BAD)
        assert PolicyStore(tmp_path / "store").history() == []  # nothing persisted
        reply = c.load_policy(good)  # and a good one is still accepted afterwards
        assert reply.version == label("b")


def test_a_broken_stored_policy_is_skipped_at_boot(tmp_path, caplog, monkeypatch):
    store = PolicyStore(tmp_path / "store")
    store.commit([store.put("v1-broken", bundles()["a"][:1000])])
    # Stand-ins for the modules of the last fallback (a fresh model), so that the test needs no
    # TensorFlow model, nor TensorFlow: the robot install runs it too.
    model, export = types.ModuleType("malpi.policy.model"), types.ModuleType("malpi.policy.export")
    model.build_policy = lambda spec, seed=0: "net"
    export.make_bundle = lambda net, actions, provenance=None: "fresh"
    monkeypatch.setitem(sys.modules, "malpi.policy.model", model)
    monkeypatch.setitem(sys.modules, "malpi.policy.export", export)
    with caplog.at_level("WARNING"):
        bundle, source = load_policy_bundle(link_config(tmp_path, **{"policy.path": ""}))
    assert (bundle, source) == ("fresh", "fresh untrained policy")
    assert "the policy store's current policy is unusable" in caplog.text


def test_a_second_load_while_one_runs_is_busy(tmp_path):
    with running_link(link_config(tmp_path), in_process=True) as d:
        real = d.link.policies.load
        started = threading.Event()

        def slow_load(data, keep=False):
            started.set()
            time.sleep(0.6)
            return real(data, keep)

        d.link.policies.load = slow_load
        result = {}

        def first():
            with d.client() as c1:
                result["reply"] = c1.load_policy(bundles()["b"])

        t = threading.Thread(target=first)
        t.start()
        started.wait(5)
        with d.client() as c2:
            with pytest.raises(RobotError, match="busy"):
                c2.load_policy(bundles()["a"])
            assert c2.ping()  # other commands are answered meanwhile
            assert c2.drive(None).accepted
        t.join(10)
        assert result["reply"].version == label("b")
        with d.client() as c3:  # free again
            assert c3.load_policy(bundles()["a"]).version == label("a")


def test_store_survives_garbage(tmp_path):
    store = PolicyStore(tmp_path)
    assert store.history() == [] and store.current() is None
    (tmp_path / "policies.json").write_text("{nope")
    assert store.history() == []
    (tmp_path / "policies.json").write_text('{"format": "other", "version": 1, "history": []}')
    assert store.history() == []
    e = store.put(label("a"), bundles()["a"])
    assert store.put(label("a"), bundles()["a"]).file == e.file  # same bytes, same file
    store.commit([e])
    assert store.current() == e and store.read(e) == bundles()["a"]
    older = [store.put(f"v{i}-x", bundles()["b"] + bytes([i])) for i in range(12)]
    store.commit([*older, e])  # at most KEEP entries; files of dropped ones are deleted
    assert len(store.history()) == 10 and len(list(tmp_path.glob("*.malpi"))) == 10
