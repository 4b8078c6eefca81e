"""The policy store: bundles accepted over the link, and the order they were accepted in.

Layout of ``policy.store`` (``~/.local/share/malpi/policies``, on the robot
``/var/lib/malpi/policies``)::

    policies.json                 {"format": "malpi-policy-store", "version": 1, "history": [...]}
    v3-1a2b3c4d-9f8e7d6c.malpi    one file per accepted bundle (label, then the file's SHA-256)

The last history entry is the current policy: ``malpi drive`` boots with it
when ``policy.path`` is empty. A rollback drops the last entry. Every write is
atomic (temp file, fsync, rename), bundle first and history second, so a
power cut leaves either the old or the new current policy, never a broken one.
No ZeroMQ or TensorFlow here: the daemon's build reads the store at boot.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
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
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return Entry(label, name, digest, now, note)

    def commit(self, history: list[Entry]) -> None:
        """Make ``history`` the store's history (the last entry current); prune old bundles."""
        history = history[-KEEP:]
        state = {"format": FORMAT, "version": VERSION, "history": [asdict(e) for e in history]}
        write_atomic(self.directory / STATE, json.dumps(state, indent=2).encode())
        keep = {e.file for e in history}
        for p in self.directory.glob("*.malpi"):
            if p.name not in keep:
                try:
                    p.unlink()
                except OSError as exc:
                    log.warning("could not delete old bundle %s: %s", p, exc)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
