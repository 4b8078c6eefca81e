"""Real-time scheduling for the control process, where the operating system allows it.

A Raspberry Pi is never idle, and a control period that waits behind another
program's time slice is a car that keeps its last command. So the control
process asks for what Linux offers, and says in the log what it got:

- its own core: the control process is pinned to one CPU (by default the
  last) and its children to the others;
- a real-time priority (``SCHED_FIFO``): every thread of the control process
  gets ``priority - 1`` (so the camera's and the simulator's threads are not
  starved behind ordinary programs while holding the GIL the loop needs), and
  the control thread itself ``priority``, so that it preempts them;
- a short GIL switch interval, so that a helper thread holding the GIL hands
  it over within half a millisecond.

Needs root, ``CAP_SYS_NICE`` or an ``RLIMIT_RTPRIO`` of at least the
priority (the systemd unit sets ``LimitRTPRIO=``). Without them the daemon
runs at normal priority and says so. The children (link, recorder) go back
to normal scheduling first thing (:func:`leave`).

Nothing heavy is imported here: a child calls :func:`leave` before its imports.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005  # s: the longest a helper thread keeps the GIL the loop wants


def control_cpu(cpu: int) -> int | None:
    """The core for the control process: ``cpu``, or for -1 the last one (None on one core)."""
    cpus = sorted(os.sched_getaffinity(0))
    if cpu >= 0:
        return cpu if cpu in cpus else None
    return cpus[-1] if len(cpus) > 1 else None


def prepare(priority: int, cpu: int) -> tuple[set[int] | None, str]:
    """On the main thread, before any other thread exists: pin the process, make it real-time
    (``priority - 1``, which the threads started later inherit). Returns (the cores left for
    the children, or None for any; what it got)."""
    got = []
    core = control_cpu(cpu)
    others = (set(os.sched_getaffinity(0)) - {core} or None) if core is not None else None
    if core is not None:
        try:
            os.sched_setaffinity(0, {core})
            got.append(f"CPU {core} of its own")
        except OSError as exc:
            got.append(f"no CPU of its own ({exc.strerror})")
            others = None
    if priority > 1:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority - 1))
            got.append(f"SCHED_FIFO {priority - 1} for its threads")
        except OSError as exc:
            got.append(
                f"normal priority ({exc.strerror}: run as the systemd unit does, with "
                f"LimitRTPRIO={priority}, or with CAP_SYS_NICE)"
            )
    sys.setswitchinterval(SWITCH_INTERVAL)
    if others:
        got.append(f"its children on CPUs {sorted(others)}")
    return others, ", ".join(got) or "nothing asked for"


def raise_control_thread(priority: int) -> str:
    """On the control thread, once the helpers have started: the highest priority of the process."""
    if priority < 1:
        return "normal priority (realtime.priority = 0)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        return f"normal priority ({exc.strerror})"
    return f"SCHED_FIFO {priority}"


def current() -> str:
    """The calling thread's scheduling, e.g. ``SCHED_FIFO 50 on CPUs [1]``."""
    policy = os.sched_getscheduler(0)
    name = {os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}.get(policy, "SCHED_OTHER")
    prio = os.sched_getparam(0).sched_priority
    return f"{name} {prio} on CPUs {sorted(os.sched_getaffinity(0))}"


def leave() -> None:
    """In a child process: back to normal scheduling (it inherited the control process's)."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass
