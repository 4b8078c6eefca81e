"""Reading a DonkeyCar tub: the untrusted-input side of ``malpi episodes import-donkey``.

A tub v2 (DonkeyCar 4 and 5) is a directory of ``manifest.json`` (five JSON lines: inputs,
types, user metadata, manifest metadata with the session ids, catalog metadata with the
catalog files and ``deleted_indexes``), ``catalog_N.catalog`` files of one JSON record a
line (``_index``, ``_session_id``, ``_timestamp_ms``, ``cam/image_array`` naming a JPEG in
``images/``, ``user/angle``, ``user/throttle``, ``user/mode``; ``pilot/angle`` and
``pilot/throttle`` when it recorded during autopilot) and ``images/``. A tub v1 (DonkeyCar
2 and 3) is ``meta.json`` (inputs, types, ``start``), ``record_N.json`` files
(``milliseconds`` since ``start``) with the JPEGs beside them, and ``exclude.json``.

Untrusted input: catalog lines, manifests and images have size limits; an image name must
be a plain file name inside the tub's image directory (no ``..``, no absolute path, no
symlink out); an image must be a JPEG whose header states a size within limits before
OpenCV decodes it.

donkey.py imports what this reads into the episode database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # deleted_indexes of a big tub: a few MB at most
MAX_RECORD_BYTES = 64 * 1024  # one catalog line / record file; DonkeyCar's are ~200 bytes
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_SIDE = 4096  # pixels; DonkeyCar's camera default is 160x120

MODES = {"user": "human", "local_angle": "policy", "local": "policy", "local_pilot": "policy"}
"""DonkeyCar's ``user/mode`` -> the step's source. DonkeyCar has no intervention mode: a
driver taking over switches the mode to ``user``, which is a human step."""

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
