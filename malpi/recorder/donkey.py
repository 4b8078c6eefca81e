"""DonkeyCar tubs into the episode database (``malpi episodes import-donkey``).

donkey_tub.py reads and checks a tub (its format, the limits on untrusted input); this
module turns its records into episodes.

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
"""

from __future__ import annotations

import logging
import os
import statistics
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable
from malpi.recorder.codec import DEFAULT_JPEG_QUALITY, encode_jpeg
from malpi.recorder.donkey_tub import Tub, TubRecord, read_image, read_tub
from malpi.recorder.schema import StoreError
from malpi.recorder.store import EpisodeStore

log = logging.getLogger(__name__)

DONKEY_HZ = 20.0  # DonkeyCar's DRIVE_LOOP_HZ default, when a session is too short to measure

THROTTLE_WEIGHT = 0.5  # of a throttle difference against a steering one (nearest_actions)

_NAMESPACE = uuidlib.UUID("6f1f6a3e-3c55-4d0e-9d7e-5b1d0f1c2a77")  # MaLPi's DonkeyCar imports


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


# -- frames, actions, rate, identity -----------------------------------------------------


def fit_frame(rgb: np.ndarray, image: tuple[int, int]) -> np.ndarray:
    """The frame at the policy's (height, width); INTER_AREA, the right filter to shrink."""
    import cv2

    h, w = image
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


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
