"""``malpi keys authorize|trust``: what a user sees when the key argument is wrong."""

from __future__ import annotations

import pytest

from malpi.cli import main
from malpi.protocol.keys import KeyFileError, authorize, init_keys, trust


def test_missing_key_file_is_named(tmp_path, capsys):
    missing = str(tmp_path / "server.key")
    assert main(["keys", "trust", "robot.local", missing, "--dir", str(tmp_path / "k")]) == 1
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err and "Z85-encoded" not in err
    assert main(["keys", "authorize", "missing.key", "--dir", str(tmp_path / "auth")]) == 1
    assert "missing.key does not exist" in capsys.readouterr().err
    assert not (tmp_path / "k").exists() and not (tmp_path / "auth").exists()


def test_a_40_character_argument_is_taken_as_a_key(tmp_path):
    with pytest.raises(KeyFileError, match="not a Z85-encoded 32-byte key"):
        trust("robot", "," * 40, tmp_path)
    with pytest.raises(KeyFileError, match="not a Z85-encoded 32-byte key"):
        authorize("," * 40, tmp_path)
    key = init_keys(tmp_path / "robot", "server").public
    assert trust("robot", key, tmp_path / "laptop").public == key
    assert authorize(key, tmp_path / "auth", "robot").name == "robot"
