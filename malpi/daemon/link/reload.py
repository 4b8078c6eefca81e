"""Hot reload: a new policy bundle validated by the link, swapped in by the control process.

Everything untrusted bytes cost happens in a throwaway child of the link
(:mod:`malpi.daemon.link.validator`): size limits before anything is
inflated, parsing, checksums, shape checks, the test steps of both LiteRT
models, and writing the step model the robot runs into the private runtime
directory. Only then is the control process asked to swap it in; it maps
that file (a few milliseconds, off its control thread) and swaps between two
periods, resetting the LSTM state and starting a new episode. A rejected
bundle leaves the running policy untouched; the reply and an ``event``
(``policy_rejected``) say why.

A policy's identity is its content (the bundle file's SHA-256): pushing the
bundle that runs is a no-op, however it is labelled. Accepted bundles go into
the policy store (bundle file first, history second, both atomic) and the
daemon boots with the current one. ``rollback`` walks back through that
history, one step per call.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

from malpi.config import Config
from malpi.daemon.link.control import ControlChannel
from malpi.daemon.link.validator import BundleValidator, Validated, ValidationError
from malpi.policy.store import Entry, PolicyStore
from malpi.protocol.schema import PolicyReply, ProtocolError, RollbackReply

log = logging.getLogger(__name__)

R = TypeVar("R", bound=PolicyReply)

SWAP_TIMEOUT = 10.0  # s: building a validated policy takes milliseconds; this means it is stuck


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


class PolicyManager:
    """Loads, swaps, persists and rolls back policies. One call at a time (the load worker)."""

    def __init__(
        self,
        config: Config,
        control: ControlChannel,
        models: Path,
        event: Callable[..., None],
    ):
        self.config = config
        self.control = control
        self.models = models
        self.event = event
        self.store = PolicyStore(config.policy.store)
        self.validator = BundleValidator(config, models)
        # (sha256, history before it) while a policy that came over the link runs but could not
        # be persisted (full or read-only disk): pushing it again retries, without a swap.
        self._unpersisted: tuple[str, list[Entry]] | None = None

    def running(self) -> tuple[str | None, str | None]:
        """(label, sha256) of the policy the control loop runs."""
        s = self.control.state
        return (s.policy_version, s.policy_sha256) if s else (None, None)

    # -- the commands ---------------------------------------------------------------

    def load(self, data: bytes | memoryview) -> PolicyReply:
        t0 = time.perf_counter()
        bundle = self._validate(data, what="bundle")
        load_ms = (time.perf_counter() - t0) * 1000
        label, sha = self.running()
        if sha == bundle.sha256:
            # Pushing what runs is a no-op (idempotent pushes; a rollback still means the one
            # before): no swap, no new episode. The store is untouched unless this policy came
            # over the link and could not be persisted then: that is retried now.
            persisted, note = self._persist_running(bundle, data)
            return PolicyReply(
                version=bundle.label,
                previous=bundle.label,
                episode=self.control.state.episode,
                load_ms=round(load_ms, 1),
                persisted=persisted,
                note=note,
            )
        persisted, note, history, entry = True, None, None, None
        try:
            history = self._history_with_running()
            entry = self.store.put(bundle.label, data)
        except OSError as exc:  # a full or read-only disk must not stop a good policy
            persisted, note = False, f"not persisted: {exc}"
            log.warning("policy %s accepted but %s", bundle.label, note)
        self._unpersisted = None
        file = str(self.store.path(entry)) if entry is not None else ""
        result = self._swap(bundle, "pushed over the link", file)
        if persisted and history is not None and entry is not None:
            try:
                self.store.commit([*history, entry])
            except OSError as exc:
                persisted, note = False, f"not persisted: {exc}"
                log.warning("policy %s running but %s", bundle.label, note)
        if not persisted:  # what a push of the same bundle will commit it after
            self._unpersisted = (
                bundle.sha256,
                history if history is not None else self.store.history(),
            )
        return _reply(PolicyReply, result, load_ms, persisted, note)

    def rollback(self) -> RollbackReply:
        history = self.store.history()
        _, sha = self.running()
        # The store's last entry is normally the running policy; if the daemon booted from
        # policy.path instead, "previous" is the store's current one.
        index = len(history) - 1 if history and history[-1].sha256 != sha else len(history) - 2
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
        bundle = self._validate(data, what=f"stored policy {target.file}")
        load_ms = (time.perf_counter() - t0) * 1000
        self._unpersisted = None
        result = self._swap(bundle, f"rolled back ({target.file})", str(self.store.path(target)))
        persisted, note = True, None
        try:
            self.store.commit(history[: index + 1])
        except OSError as exc:
            persisted, note = False, f"the store still names the newer policy current: {exc}"
            log.warning("rolled back to %s but %s", bundle.label, note)
            self._unpersisted = (bundle.sha256, history[:index])
        return _reply(RollbackReply, result, load_ms, persisted, note)

    # -- the steps --------------------------------------------------------------------

    def _validate(self, data: bytes | memoryview, what: str) -> Validated:
        """Validate completely and stage the runtime model; ProtocolError says why not."""
        try:
            return self.validator.validate(data)
        except ValidationError as exc:
            if exc.code != "rejected":
                raise ProtocolError(exc.code, str(exc)) from exc
            reason = str(exc) if what == "bundle" else f"{what}: {exc}"
            raise self._reject(reason) from exc
        except OSError as exc:  # the child could not be started
            raise ProtocolError("refused", f"cannot validate the bundle: {exc}") from exc

    def _swap(self, bundle: Validated, source: str, file: str) -> dict:
        """Have the control process swap the validated policy in; its result."""
        model = bundle.model
        future = self.control.call(
            "swap_policy",
            model=str(model),
            model_sha256=bundle.model_sha256,
            spec=bundle.spec,
            version=bundle.label,
            sha256=bundle.sha256,
            source=source,
            file=file,
        )
        try:
            result = future.result(SWAP_TIMEOUT)
        except FutureTimeout as exc:
            self.control.forget(future)
            raise ProtocolError(
                "timeout",
                f"the control loop did not swap the policy within {SWAP_TIMEOUT:g} s "
                "(it may still do so)",
            ) from exc
        for old in self.models.glob("*"):  # the control process maps only the new one now
            if old != model:
                old.unlink(missing_ok=True)
        return result

    def _persist_running(self, bundle: Validated, data: bytes | memoryview) -> tuple[bool, str]:
        """For a push of what runs already: (persisted, note). Persists it now, as :meth:`load`
        would have, if it came over the link and that failed; otherwise leaves the store be."""
        nothing = "already running: nothing changed"
        current = self.store.current()
        if current is not None and current.sha256 == bundle.sha256:
            self._unpersisted = None
            return True, nothing
        if self._unpersisted is None or self._unpersisted[0] != bundle.sha256:
            # e.g. booted from policy.path: not the store's business, but say so.
            source = self.control.state.policy_source if self.control.state else ""
            return False, f"{nothing} (it runs from {source or 'boot'}, not the policy store)"
        try:
            self.store.commit([*self._unpersisted[1], self.store.put(bundle.label, data)])
        except OSError as exc:
            note = f"not persisted: {exc}"
            log.warning("policy %s running but still %s", bundle.label, note)
            return False, note
        self._unpersisted = None
        log.info("policy %s, already running, is persisted now", bundle.label)
        return True, "already running: persisted now (it was not before)"

    def _history_with_running(self) -> list[Entry]:
        """The store's history, ending with the running policy so that a rollback can return to it."""
        history = self.store.history()
        label, sha = self.running()
        if sha is not None and (not history or history[-1].sha256 != sha):
            data = self._running_bytes(sha)
            if data is None:
                log.warning(
                    "the running policy's file is not at hand: a rollback cannot return to it"
                )
            else:
                source = self.control.state.policy_source if self.control.state else ""
                note = f"running ({source or 'at boot'}) when a new policy arrived"
                history.append(self.store.put(label, data, note))
        return history

    def _running_bytes(self, sha: str) -> bytes | None:
        """The running bundle's file, if the control process said where it is and it is unchanged."""
        path = self.control.state.policy_file if self.control.state else ""
        if not path:
            return None
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha else None

    def _reject(self, reason: str) -> ProtocolError:
        label, _ = self.running()
        self.event(
            "policy_rejected",
            f"policy rejected, still running {label}: {reason}",
            logging.WARNING,
            reason=reason,
            running=label,
        )
        return ProtocolError("rejected", reason)
