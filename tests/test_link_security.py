"""CURVE: authorised clients in, everyone else gets no reply and no telemetry; no insecure remote bind."""

import dataclasses
import os
import socket
import stat

import pytest
import zmq
from link_helpers import link_config, running_link

from malpi.cli import main
from malpi.daemon.link.server import LinkError, LinkServer, TelemetryPublisher
from malpi.operator.client import LinkTimeout
from malpi.protocol.keys import (
    KeyFileError,
    authorize,
    init_keys,
    list_keys,
    read_key,
    revoke,
    trust,
)


def test_keys_are_private_and_not_overwritten(tmp_path):
    info = init_keys(tmp_path / "keys", "server")
    secret = tmp_path / "keys" / "server.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    assert len(info.public) == 40 and info.has_secret is False  # the .key file: public only
    with pytest.raises(KeyFileError, match="already exists"):
        init_keys(tmp_path / "keys", "server")
    assert init_keys(tmp_path / "keys", "server", force=True).public != info.public


def test_authorize_list_revoke_trust(tmp_path):
    client = init_keys(tmp_path / "laptop", "client")
    auth = tmp_path / "authorized"
    assert authorize(str(client.path), auth, "laptop").public == client.public
    assert authorize(client.public, auth, "again").public == client.public  # the Z85 key itself
    assert [k.name for k in list_keys(auth)] == ["again", "laptop"]
    other = init_keys(tmp_path / "other", "client")
    with pytest.raises(KeyFileError, match="already holds another key"):
        authorize(str(other.path), auth, "laptop")
    with pytest.raises(KeyFileError, match="neither a key file nor"):
        authorize("not-a-key", auth)
    with pytest.raises(KeyFileError, match="key name"):
        authorize(client.public, auth, "../escape")
    revoke("again", auth)
    assert [k.name for k in list_keys(auth)] == ["laptop"]
    with pytest.raises(KeyFileError, match="no authorised key named"):
        revoke("again", auth)
    t = trust("robot.local", str(client.path), tmp_path / "laptop")
    assert t.path == tmp_path / "laptop" / "servers" / "robot.local.key"
    assert read_key(t.path).public == client.public


def test_keys_cli(tmp_path, capsys):
    keys, laptop = tmp_path / "robot-keys", tmp_path / "laptop-keys"
    assert main(["keys", "init", "--server", "--dir", str(keys)]) == 0
    assert main(["keys", "init", "--dir", str(laptop)]) == 0
    assert "public key:" in capsys.readouterr().out
    cfg = tmp_path / "malpi.toml"
    cfg.write_text(f'[link]\ncurve = true\nkeys_dir = "{keys}"\n')
    client_key = str(laptop / "client.key")
    assert main(["keys", "authorize", client_key, "--name", "laptop", "--config", str(cfg)]) == 0
    assert (keys / "authorized" / "laptop.key").is_file()
    assert main(["keys", "trust", "robot", str(keys / "server.key"), "--dir", str(laptop)]) == 0
    assert main(["keys", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "authorised clients" in out and "laptop" in out and "+ secret" in out
    assert main(["keys", "revoke", "laptop", "--config", str(cfg)]) == 0
    assert not (keys / "authorized" / "laptop.key").exists()


@pytest.fixture
def curve_setup(tmp_path):
    keys = tmp_path / "robot-keys"
    server = init_keys(keys, "server")
    good = init_keys(tmp_path / "good", "client")
    init_keys(tmp_path / "bad", "client")
    authorize(str(good.path), keys / "authorized", "good")
    config = link_config(tmp_path, **{"link.curve": True, "link.keys_dir": str(keys)})
    return config, server, tmp_path


def _client(d, tmp, who, server, **kw):
    return d.client(
        insecure=False,
        server_key=server.path,
        client_key=tmp / who / "client.key_secret",
        timeout=0.7,
        **kw,
    )


def test_curve_admits_authorised_clients_only(curve_setup):
    config, server, tmp = curve_setup
    with running_link(config) as d:
        with _client(d, tmp, "good", server) as good:
            assert good.curve and good.ping() and good.status().curve
            good.subscribe()
            assert any(True for _ in good.telemetry(["step"], count=3, seconds=3))
        # An unauthorised key, and a client without CURVE: no reply, no telemetry.
        with _client(d, tmp, "bad", server) as bad, d.client(timeout=0.7) as plain:
            for c in (bad, plain):
                with pytest.raises(LinkTimeout):
                    c.ping()
                with pytest.raises(LinkTimeout):
                    c.set_mode("auto")
                assert list(c.telemetry(seconds=1.0)) == []
        assert d.robot.loop.mode == "paused"
        # Authorising takes effect at the next connection, without a restart; revoking too.
        authorize(str(tmp / "bad" / "client.key"), config.link.keys_dir + "/authorized", "bad")
        with _client(d, tmp, "bad", server) as now_good:
            assert now_good.ping()
        revoke("bad", config.link.keys_dir + "/authorized")
        with _client(d, tmp, "bad", server) as revoked, pytest.raises(LinkTimeout):
            revoked.ping()


def test_a_client_with_the_wrong_server_key_gets_nothing(curve_setup):
    config, server, tmp = curve_setup
    impostor = init_keys(tmp / "impostor", "server")
    with (
        running_link(config) as d,
        _client(d, tmp, "good", impostor) as c,
        pytest.raises(LinkTimeout),
    ):
        c.ping()


def _non_loopback_address() -> str:
    """This machine's address on its network (only named in a bind that must be refused)."""
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addr = info[4][0]
            if not addr.startswith("127."):
                return addr
    except OSError:
        pass
    return "192.0.2.1"  # TEST-NET: the refusal comes before any bind anyway


@pytest.mark.parametrize("host", ["machine", "0.0.0.0", "*"])
def test_a_non_loopback_bind_without_curve_is_refused_before_binding(tmp_path, host, monkeypatch):
    host = _non_loopback_address() if host == "machine" else host
    base = link_config(tmp_path)
    address = f"tcp://{host}:5599"
    link = dataclasses.replace(base.link, command=address)
    config = dataclasses.replace(base, link=link)
    binds = []
    real_bind = zmq.Socket.bind
    monkeypatch.setattr(zmq.Socket, "bind", lambda self, a: binds.append(a) or real_bind(self, a))
    with pytest.raises(LinkError, match="refusing to bind .* without CURVE"):
        LinkServer(config, control=None, runtime_dir=tmp_path, context=None)
    with pytest.raises(LinkError, match="refusing to bind"):
        TelemetryPublisher(dataclasses.replace(base.link, telemetry=address))
    assert binds == []  # refused before any socket was bound
