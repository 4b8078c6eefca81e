"""``malpi web`` from the command line: the password, what it refuses to serve, and HTTPS."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest
from link_helpers import link_config, running_link
from web_helpers import Http, running_console

from malpi.web.auth import check_password
from malpi.web.tls import server_context


def malpi(*args, stdin: str | None = None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "malpi", *args], input=stdin, capture_output=True, text=True,
        timeout=60, env=env,
    )  # fmt: skip


def test_set_password_stores_only_a_hash(tmp_path):
    path = tmp_path / "web" / "password"
    out = malpi("web", "--set-password", "--set", f"web.password_file='{path}'",
                stdin="a long enough password\n")  # fmt: skip
    assert out.returncode == 0, out.stderr
    stored = path.read_text()
    assert "a long enough password" not in stored
    assert check_password("a long enough password", stored.strip())
    assert path.stat().st_mode & 0o077 == 0  # only its owner reads it
    short = malpi("web", "--set-password", "--set", f"web.password_file='{path}'", stdin="short\n")
    assert short.returncode == 1 and "8 to" in short.stderr
    assert path.read_text() == stored  # nothing changed


def test_refuses_to_serve_without_a_password_or_open_to_the_network(tmp_path):
    out = malpi("web", "--set", f"web.password_file='{tmp_path / 'none'}'")
    assert (
        out.returncode == 2 and "no password set" in out.stderr and "--set-password" in out.stderr
    )
    out = malpi("web", "--no-login", "--listen", "0.0.0.0:8080")
    assert out.returncode == 2 and "web.login" in out.stderr and "network" in out.stderr
    bad = tmp_path / "password"
    bad.write_text("hunter2\n")
    out = malpi("web", "--set", f"web.password_file='{bad}'")
    assert out.returncode == 2 and "not a password hash" in out.stderr


def test_https_with_a_self_signed_certificate(tmp_path):
    context = server_context("", "", str(tmp_path / "tls"))
    assert (tmp_path / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    again = server_context("", "", str(tmp_path / "tls"))  # kept, not made again
    assert again is not None and (tmp_path / "tls" / "cert.pem").exists()
    with (
        running_link(link_config(tmp_path)) as daemon,
        running_console(daemon, ssl_context=context) as console,
    ):
        assert console.url.startswith("https://")
        http = Http(console)
        try:
            unverified = ssl.create_default_context()
            unverified.check_hostname = False
            unverified.verify_mode = ssl.CERT_NONE
            status, body = http.request(
                "POST", "/api/login", json={"password": console.password}, ssl=unverified
            )
            assert status == 200
            cookie = next(iter(http.session.cookie_jar))
            assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
        finally:
            http.close()


def test_a_broken_certificate_is_named(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate")
    key.write_text("nor a key")
    with pytest.raises(ValueError, match="web.cert"):
        server_context(str(cert), str(key), str(tmp_path))
