"""The robot's side of ``list_policies``: what runs, what boots, what is kept, and how each did.

Read from the control process's last state (the running and boot policies),
the policy store's history (:mod:`malpi.policy.store`) and each bundle file's
manifest (:func:`malpi.policy.bundle.read_manifest`: bounded, nothing
inflated but the manifest, no TensorFlow or LiteRT). A file that cannot be
read gives an entry with ``error`` set, never a failed request. The
evaluation figures are the ones the trainer wrote into the manifest's
provenance (``malpi train bc|dagger|default``), summarised to a small map.
Runs on a worker thread of its own: the command socket never waits on the disk.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from malpi.config import Config
from malpi.daemon.link.control import ControlChannel
from malpi.policy.bundle import BundleError, read_manifest
from malpi.policy.store import PolicyStore, kept_source, shipped_policy
from malpi.protocol import schema
from malpi.protocol.schema import ProtocolError

log = logging.getLogger(__name__)

MAX_WAITING = 4  # list_policies requests queued or running; more are answered "busy"
MAX_TEXT = 120  # characters of a string figure or the trainer's name


class PolicyLister:
    def __init__(self, config: Config, control: ControlChannel):
        self.config = config
        self.control = control
        self.store = PolicyStore(config.policy.store)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="malpi-link-policies")
        self._jobs: set[Future] = set()
        self._lock = threading.Lock()
        self._shipped_sha: tuple[tuple[str, int, float], str] | None = None

    def submit(self, request: schema.ListPolicies) -> Future:
        with self._lock:
            self._jobs = {f for f in self._jobs if not f.done()}
            if len(self._jobs) >= MAX_WAITING:
                raise ProtocolError("busy", f"{MAX_WAITING} list_policies are already waiting")
            future = self._pool.submit(self.list)
            self._jobs.add(future)
        return future

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- on the worker thread ---------------------------------------------------------

    def list(self) -> schema.PolicyList:
        s = self.control.state
        if s is None:
            raise ProtocolError("refused", "the control loop has not reported yet; ask again")
        run_sha, boot_sha = s.policy_sha256, s.boot_policy_sha256

        def flags(info: schema.PolicyInfo) -> schema.PolicyInfo:
            info.running = info.sha256 is not None and info.sha256 == run_sha
            info.boots = info.sha256 is not None and info.sha256 == boot_sha
            return info

        history = []
        for entry in reversed(self.store.history()):
            info = describe(self.store.path(entry), entry.sha256, label=entry.label)
            info.file, info.accepted, info.note = entry.file, entry.accepted, entry.note
            info.source = kept_source(entry)
            history.append(flags(info))
        shipped = None
        shipped_file = shipped_policy()
        if shipped_file.is_file():
            shipped = describe(Path(str(shipped_file)), self._shipped_digest(shipped_file))
            shipped.file, shipped.source = SHIPPED_NAME, "shipped default"
            flags(shipped)
        running = None
        if s.policy_version is not None or run_sha is not None:
            running = self._described(s.policy_file, run_sha, s.policy_version, history, shipped)
            running.source = s.policy_source or None
            flags(running)
        boot = None
        if s.boot_policy_version is not None or boot_sha is not None:
            boot = self._described(
                s.boot_policy_file, boot_sha, s.boot_policy_version, history, shipped
            )
            boot.source = s.boot_policy_source or None
            flags(boot)
        return schema.PolicyList(
            running=running,
            boot=boot,
            history=history,
            shipped=shipped,
            policy_path=str(self.config.policy.path) if self.config.policy.path else None,
        )

    def _described(self, file, sha, label, history, shipped) -> schema.PolicyInfo:
        """The running or boot policy: a copy of its store or shipped entry, else its file's."""
        for known in [*history, shipped]:
            if known is not None and sha is not None and known.sha256 == sha:
                copy = schema.PolicyInfo(**{f: getattr(known, f) for f in known.__struct_fields__})
                copy.label = label or copy.label
                return copy
        if file:
            info = describe(Path(file), sha, label=label)
            info.file = str(file)
            return info
        return schema.PolicyInfo(label=label, sha256=sha)

    def _shipped_digest(self, shipped) -> str | None:
        """The shipped default's SHA-256 (hashed once per file version)."""
        try:
            st = os.stat(str(shipped))
        except OSError:
            return None
        key = (str(shipped), st.st_size, st.st_mtime)
        if self._shipped_sha is None or self._shipped_sha[0] != key:
            h = hashlib.sha256()
            with shipped.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._shipped_sha = (key, h.hexdigest())
        return self._shipped_sha[1]


SHIPPED_NAME = "default.malpi"


def describe(path: Path, sha256: str | None, label: str | None = None) -> schema.PolicyInfo:
    """A bundle file as a PolicyInfo (its label, creation, trainer and evaluation figures from
    the manifest); ``error`` says why the file could not be read."""
    info = schema.PolicyInfo(label=label, sha256=sha256)
    try:
        info.bytes = path.stat().st_size
        manifest = read_manifest(path)
    except (OSError, BundleError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        info.error = f"{path.name}: {reason}"
        return info
    if info.label is None:
        info.label = f"v{manifest['version']}-{str(manifest['id'])[:8]}"
    info.created = _text(manifest.get("created"))
    provenance = manifest.get("provenance") or {}
    info.trainer = _text(provenance.get("trainer") or provenance.get("made_by"))
    info.evaluation = evaluation_summary(provenance)
    return info


def evaluation_summary(provenance: dict[str, Any]) -> dict[str, schema.EvaluationValue]:
    """The figures a trainer records in a bundle's provenance, as a small flat map:

    - an ``evaluation`` report (``malpi eval``'s): ``tracks``, ``tracks_completed``,
      ``tracks_off_track``, ``laps_mean``, ``accuracy`` (next action, held-out expert steps);
    - ``malpi train dagger|default``: the last iteration's roll-outs, ``dagger_iterations``,
      ``rollout_episodes``, ``rollouts_off_track``, ``agreement`` (with the expert),
      ``val_nll``; the demonstrations' ``demo_episodes``, ``demo_off_track``;
    - ``malpi train bc``: ``best_val_nll``, ``epochs``;
    - the integer model's ``integer_agreement`` (argmax agreement with float);
    - ``car``, ``train_seconds``.

    Only finite numbers, booleans and short strings; at most ``schema.MAX_EVALUATION`` keys.
    """
    out: dict[str, Any] = {}
    p = provenance if isinstance(provenance, dict) else {}

    def put(key: str, value: Any) -> None:
        v = _figure(value)
        if v is not None and len(out) < schema.MAX_EVALUATION:
            out[key] = v

    ev = p.get("evaluation")
    if isinstance(ev, dict):
        put("tracks", ev.get("tracks"))
        put("tracks_completed", ev.get("completed_tracks"))
        put("tracks_off_track", ev.get("offtrack_episodes"))
        put("laps_mean", ev.get("laps_mean"))
        put("accuracy", ev.get("next_action_accuracy"))
    dagger = p.get("dagger")
    if isinstance(dagger, list) and dagger and isinstance(dagger[-1], dict):
        last = dagger[-1]
        put("dagger_iterations", len(dagger))
        rollouts = last.get("rollouts") if isinstance(last.get("rollouts"), dict) else {}
        put("rollout_episodes", rollouts.get("episodes"))
        put("rollouts_off_track", rollouts.get("left_track"))
        put("agreement", rollouts.get("agreement"))
        put("val_nll", last.get("val_nll"))
    demos = p.get("demonstrations")
    if isinstance(demos, dict):
        put("demo_episodes", demos.get("episodes"))
        put("demo_off_track", demos.get("left_track"))
    put("best_val_nll", p.get("best_val_nll"))
    put("epochs", p.get("epochs"))
    integer = p.get("integer")
    if isinstance(integer, dict):
        put("integer_agreement", integer.get("argmax_agreement"))
    put("car", p.get("car"))
    put("train_seconds", p.get("train_seconds"))
    return out


def _figure(value: Any) -> schema.EvaluationValue | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else None
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, str):
        return _text(value)
    return None


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) and value else None
