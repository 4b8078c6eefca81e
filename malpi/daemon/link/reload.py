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
bundle that runs is a no-op, however it is labelled.

Which policy *boots* changes only when asked. A push runs the bundle at once
and writes its file into the policy store, but the boot policy stays what it
was unless the push says ``keep`` or a later ``keep_policy`` keeps what runs
(the store's history gains it: bundle file first, history second, both
atomic). ``rollback`` from a policy that is not kept returns to the boot
policy and leaves the store alone; from the boot policy it drops that one
from the history and runs (and boots) the one kept before it, or the shipped
default after the first. The control process holds what boots now
(:class:`BootPolicy`) and says it in status; this module tells it after
every change of the store.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from malpi.config import Config
from malpi.daemon.link.control import ControlChannel
from malpi.daemon.link.validator import BundleValidator, Validated, ValidationError
from malpi.policy.store import (
    SHIPPED_SOURCE,
    BootPolicy,
    Entry,
    PolicyStore,
    kept_source,
    pushed_source,
    shipped_policy,
)
from malpi.protocol.schema import KeepReply, PolicyReply, ProtocolError, RollbackReply

log = logging.getLogger(__name__)

R = TypeVar("R", bound=PolicyReply)

SWAP_TIMEOUT = 10.0  # s: building a validated policy takes milliseconds; this means it is stuck
KEEP_HINT = "malpi push HOST --keep keeps it"  # keep_policy, as the operator types it


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


def _boots_now(label: str, boot: BootPolicy) -> str:
    return f"the car boots {label} from now on (it booted {boot.version or 'no policy'} before)"


def _not_kept(boot: BootPolicy) -> str:
    return f"not kept: the car boots {boot.version or 'no policy'} ({boot.source}); {KEEP_HINT}"


class PolicyManager:
    """Loads, swaps, keeps and rolls back policies. One call at a time (the load worker)."""

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
        # The store entry (file, push time) of the pushed policy that runs and is not kept: a
        # keep commits it as it is. None after a link restart: a keep then reads the file again.
        self._pushed: Entry | None = None

    def running(self) -> tuple[str | None, str | None]:
        """(label, sha256) of the policy the control loop runs."""
        s = self.control.state
        return (s.policy_version, s.policy_sha256) if s else (None, None)

    def boot(self) -> BootPolicy:
        """The policy the next boot runs, as the control process holds it."""
        s = self.control.state
        if s is None:
            return BootPolicy(None, None, "")
        return BootPolicy(
            s.boot_policy_version, s.boot_policy_sha256, s.boot_policy_source, s.boot_policy_file
        )

    # -- the commands ---------------------------------------------------------------

    def load(self, data: bytes | memoryview, keep: bool = False) -> PolicyReply:
        """Validate and run a bundle; with ``keep`` also make it the boot policy."""
        if keep:
            self._check_keepable()  # before anything happens: all or nothing
        t0 = time.perf_counter()
        bundle = self._validate(data, what="bundle")
        load_ms = (time.perf_counter() - t0) * 1000
        label, sha = self.running()
        boot = self.boot()
        if sha == bundle.sha256:
            # Pushing what runs is a no-op (idempotent pushes; a rollback still means the one
            # before): no swap, no new episode. With keep, what runs is kept now.
            if sha == boot.sha256:
                persisted, note = True, "already running, and the car boots it: nothing changed"
            elif keep:
                self._keep_running(bundle.label, bundle.sha256, boot)
                persisted = True
                note = f"already running: kept now, {_boots_now(bundle.label, boot)}"
            else:
                persisted, note = False, f"already running: nothing changed; {_not_kept(boot)}"
            return PolicyReply(
                version=bundle.label,
                previous=bundle.label,
                episode=self.control.state.episode,
                load_ms=round(load_ms, 1),
                persisted=persisted,
                note=note,
            )
        if bundle.sha256 == boot.sha256 and boot.file:
            # The boot policy again: it runs from where it boots from, nothing to keep.
            result = self._swap(bundle, boot.source, boot.file)
            self._pushed = None
            self._prune()
            return _reply(
                PolicyReply, result, load_ms, True, "the boot policy again: the car boots it"
            )
        entry, unkeepable = None, ""
        try:
            entry = self.store.put(bundle.label, data)
        except OSError as exc:  # a full or read-only disk must not stop a good policy...
            if keep:  # ...but one asked to be kept is refused whole: nothing has changed yet
                raise ProtocolError(
                    "refused",
                    f"cannot keep it: the policy store cannot hold its file ({exc}); "
                    "nothing changed",
                ) from exc
            unkeepable = f" (nor can it be: the policy store cannot hold its file: {exc})"
            log.warning("policy %s accepted, but its file cannot be stored: %s", bundle.label, exc)
        file = str(self.store.path(entry)) if entry is not None else ""
        result = self._swap(bundle, pushed_source(entry), file)
        self._pushed = entry
        self._prune()  # an earlier push that was not kept no longer runs: its file goes
        if not keep:
            note = f"running, {_not_kept(boot)}{unkeepable}"
            return _reply(PolicyReply, result, load_ms, False, note)
        assert entry is not None
        try:
            self._commit_keep(entry, boot)
        except OSError as exc:  # it runs (as a plain push would); the reply says it is not kept
            note = (
                f"running, not kept: the policy store cannot be written ({exc}); the car boots "
                f"{boot.version or 'no policy'} ({boot.source}); {KEEP_HINT}"
            )
            log.warning("policy %s %s", bundle.label, note)
            return _reply(PolicyReply, result, load_ms, False, note)
        return _reply(PolicyReply, result, load_ms, True, f"kept: {_boots_now(bundle.label, boot)}")

    def keep(self) -> KeepReply:
        """Make the running policy the boot policy. Refused, with nothing changed, if it cannot."""
        self._check_keepable()
        label, sha = self.running()
        if label is None or sha is None:
            raise ProtocolError("refused", "no policy runs: there is nothing to keep")
        boot = self.boot()
        if sha == boot.sha256:
            return KeepReply(
                boot_policy_version=label,
                boot_policy_source=boot.source,
                previous_boot=boot.version,
                changed=False,
                note="already the boot policy: nothing changed",
            )
        entry = self._keep_running(label, sha, boot)
        return KeepReply(
            boot_policy_version=label,
            boot_policy_source=kept_source(entry),
            previous_boot=boot.version,
            changed=True,
        )

    def rollback(self) -> RollbackReply:
        """From a policy that is not kept: back to the boot policy, the store untouched. From
        the boot policy: drop it from the store's history and run (and boot) the one kept
        before it, or the shipped default after the first."""
        label, sha = self.running()
        boot = self.boot()
        if sha != boot.sha256:
            return self._back_to_boot(boot)
        if self.config.policy.path:
            raise ProtocolError(
                "refused",
                f"no previous policy to roll back to: {label} runs from policy.path "
                f"{self.config.policy.path}, which the car boots (a pushed policy rolls back "
                "to it)",
            )
        history = self.store.history()
        if not history or history[-1].sha256 != sha:
            raise ProtocolError(
                "refused", f"no previous policy to roll back to: {label} is the {boot.source}"
            )
        if len(history) >= 2:
            target = history[-2]
            file, source = str(self.store.path(target)), kept_source(target)
            what = f"stored policy {target.file}"
        else:
            shipped = shipped_policy()
            if not shipped.is_file():
                raise ProtocolError(
                    "refused",
                    f"no previous policy to roll back to: {label} is the only kept policy and "
                    "no shipped default is installed",
                )
            file, source, what = str(shipped), SHIPPED_SOURCE, "the shipped default policy"
        t0 = time.perf_counter()
        bundle = self._validate(self._read(file, what), what=what)
        load_ms = (time.perf_counter() - t0) * 1000
        result = self._swap(bundle, source, file)
        self._pushed = None
        try:
            self.store.commit(history[:-1], protect=[Path(file).name])
        except OSError as exc:
            note = (
                f"rolled back, but the car still boots {history[-1].label}: the policy store "
                f"cannot be written ({exc})"
            )
            log.warning("%s", note)
            self._tell(bundle.sha256, source=f"{source}, not the boot policy", file=file)
            return _reply(RollbackReply, result, load_ms, False, note)
        self._tell(bundle.sha256, boot=BootPolicy(bundle.label, bundle.sha256, source, file))
        note = f"{label} is no longer kept: the car boots {bundle.label} ({source})"
        log.info("rolled back: %s", note)
        return _reply(RollbackReply, result, load_ms, True, note)

    # -- the steps --------------------------------------------------------------------

    def _back_to_boot(self, boot: BootPolicy) -> RollbackReply:
        """The rollback of a policy that is not kept: run the boot policy again."""
        if not boot.file:
            raise ProtocolError(
                "refused",
                f"no policy to roll back to: the car boots {boot.version or 'no policy'} "
                f"({boot.source}), which has no bundle file to load",
            )
        what = f"the boot policy {boot.file}"
        t0 = time.perf_counter()
        bundle = self._validate(self._read(boot.file, what), what=what)
        load_ms = (time.perf_counter() - t0) * 1000
        result = self._swap(bundle, boot.source, boot.file)
        self._pushed = None
        self._prune()  # the push that was not kept
        if bundle.sha256 != boot.sha256:  # policy.path's file was replaced since the boot
            boot = BootPolicy(bundle.label, bundle.sha256, boot.source, boot.file)
            self._tell(bundle.sha256, boot=boot)
        note = f"back to the boot policy ({boot.source}); the policy store is unchanged"
        return _reply(RollbackReply, result, load_ms, True, note)

    def _keep_running(self, label: str, sha: str, boot: BootPolicy) -> Entry:
        """Keep the running policy, which is not the boot policy: it boots from now on.
        ProtocolError ``refused`` if it cannot be; then nothing has changed."""
        entry = self._pushed if self._pushed is not None and self._pushed.sha256 == sha else None
        if entry is None or not self.store.path(entry).is_file():
            data = self._running_bytes(sha)
            if data is None:
                raise ProtocolError(
                    "refused",
                    f"{label}'s bundle file is not at hand to keep (the policy store could not "
                    "hold it when it was pushed): push it again with keep",
                )
            try:
                entry = self.store.put(label, data)
            except OSError as exc:
                raise ProtocolError(
                    "refused", f"cannot keep {label}: {exc}; nothing changed"
                ) from exc
        try:
            self._commit_keep(entry, boot)
        except OSError as exc:  # the history is written atomically: it is as it was
            raise ProtocolError(
                "refused",
                f"cannot keep {label}: {exc}; the car still boots {boot.version or 'no policy'}",
            ) from exc
        return entry

    def _commit_keep(self, entry: Entry, boot: BootPolicy) -> None:
        """Append the running policy's ``entry`` to the history (once: an earlier entry of the
        same bundle moves), so that it boots; then tell the control process."""
        history = [e for e in self.store.history() if e.sha256 != entry.sha256]
        self.store.commit([*history, entry], protect=[entry.file])
        self._pushed = None
        source, file = kept_source(entry), str(self.store.path(entry))
        self._tell(
            entry.sha256,
            source=source,
            file=file,
            boot=BootPolicy(entry.label, entry.sha256, source, file),
        )
        previous = boot.version or "no policy"
        self.event(
            "policy_kept",
            f"policy {entry.label} kept: the car boots it from now on (it booted {previous})",
            version=entry.label,
            previous_boot=boot.version,
            sha256=entry.sha256,
        )

    def _tell(
        self,
        sha: str,
        source: str | None = None,
        file: str = "",
        boot: BootPolicy | None = None,
    ) -> None:
        """Tell the control process where the running policy (``sha``) comes from now and what
        boots. The store is already right: a failure here is logged, not the command's."""
        args: dict = {"sha256": sha}
        if source is not None:
            args.update(source=source, file=file)
        if boot is not None:
            args["boot"] = asdict(boot)
        future = self.control.call("policy_source", **args)
        try:
            future.result(SWAP_TIMEOUT)
        except (FutureTimeout, ProtocolError) as exc:
            self.control.forget(future)
            log.warning("the control process was not told the policy's new source: %s", exc)

    def _check_keepable(self) -> None:
        if self.config.policy.path:
            raise ProtocolError(
                "refused",
                f"policy.path is set ({self.config.policy.path}): the car boots that file "
                "whatever is kept; push without keep, or empty policy.path to boot kept policies",
            )

    def _prune(self) -> None:
        """Delete the files of pushes that were not kept and no longer run."""
        running = self.control.state.policy_file if self.control.state else ""
        try:
            self.store.prune([Path(running).name] if running else [])
        except OSError as exc:
            log.warning("policy store %s not pruned: %s", self.store.directory, exc)

    def _read(self, file: str, what: str) -> bytes:
        try:
            return Path(file).read_bytes()
        except OSError as exc:
            raise self._reject(f"{what} cannot be read: {exc}") from exc

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
            backend=bundle.backend,
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
