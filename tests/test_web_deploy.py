"""The console's Policies tab against the real daemon on the simulator: its routes over HTTP
(list, push with its size limit, keep, rollback), then the page in headless Chromium."""

from __future__ import annotations

import hashlib

import pytest
from extras import HAS_TF
from link_helpers import bundles, link_config, running_link
from web_helpers import DESKTOP, PHONE, Http, browser, login, running_console

from malpi.policy.bundle import PolicyBundle
from malpi.web import deploy

STORE_BOOT = {"policy.path": ""}  # boot from the policy store, as a robot does by default


def label(name: str) -> str:
    return PolicyBundle.from_bytes(bundles()[name], check_models=False).label


@pytest.fixture
def console(tmp_path):
    with (
        running_link(link_config(tmp_path, **STORE_BOOT)) as daemon,
        running_console(daemon) as console,
    ):
        yield console


@pytest.fixture
def http(console):
    client = Http(console)
    assert client.login()[0] == 200
    yield client
    client.close()


def push(http, data, keep=False, **kw):
    path = "/api/policy?keep=1" if keep else "/api/policy"
    return http.request("POST", path, data=data, **kw)


def test_push_keep_and_roll_back(http, console):
    status, body = http.get("/api/policies")
    assert status == 200 and body["history"] == [] and body["policy_path"] is None
    assert body["shipped"]["evaluation"]["dagger_iterations"] >= 1
    # A fresh policy runs where TensorFlow can make one (the test camera fits no shipped
    # policy), none on the robot's install.
    assert (body["running"] is not None and body["running"]["running"]) == HAS_TF
    status, body = push(http, bundles()["b"])
    assert status == 200 and body["version"] == label("b") and not body["persisted"]
    status, body = http.get("/api/policies")
    assert body["running"]["label"] == label("b") and not body["running"]["boots"]
    assert body["history"] == []
    status, body = http.post("/api/policy/keep")
    assert status == 200 and body["changed"] and body["boot_policy_version"] == label("b")
    status, body = push(http, bundles()["a"], keep=True)
    assert status == 200 and body["persisted"]
    status, body = http.get("/api/policies")
    assert [p["label"] for p in body["history"]] == [label("a"), label("b")]
    assert body["history"][0]["running"] and body["history"][0]["boots"]
    assert body["history"][0]["sha256"] == hashlib.sha256(bundles()["a"]).hexdigest()
    status, body = http.post("/api/policy/rollback")
    assert status == 200 and body["version"] == label("b") and body["persisted"]
    with console.daemon.client() as c:
        assert c.status().boot_policy_version == label("b")


def test_bad_pushes(http, console, monkeypatch):
    status, body = push(http, b"")
    assert (status, body["error"]) == (400, "invalid")
    status, body = push(http, bundles()["a"][:5000])  # truncated
    assert (status, body["error"]) == (400, "rejected") and "not a readable" in body["message"]
    status, body = push(http, bundles()["a"], csrf=False)
    assert status == 403
    monkeypatch.setattr(deploy, "MAX_BUNDLE_BYTES", 4096)
    # Refused from its Content-Length, before the body is read.
    status, body = push(http, bytes(8192))
    assert (status, body["error"]) == (413, "too_large")

    async def chunks():  # no Content-Length: counted as it comes
        for _ in range(8):
            yield bytes(1024)

    status, body = push(http, chunks())
    assert (status, body["error"]) == (413, "too_large")

    # A second push while one is under way is refused without its body being read.
    lock = console.app[deploy.PUSHING]
    console.run(lock.acquire())
    try:
        status, body = push(http, bytes(100))
    finally:
        console.loop.call_soon_threadsafe(lock.release)
    assert (status, body["error"]) == (409, "busy")
    with console.daemon.client() as c:
        assert c.status().policy_version != label("b")  # nothing ran
    assert http.get("/api/policies")[0] == 200  # the console serves on


def test_the_page_pushes_a_bundle_and_keeps_it(console, tmp_path):
    path = tmp_path / "b.malpi"
    path.write_bytes(bundles()["b"])
    with browser() as b:
        for viewport in (PHONE, DESKTOP):
            page = login(b.new_page(**viewport), console)
            page.click("[data-tab=deploy]")
            page.wait_for_selector(".dep-card")
            assert page.evaluate("() => document.documentElement.scrollWidth") <= page.evaluate(
                "() => window.innerWidth"
            )
            page.close()
        page = login(b.new_page(**PHONE), console)
        page.click("[data-tab=deploy]")
        page.wait_for_selector(".dep-card")
        page.set_input_files("#dep-file", str(path))
        page.check("#dep-keep-new")
        page.click(".dep-upload")
        page.wait_for_function(
            f"() => document.querySelector('.dep-message').textContent.startsWith('{label('b')} runs')",
            timeout=30_000,
        )
        page.wait_for_selector(f".dep-list .dep-card[data-label='{label('b')}'] .dep-flag.boot")
        assert "kept" in page.inner_text(".dep-message")
    with console.daemon.client() as c:
        s = c.status()
    assert s.policy_version == s.boot_policy_version == label("b")
