"""The daemon as the benchmarks run it: ``malpi drive`` itself, in processes of its own, as the
systemd unit starts it (``Nice=-5``, real-time scheduling as permitted), watched from outside
over its link like any operator would, with CPU hogs beside it when asked.

What the benchmarks read comes from the daemon's own telemetry: every ``step`` message carries
the period's stage times, its frame-to-motor latency and the length of the period; ``status``
carries the missed periods and the CPU time per period of the control process and of its loop
thread. The CPU time of each of the daemon's processes is also read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

NICE = -5  # systemd/malpi.service's Nice=
# The cores this process may use when it starts (``taskset`` included): the hogs run on any of
# them, whatever the process is confined to later.
START_CPUS = sorted(os.sched_getaffinity(0))
ENDPOINTS = re.compile(r"link: commands on (\S+), telemetry on (\S+)")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


class BenchDaemon:
    """``malpi drive`` started with ``overrides`` (``--set``), until :meth:`stop`."""

    def __init__(
        self,
        overrides: dict[str, Any],
        mode: str = "auto",
        config: str | None = None,
        timeout: float = 120.0,
        default_keys: dict[str, Any] | None = None,
    ):
        self.default_keys = default_keys or {"insecure": True}
        args = [sys.executable, "-m", "malpi", "drive", "--quiet", "--mode", mode]
        if config:
            args += ["--config", config]
        for key, value in overrides.items():
            args += ["--set", f"{key}={toml_value(value)}"]
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_as_the_unit,  # noqa: PLW1509 - no threads exist yet in this process
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        self.command = self.telemetry = None
        while self.command is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the daemon did not start:\n" + "\n".join(self.log[-30:]))
            for line in list(self.log):
                m = ENDPOINTS.search(line)
                if m:
                    self.command, self.telemetry = m.groups()
            time.sleep(0.05)
        self._own_cpus = os.sched_getaffinity(0)
        self.client_cpus = self._confine_clients()

    def _confine_clients(self) -> list[int] | None:
        """Move this process's threads (and so the client processes it starts later) onto the
        cores the daemon leaves to its children. They stand for machines elsewhere on the
        network, not for load on the robot: that is what the hogs are for, and they stay free
        to run anywhere. (Without full kernel preemption, as on this machine's kernel, a
        client's long system call, such as reading a 48 MB bundle file, holds a core for tens
        of milliseconds whatever the priorities.) The cores, or None if not confined."""
        link = self.pids().get("link")
        try:
            cpus = os.sched_getaffinity(link) if link else None
            if not cpus:
                return None
            self._set_thread_cpus(cpus)
        except OSError:
            return None
        return sorted(cpus)

    @staticmethod
    def _set_thread_cpus(cpus: set[int]) -> None:
        """Every thread of this process onto ``cpus``."""
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(int(task.name), cpus)

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            del self.log[:-2000]

    def client(self, **kw: Any):
        from malpi.operator.client import RobotClient

        kw = {**self.default_keys, **kw}
        if "client_key" in kw:
            kw["insecure"] = False
        return RobotClient(command=self.command, telemetry=self.telemetry, **kw)

    def pids(self) -> dict[str, int]:
        """The control process and its children by role, and the link's bundle validator
        while one runs."""
        out = {"control": self.proc.pid}
        procs = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            procs.append((int(stat.parent.name), int(fields[1]), cmdline))
        for pid, parent, cmdline in procs:
            if parent == self.proc.pid and b"malpi.daemon" in cmdline:
                out[cmdline[-2].decode()] = pid
        for pid, parent, cmdline in procs:
            if parent == out.get("link") and b"malpi.daemon.link.validator" in cmdline:
                out["validator"] = pid
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: as Ctrl-C, a clean stop
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        # Unconfined again: a daemon started after this one (a test suite runs many in one
        # process) must see every core, not only those this one left to its children.
        self._set_thread_cpus(self._own_cpus)
        return self.proc.returncode


def _as_the_unit() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, NICE)


def cpu_seconds(pid: int) -> float | None:
    """The CPU time (user + system) a process has used so far, all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Watcher:
    """Collects the daemon's step and status telemetry and samples its processes' memory, in a
    thread."""

    def __init__(self, daemon: BenchDaemon, rss_interval: float = 0.5):
        self.daemon = daemon
        self.steps: list[tuple[float, dict[str, float]]] = []  # (time received, latency_ms)
        self.statuses: list[tuple[float, Any]] = []  # (time received, StatusMsg)
        self.events: list[Any] = []
        self.rss: dict[str, list[tuple[float, float]]] = {}
        self._rss_interval = rss_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = self.daemon.client()
        client.subscribe(["step", "status", "event"])
        next_rss = 0.0
        try:
            while not self._stop.is_set():
                msg = client.receive(0.05)
                now = time.monotonic()
                if msg is not None:
                    topic, body = msg
                    if topic == "step":
                        self.steps.append((now, dict(body.latency_ms)))
                    elif topic == "status":
                        self.statuses.append((now, body))
                    else:
                        self.events.append(body)
                if now >= next_rss:
                    next_rss = now + self._rss_interval
                    for role, pid in self.daemon.pids().items():
                        mb = rss_mb(pid)
                        if mb is not None:
                            self.rss.setdefault(role, []).append((now, mb))
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def window(self, t0: float, t1: float) -> list[dict[str, float]]:
        return [lat for t, lat in self.steps if t0 <= t <= t1]

    def status_window(self, t0: float, t1: float) -> list[Any]:
        return [s for t, s in self.statuses if t0 <= t <= t1]


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


# The loop thread's stages (docs/protocol.md, latency_ms), in the order they run; ``publish``
# (the telemetry and the link's frame) is the previous period's.
STAGES = ("commands", "checks", "inference", "actuation", "record_handoff", "publish")
# The overhead: the loop thread's wall time in a period but the policy's step. What other
# threads (the camera's capture and resize) and processes (the recorder's JPEG encoding and
# SQLite, the link) spend is not in it: that is in the CPU figures (cpu_figures).
OVERHEAD_STAGES = tuple(k for k in STAGES if k != "inference")


def summarise_steps(steps: list[dict[str, float]], rate_hz: float) -> dict[str, Any]:
    """Stage, overhead, frame-to-motor and period figures of the steps' latency_ms."""
    period_ms = 1000.0 / rate_hz
    periods = [s["period"] for s in steps if "period" in s]
    overhead = [sum(s.get(k, 0.0) for k in OVERHEAD_STAGES) for s in steps]
    busy = [sum(s.get(k, 0.0) for k in STAGES) for s in steps]
    f2m = [s["frame_to_motor"] for s in steps if "frame_to_motor" in s]
    stages = {
        k: {
            "median_ms": pct([s[k] for s in steps if k in s], 50),
            "p99_ms": pct([s[k] for s in steps if k in s], 99),
        }
        for k in STAGES
    }
    return {
        "steps": len(steps),
        "overhead_stages": list(OVERHEAD_STAGES),
        "overhead_median_ms": pct(overhead, 50),
        "overhead_p99_ms": pct(overhead, 99),
        "loop_wall_median_ms": pct(busy, 50),
        "loop_wall_p99_ms": pct(busy, 99),
        "frame_to_motor_median_ms": pct(f2m, 50),
        "frame_to_motor_p99_ms": pct(f2m, 99),
        "period_max_ms": round(max(periods), 3) if periods else None,
        "jitter_median_ms": pct(np.abs(np.array(periods) - period_ms), 50),
        "jitter_p99_ms": pct(np.abs(np.array(periods) - period_ms), 99),
        "stages": stages,
    }


def cpu_figures(
    statuses: list[Any],
    cpu0: dict[str, float | None],
    cpu1: dict[str, float | None],
    periods: int,
    seconds: float,
) -> dict[str, Any]:
    """CPU time per period: of the control process (all its threads) and of its loop thread,
    per status interval (the daemon's ``status`` telemetry, ~1 s each), and of each of the
    daemon's processes over the whole run (``/proc``, between ``cpu0`` and ``cpu1``), with
    their share of one core."""

    def windows(key: str) -> dict[str, Any]:
        values = [getattr(s, key) for s in statuses if getattr(s, key, None) is not None]
        return {
            "mean": round(float(np.mean(values)), 3) if values else None,
            "median": pct(values, 50),
            "p99": pct(values, 99),
        }

    used = {
        role: cpu1[role] - cpu0[role]
        for role in cpu0
        if cpu0[role] is not None and cpu1.get(role) is not None
    }
    if used:
        used["all"] = sum(used.values())
    return {
        "status_windows": len(statuses),
        "loop_thread_ms_per_period": windows("loop_cpu_ms_per_period"),
        "control_ms_per_period": windows("cpu_ms_per_period"),
        "process_ms_per_period": {
            k: round(v * 1000 / periods, 3) if periods else None for k, v in used.items()
        },
        "process_share_pct": {k: round(v / seconds * 100, 2) for k, v in used.items()},
    }


class Hogs:
    """``n`` processes each keeping a core busy (an unrelated program on the Pi)."""

    def __init__(self, n: int):
        self.procs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)
        ]
        everywhere = START_CPUS
        for p in self.procs:  # on any core, the control process's too, whatever started them
            with contextlib.suppress(OSError):
                os.sched_setaffinity(p.pid, everywhere)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@contextlib.contextmanager
def hogs(n: int) -> Iterator[Hogs]:
    h = Hogs(n)
    try:
        yield h
    finally:
        h.stop()
