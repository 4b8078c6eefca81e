"""list_episodes / get_episode / malpi pull: the robot's recording copied over loopback."""

from __future__ import annotations

import json
import time

import pytest
from daemon_helpers import PERIOD, moving, wait_until
from link_helpers import link_config, running_link

from malpi.cli import main
from malpi.operator.client import RobotError
from malpi.operator.pull import PullError, list_all, pull_episodes
from malpi.protocol import schema
from malpi.recorder.store import EpisodeStore


@pytest.fixture
def drove(tmp_path):
    """A daemon that drove three episodes in auto (one ended "failed"); the fourth is running."""
    with running_link(link_config(tmp_path)) as d, d.client() as c:
        c.set_mode("auto")
        wait_until(lambda: moving(d.factory))
        ended = []
        for outcome, reward in (("finished", None), ("failed", -2.5), ("finished", None)):
            time.sleep(12 * PERIOD)
            ended.append(c.end_episode(outcome, reward).ended)
        d.robot.loop.recorder.flush()
        yield d, c, ended


def _rows(db, episode_id):
    with EpisodeStore(db, readonly=True) as s:
        return list(s.raw_step_rows(episode_id))


def _meta(db, episode_id):
    with EpisodeStore(db, readonly=True) as s:
        e = s.episode(episode_id)
    return (
        e.uuid,
        e.started_at,
        e.started_mono,
        e.ended_at,
        e.outcome,
        e.final_reward,
        e.config,
        e.action_table.to_list(),
        e.policy_version,
        e.notes,
        e.step_count,
    )


def test_pull_copies_ended_episodes_exactly_and_only_once(drove, tmp_path):
    d, c, ended = drove
    robot_db = tmp_path / "episodes.sqlite"
    listed = {e.id: e for e in list_all(c)}
    assert [listed[i].outcome for i in ended] == ["finished", "failed", "finished"]
    assert listed[ended[1]].final_reward == -2.5
    running = [i for i, e in listed.items() if e.outcome == "running"]
    assert len(running) == 1 and running[0] > ended[-1]

    local = tmp_path / "laptop.sqlite"
    # Small chunks: every episode comes in several replies.
    result = pull_episodes(c, local, chunk_steps=5)
    assert [p.robot_id for p in result.pulled] == sorted(listed.keys() - set(running))
    assert result.running == running and result.already_here == []
    for p in result.pulled:
        assert p.steps > 5
        assert _meta(local, p.local_id) == _meta(robot_db, p.robot_id)
        assert _rows(local, p.local_id) == _rows(robot_db, p.robot_id)  # frames byte for byte
    with EpisodeStore(local, readonly=True) as s:
        failed = s.load_episode(result.local_ids[ended[1]])
    assert failed.dones[-1] and failed.rewards[-1] <= -2.5  # the ending is kept

    again = pull_episodes(c, local)
    assert again.pulled == [] and again.local_ids == result.local_ids
    assert sorted(again.already_here) == sorted(result.local_ids) and again.updated == []

    # An outcome set on the robot after the pull reaches the copy with the next pull.
    with EpisodeStore(robot_db) as robot:
        robot.set_outcome(ended[0], "failed", -4.0)
    third = pull_episodes(c, local)
    assert third.updated == [ended[0]] and third.pulled == []
    assert _meta(local, result.local_ids[ended[0]]) == _meta(robot_db, ended[0])


def test_pull_by_id_waits_for_the_recorders_ending(tmp_path):
    with running_link(link_config(tmp_path)) as d, d.client() as c:
        c.set_mode("auto")
        wait_until(lambda: moving(d.factory))
        time.sleep(10 * PERIOD)
        ended = c.end_episode("finished").ended  # its ending is written a moment later
        result = pull_episodes(c, tmp_path / "local.sqlite", ids=[ended], wait=10)
        assert [p.robot_id for p in result.pulled] == [ended] and result.pulled[0].steps > 0
        with pytest.raises(PullError, match="no episode 999"):
            pull_episodes(c, tmp_path / "local.sqlite", ids=[999])


def test_chunks_are_bounded_by_bytes(drove, monkeypatch):
    """The link process's episode server, run here so that its byte limit can be lowered."""
    from malpi.daemon.link.episodes import EpisodeServer

    d, _, ended = drove
    monkeypatch.setattr(schema, "CHUNK_FRAME_BYTES", 1)  # every frame is over it
    server = EpisodeServer(d.robot.recorder.path)
    try:
        req = schema.GetEpisode(v=schema.PROTOCOL_VERSION, episode=ended[0], max_steps=50)
        chunk = server.submit(req).result(10)
    finally:
        server.close()
    assert len(chunk.steps) == 1 and chunk.next_step == chunk.steps[0].step + 1
    step = chunk.steps[0]
    assert step.frame[:2] == b"\xff\xd8" and step.source == "policy"
    assert len(step.probs) == len(chunk.actions) and abs(sum(step.probs) - 1) < 1e-4


def test_bad_episode_requests_name_the_problem(drove):
    d, c, ended = drove
    with pytest.raises(RobotError, match="not_found: no episode 12345"):
        c.get_episode(12345)
    running = d.robot.loop.recorder.episode_id
    with pytest.raises(RobotError, match=f"refused: episode {running} is still being recorded"):
        c.get_episode(running)
    for bad in (0, schema.MAX_CHUNK_STEPS + 1):
        with pytest.raises(RobotError, match="invalid"):
            c.get_episode(ended[0], max_steps=bad)
    with pytest.raises(RobotError, match="invalid"):
        c.list_episodes(limit=0)
    page = c.list_episodes(limit=2)
    assert len(page.episodes) == 2 and page.more
    assert c.status().faults == {}  # the loop never noticed


def test_no_recording_is_refused(tmp_path):
    config = link_config(tmp_path, **{"recording.path": ""})
    refused = pytest.raises(RobotError, match="refused: this robot has no recording")
    with running_link(config) as d, d.client() as c, refused:
        c.list_episodes()


class _Failing:
    """A client whose link drops on the ``fail_at``-th get_episode."""

    def __init__(self, client, fail_at: int):
        self.client, self.fail_at, self.calls = client, fail_at, 0

    def list_episodes(self, **kw):
        return self.client.list_episodes(**kw)

    def get_episode(self, *a, **kw):
        self.calls += 1
        if self.calls == self.fail_at:
            raise TimeoutError("link lost")
        return self.client.get_episode(*a, **kw)


class _Short(_Failing):
    """A robot that sends one step fewer than it lists."""

    def get_episode(self, *a, **kw):
        chunk = self.client.get_episode(*a, **kw)
        if chunk.next_step is None:
            chunk.steps = chunk.steps[:-1]
        return chunk


def test_a_failed_pull_leaves_no_partial_episode(drove, tmp_path):
    _, c, ended = drove
    local = tmp_path / "local.sqlite"
    with pytest.raises(TimeoutError):
        pull_episodes(_Failing(c, fail_at=3), local, ids=[ended[0]], chunk_steps=4)
    with pytest.raises(PullError, match="received .* steps, the robot lists"):
        pull_episodes(_Short(c, 0), local, ids=[ended[0]])
    with EpisodeStore(local, readonly=True) as s:
        assert s.episodes() == [] and s.count_steps() == 0
    assert len(pull_episodes(c, local, ids=[ended[0]]).pulled) == 1


def test_pull_command(drove, tmp_path, capsys):
    d, _, ended = drove
    host = ["--insecure", d.link.command_endpoint]
    assert main(["pull", *host, "--list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in listed][: len(ended)] == ended
    out = tmp_path / "pulled.sqlite"
    assert main(["pull", *host, "--out", str(out), "--episodes", f"{ended[0]}-{ended[1]}"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("pulled 2 episodes") and str(out) in text
    with EpisodeStore(out, readonly=True) as s:
        assert [e.outcome for e in s.episodes()] == ["finished", "failed"]
    assert main(["pull", *host, "--out", str(out), "--episodes", "424242"]) == 1
    assert "no episode 424242" in capsys.readouterr().err


def test_episode_requests_are_bounded_and_close_drops_the_queue(tmp_path):
    import threading

    from malpi.daemon.link.episodes import MAX_WAITING, EpisodeServer
    from malpi.protocol.schema import ProtocolError

    server = EpisodeServer(None)
    gate = threading.Event()
    server.list = lambda req: gate.wait(5)  # a slow disk
    req = schema.ListEpisodes(v=schema.PROTOCOL_VERSION)
    jobs = [server.submit(req) for _ in range(MAX_WAITING)]
    with pytest.raises(ProtocolError, match="already waiting") as busy:
        server.submit(req)
    assert busy.value.code == "busy"
    closer = threading.Thread(target=server.close)
    closer.start()
    time.sleep(0.2)
    gate.set()
    closer.join(5)
    assert not closer.is_alive()
    assert jobs[0].result() is True and all(j.cancelled() for j in jobs[1:])
    server.close()  # twice is fine
    with pytest.raises(ProtocolError, match="closing") as stopped:
        server.submit(req)
    assert stopped.value.code == "stopped"
