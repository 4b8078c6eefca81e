"""The policy store: the policies kept for booting, and the order they were kept in.

Layout of ``policy.store`` (``~/.local/share/malpi/policies``, on the robot
``/var/lib/malpi/policies``)::

    policies.json                 {"format": "malpi-policy-store", "version": 1, "history": [...]}
    v3-1a2b3c4d-9f8e7d6c.malpi    one file per bundle (label, then the file's SHA-256)

The history holds the *kept* policies, oldest first; the last one is the boot
policy: ``malpi drive`` boots with it when ``policy.path`` is empty (with an
empty history, the shipped default). A policy pushed over the link runs at
once, but it is only a file here (:meth:`PolicyStore.put`) until it is kept
(:meth:`PolicyStore.commit`): pushing never changes what boots by itself.
A rollback of the boot policy drops the last entry. Every write is atomic
(temp file, fsync, rename), bundle first and history second, so a power cut
leaves either the old or the new boot policy, never a broken one; a bundle
file no history names (an unkept push) is deleted by the next prune unless
it still runs. No ZeroMQ or TensorFlow here: the daemon's build reads the
store at boot.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from malpi.policy.bundle import write_atomic

log = logging.getLogger(__name__)

FORMAT = "malpi-policy-store"
VERSION = 1
STATE = "policies.json"
KEEP = 10  # history entries (and bundle files) kept; older ones are deleted
SHIPPED_POLICY = "default.malpi"  # in malpi/data/, trained by `malpi train default`
SHIPPED_SOURCE = "shipped default"  # where a policy comes from, as status and the log say it
KEPT_SOURCE = "kept in the store"


def shipped_policy() -> Traversable:
    """The policy installed with the package (the daemon's fallback at boot)."""
    return resources.files("malpi") / "data" / SHIPPED_POLICY


@dataclass(frozen=True)
class Entry:
    label: str  # the bundle's label, e.g. v3-1a2b3c4d
    file: str  # file name inside the store
    sha256: str
    accepted: str  # ISO time
    note: str = ""  # e.g. "running when the first bundle arrived"


@dataclass(frozen=True)
class BootPolicy:
    """The policy ``malpi drive`` boots with now: the daemon's own, updated by the link when
    the store changes (a keep, a rollback). ``file`` is its bundle file ("" if none)."""

    version: str | None  # label, e.g. v3-1a2b3c4d; None: no policy
    sha256: str | None
    source: str  # e.g. "policy.path /x/y.malpi", "kept in the store, pushed ...", "shipped default"
    file: str = ""


def path_source(path: str | os.PathLike) -> str:
    return f"policy.path {path}"


def kept_source(entry: Entry) -> str:
    """Where a kept policy comes from: "kept in the store, pushed 2026-12-04T03:50Z"."""
    return f"{KEPT_SOURCE}, pushed {_minute(entry.accepted)}"


def pushed_source(entry: Entry | None) -> str:
    """Where a pushed policy that is not kept comes from: "pushed 2026-12-04T03:50Z, not kept"."""
    when = _minute(entry.accepted) if entry is not None else _minute(_now())
    return f"pushed {when}, not kept"


class PolicyStore:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()

    # -- reading (boot) ---------------------------------------------------------

    def history(self) -> list[Entry]:
        """The accepted bundles, oldest first; [] if the store is empty or unreadable."""
        path = self.directory / STATE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("policy store %s is unreadable (%s); treating it as empty", path, exc)
            return []
        try:
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            return [Entry(**e) for e in data["history"]]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.warning("policy store %s is not valid (%s); treating it as empty", path, exc)
            return []

    def current(self) -> Entry | None:
        """The boot policy's entry (when ``policy.path`` is empty), None if nothing is kept."""
        history = self.history()
        return history[-1] if history else None

    def path(self, entry: Entry) -> Path:
        return self.directory / entry.file

    def read(self, entry: Entry) -> bytes:
        return self.path(entry).read_bytes()

    # -- writing (the link's load worker; never the control thread) --------------

    def put(self, label: str, data: bytes | memoryview, note: str = "") -> Entry:
        """Write a bundle file (atomically); it becomes current only with :meth:`commit`."""
        digest = hashlib.sha256(data).hexdigest()
        name = f"{label}-{digest[:8]}.malpi"
        if "/" in name or name.startswith("."):
            raise ValueError(f"unsafe bundle label {label!r}")
        target = self.directory / name
        if not (target.is_file() and _sha256(target) == digest):
            write_atomic(target, data)
        return Entry(label, name, digest, _now(), note)

    def commit(self, history: list[Entry], protect: Iterable[str] = ()) -> None:
        """Make ``history`` the store's history (the last entry the boot policy); prune the
        bundle files it no longer names, but those in ``protect`` (file names: what runs)."""
        history = history[-KEEP:]
        state = {"format": FORMAT, "version": VERSION, "history": [asdict(e) for e in history]}
        write_atomic(self.directory / STATE, json.dumps(state, indent=2).encode())
        self._prune({e.file for e in history} | set(protect))

    def prune(self, protect: Iterable[str] = ()) -> None:
        """Delete the bundle files the history does not name (unkept pushes that no longer
        run), but those in ``protect``. A deletion that fails is logged: it is only space."""
        self._prune({e.file for e in self.history()} | set(protect))

    def _prune(self, keep: set[str]) -> None:
        for p in self.directory.glob("*.malpi"):
            if p.name not in keep:
                try:
                    p.unlink()
                except OSError as exc:
                    log.warning("could not delete old bundle %s: %s", p, exc)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _minute(iso: str) -> str:
    """An ISO time as "2026-12-04T03:50Z" (UTC); as given if it does not parse."""
    try:
        t = _dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if t.tzinfo is not None:
        t = t.astimezone(_dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%MZ")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
