"""The console's Episodes tab against the real daemon on the simulator: its routes over HTTP
(list, steps, frames, cut, delete, outcome, download), then the page in headless Chromium."""

from __future__ import annotations

import time

import pytest
from daemon_helpers import PERIOD, moving, wait_until
from link_helpers import link_config, running_link
from web_helpers import PHONE, Http, browser, login, running_console

from malpi.operator.pull import list_all
from malpi.recorder.store import EpisodeStore
from malpi.web.curate import FrameCache


@pytest.fixture
def console(tmp_path):
    """Three ended episodes (the second failed, -2.5); the fourth is being recorded."""
    with running_link(link_config(tmp_path)) as daemon, running_console(daemon) as console:
        with daemon.client() as c:
            c.set_mode("auto")
            wait_until(lambda: moving(daemon.factory))
            ended = []
            for outcome, reward in (("finished", None), ("failed", -2.5), ("finished", None)):
                time.sleep(14 * PERIOD)
                ended.append(c.end_episode(outcome, reward).ended)

            def written():
                listed = {e.id: e for e in list_all(c)}
                recording = any(i > ended[-1] and e.outcome == "running" for i, e in listed.items())
                return recording and all(
                    i in listed and listed[i].outcome != "running" for i in ended
                )

            wait_until(written, 10)
            c.set_mode("paused")
        console.ended = ended
        console.db = tmp_path / "episodes.sqlite"
        yield console


@pytest.fixture
def http(console):
    client = Http(console)
    assert client.login()[0] == 200
    yield client
    client.close()


def raw_get(http, path):
    """(status, content type, body bytes)."""

    async def go():
        async with http.session.get(path) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()

    return http.console.run(go())


def rows(db, episode):
    with EpisodeStore(db, readonly=True) as s:
        return list(s.raw_step_rows(episode))


def test_episodes_steps_and_frames(http, console):
    status, body = http.get("/api/episodes")
    assert status == 200
    listed = {e["id"]: e for e in body["episodes"]}
    assert [listed[i]["outcome"] for i in console.ended] == ["finished", "failed", "finished"]
    ep = console.ended[1]
    status, body = http.get(f"/api/episodes/{ep}")
    assert status == 200 and body["episode"]["final_reward"] == -2.5
    stored = rows(console.db, ep)
    assert [s["step"] for s in body["steps"]] == [r[0] for r in stored]
    assert [s["action"] for s in body["steps"]] == [r[1] for r in stored]
    first = body["steps"][0]
    assert set(first) == {"step", "action", "source", "reward", "value", "probs"}
    assert first["source"] == "policy" and abs(sum(first["probs"]) - 1) < 1e-3
    assert [a["name"] for a in body["actions"]][:1] and body["rate_hz"] == 50.0
    for step in (0, len(stored) - 1):
        status, kind, jpeg = raw_get(http, f"/api/episodes/{ep}/frame/{step}")
        assert (status, kind) == (200, "image/jpeg") and jpeg == bytes(stored[step][10])
    # A thumbnail of an episode not opened: fetched alone.
    other = console.ended[2]
    status, _, jpeg = raw_get(http, f"/api/episodes/{other}/frame/0")
    assert status == 200 and jpeg == bytes(rows(console.db, other)[0][10])


def test_bad_ids_and_steps(http, console):
    for path, code in (
        ("/api/episodes/abc", 400),
        ("/api/episodes/99999999999999999999", 400),
        ("/api/episodes/-1", 400),
        ("/api/episodes/424242", 404),
        (f"/api/episodes/{console.ended[0]}/frame/99999", 404),
        (f"/api/episodes/{console.ended[0]}/frame/x", 400),
    ):
        status, body = http.get(path)
        assert status == code, (path, body)
    listed = http.get("/api/episodes")[1]["episodes"]
    running = max(e["id"] for e in listed if e["outcome"] == "running")
    status, body = http.get(f"/api/episodes/{running}")
    assert (status, body["error"]) == (409, "refused")


def test_cut_delete_and_outcome(http, console):
    ep, other = console.ended[0], console.ended[2]
    stored = rows(console.db, ep)
    assert http.get(f"/api/episodes/{ep}")[0] == 200  # cached now
    status, body = http.post(f"/api/episodes/{ep}/cut", {"from_step": 2, "to_step": 5})
    assert status == 200 and body["removed"] == 3 and body["tail"] is not None
    tail = body["tail"]["id"]
    # The cache was dropped: what the page opens next is what the robot holds.
    status, body = http.get(f"/api/episodes/{ep}")
    assert [s["step"] for s in body["steps"]] == [0, 1]
    status, body = http.get(f"/api/episodes/{tail}")
    assert len(body["steps"]) == len(stored) - 5 and body["episode"]["notes"].startswith("steps 5-")
    status, _, jpeg = raw_get(http, f"/api/episodes/{tail}/frame/0")
    assert jpeg == bytes(stored[5][10])
    for bad, code in (
        ({"from_step": 3, "to_step": 3}, 400),
        ({"from_step": "1", "to_step": 3}, 400),
        ({"from_step": 0, "to_step": 2**64}, 400),
        ({"from_step": 50_000, "to_step": 60_000}, 400),  # the robot: no step there
        ({"from_step": 0, "to_step": 2}, 400),  # every step left: delete instead
    ):
        status, body = http.post(f"/api/episodes/{ep}/cut", bad)
        assert status == code, (bad, body)
    status, body = http.post(
        f"/api/episodes/{ep}/outcome", {"outcome": "failed", "final_reward": -1}
    )
    assert status == 200 and (body["episode"]["outcome"], body["episode"]["final_reward"]) == (
        "failed",
        -1.0,
    )
    assert http.get(f"/api/episodes/{ep}")[1]["episode"]["outcome"] == "failed"
    for bad in ({"outcome": "running"}, {"outcome": "failed", "final_reward": "x"}):
        assert http.post(f"/api/episodes/{ep}/outcome", bad)[0] == 400
    status, body = http.request(
        "POST", f"/api/episodes/{ep}/outcome", data=b'{"outcome": "failed", "final_reward": NaN}'
    )
    assert status == 400 and "finite" in body["message"]
    # Without the session's CSRF token nothing changes.
    status, _ = http.post(f"/api/episodes/{other}/delete", csrf=False)
    assert status == 403
    status, body = http.post(f"/api/episodes/{other}/delete")
    assert status == 200 and body["removed"] > 0
    assert http.get(f"/api/episodes/{other}")[0] == 404
    assert http.post(f"/api/episodes/{other}/delete")[0] == 404


def test_a_change_made_elsewhere_is_never_shown_stale(http, console):
    ep = console.ended[0]
    assert len(http.get(f"/api/episodes/{ep}")[1]["steps"]) > 4
    with console.daemon.client() as c:
        c.cut_episode(ep, 0, 3)  # another client trims it
    status, body = http.get(f"/api/episodes/{ep}")
    assert len(body["steps"]) == len(rows(console.db, ep))
    status, _, jpeg = raw_get(http, f"/api/episodes/{ep}/frame/0")
    assert jpeg == bytes(rows(console.db, ep)[0][10])


def test_download_is_a_database_of_that_episode(http, console, tmp_path):
    ep = console.ended[1]
    status, kind, data = raw_get(http, f"/api/episodes/{ep}/download")
    assert status == 200 and kind == "application/vnd.sqlite3"
    path = tmp_path / "download.sqlite"
    path.write_bytes(data)
    with EpisodeStore(path, readonly=True) as s, EpisodeStore(console.db, readonly=True) as robot:
        [info] = s.episodes()
        there = robot.episode(ep)
        assert (info.uuid, info.outcome, info.final_reward) == (there.uuid, "failed", -2.5)
        assert list(s.raw_step_rows(info.id)) == list(robot.raw_step_rows(ep))
    assert raw_get(http, "/api/episodes/424242/download")[0] == 404


def test_the_frame_cache_is_bounded():
    cache = FrameCache(limit=1000)
    v1, v2 = (1, "a", 10, 0.0), (2, "b", 10, 0.0)
    for i in range(10):
        cache.put(v1, i, bytes(300))
    assert cache.size <= 1000 and cache.get(v1, 9) is not None and cache.get(v1, 0) is None
    cache.put(v2, 0, bytes(2000))  # larger than the whole cache: not kept
    assert cache.get(v2, 0) is None
    cache.forget(1)
    assert cache.size == 0


def test_the_page_plays_and_cuts_an_episode_on_a_phone(console):
    ep = console.ended[1]
    n = len(rows(console.db, ep))
    with browser() as b:
        page = login(b.new_page(**PHONE), console)
        page.click("[data-tab=curate]")
        page.wait_for_selector(f".cur-card[data-episode='{ep}']")
        # Every ended episode's thumbnail loaded.
        for i in console.ended:
            page.locator(f".cur-card[data-episode='{i}'] img").scroll_into_view_if_needed()
            page.wait_for_function(
                f"() => document.querySelector(\".cur-card[data-episode='{i}'] img\").naturalWidth"
            )
        page.click(f".cur-card[data-episode='{ep}']")
        page.wait_for_selector(".cur-detail:not([hidden]) canvas")
        assert page.inner_text(".cur-head h2") == f"Episode {ep}"
        page.click(".cur-play")
        page.wait_for_function(
            f"() => document.querySelector('.cur-slider').value === '{n - 1}'", timeout=15_000
        )
        assert "step" in page.inner_text(".cur-step")
        assert page.locator(".probs .prob").count() >= 3
        pixel = page.evaluate(
            "() => Array.from(document.querySelector('.cur-canvas').getContext('2d')"
            ".getImageData(0, 0, 8, 8).data).some(v => v > 0)"
        )
        assert pixel  # a frame was drawn
        # Fits the phone: nothing wider than the screen.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        page.fill("#cur-from", "3")
        page.fill("#cur-to", "6")
        assert "Removes 3 steps" in page.inner_text(".cur-box")
        page.once("dialog", lambda d: d.accept())
        page.click(".cur-cut")
        page.wait_for_function(
            "() => document.querySelector('.cur-message').textContent.startsWith('Cut 3 steps')"
        )
    with console.daemon.client() as c:
        listed = {e.id: e for e in list_all(c)}
    assert listed[ep].steps == 3 and listed[ep].outcome == "finished"
    tail = max(listed)
    assert listed[tail].steps == n - 6 and listed[tail].outcome == "failed"
