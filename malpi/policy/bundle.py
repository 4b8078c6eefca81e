"""The policy bundle: the single file that travels from the trainer to the robot.

A bundle is a zip archive holding

- ``manifest.json``: format and format version, the architecture spec, the
  action table, the policy's version and id, creation time, provenance, and the
  SHA-256 and size of each payload;
- ``weights.npz``: the Keras weights, by name, in the spec's canonical order;
- ``float.tflite``: the step model for LiteRT in float32;
- ``dynamic_range.tflite``: the same with int8 weights and float activations
  (dynamic-range quantisation; format 1 called it ``int8.tflite``);
- ``integer.tflite`` (optional): int8 weights *and* activations, calibrated on
  representative frames, for the integer kernels a Pi runs fastest (see
  :mod:`malpi.policy.quantize` for which ops stay in float and why).

Loading validates all of it (structure, manifest schema, checksums, shapes
against the spec, finite weights, and a test step of each LiteRT model) before
returning, and raises :class:`BundleError` naming the first problem. Untrusted
bytes are judged before they cost anything: the archive's member sizes (as the
zip directory states them, which also caps what inflating may produce) are
checked against the limits below before a byte is inflated. Nothing here
imports TensorFlow.

A bundle's identity is its content: ``sha256`` of the file. The label
(``v3-1a2b3c4d``) is for people.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable, ActionTableError
from malpi.policy.spec import PolicySpec, SpecError

log = logging.getLogger(__name__)

FORMAT = "malpi-policy"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
FLOAT_MODEL = "float.tflite"
DYNAMIC_MODEL = "dynamic_range.tflite"
INTEGER_MODEL = "integer.tflite"
V1_DYNAMIC_MODEL = "int8.tflite"  # format 1's name for the dynamic-range model
# The payloads each format version holds: (required, optional).
PAYLOADS = {
    1: ((WEIGHTS, FLOAT_MODEL, V1_DYNAMIC_MODEL), ()),
    2: ((WEIGHTS, FLOAT_MODEL, DYNAMIC_MODEL), (INTEGER_MODEL,)),
}
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024  # spec, action table, provenance: a few KB in practice
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024  # each of weights.npz and the two models, inflated
MAX_INFLATED_BYTES = 128 * 1024 * 1024  # all members together, inflated

_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "id": str,
    "version": int,
    "parent": (str, type(None)),
    "created": str,
    "spec": dict,
    "actions": list,
    "provenance": dict,
    "payloads": dict,
}
# Fields a bundle may lack (it was made before they existed).
_OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "control_hz": (int, float, type(None)),  # the control rate it was trained at; null: unknown
}


class BundleError(ValueError):
    """A bundle that must not be used; the message says what is wrong with it."""


@dataclass
class PolicyBundle:
    manifest: dict[str, Any]
    spec: PolicySpec
    actions: ActionTable
    weights: dict[str, np.ndarray]
    tflite_float: bytes
    tflite_dynamic: bytes
    tflite_integer: bytes | None
    _payload_bytes: dict[str, bytes] = field(default_factory=dict, repr=False)
    _file: bytes | None = field(
        default=None, repr=False
    )  # the bytes it was read from or written as

    @functools.cached_property
    def sha256(self) -> str:
        """The bundle's identity: the SHA-256 of its file."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def version(self) -> int:
        return self.manifest["version"]

    @property
    def control_hz(self) -> float | None:
        """The control rate the policy was trained at (its LSTM has learnt that period)."""
        hz = self.manifest.get("control_hz")
        return None if hz is None else float(hz)

    @property
    def label(self) -> str:
        """Short human-readable identity, e.g. ``v3-1a2b3c4d``."""
        return f"v{self.version}-{self.id[:8]}"

    @classmethod
    def create(
        cls,
        spec: PolicySpec,
        actions: ActionTable,
        weights: dict[str, np.ndarray],
        tflite_float: bytes,
        tflite_dynamic: bytes,
        provenance: dict[str, Any],
        tflite_integer: bytes | None = None,
        version: int = 1,
        parent: str | None = None,
        control_hz: float | None = None,
    ) -> PolicyBundle:
        if control_hz is not None and not 0 < control_hz <= 1000:
            raise ValueError(f"control_hz must be in (0, 1000], got {control_hz}")
        weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        buf = io.BytesIO()
        np.savez(buf, **weights)
        payloads = {
            WEIGHTS: buf.getvalue(),
            FLOAT_MODEL: tflite_float,
            DYNAMIC_MODEL: tflite_dynamic,
        }
        if tflite_integer is not None:
            payloads[INTEGER_MODEL] = tflite_integer
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "id": hashlib.sha256(payloads[WEIGHTS]).hexdigest()[:16],
            "version": int(version),
            "parent": parent,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "spec": spec.to_dict(),
            "actions": actions.to_list(),
            "provenance": provenance,
            "control_hz": None if control_hz is None else float(control_hz),
            "payloads": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for name, data in payloads.items()
            },
        }
        return cls(
            manifest, spec, actions, weights, tflite_float, tflite_dynamic, tflite_integer, payloads
        )

    def with_integer_model(
        self, tflite_integer: bytes | None, report: dict[str, Any]
    ) -> PolicyBundle:
        """The same policy (same id and version) with this integer model (None: without one),
        and ``report`` (how it was calibrated, how well it agrees) as provenance ``integer``."""
        m = self.manifest
        return PolicyBundle.create(
            self.spec,
            self.actions,
            self.weights,
            self.tflite_float,
            self.tflite_dynamic,
            {**m["provenance"], "integer": report},
            tflite_integer=tflite_integer,
            version=m["version"],
            parent=m["parent"],
            control_hz=m.get("control_hz"),
        )

    @property
    def models(self) -> dict[str, bytes]:
        """The LiteRT step models it carries, by the backend that runs each."""
        models = {"litert_float": self.tflite_float, "litert_dynamic": self.tflite_dynamic}
        if self.tflite_integer is not None:
            models["litert_int8"] = self.tflite_integer
        return models

    def to_bytes(self) -> bytes:
        """The bundle file (the same bytes every time: a bundle has one identity)."""
        if self._file is None:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True))
                for name in sorted(self.manifest["payloads"]):
                    zf.writestr(name, self._payload_bytes[name])
            self._file = buf.getvalue()
        return self._file

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temp file in the same directory, fsync, rename, fsync the directory."""
        return write_atomic(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike, **expect: Any) -> PolicyBundle:
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise BundleError(f"cannot read policy bundle {path}: {exc.strerror}") from exc
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path} is {size} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
        return cls.from_bytes(path.read_bytes(), **expect)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        expected_actions: ActionTable | None = None,
        expected_image: tuple[int, int] | None = None,
        check_models: bool = True,
        expected_control_hz: float | None = None,
    ) -> PolicyBundle:
        """Parse and validate a bundle completely; raise BundleError naming the first problem.

        ``expected_actions`` / ``expected_image`` / ``expected_control_hz``: what the robot
        is configured for; a bundle trained for another action table, camera size or control
        rate is rejected (a bundle that does not know its rate passes the last check).
        """
        if len(data) > MAX_BUNDLE_BYTES:
            raise BundleError(
                f"bundle is {len(data)} bytes, over the {MAX_BUNDLE_BYTES}-byte limit"
            )
        files = _read_zip(data)
        manifest = _parse_manifest(files[MANIFEST])
        version = manifest["format_version"]
        _check_members(files, version)
        try:
            spec = PolicySpec.from_dict(manifest["spec"])
        except (SpecError, TypeError) as exc:
            raise BundleError(f"manifest spec is invalid: {exc}") from exc
        try:
            actions = ActionTable.from_list(manifest["actions"])
        except ActionTableError as exc:
            raise BundleError(f"manifest action table is invalid: {exc}") from exc
        if len(actions) != spec.num_actions:
            raise BundleError(
                f"wrong action count: the action table has {len(actions)} actions "
                f"but the spec's policy outputs {spec.num_actions}"
            )
        _check_payloads(manifest["payloads"], files)
        weights = _parse_weights(files[WEIGHTS], spec)
        if expected_actions is not None and actions != expected_actions:
            raise BundleError(
                f"action table mismatch: the bundle has {actions.to_list()}, "
                f"the robot is configured for {expected_actions.to_list()}"
            )
        if expected_image is not None and spec.is_image:
            got = (spec.image_height, spec.image_width)
            if tuple(expected_image) != got:
                raise BundleError(
                    f"image size mismatch: the policy takes {got[0]}x{got[1]}, "
                    f"the camera is configured for {expected_image[0]}x{expected_image[1]}"
                )
        hz = manifest.get("control_hz")
        if (
            expected_control_hz is not None
            and hz is not None
            and abs(hz - expected_control_hz) > 1e-6
        ):
            raise BundleError(
                f"control rate mismatch: the policy was trained at {hz:g} Hz, the robot's loop "
                f"runs at {expected_control_hz:g} Hz (loop.rate_hz; set "
                "policy.allow_rate_mismatch = true to drive it anyway)"
            )
        dynamic = files[V1_DYNAMIC_MODEL if version == 1 else DYNAMIC_MODEL]
        integer = files.get(INTEGER_MODEL)
        bundle = cls(
            manifest, spec, actions, weights, files[FLOAT_MODEL], dynamic, integer, files, data
        )
        if check_models:
            from malpi.policy.litert import MissingRuntime, check_model

            for name in sorted(files.keys() - {MANIFEST, WEIGHTS}):
                try:
                    check_model(files[name], spec)
                except MissingRuntime:
                    raise  # this install's fault, not the bundle's
                except Exception as exc:
                    raise BundleError(f"{name} failed its test step: {exc}") from exc
        return bundle


def read_manifest(source: str | os.PathLike | Any) -> dict[str, Any]:
    """A bundle file's manifest alone (a path, or a binary file object), for listing: bounded
    (the file's size and the manifest's are checked before it is read), and no payload is
    inflated, checked or run. BundleError says why it cannot be read."""
    try:
        if isinstance(source, str | os.PathLike):
            size = os.stat(source).st_size
            if size > MAX_BUNDLE_BYTES:
                raise BundleError(f"{size} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
        with zipfile.ZipFile(source) as zf:
            try:
                info = zf.getinfo(MANIFEST)
            except KeyError:
                raise BundleError(f"no {MANIFEST}") from None
            if info.file_size > MAX_MANIFEST_BYTES:
                raise BundleError(
                    f"{MANIFEST} inflates to {info.file_size} bytes, over its "
                    f"{MAX_MANIFEST_BYTES}-byte limit"
                )
            raw = zf.read(info)
    except BundleError:
        raise
    except OSError as exc:
        raise BundleError(f"cannot read it: {exc.strerror or exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError) as exc:
        raise BundleError(f"not a readable policy bundle: {exc}") from exc
    return _parse_manifest(raw)


def write_atomic(path: Path, data: bytes | memoryview) -> Path:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _read_zip(data: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise BundleError(f"bundle contents are wrong: duplicated {dupes}")
            if MANIFEST not in names:
                raise BundleError(f"bundle contents are wrong: missing ['{MANIFEST}']")
            known = {MANIFEST}.union(*(set(r) | set(o) for r, o in PAYLOADS.values()))
            extra = sorted(set(names) - known)
            if extra:
                raise BundleError(f"bundle contents are wrong: unexpected {extra}")
            _check_sizes(infos)
            # Inflating a member yields at most its stated size (zipfile stops there and
            # checks the CRC), so the checks above bound the memory this takes.
            return {i.filename: zf.read(i) for i in infos}
    except zipfile.BadZipFile as exc:
        raise BundleError(
            f"not a readable policy bundle (truncated or corrupt archive): {exc}"
        ) from exc
    except (
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
    ) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(
            f"not a readable policy bundle (truncated or corrupt archive): {exc}"
        ) from exc


def _check_sizes(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse a member over its limit before inflating anything (a zip bomb costs nothing)."""
    for info in infos:
        limit = MAX_MANIFEST_BYTES if info.filename == MANIFEST else MAX_PAYLOAD_BYTES
        if info.file_size > limit:
            raise BundleError(
                f"{info.filename} inflates to {info.file_size} bytes, over its {limit}-byte limit"
            )
    total = sum(i.file_size for i in infos)
    if total > MAX_INFLATED_BYTES:
        raise BundleError(
            f"the bundle inflates to {total} bytes, over the {MAX_INFLATED_BYTES}-byte limit"
        )


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError("manifest.json must hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"manifest format is {manifest.get('format')!r}, expected {FORMAT!r}")
    fv = manifest.get("format_version")
    if isinstance(fv, bool) or fv not in READABLE_VERSIONS:
        raise BundleError(
            f"unknown bundle format version {fv!r}; this malpi reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    for key, types in _MANIFEST_FIELDS.items():
        if key not in manifest:
            raise BundleError(f"manifest is missing {key!r}")
        value = manifest[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types is int):
            raise BundleError(f"manifest {key!r} has the wrong type ({type(value).__name__})")
    for key, types in _OPTIONAL_FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise BundleError(f"manifest {key!r} has the wrong type ({type(value).__name__})")
    hz = manifest.get("control_hz")
    if hz is not None and not 0 < hz <= 1000:
        raise BundleError(f"manifest control_hz must be in (0, 1000], got {hz}")
    unknown = set(manifest) - set(_MANIFEST_FIELDS) - set(_OPTIONAL_FIELDS)
    if unknown:
        raise BundleError(f"manifest has unknown field(s) {sorted(unknown)}")
    return manifest


def _check_members(files: dict[str, bytes], version: int) -> None:
    """The archive holds exactly its format version's payloads (an optional one may be absent)."""
    required, optional = PAYLOADS[version]
    names = set(files) - {MANIFEST}
    missing = sorted(set(required) - names)
    extra = sorted(names - set(required) - set(optional))
    if missing or extra:
        raise BundleError(
            f"bundle contents are wrong for format version {version}: "
            f"missing {missing}, unexpected {extra}"
        )


def _check_payloads(entries: dict[str, Any], files: dict[str, bytes]) -> None:
    present = sorted(set(files) - {MANIFEST})
    if sorted(entries) != present:
        raise BundleError(f"manifest payloads list {sorted(entries)}, the archive holds {present}")
    for name in present:
        entry = entries[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"manifest payload entry for {name} lacks a sha256")
        if entry.get("bytes") != len(files[name]):
            raise BundleError(
                f"{name} is {len(files[name])} bytes, the manifest says {entry.get('bytes')}"
            )
        if hashlib.sha256(files[name]).hexdigest() != entry["sha256"]:
            raise BundleError(f"{name} does not match its SHA-256 checksum in the manifest")


def _parse_weights(raw: bytes, spec: PolicySpec) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise BundleError(f"weights.npz cannot be read: {exc}") from exc
    expected = spec.weight_shapes()
    names = [n for n, _ in expected]
    if set(weights) != set(names):
        missing, extra = sorted(set(names) - set(weights)), sorted(set(weights) - set(names))
        raise BundleError(f"weights do not fit the spec: missing {missing}, unexpected {extra}")
    for name, shape in expected:
        w = weights[name]
        if w.dtype != np.float32:
            raise BundleError(f"weight {name} has dtype {w.dtype}, expected float32")
        if w.shape != shape:
            raise BundleError(f"weight {name} has shape {w.shape}, the spec needs {shape}")
        if not np.isfinite(w).all():
            raise BundleError(f"weight {name} has non-finite values (NaN or Inf)")
    return {name: weights[name] for name in names}
