"""``malpi bench web``: the browser console's video and control latency, end to end, on loopback.

Three processes, as on the robot, plus the browsers that stand for the operators' machines:

- ``malpi drive`` on the simulator in manual mode (:class:`~malpi.bench.daemon.BenchDaemon`:
  ``Nice=-5``, real-time where permitted, recording and telemetry on, the link sending JPEG
  frames at ``link.frame_rate_hz``);
- ``malpi web --no-login`` on a loopback port, as systemd/malpi-web.service runs it (``Nice=10``,
  free to run on any core), an ordinary operator client of the daemon's link;
- Debian's headless Chromium, driven by Playwright: three pages watching the Drive tab and one
  page driving it with trusted key presses (ArrowUp down, ArrowLeft down, ArrowUp up, ArrowLeft
  up, over and over, each held a little more than 200 ms at a random phase to the control
  period, so every press and release changes the action the page asks for: straight, left,
  hard left, stop). The browser runs on the cores the daemon leaves to its children.

It is measured once quiet and once with a CPU hog (a process busy on a core, free to run on any
core the benchmark may use, the control process's too), in one run, side by side.

What is measured, and how:

- video latency: the ``frame`` message's ``t`` (the daemon's Unix time of the frame's capture)
  to the page having decoded the JPEG (drive.js: ``Date.now() - t`` after ``createImageBitmap``,
  in ``window.malpiStats.videoMs``), over all four pages. It includes the wait for the control
  period that hands the frame to the link, the link's JPEG encoding, the console's fan-out, the
  WebSocket and the decode; not drawing it on the screen.
- control latency: the input event in the page (drive.js's ``t`` in the drive message it sends,
  the Unix ms of the key event; read off the page's WebSocket by Playwright) to the motor command
  in the daemon: the first ``step`` telemetry message whose action is the new one (and whose
  predecessor's was not), its ``t`` (Unix time, taken right after the step was handed to the
  recorder) less its ``record_handoff`` stage, which is the end of ``actuation``: the drivetrain
  has the command. It includes the page's send, the console, the link, the wait for the next
  control period (up to one period: 33 ms at 30 Hz) and the period's stages up to actuation.
  A press whose new action never reached the motors before the next press counts as lost.
- missed periods: the daemon's own count (``status``), before and after each window; the
  control process's CPU time per period from its ``status`` telemetry (~1 s windows); the
  console process's CPU share from ``/proc``.

The page's clock and the daemon's are the same (one machine, ``CLOCK_REALTIME``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from malpi.bench.daemon import START_CPUS, BenchDaemon, cpu_seconds, hogs, pct

log = logging.getLogger(__name__)

TARGETS = {"video_p99_ms": 100.0, "control_p99_ms": 50.0, "missed_periods": 0}
CONDITIONS = ("quiet", "busy")
WATCHING = 3  # pages watching; one more drives
WEB_NICE = 10  # systemd/malpi-web.service's Nice=
WARM_UP = 3.0  # s after the pages show video before the first window
SETTLE = 2.0  # s with the hog running before its window opens
HOLD_S = 0.2  # each key state is held this long, plus a random part up to HOLD_JITTER_S
HOLD_JITTER_S = 0.15
# The key presses of one cycle and the action each leaves the page asking for (DEFAULT_ACTIONS:
# 2 straight, 1 left, 0 hard left; None: stop).
CYCLE = (("down", "ArrowUp"), ("down", "ArrowLeft"), ("up", "ArrowUp"), ("up", "ArrowLeft"))
CHROMIUM = os.environ.get("MALPI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}

METHOD = {
    "video": "frame message's t (daemon's Unix time of capture) to the page having decoded it "
    "(drive.js: Date.now() - t after createImageBitmap), all pages",
    "control": "the page's input event (drive.js's t in the drive message, Unix ms of the key "
    "event) to the motor command: t of the first step whose action is the new one, less its "
    "record_handoff stage (the end of actuation); includes the wait for the next control period",
    "missed_periods": "the daemon's status: missed_periods after the window less before it",
    "control_cpu": "the control process's CPU ms per period (status telemetry, ~1 s windows)",
}


def run(
    seconds: float = 60.0,
    rate_hz: float = 30.0,
    json_path: str | None = None,
    conditions: tuple[str, ...] = CONDITIONS,
    busy: int = 1,
) -> dict[str, Any]:
    from malpi.bench.loop import daemon_overrides
    from malpi.config import find_config, load_config

    result: dict[str, Any] = {
        "rate_hz": rate_hz,
        "seconds": seconds,
        "conditions": list(conditions),
        "hogs_when_busy": busy,
        "pages": {"watching": WATCHING, "driving": 1},
        "console": "malpi web --no-login on 127.0.0.1, Nice=10, any core",
        "targets": TARGETS,
        "method": METHOD,
    }
    with tempfile.TemporaryDirectory() as tmp:
        overrides = daemon_overrides(tmp, rate_hz)
        result["link_frame_rate_hz"] = load_config(find_config(), overrides).link.frame_rate_hz
        daemon = BenchDaemon(overrides, mode="manual")
        try:
            telemetry = Telemetry(daemon).start()
            with Console(daemon) as console, Browser(console.url) as browser:
                result["browser_on_cpus"] = daemon.client_cpus
                time.sleep(WARM_UP)
                for name in conditions:
                    with hogs(busy if name == "busy" else 0):
                        if name == "busy":
                            time.sleep(SETTLE)
                        result[name] = measure(daemon, telemetry, console, browser, seconds)
            telemetry.stop()
        finally:
            daemon.stop()
    result["targets_met"] = all(result[c]["all_targets_met"] for c in conditions)
    print(format_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def measure(daemon, telemetry, console, browser, seconds: float) -> dict[str, Any]:
    with daemon.client() as c:
        before = c.status()
    web0 = cpu_seconds(console.proc.pid)
    browser.reset()
    machine0, own0 = machine_cpu(), own_cpu()
    t0 = time.time()
    browser.drive(seconds)
    t1 = time.time()
    machine1, own1 = machine_cpu(), own_cpu()
    time.sleep(0.3)  # the last release's step
    web1 = cpu_seconds(console.proc.pid)
    with daemon.client() as c:
        after = c.status()
    video = browser.video()
    presses = browser.presses(t0, t1)
    control = match_presses(presses, telemetry.steps_between(t0, t1 + 0.3))
    statuses = telemetry.statuses_between(t0, t1)
    cpu = [s.cpu_ms_per_period for s in statuses if s.cpu_ms_per_period is not None]
    lat = control.pop("latencies_ms")
    all_video = [v for page in video for v in page]
    r: dict[str, Any] = {
        "seconds": round(t1 - t0, 2),
        "video": {
            "p50_ms": pct(all_video, 50),
            "p99_ms": pct(all_video, 99),
            "max_ms": round(max(all_video), 3) if all_video else None,
            "frames": len(all_video),
            "frames_per_page": [len(v) for v in video],
            "fps_per_page": [round(len(v) / (t1 - t0), 2) for v in video],
        },
        "control": {
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "max_ms": round(max(lat), 3) if lat else None,
            **control,
            "refused": browser.refused,
        },
        "periods": after.periods - before.periods,
        "missed_periods": after.missed_periods - before.missed_periods,
        "control_cpu_ms_per_period": {"median": pct(cpu, 50), "p99": pct(cpu, 99)},
        # What else ran on the machine meanwhile (it may be shared): all its cores' busy time
        # and this benchmark's part of it (every process it started, the hog included), in % of
        # one core, and the load average at the end.
        "machine_cpu_pct": round((machine1 - machine0) / (t1 - t0) * 100, 1),
        "benchmark_cpu_pct": round((own1 - own0) / (t1 - t0) * 100, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "console_cpu_pct": (
            round((web1 - web0) / (t1 - t0) * 100, 1) if None not in (web0, web1) else None
        ),
    }
    met = {
        "video_p99_ms": r["video"]["p99_ms"] is not None
        and r["video"]["p99_ms"] <= TARGETS["video_p99_ms"],
        "control_p99_ms": r["control"]["p99_ms"] is not None
        and r["control"]["p99_ms"] <= TARGETS["control_p99_ms"]
        and r["control"]["lost"] == 0,
        "missed_periods": r["missed_periods"] <= TARGETS["missed_periods"],
    }
    r["targets_met"] = met
    r["all_targets_met"] = all(met.values())
    return r


def match_presses(
    presses: list[tuple[float, int | None]], steps: list[tuple[float, int | None]]
) -> dict[str, Any]:
    """Each press (input Unix s, the action asked for) to the motor command that carried it out:
    the first step (motor Unix s, action) at or after the press with that action, whose
    predecessor had another, before the next press. Presses whose action was already on the
    motors (e.g. a stop after the deadman had stopped the car) are not latencies: counted apart."""
    latencies, lost, already = [], 0, 0
    times = [t for t, _ in steps]
    for i, (t_in, action) in enumerate(presses):
        t_next = presses[i + 1][0] if i + 1 < len(presses) else float("inf")
        k = int(np.searchsorted(times, t_in))
        if k > 0 and steps[k - 1][1] == action:
            already += 1
            continue
        while k < len(steps) and steps[k][0] < t_next and steps[k][1] != action:
            k += 1
        if k < len(steps) and steps[k][0] < t_next:
            latencies.append(round((steps[k][0] - t_in) * 1000, 3))
        else:
            lost += 1
    return {
        "presses": len(presses),
        "matched": len(latencies),
        "lost": lost,
        "already_on_the_motors": already,
        "latencies_ms": latencies,
    }


def machine_cpu() -> float:
    """CPU seconds all cores spent busy (not idle or waiting for I/O) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds used so far by this process and every process it started, theirs too."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += cpu_seconds(pid) or 0.0
        todo += children.get(pid, [])
    return total


class Telemetry:
    """The daemon's step (motor time, action) and status telemetry, collected in a thread."""

    def __init__(self, daemon: BenchDaemon):
        self.daemon = daemon
        self.steps: list[tuple[float, int | None]] = []
        self.statuses: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-web-telemetry", daemon=True)

    def start(self) -> Telemetry:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = self.daemon.client()
        client.subscribe(["step", "status"])
        try:
            while not self._stop.is_set():
                msg = client.receive(0.05)
                if msg is None:
                    continue
                topic, body = msg
                if topic == "step":
                    # body.t is taken right after the hand-off to the recorder: less that
                    # stage, it is the end of actuation, when the drivetrain had the command.
                    handoff = body.latency_ms.get("record_handoff", 0.0) / 1000
                    self.steps.append((body.t - handoff, body.action))
                else:
                    self.statuses.append(body)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def steps_between(self, t0: float, t1: float) -> list[tuple[float, int | None]]:
        # from a second before: the motors' state when the first press came
        return sorted(s for s in list(self.steps) if t0 - 1.0 <= s[0] <= t1)

    def statuses_between(self, t0: float, t1: float) -> list[Any]:
        return [s for s in list(self.statuses) if t0 <= s.t <= t1]


class Console:
    """``malpi web --no-login`` for ``daemon`` on a free loopback port, as its unit runs it."""

    def __init__(self, daemon: BenchDaemon, timeout: float = 30.0):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        args = [
            sys.executable, "-m", "malpi", "web", "--no-login", "--insecure",
            "--listen", f"127.0.0.1:{port}",
            "--set", f'link.command="{daemon.command}"',
            "--set", f'link.telemetry="{daemon.telemetry}"',
        ]  # fmt: skip
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_as_the_web_unit,  # noqa: PLW1509 - a plain setpriority
        )
        with contextlib.suppress(OSError):  # any core, as the unit (no CPUAffinity=)
            os.sched_setaffinity(self.proc.pid, START_CPUS)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "api/session", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                self.stop()
                raise RuntimeError("malpi web did not start:\n" + self.log.read()[-3000:])
            time.sleep(0.1)

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _as_the_web_unit() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, WEB_NICE)


class Browser:
    """Headless Chromium: WATCHING pages on the Drive tab and one driving it, each in a browser
    context of its own (separate machines)."""

    def __init__(self, url: str):
        from playwright.sync_api import sync_playwright

        if not os.path.exists(CHROMIUM):
            raise RuntimeError(f"no Chromium at {CHROMIUM} (apt install chromium)")
        self.url = url
        self.sent: list[tuple[float, int | None]] = []  # (input Unix s, action) per drive sent
        self.refused = 0
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"]
            )
            self.pages = [self._open(driving=i == WATCHING) for i in range(WATCHING + 1)]
            self.driver = self.pages[-1]
            # The action table has come (with the first status) when the probabilities show.
            self.driver.wait_for_selector(".probs .prob", timeout=15_000)
        except BaseException:
            self.close()
            raise

    def _open(self, driving: bool):
        page = self._browser.new_context(viewport=VIEWPORT).new_page()
        if driving:
            page.on("websocket", self._on_socket)
        page.goto(self.url)
        page.wait_for_selector("#console:not([hidden])", timeout=15_000)
        page.wait_for_function("() => window.malpiStats && malpiStats.frames > 0", timeout=15_000)
        return page

    def _on_socket(self, ws) -> None:
        ws.on("framesent", self._on_sent)
        ws.on("framereceived", self._on_received)

    def _on_sent(self, payload: Any) -> None:
        if not isinstance(payload, str):
            return
        with contextlib.suppress(ValueError, TypeError, KeyError):
            msg = json.loads(payload)
            if msg.get("type") == "drive" and "t" in msg:
                self.sent.append((msg["t"] / 1000, msg.get("action")))

    def _on_received(self, payload: Any) -> None:
        if isinstance(payload, str) and '"drive"' in payload:
            with contextlib.suppress(ValueError, TypeError):
                for m in json.loads(payload):
                    if m.get("topic") == "drive" and not m.get("accepted"):
                        self.refused += 1

    def reset(self) -> None:
        for page in self.pages:
            page.evaluate("malpiStats.videoMs.length = 0")
        self.refused = 0

    def video(self) -> list[list[float]]:
        """Each page's video latencies (ms) since reset."""
        return [page.evaluate("malpiStats.videoMs.slice()") for page in self.pages]

    def drive(self, seconds: float) -> None:
        """The key cycle, for ``seconds``, ending with every key up."""
        keyboard = self.driver.keyboard
        end = time.monotonic() + seconds
        rng = random.Random(14)
        while time.monotonic() < end:
            for how, key in CYCLE:
                getattr(keyboard, how)(key)
                self.driver.wait_for_timeout((HOLD_S + rng.random() * HOLD_JITTER_S) * 1000)

    def presses(self, t0: float, t1: float) -> list[tuple[float, int | None]]:
        """The drive messages that changed the action asked for, with their input time, in the
        window."""
        out, last = [], "none"
        for t, action in list(self.sent):
            if action != last:
                if t0 <= t <= t1:
                    out.append((t, action))
                last = action
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._browser.close()
        self._pw.stop()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def format_table(r: dict[str, Any]) -> str:
    conds = r["conditions"]

    def f(v):
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    def mark(m, key):
        return "met" if m["targets_met"][key] else "MISSED"

    names = {"quiet": "quiet", "busy": f"{r['hogs_when_busy']} CPU hog(s)"}
    lines = [
        f"malpi drive on the simulator at {r['rate_hz']:g} Hz (manual mode), video at "
        f"{r['link_frame_rate_hz']:g} frames/s; malpi web (no login, loopback, Nice=10, any core);",
        f"headless Chromium on CPUs {r.get('browser_on_cpus') or 'any'}: {WATCHING} pages watching "
        f"the Drive tab, 1 driving it with the keyboard; {r['seconds']:g} s per condition",
        f"{'':<40}" + "".join(f"{names[c]:>22}" for c in conds) + f"{'target':>10}",
    ]
    rows = [
        ("video latency p50 / p99 ms", lambda m: f"{f(m['video']['p50_ms'])} / "
         f"{f(m['video']['p99_ms'])}", "<= 100"),
        ("  target", lambda m: mark(m, "video_p99_ms"), ""),
        ("  slowest ms", lambda m: f(m["video"]["max_ms"]), ""),
        ("  frames/s decoded (per page)", lambda m: "/".join(f"{x:.1f}" for x in
         m["video"]["fps_per_page"]), ""),
        ("  frames decoded (per page)", lambda m: "/".join(map(str, m["video"]["frames_per_page"])),
         ""),
        ("control latency p50 / p99 ms", lambda m: f"{f(m['control']['p50_ms'])} / "
         f"{f(m['control']['p99_ms'])}", "<= 50"),
        ("  target", lambda m: mark(m, "control_p99_ms"), ""),
        ("  slowest ms", lambda m: f(m["control"]["max_ms"]), ""),
        ("  presses (matched, lost)", lambda m: f"{m['control']['presses']} "
         f"({m['control']['matched']}, {m['control']['lost']})", "0 lost"),
        ("  drives refused by the robot", lambda m: str(m["control"]["refused"]), ""),
        ("missed periods (of)", lambda m: f"{m['missed_periods']} ({m['periods']})", "0"),
        ("  target", lambda m: mark(m, "missed_periods"), ""),
        ("control CPU ms/period median / p99", lambda m: f"{f(m['control_cpu_ms_per_period']['median'])}"
         f" / {f(m['control_cpu_ms_per_period']['p99'])}", ""),
        ("console process CPU % of a core", lambda m: f(m["console_cpu_pct"]), ""),
        ("machine CPU % of a core (this bench's)", lambda m: f"{f(m['machine_cpu_pct'])} "
         f"({f(m['benchmark_cpu_pct'])})", ""),
        ("load average at the end", lambda m: f"{m['load_average']:.2f}", ""),
    ]  # fmt: skip
    for label, cell, target in rows:
        row = f"{label:<40}" + "".join(f"{cell(r[c]):>22}" for c in conds) + f"{target:>10}"
        lines.append(row.rstrip())
    lines += [
        "video: the frame's capture (the daemon's clock) to the page having decoded it, all "
        f"{WATCHING + 1} pages",
        "control: the key event in the driving page (drive.js's t) to the daemon's motor command "
        "(the first step with the",
        "  new action: its t less its record_handoff stage, the end of actuation); includes the "
        f"wait for the next period (<= {1000 / r['rate_hz']:.0f} ms)",
        "a press is lost if its action never reached the motors before the next press",
        "all targets met" if r["targets_met"] else "TARGETS MISSED",
    ]
    return "\n".join(lines)
