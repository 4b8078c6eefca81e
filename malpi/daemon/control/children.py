"""The control process's side of its children: starting, watching and restarting them.

:class:`Supervisor` starts the link and recorder processes, waits for each to
say hello (a child that cannot start, e.g. because its address is taken,
makes ``malpi drive`` fail with the child's reason), then watches them from a
thread of its own: a child that exits, or that is silent for
``ipc.LIVENESS`` seconds while the control loop is listening, is reported to
the loop (a latched ``process_crash`` fault: motors stopped, paused until an
operator re-arms), killed if need be and started again after a back-off.
The supervisor never touches the children's sockets: the ports
(:mod:`malpi.daemon.control.ports`) belong to the control thread.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from malpi.daemon import ipc

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # s for a child's hello at start-up (imports on a slow SD card)
STOP_TIMEOUT = 10.0  # s for a child to finish after its stdin closes
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)  # s before restart n (the last repeats)
STABLE = 60.0  # s of health after which the back-off starts again from the beginning


class ChildStartError(RuntimeError):
    """A child process could not start; the message is its own reason."""


class ChildProcess:
    """One child process: ``python -m malpi.daemon ROLE`` with its settings on stdin."""

    def __init__(self, role: str, settings: dict[str, Any], cpus: set[int] | None):
        self.role = role
        self.settings = settings
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def spawn(self) -> None:
        # A session of its own: a terminal's Ctrl-C reaches only the control process, which
        # stops the children in order.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "malpi.daemon", self.role],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.settings).encode() + b"\n")
        self.proc.stdin.flush()
        if self.cpus:
            try:
                os.sched_setaffinity(self.proc.pid, self.cpus)
            except OSError as exc:
                log.debug("%s process: CPU affinity not set: %s", self.role, exc)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close its stdin (it finishes its work and exits), then insist."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s process did not stop within %g s: terminating it", self.role, timeout)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Starts the children, and restarts any that dies or hangs; see the module's docstring."""

    def __init__(
        self,
        children: list[tuple[ChildProcess, Any]],  # (process, its port)
        on_failure: Callable[[str, str], None],  # (role, reason): the loop latches a fault
        listening_since: Callable[[], float],  # when the control loop last read the ports
    ):
        self.children = children
        self.on_failure = on_failure
        self.listening_since = listening_since
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._due: dict[str, float] = {}  # role -> when to restart it
        self._healthy_since: dict[str, float] = {}

    def start_all(self, timeout: float = START_TIMEOUT) -> None:
        """Start every child and wait for its hello (on this thread: the loop is not running)."""
        for child, _ in self.children:
            child.spawn()
        deadline = time.monotonic() + timeout
        for child, port in self.children:
            while port.hello is None:
                port.receive()
                if port.hello is not None:
                    break
                code = child.exit_code()
                if code is not None:
                    raise ChildStartError(f"the {child.role} process {describe_exit(code)}")
                if time.monotonic() > deadline:
                    raise ChildStartError(
                        f"the {child.role} process did not start in {timeout:g} s"
                    )
                port.wait(0.05)
            if port.hello.error:
                raise ChildStartError(port.hello.error)
            self._healthy_since[child.role] = time.monotonic()
            log.info("%s process running (pid %d)", child.role, child.pid)
        self._thread = threading.Thread(target=self._watch, name="malpi-supervisor", daemon=True)
        self._thread.start()

    def stop_all(self) -> None:
        """Stop watching, then stop the children in order (the recorder last: it ends the episode)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for child, _ in sorted(self.children, key=lambda c: c[0].role == "recorder"):
            child.stop()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            for child, port in self.children:
                try:
                    self._check(child, port, now)
                except Exception:  # the supervisor must outlive any one child's trouble
                    log.exception("supervising the %s process failed", child.role)

    def _check(self, child: ChildProcess, port: Any, now: float) -> None:
        role = child.role
        if role in self._due:
            if now >= self._due[role]:
                del self._due[role]
                child.restarts += 1
                port.expect_hello()
                child.spawn()
                self._healthy_since[role] = now
                log.warning("%s process restarted (pid %d)", role, child.pid)
            return
        code = child.exit_code()
        if code is not None:
            reason = f"the {role} process {describe_exit(code)}"
        elif port.hello is not None and self.listening_since() - port.last_heard > ipc.LIVENESS:
            reason = f"the {role} process stopped answering for {ipc.LIVENESS:g} s"
            child.kill()
        else:
            return
        if now - self._healthy_since.get(role, now) >= STABLE:
            child.restarts = 0
        delay = BACKOFF[min(child.restarts, len(BACKOFF) - 1)]
        self._due[role] = now + delay
        log.error("%s; restarting it in %g s", reason, delay)
        self.on_failure(role, f"{reason}; restarting it")
