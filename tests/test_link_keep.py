"""Which policy boots: a push runs at once but boots only when kept (``keep`` on the push, or
``keep_policy`` after it); rollback from an unkept push returns to the boot policy, from the boot
policy it drops it from the store's history; status and the drive log say what runs and what
boots. A real daemon on the simulator, real ZeroMQ on loopback; a restart is a new robot built
on the same policy store."""

import hashlib
import logging

import pytest
from daemon_helpers import wait_until
from link_helpers import bundles, link_config, running_link

from malpi.operator.client import RobotError
from malpi.policy.bundle import PolicyBundle
from malpi.policy.store import PolicyStore
from malpi.protocol import schema

STORE_BOOT = {"policy.path": ""}  # boot from the policy store, as a robot does by default


def label(name: str) -> str:
    return PolicyBundle.from_bytes(bundles()[name], check_models=False).label


def sha(name: str) -> str:
    return hashlib.sha256(bundles()[name]).hexdigest()


def kept(tmp_path, *names: str) -> PolicyStore:
    """A policy store with ``names`` kept, the last one the boot policy."""
    store = PolicyStore(tmp_path / "store")
    store.commit([store.put(label(n), bundles()[n]) for n in names])
    return store


def boots(tmp_path) -> str:
    """What a restarted daemon (a new robot on the same store) runs, and its status says."""
    with running_link(link_config(tmp_path, **STORE_BOOT)) as d, d.client() as c:
        s = c.status()
    assert s.boot_policy_version == s.policy_version and s.boot_policy_sha256 == s.policy_sha256
    assert s.policy_source == s.boot_policy_source
    return s.policy_version


def files(store: PolicyStore) -> list[str]:
    return sorted(p.name for p in store.directory.glob("*.malpi"))


def test_a_push_runs_but_the_car_still_boots_the_kept_policy(tmp_path):
    store = kept(tmp_path, "a")
    with running_link(link_config(tmp_path, **STORE_BOOT)) as d, d.client() as c:
        before = c.status()
        assert (before.policy_version, before.boot_policy_version) == (label("a"), label("a"))
        assert before.boot_policy_source.startswith("kept in the store, pushed ")
        assert before.policy_source == before.boot_policy_source
        reply = c.load_policy(bundles()["b"])
        assert (reply.version, reply.previous) == (label("b"), label("a"))
        assert not reply.persisted
        assert reply.note.startswith(f"running, not kept: the car boots {label('a')} (kept in")
        assert reply.note.endswith("malpi push HOST --keep keeps it")
        s = c.status()
        assert (s.policy_version, s.policy_sha256) == (label("b"), sha("b"))
        assert s.policy_source.startswith("pushed ") and s.policy_source.endswith(", not kept")
        assert (s.boot_policy_version, s.boot_policy_sha256) == (label("a"), sha("a"))
        assert s.boot_policy_source == before.boot_policy_source
        # The status telemetry says the same, once a second.
        c.subscribe(["status"])
        msg = next(m for _, m in c.telemetry(["status"], seconds=3) if m.policy_version)
        assert (msg.policy_version, msg.policy_source) == (label("b"), s.policy_source)
        assert (msg.boot_policy_version, msg.boot_policy_source) == (
            label("a"),
            s.boot_policy_source,
        )
        # Pushing it again changes nothing, and says it is still not kept.
        again = c.load_policy(bundles()["b"])
        assert again.previous == again.version == label("b") and not again.persisted
        assert again.note.startswith("already running: nothing changed; not kept")
    assert [e.label for e in store.history()] == [label("a")]
    assert len(files(store)) == 2  # the pushed file is there to be kept, not in the history
    assert boots(tmp_path) == label("a")


@pytest.mark.parametrize("parts", [False, True], ids=["whole", "in_parts"])
def test_a_push_with_keep_boots_next_time(tmp_path, monkeypatch, parts):
    store = kept(tmp_path, "a")
    if parts:  # the client sends keep in every part; the robot reads the last part's
        monkeypatch.setattr(schema, "PART_BYTES", 32 * 1024)
    with running_link(link_config(tmp_path, **STORE_BOOT)) as d, d.client() as c:
        c.subscribe(["event"])
        reply = c.load_policy(bundles()["b"], keep=True)
        assert reply.version == label("b") and reply.persisted
        assert (
            reply.note
            == f"kept: the car boots {label('b')} from now on (it booted {label('a')} before)"
        )
        s = c.status()
        assert (s.policy_version, s.boot_policy_version) == (label("b"), label("b"))
        assert s.boot_policy_sha256 == sha("b") and s.policy_source == s.boot_policy_source
        assert s.boot_policy_source.startswith("kept in the store, pushed ")
        wait_until(lambda: d.events.of("event", "policy_loaded"))
        kept_events = [m for _, m in c.telemetry(["event"], seconds=1.0) if m.kind == "policy_kept"]
        assert kept_events and kept_events[0].details["version"] == label("b")
        assert kept_events[0].details["previous_boot"] == label("a")
    assert [e.label for e in store.history()] == [label("a"), label("b")]
    assert boots(tmp_path) == label("b")


def test_keep_policy_after_a_plain_push_makes_it_the_boot_policy(tmp_path):
    store = kept(tmp_path, "a")
    with running_link(link_config(tmp_path, **STORE_BOOT)) as d, d.client() as c:
        pushed = c.load_policy(bundles()["b"])
        episode = c.status().episode
        reply = c.keep_policy()
        assert isinstance(reply, schema.KeepReply) and reply.changed
        assert (reply.boot_policy_version, reply.previous_boot) == (label("b"), label("a"))
        assert reply.boot_policy_source.startswith("kept in the store, pushed ")
        s = c.status()
        assert (s.policy_version, s.boot_policy_version) == (label("b"), label("b"))
        assert s.policy_source == s.boot_policy_source == reply.boot_policy_source
        assert s.episode == episode == pushed.episode  # no swap: the episode goes on
        same = c.keep_policy()  # the boot policy already: harmless
        assert not same.changed and same.boot_policy_version == label("b")
        assert same.previous_boot == label("b") and same.note.startswith("already the boot")
        push_again = c.load_policy(bundles()["b"])
        assert push_again.persisted and push_again.note.startswith("already running, and the car")
    assert [e.label for e in store.history()] == [label("a"), label("b")]
    assert boots(tmp_path) == label("b")


def test_rollback_of_an_unkept_push_returns_to_the_boot_policy_and_leaves_the_store(tmp_path):
    store = kept(tmp_path, "a")
    state = (store.directory / "policies.json").read_bytes()
    with running_link(link_config(tmp_path, **STORE_BOOT)) as d, d.client() as c:
        boot_source = c.status().boot_policy_source
        c.load_policy(bundles()["b"])
        back = c.rollback_policy()
        assert (back.version, back.previous) == (label("a"), label("b")) and back.persisted
        assert back.note.startswith("back to the boot policy (kept in the store")
        s = c.status()
        assert d.robot.loop.policy.version == s.policy_version == label("a")
        assert s.policy_source == s.boot_policy_source == boot_source
    assert (store.directory / "policies.json").read_bytes() == state  # not even rewritten
    assert files(store) == [store.current().file]  # the unkept push's file is gone
    assert boots(tmp_path) == label("a")


def test_rollback_of_the_boot_policy_drops_it_from_the_history(tmp_path):
    store = kept(tmp_path, "a")
    with running_link(link_config(tmp_path, **STORE_BOOT)) as d, d.client() as c:
        c.load_policy(bundles()["b"], keep=True)
        back = c.rollback_policy()
        assert (back.version, back.previous) == (label("a"), label("b")) and back.persisted
        assert back.note.startswith(f"{label('b')} is no longer kept: the car boots {label('a')}")
        s = c.status()
        assert (s.policy_version, s.boot_policy_version) == (label("a"), label("a"))
        assert [e.label for e in store.history()] == [label("a")]
        assert len(files(store)) == 1
        # Before the first kept policy comes the shipped default; it does not fit the test
        # camera, so this rollback is rejected, and nothing changes.
        with pytest.raises(RobotError) as info:
            c.rollback_policy()
        assert info.value.code == "rejected" and "shipped default" in info.value.message
        s = c.status()
        assert (s.policy_version, s.boot_policy_version) == (label("a"), label("a"))
        assert d.robot.loop.policy.version == label("a")
    assert [e.label for e in store.history()] == [label("a")]
    # The store keeps whole, valid bundles, written atomically (no temp files left).
    assert sorted(p.suffix for p in store.directory.iterdir()) == [".json", ".malpi"]
    assert boots(tmp_path) == label("a")


def test_with_policy_path_pushes_run_but_only_the_path_boots(tmp_path):
    """policy.path decides the boot: keeping is refused (it would not boot), before any swap."""
    store = PolicyStore(tmp_path / "store")
    with running_link(link_config(tmp_path)) as d, d.client() as c:
        s = c.status()
        path = str(tmp_path / "a.malpi")
        assert s.boot_policy_source == s.policy_source == f"policy.path {path}"
        with pytest.raises(RobotError, match="refused: no previous policy to roll back to"):
            c.rollback_policy()
        episode = s.episode
        with pytest.raises(RobotError, match="refused: policy.path is set"):
            c.load_policy(bundles()["b"], keep=True)
        assert c.status().episode == episode and d.robot.loop.policy.version == label("a")
        c.load_policy(bundles()["b"])
        with pytest.raises(RobotError, match="refused: policy.path is set"):
            c.keep_policy()
        s = c.status()
        assert (s.policy_version, s.boot_policy_version) == (label("b"), label("a"))
        back = c.rollback_policy()
        assert back.version == label("a") and back.persisted
        assert c.status().policy_source == f"policy.path {path}"
    assert store.history() == [] and files(store) == []


def test_a_keep_that_cannot_be_written_changes_nothing(tmp_path, monkeypatch):
    store = kept(tmp_path, "a")
    real_commit, real_put = PolicyStore.commit, PolicyStore.put

    def read_only(*args, **kwargs):
        raise OSError("Read-only file system")

    config = link_config(tmp_path, **STORE_BOOT)
    with running_link(config, in_process=True) as d, d.client() as c:
        loop = d.robot.loop
        # A push with keep whose file cannot be stored is refused whole: no swap.
        monkeypatch.setattr(PolicyStore, "put", read_only)
        episode = c.status().episode
        with pytest.raises(RobotError, match="refused: cannot keep it: .*Read-only"):
            c.load_policy(bundles()["b"], keep=True)
        assert loop.policy.version == label("a") and c.status().episode == episode
        monkeypatch.setattr(PolicyStore, "put", real_put)
        # A keep whose history cannot be written: refused, store and running policy as they were.
        c.load_policy(bundles()["b"])
        monkeypatch.setattr(PolicyStore, "commit", read_only)
        with pytest.raises(RobotError, match="refused: cannot keep .*Read-only"):
            c.keep_policy()
        s = c.status()
        assert (s.policy_version, s.boot_policy_version) == (label("b"), label("a"))
        assert [e.label for e in store.history()] == [label("a")]
        # A push with keep that runs but whose history cannot be written: says it is not kept.
        c.load_policy(bundles()["a"])  # the boot policy again
        not_kept = c.load_policy(bundles()["b"], keep=True)
        assert not_kept.version == label("b") and not not_kept.persisted
        assert "running, not kept: the policy store cannot be written" in not_kept.note
        assert c.status().boot_policy_version == label("a")
        monkeypatch.setattr(PolicyStore, "commit", real_commit)
        assert c.keep_policy().changed  # the disk is back: keeping works
        assert c.status().boot_policy_version == label("b")
    assert [e.label for e in store.history()] == [label("a"), label("b")]


def test_a_failed_rollback_of_the_boot_policy_says_what_still_boots(tmp_path, monkeypatch):
    store = kept(tmp_path, "a", "b")
    with running_link(link_config(tmp_path, **STORE_BOOT), in_process=True) as d, d.client() as c:

        def read_only(*args, **kwargs):
            raise OSError("Read-only file system")

        monkeypatch.setattr(PolicyStore, "commit", read_only)
        back = c.rollback_policy()
        assert back.version == label("a") and not back.persisted
        assert back.note.startswith(f"rolled back, but the car still boots {label('b')}")
        s = c.status()
        assert (s.policy_version, s.boot_policy_version) == (label("a"), label("b"))
        assert d.robot.loop.policy.version == label("a")
    assert [e.label for e in store.history()] == [label("a"), label("b")]


def test_malpi_push_keep_and_status_say_what_boots(tmp_path, capsys):
    from malpi.cli import main

    kept(tmp_path, "a")
    (tmp_path / "b.malpi").write_bytes(bundles()["b"])
    with running_link(link_config(tmp_path, **STORE_BOOT)) as d:
        host = d.link.command_endpoint
        opts = ["--insecure", "--timeout", "10"]

        assert main(["push", host, str(tmp_path / "b.malpi"), *opts]) == 0
        out = capsys.readouterr().out
        assert f"running {label('b')} (was {label('a')})" in out
        assert f"running, not kept: the car boots {label('a')} (kept in the store" in out
        assert main(["status", host, *opts]) == 0
        out = capsys.readouterr().out
        assert f"policy    {label('b')} (pushed " in out
        assert f"boots     {label('a')} (kept in the store, pushed " in out
        assert main(["push", host, "--keep", *opts]) == 0
        out = capsys.readouterr().out
        assert f"kept {label('b')}: the car boots it from now on" in out
        assert main(["status", host, *opts]) == 0
        assert "boots     the same" in capsys.readouterr().out
        assert main(["push", host, "--keep", *opts]) == 0
        assert "is the boot policy already: nothing changed" in capsys.readouterr().out
        assert main(["push", host, "--rollback", *opts]) == 0
        out = capsys.readouterr().out
        assert f"rolled back to {label('a')}" in out
        assert f"{label('b')} is no longer kept: the car boots {label('a')}" in out


def test_the_drive_log_says_what_runs_and_what_boots(tmp_path, caplog):
    kept(tmp_path, "a")
    with caplog.at_level(logging.INFO, logger="malpi.daemon.control.build"):
        with running_link(link_config(tmp_path, **STORE_BOOT)):
            pass
        with running_link(link_config(tmp_path)):  # policy.path set: the store is not used
            pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("policy: ")]
    assert lines[0].startswith(f"policy: {label('a')} (kept in the store, pushed ")
    assert lines[0].endswith("Z, LiteRT float); boots: the same")
    assert lines[1] == (
        f"policy: {label('a')} (policy.path {tmp_path / 'a.malpi'}, LiteRT float); boots: the "
        f"same (policy.path is set: {label('a')}, kept in the store, is not used)"
    )


def test_a_plain_push_is_encoded_without_keep():
    """An older robot refuses unknown fields: a push that does not keep does not send one."""
    plain = schema.encode(schema.LoadPolicy(v=1, bundle=b"PK"))
    assert b"keep" not in plain and schema.decode_request(plain).keep is False
    kept_push = schema.decode_request(schema.encode(schema.LoadPolicy(v=1, bundle=b"", keep=True)))
    assert kept_push.keep is True
