"""Hot reload: a new policy bundle validated and built off the control thread, swapped between periods.

The control loop only ever sees a finished :class:`StepPolicy`: parsing,
checksums, shape checks, the test steps of both LiteRT models and building
the interpreter all happen here, on the link's load worker. The loop swaps it
in between two periods (resetting the LSTM state and starting a new
episode), so no period is missed. A rejected bundle leaves the running
policy untouched; the reply and an ``event`` (``policy_rejected``) say why.

Accepted bundles go into the policy store (bundle file first, history
second, both atomic) and the daemon boots with the current one.
``rollback`` returns to the policy before it, through the same path.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import zipfile
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

from malpi.config import Config
from malpi.daemon.control.loop import ControlLoop, DaemonStopped
from malpi.policy.bundle import BundleError, PolicyBundle
from malpi.policy.runtime import StepPolicy
from malpi.policy.store import Entry, PolicyStore, shipped_policy
from malpi.protocol.schema import PolicyReply, ProtocolError, RollbackReply

log = logging.getLogger(__name__)

R = TypeVar("R", bound=PolicyReply)


def to_bytes(data: bytes | memoryview) -> bytes:
    """``bytes`` from a received frame's view, copied without holding the GIL for long.

    ``bytes(view)`` of a 50 MB bundle holds the GIL for ~40 ms (mostly page faults on the
    fresh buffer), long enough to delay a control period. Written to a memfd and read back,
    the kernel does the copying and the page faults while the GIL is free.
    """
    if isinstance(data, bytes):
        return data
    view = memoryview(data)
    if len(view) < (1 << 20) or not hasattr(os, "memfd_create"):
        return bytes(view)
    fd = os.memfd_create("malpi-bundle")
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.lseek(fd, 0, os.SEEK_SET)
        out = os.read(fd, len(view))
    except OSError:
        return bytes(view)
    finally:
        os.close(fd)
    return out if len(out) == len(view) else bytes(view)


def _label(data: bytes) -> str:
    """A bundle's label from its manifest alone (cheap: no payload is read)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    return f"v{manifest['version']}-{manifest['id'][:8]}"


def _reply(kind: type[R], result: dict, load_ms: float, persisted: bool, note: str | None) -> R:
    """The reply to a load or a rollback: the loop's swap ``result`` and how it went."""
    return kind(
        version=result["version"],
        previous=result["previous"],
        episode=result["episode"],
        load_ms=round(load_ms, 1),
        persisted=persisted,
        note=note,
    )


SWAP_TIMEOUT = 5.0  # s: the loop applies commands every period, so this means it is stuck


class PolicyManager:
    """Loads, swaps, persists and rolls back policies for one running loop. One call at a time."""

    def __init__(self, config: Config, loop: ControlLoop, source: str = ""):
        self.config = config
        self.loop = loop
        self.store = PolicyStore(config.policy.store)
        self.source = source  # where the running policy came from
        # (label, history before it) while a policy that came over the link runs but could not be
        # persisted (full or read-only disk): pushing it again retries, without a swap.
        self._unpersisted: tuple[str, list[Entry]] | None = None

    # -- the commands ---------------------------------------------------------------

    def load(self, data: bytes | memoryview) -> PolicyReply:
        t0 = time.perf_counter()
        data = to_bytes(data)
        policy = self._build(data, what="bundle")
        load_ms = (time.perf_counter() - t0) * 1000
        running = self.loop.policy
        if running is not None and running.version == policy.version:
            # Pushing what runs is a no-op (idempotent pushes; a rollback still means the one
            # before): no swap, no new episode. The store is untouched unless this policy came
            # over the link and could not be persisted then: that is retried now.
            persisted, note = self._persist_running(running.version, data)
            return PolicyReply(
                version=running.version,
                previous=running.version,
                episode=self.loop.status()["episode"],
                load_ms=round(load_ms, 1),
                persisted=persisted,
                note=note,
            )
        persisted, note, history, entry = True, None, None, None
        try:
            history = self._history_with(running)
            entry = self.store.put(policy.version, data)
        except OSError as exc:  # a full or read-only disk must not stop a good policy
            persisted, note = False, f"not persisted: {exc}"
            log.warning("policy %s accepted but %s", policy.version, note)
        self._unpersisted = None
        result = self._swap(policy)
        if persisted and history is not None and entry is not None:
            try:
                self.store.commit([*history, entry])
            except OSError as exc:
                persisted, note = False, f"not persisted: {exc}"
                log.warning("policy %s running but %s", policy.version, note)
        if not persisted:  # what a push of the same bundle will commit it after
            self._unpersisted = (
                policy.version,
                history if history is not None else self.store.history(),
            )
        self.source = "pushed over the link"
        del running  # the old interpreter is freed here, not on the control thread
        return _reply(PolicyReply, result, load_ms, persisted, note)

    def rollback(self) -> RollbackReply:
        history = self.store.history()
        running = self.loop.policy.version if self.loop.policy else None
        # The store's last entry is normally the running policy; if the daemon booted from
        # policy.path instead, "previous" is the store's current one.
        index = len(history) - 1 if history and history[-1].label != running else len(history) - 2
        if index < 0:
            raise ProtocolError(
                "refused", f"no previous policy to roll back to in {self.store.directory}"
            )
        target = history[index]
        try:
            data = self.store.read(target)
        except OSError as exc:
            raise self._reject(f"stored policy {target.file} cannot be read: {exc}") from exc
        t0 = time.perf_counter()
        policy = self._build(data, what=f"stored policy {target.file}")
        load_ms = (time.perf_counter() - t0) * 1000
        old = self.loop.policy
        self._unpersisted = None
        result = self._swap(policy)
        persisted, note = True, None
        try:
            self.store.commit(history[: index + 1])
        except OSError as exc:
            persisted, note = False, f"the store still names the newer policy current: {exc}"
            log.warning("rolled back to %s but %s", policy.version, note)
            self._unpersisted = (policy.version, history[:index])
        self.source = f"rolled back ({target.file})"
        del old
        return _reply(RollbackReply, result, load_ms, persisted, note)

    # -- the steps --------------------------------------------------------------------

    def _build(self, data: bytes, what: str) -> StepPolicy:
        """Validate completely and build the runtime; ProtocolError("rejected") says why not."""
        c = self.config
        try:
            bundle = PolicyBundle.from_bytes(
                data,
                expected_actions=c.action_table,
                expected_image=(c.camera.height, c.camera.width),
            )
        except Exception as exc:  # BundleError, or anything else untrusted bytes provoke
            reason = str(exc) if isinstance(exc, BundleError) else f"unreadable bundle: {exc!r}"
            raise self._reject(reason if what == "bundle" else f"{what}: {reason}") from exc
        try:
            return StepPolicy(
                bundle,
                backend=c.policy.backend,
                sample=c.policy.sample,
                num_threads=c.policy.num_threads,
            )
        except Exception as exc:
            raise self._reject(f"the {c.policy.backend} runtime cannot run it: {exc}") from exc

    def _swap(self, policy: StepPolicy) -> dict:
        try:
            return self.loop.swap_policy(policy).result(SWAP_TIMEOUT)
        except DaemonStopped as exc:
            raise ProtocolError("stopped", f"not loaded: {exc}") from exc
        except FutureTimeout as exc:
            raise ProtocolError(
                "timeout",
                f"the control loop did not swap the policy within {SWAP_TIMEOUT:g} s "
                "(it may still do so)",
            ) from exc

    def _persist_running(self, version: str, data: bytes) -> tuple[bool, str]:
        """For a push of what runs already: (persisted, note). Persists it now, as :meth:`load`
        would have, if it came over the link and that failed; otherwise leaves the store be."""
        nothing = "already running: nothing changed"
        current = self.store.current()
        if current is not None and current.label == version:
            self._unpersisted = None
            return True, nothing
        if self._unpersisted is None or self._unpersisted[0] != version:
            # e.g. booted from policy.path: not the store's business, but say so.
            return False, f"{nothing} (it runs from {self.source or 'boot'}, not the policy store)"
        try:
            self.store.commit([*self._unpersisted[1], self.store.put(version, data)])
        except OSError as exc:
            note = f"not persisted: {exc}"
            log.warning("policy %s running but still %s", version, note)
            return False, note
        self._unpersisted = None
        log.info("policy %s, already running, is persisted now", version)
        return True, "already running: persisted now (it was not before)"

    def _history_with(self, running: StepPolicy | None) -> list[Entry]:
        """The store's history, ending with the running policy so that a rollback can return to it."""
        history = self.store.history()
        if running is not None and (not history or history[-1].label != running.version):
            note = f"running ({self.source or 'at boot'}) when a new policy arrived"
            history.append(self.store.put(running.version, self._bytes_of(running), note))
        return history

    def _bytes_of(self, running: StepPolicy) -> bytes:
        """The running bundle's file: its original bytes if it came from policy.path (re-zipping
        a 50 MB bundle takes seconds of CPU the control loop would compete with), else rebuilt."""
        candidates = [shipped_policy()]
        if self.config.policy.path:
            candidates.insert(0, Path(self.config.policy.path).expanduser())
        for path in candidates:
            try:
                data = path.read_bytes()
                if _label(data) == running.version:
                    return data
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                continue
        return running.bundle.to_bytes()

    def _reject(self, reason: str) -> ProtocolError:
        log.warning("policy rejected: %s", reason)
        running = self.loop.policy.version if self.loop.policy else None
        # Published from the control thread, as every telemetry sink expects.
        self.loop.submit(
            lambda: self.loop.telemetry.event(
                "policy_rejected",
                f"policy rejected, still running {running}: {reason}",
                logging.WARNING,
                reason=reason,
                running=running,
            )
        )
        return ProtocolError("rejected", reason)
