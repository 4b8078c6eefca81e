"""Builds the policies the link has validated, in the control process but off its control thread.

The link process does everything that untrusted bytes cost (inflating,
checksums, shape checks, test steps) and writes the step model the robot's
backend runs into the private runtime directory. Here that file is checked
against the hash the link sent and mapped into a LiteRT interpreter: a few
milliseconds, and started just after a period ends, so that what it holds of
the GIL falls into the loop's idle time. The swap itself happens between two
periods; the old policy is dropped here too, not on the control thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from malpi.policy.runtime import StepPolicy
from malpi.policy.spec import PolicySpec

log = logging.getLogger(__name__)


def _malloc_trim() -> None:
    """glibc's malloc_trim(0), where there is one (ctypes releases the GIL during the call)."""
    with contextlib.suppress(OSError, AttributeError):  # another C library: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PolicyLoader:
    def __init__(self, sample: bool, num_threads: int, period_ended: threading.Event):
        self.sample = sample
        self.num_threads = num_threads
        self._period_ended = period_ended  # set by the loop as each period ends
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="malpi-policy-loader")
        # Its thread starts now, from the thread building the daemon: it inherits that thread's
        # scheduling, not the control thread's higher priority.
        self._pool.submit(lambda: None).result()

    def build(
        self,
        args: dict[str, Any],
        done: Callable[[StepPolicy | None, str], None],  # (policy, error): called on this thread
    ) -> None:
        self._pool.submit(self._build, args, done)

    def dispose(self, policy: StepPolicy | None) -> None:
        """Drop a policy here (freeing an interpreter's buffers can take milliseconds), and give
        the memory back to the system: otherwise the C allocator keeps what each interpreter's
        buffers took (about 6 MB per seed-size swap here, up to some 25 MB)."""
        if policy is not None:
            held = [policy]

            def drop() -> None:
                time.sleep(0.1)  # until the caller's own references are gone
                # Its destructor holds the GIL (~6 ms for a seed-size one): in the idle time
                # after a period, not while the camera thread hands over the next frame.
                self._period_ended.clear()
                self._period_ended.wait(1.0)
                held.clear()
                _malloc_trim()

            self._pool.submit(drop)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _build(self, args: dict[str, Any], done) -> None:
        try:
            path = Path(args["model"])
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != args["model_sha256"]:
                raise ValueError(f"{path} is not the model the link validated")
            spec = PolicySpec.from_dict(args["spec"])
            # Building holds the GIL (LiteRT's allocate_tensors: 2 ms for the default policy,
            # 6-25 ms for a seed-size one here): start it as a period ends, so that it falls
            # into the idle time before the next frame, not across a period.
            self._period_ended.clear()
            self._period_ended.wait(1.0)
            policy = StepPolicy.from_model_file(
                path,
                spec,
                args["version"],
                args["sha256"],
                backend=args["backend"],
                sample=self.sample,
                num_threads=self.num_threads,
            )
        except Exception as exc:  # the link validated it: this is a bug or a disk problem
            log.exception("building the validated policy failed")
            done(None, f"{type(exc).__name__}: {exc}")
            return
        done(policy, "")
