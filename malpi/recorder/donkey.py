"""DonkeyCar tubs into the episode database (``malpi episodes import-donkey``).

A tub v2 (DonkeyCar 4 and 5) is a directory of ``manifest.json`` (five JSON lines: inputs,
types, user metadata, manifest metadata with the session ids, catalog metadata with the
catalog files and ``deleted_indexes``), ``catalog_N.catalog`` files of one JSON record a
line (``_index``, ``_session_id``, ``_timestamp_ms``, ``cam/image_array`` naming a JPEG in
``images/``, ``user/angle``, ``user/throttle``, ``user/mode``; ``pilot/angle`` and
``pilot/throttle`` when it recorded during autopilot) and ``images/``. A tub v1 (DonkeyCar
2 and 3) is ``meta.json`` (inputs, types, ``start``), ``record_N.json`` files
(``milliseconds`` since ``start``) with the JPEGs beside them, and ``exclude.json``.

What becomes of a record (docs/data.md says it for people):

- one episode per session (a tub v1 has no sessions: one episode), outcome ``finished``,
  steps numbered 0, 1, ... in index order, deleted/excluded records left out;
- the frame, resized to the policy's input and stored as the recorder stores it (JPEG);
- the motor command DonkeyCar sent (its DriveMode: ``user`` -> the user's angle and
  throttle; ``local_angle`` -> the pilot's angle, the user's throttle; ``local`` -> the
  pilot's both), kept in ``step_commands``, and its nearest action of the action table
  (Euclidean in (steering, throttle / 2), see nearest_actions) as the step's action. DonkeyCar's angle -1 is full
  left (its PWMSteering maps -1 to the left pulse), as MaLPi's steering -1 is: no sign flip;
- the source: ``user`` -> human, pilot modes -> policy (DonkeyCar has no intervention mode);
- times: ``_timestamp_ms`` (Unix milliseconds) as seconds for both capture and action time,
  the episode's start at its first record, the control rate (median period, rounded to
  whole Hz) as ``loop.rate_hz`` in the episode config, where the trainer reads it.

Everything is read and checked before the database is touched, then all tubs go in one
transaction: an error anywhere leaves the database as it was. An episode's uuid is derived
from the tub's creation time and the session id, so importing a tub again (or a copy of
it elsewhere) adds nothing; those sessions are reported as already there.

Untrusted input: catalog lines, manifests and images have size limits; an image name must
be a plain file name inside the tub's image directory (no ``..``, no absolute path, no
symlink out); an image must be a JPEG whose header states a size within limits before
OpenCV decodes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable
from malpi.recorder.codec import DEFAULT_JPEG_QUALITY, encode_jpeg
from malpi.recorder.schema import StoreError
from malpi.recorder.store import EpisodeStore

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # deleted_indexes of a big tub: a few MB at most
MAX_RECORD_BYTES = 64 * 1024  # one catalog line / record file; DonkeyCar's are ~200 bytes
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_SIDE = 4096  # pixels; DonkeyCar's camera default is 160x120
DONKEY_HZ = 20.0  # DonkeyCar's DRIVE_LOOP_HZ default, when a session is too short to measure

THROTTLE_WEIGHT = 0.5  # of a throttle difference against a steering one (nearest_actions)

MODES = {"user": "human", "local_angle": "policy", "local": "policy", "local_pilot": "policy"}
"""DonkeyCar's ``user/mode`` -> the step's source. DonkeyCar has no intervention mode: a
driver taking over switches the mode to ``user``, which is a human step."""

_NAMESPACE = uuidlib.UUID("6f1f6a3e-3c55-4d0e-9d7e-5b1d0f1c2a77")  # MaLPi's DonkeyCar imports
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class TubError(ValueError):
    """A tub that cannot be imported; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TubRecord:
    """One record of a tub, checked: what the importer needs of it."""

    index: int
    session: str
    time: float  # Unix seconds
    image: Path  # inside the tub's image directory
    steering: float  # the command DonkeyCar sent (see MODES)
    throttle: float
    source: str  # human | policy
    where: str  # "catalog_0.catalog line 7": for error messages


@dataclass
class Tub:
    path: Path
    version: int  # 1 or 2
    identity: str  # what the episode uuids derive from (the tub's creation time)
    records: list[TubRecord]  # not deleted, in index order
    deleted: int  # records left out as deleted (v2) or excluded (v1)
    inputs: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def sessions(self) -> dict[str, list[TubRecord]]:
        """Records by session id, sessions in the order they started."""
        out: dict[str, list[TubRecord]] = {}
        for r in self.records:
            out.setdefault(r.session, []).append(r)
        return out


@dataclass(frozen=True)
class ImportedSession:
    tub: Path
    session: str
    uuid: str
    episode: int  # its id in the database (the earlier one when already there)
    steps: int
    rate_hz: float
    already: bool  # the database already held it: nothing was added


@dataclass(frozen=True)
class ImportResult:
    out: Path
    sessions: list[ImportedSession]
    deleted: int  # records left out as deleted
    image: tuple[int, int]  # (height, width) of the stored frames


# -- reading a tub ------------------------------------------------------------------------


def read_tub(path: Path) -> Tub:
    """A tub v2 (``manifest.json``) or v1 (``meta.json``), every record checked (not the
    images: their bytes are checked as they are converted)."""
    if not path.is_dir():
        raise TubError(f"{path}: no such tub directory")
    if (path / "manifest.json").is_file():
        return _read_v2(path)
    if (path / "meta.json").is_file():
        return _read_v1(path)
    raise TubError(f"{path}: not a DonkeyCar tub (no manifest.json, nor meta.json of a tub v1)")


def _read_text(path: Path, limit: int) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise TubError(f"{path}: {size} bytes, over the {limit}-byte limit")
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise TubError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise TubError(f"{path}: not UTF-8 text ({exc})") from exc


def _json(text: str, where: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise TubError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(value, kind):
        raise TubError(f"{where}: expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _plain_name(name: object, where: str, what: str) -> str:
    """A file name with no directory part: nothing in a tub may point outside it."""
    if not isinstance(name, str) or not name:
        raise TubError(f"{where}: {what} must be a file name, got {name!r}")
    if "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        raise TubError(f"{where}: {what} {name!r} is not a plain file name inside the tub")
    return name


def _read_v2(path: Path) -> Tub:
    manifest = path / "manifest.json"
    lines = _read_text(manifest, MAX_MANIFEST_BYTES).splitlines()
    if len(lines) < 5:
        raise TubError(f"{manifest}: {len(lines)} lines, a tub v2 manifest has 5")
    inputs = _json(lines[0], f"{manifest} line 1 (inputs)", list)
    types = _json(lines[1], f"{manifest} line 2 (types)", list)
    metadata = _json(lines[2], f"{manifest} line 3 (metadata)", dict)
    meta = _json(lines[3], f"{manifest} line 4 (manifest metadata)", dict)
    catalogs = _json(lines[4], f"{manifest} line 5 (catalogs)", dict)
    paths = catalogs.get("paths")
    deleted = catalogs.get("deleted_indexes", [])
    if not isinstance(paths, list) or not paths:
        raise TubError(f"{manifest}: line 5 lists no catalog files ('paths')")
    if not isinstance(deleted, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in deleted
    ):
        raise TubError(f"{manifest}: 'deleted_indexes' must be a list of integers")
    image_key = _image_key(inputs, types, manifest)
    deleted_set = set(deleted)
    records: list[TubRecord] = []
    position = 0  # DonkeyCar deletes by position across the catalogs, in their order
    skipped = 0
    for name in paths:
        catalog = path / _plain_name(name, str(manifest), "a catalog")
        for line_no, line in _catalog_lines(catalog):
            index, position = position, position + 1
            if index in deleted_set:  # not even parsed: a broken deleted record is fine
                skipped += 1
                continue
            where = f"{catalog} line {line_no}"
            record = _json(line, where, dict)
            records.append(_record(record, where, path / "images", image_key, index))
    records.sort(key=lambda r: r.index)
    created = meta.get("created_at")
    identity = f"v2:{created!r}" if isinstance(created, int | float) else f"v2:{path.resolve()}"
    return Tub(path, 2, identity, records, skipped, [str(i) for i in inputs], metadata)


def _image_key(inputs: list[Any], types: list[Any], where: Path) -> str:
    for key, kind in zip(inputs, types, strict=False):
        if kind == "image_array":
            return str(key)
    raise TubError(f"{where}: no input of type image_array (a camera) among {inputs}")


def _catalog_lines(catalog: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a catalog, each line bounded (a huge line is refused unread)."""
    try:
        f = open(catalog, "rb")  # noqa: SIM115 - closed below; readline needs the handle
    except OSError as exc:
        raise TubError(f"{catalog}: cannot read the catalog ({exc.strerror or exc})") from exc
    with f:
        line_no = 0
        while raw := f.readline(MAX_RECORD_BYTES + 1):
            line_no += 1
            if len(raw) > MAX_RECORD_BYTES:
                raise TubError(
                    f"{catalog} line {line_no}: over {MAX_RECORD_BYTES} bytes, not a tub record"
                )
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise TubError(f"{catalog} line {line_no}: not UTF-8 ({exc})") from exc
            if text:
                yield line_no, text


def _number(record: dict[str, Any], key: str, where: str, *, clamp: bool = False) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TubError(f"{where}: {key} must be a finite number, got {value!r}")
    if clamp:  # what DonkeyCar's actuators do with a pilot's output beyond [-1, 1]
        return min(1.0, max(-1.0, float(value)))
    if not -1.0 <= value <= 1.0:
        raise TubError(f"{where}: {key}={value} is outside [-1, 1]")
    return float(value)


def _record(
    record: dict[str, Any], where: str, images: Path, image_key: str, index: int
) -> TubRecord:
    """One catalog record (v2) or record file (v1, its time already in ``_timestamp_ms``)."""
    mode = record.get("user/mode", "user")  # a tub recorded without the mode: driven by hand
    if mode not in MODES:
        raise TubError(f"{where}: unknown user/mode {mode!r} (known: {', '.join(MODES)})")
    steering = _number(record, "user/angle", where)
    throttle = _number(record, "user/throttle", where)
    # DonkeyCar's DriveMode: what it sent in each mode. The pilot's values are recorded only
    # with RECORD_DURING_AI; without them, the user's are all the record says.
    if mode != "user" and "pilot/angle" in record:
        steering = _number(record, "pilot/angle", where, clamp=True)
    if mode not in ("user", "local_angle") and "pilot/throttle" in record:
        throttle = _number(record, "pilot/throttle", where, clamp=True)
    stamp = record.get("_timestamp_ms")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise TubError(f"{where}: _timestamp_ms must be a number, got {stamp!r}")
    session = record.get("_session_id", "")
    if not isinstance(session, str):
        raise TubError(f"{where}: _session_id must be a string, got {session!r}")
    name = _plain_name(record.get(image_key), where, image_key)
    return TubRecord(
        index, session, stamp / 1000.0, images / name, steering, throttle, MODES[mode], where
    )


def _read_v1(path: Path) -> Tub:
    meta_path = path / "meta.json"
    meta = _json(_read_text(meta_path, MAX_MANIFEST_BYTES), str(meta_path), dict)
    inputs, types = meta.get("inputs", []), meta.get("types", [])
    if not isinstance(inputs, list) or not isinstance(types, list):
        raise TubError(f"{meta_path}: 'inputs' and 'types' must be lists")
    image_key = _image_key(inputs, types, meta_path)
    start = meta.get("start")
    if isinstance(start, bool) or not isinstance(start, int | float) or not math.isfinite(start):
        raise TubError(f"{meta_path}: 'start' must be a number (Unix seconds), got {start!r}")
    excluded: set[int] = set()
    exclude_path = path / "exclude.json"
    if exclude_path.exists():
        listed = _json(_read_text(exclude_path, MAX_MANIFEST_BYTES), str(exclude_path), list)
        excluded = {i for i in listed if isinstance(i, int)}
    records = []
    indexes = sorted(_v1_index(p) for p in path.glob("record_*.json"))
    for index in indexes:
        if index in excluded:
            continue
        file = path / f"record_{index}.json"
        record = _json(_read_text(file, MAX_RECORD_BYTES), str(file), dict)
        ms = record.get("milliseconds")
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
            raise TubError(f"{file}: milliseconds must be a number, got {ms!r}")
        # v1 has no sessions and keeps its images beside the records.
        record = {**record, "_timestamp_ms": start * 1000.0 + ms, "_session_id": "v1"}
        records.append(_record(record, str(file), path, image_key, index))
    skipped = len([i for i in indexes if i in excluded])
    return Tub(path, 1, f"v1:{start!r}", records, skipped, [str(i) for i in inputs], meta)


def _v1_index(p: Path) -> int:
    try:
        return int(p.stem.removeprefix("record_"))
    except ValueError:
        raise TubError(f"{p}: a tub v1 record file must be named record_N.json") from None


# -- images -------------------------------------------------------------------------------


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding; None if there is none."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header
            return None
        i += 2 + length
    return None


def read_image(record: TubRecord) -> np.ndarray:
    """The record's frame as RGB uint8, checked before OpenCV sees it: inside the tub's image
    directory, a JPEG, of a size within MAX_IMAGE_SIDE."""
    import cv2

    images = record.image.parent.resolve()
    try:
        real = record.image.resolve(strict=True)
    except OSError:
        raise TubError(f"{record.where}: image {record.image} is missing") from None
    if real.parent != images or not real.is_file():
        raise TubError(f"{record.where}: image {record.image} leads outside {images}")
    size = real.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise TubError(f"{record.image}: {size} bytes, over the {MAX_IMAGE_BYTES}-byte limit")
    data = real.read_bytes()
    dims = jpeg_size(data)
    if dims is None:
        raise TubError(f"{record.image}: not a JPEG image")
    if not (0 < dims[0] <= MAX_IMAGE_SIDE and 0 < dims[1] <= MAX_IMAGE_SIDE):
        raise TubError(
            f"{record.image}: {dims[0]}x{dims[1]} pixels, over the "
            f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} limit (a camera frame is far smaller)"
        )
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise TubError(f"{record.image}: a damaged JPEG (OpenCV cannot decode it)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def fit_frame(rgb: np.ndarray, image: tuple[int, int]) -> np.ndarray:
    """The frame at the policy's (height, width); INTER_AREA, the right filter to shrink."""
    import cv2

    h, w = image
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


# -- actions, rate, identity --------------------------------------------------------------


def nearest_actions(commands: np.ndarray, actions: ActionTable) -> np.ndarray:
    """The index of the nearest action for each (steering, throttle) row: Euclidean in
    (steering, THROTTLE_WEIGHT * throttle); ties go to the lower index.

    Steering counts twice as much as throttle: a MaLPi table's throttle mostly follows its
    steering (slower in curves) while a DonkeyCar driver's throttle varies freely, and with
    plain Euclidean a car standing still with straight wheels, (0, 0), is nearest to "left"
    (-0.35, 0.6) of the default table rather than "straight" (0, 0.7)."""
    scale = np.array([1.0, THROTTLE_WEIGHT])
    table = np.array([[a.steering, a.throttle] for a in actions], dtype=np.float64) * scale
    d = np.linalg.norm(commands[:, None, :] * scale - table[None, :, :], axis=2)
    return np.argmin(d, axis=1).astype(np.int64)


def control_rate(records: Sequence[TubRecord]) -> float:
    """The session's loop rate: the median period between records with adjacent indices,
    rounded to whole Hz (the trainer wants one rate for data recorded at one rate);
    DonkeyCar's default when there is nothing to measure."""
    periods = [
        b.time - a.time
        for a, b in zip(records, records[1:], strict=False)
        if b.index == a.index + 1 and b.time > a.time
    ]
    if not periods:
        return DONKEY_HZ
    return float(max(1, round(1.0 / statistics.median(periods))))


def session_uuid(tub: Tub, session: str) -> str:
    """Derived from the tub's creation time and the session id: the same on every import."""
    return str(uuidlib.uuid5(_NAMESPACE, f"{tub.identity}/{session}"))


# -- importing ----------------------------------------------------------------------------


def import_tubs(
    paths: Sequence[Path],
    out: Path,
    actions: ActionTable,
    image: tuple[int, int],
    *,
    quality: int = DEFAULT_JPEG_QUALITY,
) -> ImportResult:
    """Import the tubs into the episode database ``out`` (created if missing), all in one
    transaction; sessions already there (same uuid) are left as they are."""
    tubs = [read_tub(Path(p)) for p in paths]  # every record checked before any write
    created = not out.exists()
    try:
        with EpisodeStore(out, create=True) as store:
            store.begin()
            try:
                done = _import_all(store, tubs, actions, image, quality)
            except BaseException:
                store.rollback()
                raise
            store.commit()
    except BaseException:
        if created:  # a failed first import leaves no empty database behind
            for p in out.parent.glob(out.name + "*"):
                if p.name in (out.name, f"{out.name}-wal", f"{out.name}-shm"):
                    p.unlink(missing_ok=True)
        raise
    return ImportResult(out, done, sum(t.deleted for t in tubs), image)


def _import_all(
    store: EpisodeStore,
    tubs: list[Tub],
    actions: ActionTable,
    image: tuple[int, int],
    quality: int,
) -> list[ImportedSession]:
    done: list[ImportedSession] = []
    seen: dict[str, ImportedSession] = {}
    for tub in tubs:
        for session, records in tub.sessions().items():
            uuid = session_uuid(tub, session)
            rate = control_rate(records)
            existing = store.find_uuid(uuid)
            if uuid in seen:  # the same tub given twice
                existing = seen[uuid].episode
            if existing is not None:
                done.append(
                    ImportedSession(tub.path, session, uuid, existing, len(records), rate, True)
                )
                continue
            episode = _import_session(
                store, tub, session, records, uuid, rate, actions, image, quality
            )
            seen[uuid] = ImportedSession(
                tub.path, session, uuid, episode, len(records), rate, False
            )
            done.append(seen[uuid])
            log.info("imported %s session %s as episode %d", tub.path, session, episode)
    return done


def _import_session(
    store: EpisodeStore,
    tub: Tub,
    session: str,
    records: list[TubRecord],
    uuid: str,
    rate: float,
    actions: ActionTable,
    image: tuple[int, int],
    quality: int,
) -> int:
    h, w = image
    commands = np.array([[r.steering, r.throttle] for r in records], dtype=np.float64)
    chosen = nearest_actions(commands, actions)
    config = {
        "loop": {"rate_hz": rate},  # read by the trainer (recorded_control_hz)
        "camera": {"backend": "donkeycar", "width": w, "height": h},
        "donkeycar": {
            "tub": str(tub.path.resolve()),
            "tub_version": tub.version,
            "session": session,
            "first_index": records[0].index,
            "last_index": records[-1].index,
            "inputs": tub.inputs,
            "metadata": tub.metadata if tub.version == 2 else {},
        },
    }
    first, last = records[0].time, records[-1].time
    episode = store.insert_episode(
        None, uuid, first, first, config, actions, None,
        f"DonkeyCar tub {tub.path.name} session {session}",
        outcome="finished", ended_at=last,
    )  # fmt: skip
    rows: list[tuple[Any, ...]] = []
    sent: list[tuple[int, float, float]] = []
    for step, (record, action) in enumerate(zip(records, chosen, strict=True)):
        frame = fit_frame(read_image(record), image)
        jpeg = encode_jpeg(frame, quality)
        rows.append(
            (step, int(action), record.source, None, None, 0.0, 0, record.time, record.time,
             None, jpeg)  # DonkeyCar's pilot is no MaLPi policy: no version, probs, value
        )  # fmt: skip
        entry = actions[int(action)]
        if (record.steering, record.throttle) != (entry.steering, entry.throttle):
            sent.append((step, record.steering, record.throttle))
        if len(rows) >= 64:
            store.insert_steps(episode, rows)
            rows = []
    if rows:
        store.insert_steps(episode, rows)
    store.insert_commands(episode, sent)
    return episode


def describe(result: ImportResult) -> Iterator[str]:
    """The CLI's lines: one per session, then a total."""
    for s in result.sessions:
        what = "already there as" if s.already else "imported as"
        yield (
            f"{s.tub} session {s.session}: {s.steps} steps at {s.rate_hz:g} Hz, "
            f"{what} episode {s.episode}"
        )
    new = [s for s in result.sessions if not s.already]
    again = len(result.sessions) - len(new)
    h, w = result.image
    tail = f"; {again} already imported, left as they are" if again else ""
    yield (
        f"{len(new)} episodes ({sum(s.steps for s in new)} steps, frames {w}x{h}) into "
        f"{result.out}; {result.deleted} deleted records left out{tail}"
    )


def policy_input(bundle: Path) -> tuple[tuple[int, int], ActionTable, str]:
    """A policy bundle's image size (height, width), action table and label, from its
    manifest alone (no model is loaded: importing needs no LiteRT)."""
    from malpi.actions import ActionTableError
    from malpi.policy.bundle import BundleError, read_manifest
    from malpi.policy.spec import PolicySpec, SpecError

    try:
        manifest = read_manifest(os.fspath(bundle))
        spec = PolicySpec.from_dict(manifest["spec"])
        actions = ActionTable.from_list(manifest["actions"])
    except (BundleError, SpecError, ActionTableError) as exc:
        raise StoreError(f"{bundle}: not a usable policy bundle ({exc})") from exc
    if not spec.is_image:
        raise StoreError(f"{bundle}: the policy takes no camera image (obs_dim {spec.obs_dim})")
    label = f"v{manifest['version']}-{manifest['id'][:8]}"
    return (spec.image_height, spec.image_width), actions, label
