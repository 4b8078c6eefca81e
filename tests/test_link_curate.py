"""Curating the robot's recording over the link (delete_episode, cut_episode, set_outcome) and
list_policies: a real daemon on the simulator, real ZeroMQ on loopback, the recorder writing
the same database meanwhile."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from pathlib import Path

import pytest
import zmq
from daemon_helpers import PERIOD, moving, wait_until
from extras import HAS_TF
from link_helpers import bundles, link_config, raw_request, request_bytes, running_link

from malpi.operator.client import RobotError
from malpi.operator.pull import PullError, list_all, pull_episodes
from malpi.policy.bundle import PolicyBundle
from malpi.policy.store import PolicyStore
from malpi.protocol import schema
from malpi.recorder.store import EpisodeStore

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
STORE_BOOT = {"policy.path": ""}


@pytest.fixture
def drove(tmp_path):
    """A daemon that drove three ended episodes in auto (the second failed, -2.5), recording
    on; the fourth is running."""
    with running_link(link_config(tmp_path)) as d, d.client() as c:
        c.set_mode("auto")
        wait_until(lambda: moving(d.factory))
        ended = []
        for outcome, reward in (("finished", None), ("failed", -2.5), ("finished", None)):
            time.sleep(14 * PERIOD)
            ended.append(c.end_episode(outcome, reward).ended)
        wait_until(lambda: all(_ended(_listed(c), i) for i in ended), 10)
        yield d, c, ended, tmp_path / "episodes.sqlite"


def _ended(listed, i) -> bool:
    return i in listed and listed[i].outcome != "running"


def _listed(c) -> dict[int, schema.EpisodeSummary]:
    return {e.id: e for e in list_all(c)}


def _rows(db, episode_id):
    with EpisodeStore(db, readonly=True) as s:
        return list(s.raw_step_rows(episode_id))


def _fetch(c, episode_id):
    steps, nxt = [], 0
    while nxt is not None:
        chunk = c.get_episode(episode_id, from_step=nxt)
        steps += chunk.steps
        nxt = chunk.next_step
    return chunk.episode, steps


def _running(d) -> int:
    return d.robot.loop.recorder.episode_id


def test_delete_an_ended_episode(drove):
    d, c, ended, db = drove
    n = _listed(c)[ended[0]].steps
    reply = c.delete_episode(ended[0])
    assert (reply.episode, reply.removed) == (ended[0], n) and n > 5
    assert ended[0] not in _listed(c)
    with pytest.raises(RobotError, match=f"not_found: no episode {ended[0]}"):
        c.get_episode(ended[0])
    with pytest.raises(RobotError, match=f"not_found: no episode {ended[0]}"):
        c.delete_episode(ended[0])
    with pytest.raises(RobotError, match="refused: episode .* is still being recorded"):
        c.delete_episode(_running(d))
    assert _rows(db, ended[1])  # the others are untouched
    assert c.status().faults == {}


def test_set_outcome(drove):
    _, c, ended, db = drove
    reply = c.set_outcome(ended[0], "failed", -4.0)
    assert (reply.episode.id, reply.episode.outcome, reply.episode.final_reward) == (
        ended[0],
        "failed",
        -4.0,
    )
    again = c.set_outcome(ended[0], "aborted")  # nil keeps the final reward
    assert (again.episode.outcome, again.episode.final_reward) == ("aborted", -4.0)
    assert again.episode.ended_at == reply.episode.ended_at
    with EpisodeStore(db, readonly=True) as s:
        assert s.episode(ended[0]).outcome == "aborted"
    with pytest.raises(RobotError, match="invalid: final_reward must be finite"):
        c.set_outcome(ended[0], "failed", math.nan)
    with pytest.raises(RobotError, match="invalid"):
        c.set_outcome(ended[0], "running")
    with pytest.raises(RobotError, match="not_found"):
        c.set_outcome(424242, "failed")


def test_a_cut_in_the_middle_makes_the_rest_a_new_episode(drove):
    d, c, ended, db = drove
    ep = ended[1]  # failed, -2.5
    rows = _rows(db, ep)
    before = _listed(c)[ep]
    reply = c.cut_episode(ep, 3, 6)
    assert reply.removed == 3
    head, tail = reply.episode, reply.tail
    assert (head.id, head.uuid, head.steps, head.outcome, head.final_reward) == (
        ep,
        before.uuid,
        3,
        "finished",
        None,
    )
    assert tail is not None and tail.uuid != before.uuid
    assert (tail.outcome, tail.final_reward, tail.ended_at) == ("failed", -2.5, before.ended_at)
    assert (tail.steps, tail.dropped_steps) == (len(rows) - 6, 0)
    # Its id is one the daemon does not use: episodes go on being recorded beside it.
    assert tail.id > ep and tail.id != _running(d)
    _, steps = _fetch(c, tail.id)
    assert [s.step for s in steps] == list(range(len(rows) - 6))
    assert [s.frame for s in steps] == [bytes(r[10]) for r in rows[6:]]  # frames as recorded
    assert [s.action for s in steps] == [r[1] for r in rows[6:]]
    _, head_steps = _fetch(c, ep)
    assert [s.frame for s in head_steps] == [bytes(r[10]) for r in rows[:3]]
    # The daemon goes on: the next episodes get other ids and are recorded whole.
    time.sleep(10 * PERIOD)
    nxt = c.end_episode("finished").ended
    time.sleep(10 * PERIOD)
    after = c.end_episode("finished").ended
    assert tail.id not in (nxt, after)
    wait_until(lambda: getattr(_listed(c).get(after), "outcome", "") == "finished", 10)
    listed = _listed(c)
    assert listed[nxt].steps > 0 and listed[after].steps > 0
    assert listed[nxt].dropped_steps == listed[after].dropped_steps == 0
    s = c.status()
    assert s.recording and s.recording_note is None and s.faults == {}


def test_cuts_at_either_end(drove):
    _, c, ended, db = drove
    rows = _rows(db, ended[0])
    n = len(rows)
    front = c.cut_episode(ended[0], 0, 4)
    assert front.tail is None and front.episode.steps == n - 4
    assert front.episode.uuid == _listed(c)[ended[0]].uuid
    _, steps = _fetch(c, ended[0])
    assert [s.step for s in steps] == list(range(n - 4))
    assert [s.frame for s in steps] == [bytes(r[10]) for r in rows[4:]]
    back = c.cut_episode(ended[1], 5, 2**63 - 1)  # to the end
    assert back.tail is None and back.episode.steps == 5
    assert (back.episode.outcome, back.episode.final_reward) == ("finished", None)


def test_bad_cuts_are_refused_and_change_nothing(drove):
    d, c, ended, db = drove
    ep = ended[0]
    n = len(_rows(db, ep))
    snapshot = {e: _rows(db, e) for e in ended}
    cases = [
        ((ep, 5, 5), "invalid: cut_episode: from_step \\(5\\) must be below to_step"),
        ((ep, 9, 2), "invalid: cut_episode: from_step"),
        ((ep, n, n + 10), f"invalid: episode {ep} has no step in"),
        ((ep, 2**40, 2**41), "invalid: .*no step in"),
        ((ep, 0, n), "invalid: .*holds every step .* delete the episode instead"),
        ((ep, 0, 2**63 - 1), "invalid: .*every step"),
        ((2**63 - 1, 0, 1), "not_found: no episode 9223372036854775807"),
        ((_running(d), 0, 1), "refused: episode .* is still being recorded"),
    ]
    for args, match in cases:
        with pytest.raises(RobotError, match=match):
            c.cut_episode(*args)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.link.command_endpoint)
    try:
        for bad in ({"from_step": -1}, {"episode": 2**63}, {"to_step": "3"}, {"extra": 1}):
            fields = {"episode": ep, "from_step": 0, "to_step": 2, **bad}
            reply = raw_request(sock, [request_bytes(type="cut_episode", id=7, **fields)])
            assert (reply.code, reply.id) == ("invalid", 7), (bad, reply)
    finally:
        sock.close()
    assert {e: _rows(db, e) for e in ended} == snapshot
    assert c.status().faults == {}


def test_curating_while_the_car_drives_and_records(drove):
    """Cuts and deletes of ended episodes, back to back, while the loop records at full rate:
    the recorder keeps up (no dropped step), the loop never notices, the database stays sound."""
    d, c, ended, db = drove
    written = d.robot.loop.recorder.stats.steps_written
    stop = threading.Event()
    errors: list[Exception] = []

    def curate():
        with d.client() as other:
            while not stop.is_set():
                try:
                    for e in list_all(other):
                        if e.outcome != "running" and e.steps > 4:
                            other.cut_episode(e.id, 1, 3)
                        elif e.outcome != "running" and e.steps:
                            other.delete_episode(e.id)
                except RobotError as exc:
                    if exc.code not in ("refused", "not_found", "invalid"):
                        errors.append(exc)

    worker = threading.Thread(target=curate, daemon=True)
    worker.start()
    try:
        for _ in range(4):
            time.sleep(12 * PERIOD)
            c.end_episode("finished")
    finally:
        stop.set()
        worker.join(20)
    assert not errors
    d.robot.loop.recorder.flush()
    stats = d.robot.loop.recorder.stats
    assert stats.steps_written > written and stats.steps_dropped == 0
    assert c.status().faults == {}
    with EpisodeStore(db, readonly=True) as s:
        assert s.integrity_check() == "ok"
        assert len({e.uuid for e in s.episodes()}) == len(s.episodes())


def test_pull_after_a_cut(drove, tmp_path, caplog):
    _, c, ended, db = drove
    local = tmp_path / "laptop.sqlite"
    pull_episodes(c, local, ids=[ended[0]])
    copied = _rows(db, ended[0])
    c.cut_episode(ended[0], 2, 4)  # after the copy: the copy stays as it was
    split = c.cut_episode(ended[1], 2, 4).tail  # before the copy: both pieces come
    with caplog.at_level(logging.WARNING, logger="malpi.operator.pull"):
        result = pull_episodes(c, local)
    assert "cut on the robot after it was pulled" in caplog.text
    assert {ended[1], split.id} <= {p.robot_id for p in result.pulled}
    with EpisodeStore(local, readonly=True) as s:
        pieces = [s.episode(result.local_ids[i]) for i in (ended[1], split.id)]
        assert [p.step_count for p in pieces] == [2, split.steps]
        assert [p.outcome for p in pieces] == ["finished", "failed"]
        assert _rows(local, result.local_ids[ended[0]]) == copied  # as it was


def test_a_pull_that_sees_a_cut_midway_fails_without_a_partial_episode(drove, tmp_path):
    _, c, ended, _ = drove

    class CutMidway:
        def __init__(self):
            self.calls = 0

        def list_episodes(self, **kw):
            return c.list_episodes(**kw)

        def get_episode(self, *a, **kw):
            self.calls += 1
            if self.calls == 2:
                c.cut_episode(ended[0], 0, 2)  # a head trim renumbers what is left
            return c.get_episode(*a, **kw)

    local = tmp_path / "local.sqlite"
    with pytest.raises(PullError, match="was cut on the robot while being pulled"):
        pull_episodes(CutMidway(), local, ids=[ended[0]], chunk_steps=4)
    with EpisodeStore(local, readonly=True) as s:
        assert s.episodes() == []


def test_no_recording_refuses_every_change(tmp_path):
    config = link_config(tmp_path, **{"recording.path": ""})
    with running_link(config) as d, d.client() as c:
        for call in (
            lambda: c.delete_episode(1),
            lambda: c.cut_episode(1, 0, 1),
            lambda: c.set_outcome(1, "failed"),
        ):
            with pytest.raises(RobotError, match="refused: this robot has no recording"):
                call()


# -- list_policies -----------------------------------------------------------------------


def _label(name):
    return PolicyBundle.from_bytes(bundles()[name], check_models=False).label


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_list_policies_with_policy_path(tmp_path):
    with running_link(link_config(tmp_path)) as d, d.client() as c:
        reply = c.list_policies()
    assert reply.policy_path == str(tmp_path / "a.malpi")
    assert reply.history == []
    run = reply.running
    assert (run.label, run.sha256, run.running, run.boots) == (
        _label("a"),
        _sha(bundles()["a"]),
        True,
        True,
    )
    assert run.source == f"policy.path {tmp_path / 'a.malpi'}" and run.error is None
    assert run.trainer == "tests/make_fixtures.py" and run.bytes == len(bundles()["a"])
    assert reply.boot.sha256 == run.sha256
    shipped = reply.shipped  # the real default policy: its training figures
    assert shipped is not None and shipped.source == "shipped default" and not shipped.running
    ev = shipped.evaluation
    assert ev["dagger_iterations"] >= 1 and 0 < ev["agreement"] <= 1
    assert ev["rollouts_off_track"] == 0 and ev["car"] == "differential"
    assert 0.9 < ev["integer_agreement"] <= 1 and len(ev) <= schema.MAX_EVALUATION


def test_list_policies_shows_the_store_newest_first_and_survives_a_corrupt_file(tmp_path):
    with running_link(link_config(tmp_path, **STORE_BOOT)) as d, d.client() as c:
        first = c.list_policies()
        # The shipped default is for another camera than the tests': a fresh policy runs where
        # TensorFlow can make one, none on the robot's install.
        assert first.history == [] and not first.shipped.running and first.shipped.evaluation
        if HAS_TF:
            assert first.running.source == "fresh untrained policy"
            assert first.running.running and first.running.error is None
        else:
            assert first.running is None
        c.load_policy(bundles()["b"], keep=True)
        c.load_policy(bundles()["a"])  # runs, not kept
        reply = c.list_policies()
        assert [e.label for e in reply.history] == [_label("b")]
        kept = reply.history[0]
        assert (kept.boots, kept.running) == (True, False)
        assert kept.source.startswith("kept in the store, pushed ") and kept.accepted
        assert reply.running.label == _label("a") and not reply.running.boots
        assert reply.running.source.endswith("not kept")
        assert reply.boot.label == _label("b") and reply.boot.boots
        c.keep_policy()
        reply = c.list_policies()
        assert [e.label for e in reply.history] == [_label("a"), _label("b")]
        assert reply.history[0].running and reply.history[0].boots
        # A damaged file in the store: its entry says so, the rest is listed.
        store = PolicyStore(tmp_path / "store")
        damaged = store.path(store.history()[0])
        damaged.write_bytes(b"PK\x03\x04 not a zip at all")
        reply = c.list_policies()
        older = next(e for e in reply.history if e.label == _label("b"))
        assert older.error and "not a readable policy bundle" in older.error
        assert older.sha256 == _sha(bundles()["b"])  # what the store knows
        damaged.unlink()
        reply = c.list_policies()
        assert "No such file" in reply.history[1].error
        assert reply.history[0].error is None


def test_the_document_describes_the_curate_and_policy_messages():
    missing = [t for t in ("delete_episode", "cut_episode", "set_outcome", "list_policies")
               if f"`{t}`" not in DOC]  # fmt: skip
    for cls in (schema.DeleteReply, schema.CutReply, schema.OutcomeReply, schema.PolicyList,
                schema.PolicyInfo, schema.CutEpisode, schema.SetOutcome):  # fmt: skip
        missing += [f"{cls.__name__}.{f}" for f in cls.__struct_fields__ if f"`{f}`" not in DOC]
    assert not missing
