"""Exporting an episode: to plain files anyone can open, or into another episode database.

A directory export (``malpi episodes export N --out DIR``)::

    DIR/episode.json    metadata: ids, times, outcome, config, action table, ...
    DIR/steps.csv       one row per step (opens in a spreadsheet or pandas)
    DIR/frames/000000.jpg ...   the recorded JPEG of each step, byte for byte

``steps.csv`` columns: step, frame (path relative to DIR), action, action_name,
source, value, reward, done, capture_time, action_time (monotonic seconds of
the recording machine), wall_time (Unix seconds), policy_version, then
p_<action name> for each action (empty when no policy ran). reward and done
are the effective values (the episode's final reward and ending applied).
The directory appears complete or not at all: it is written under a temporary
name and renamed.

A database export (``--out FILE.sqlite``, also .sqlite3 or .db) copies the
episode, rows exactly as stored, into that MaLPi database (created if
missing) under a new id with the same uuid, its recorded motor commands too — the way to carry chosen episodes
from the car to the trainer, or to merge recordings.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from malpi.recorder.schema import StoreError
from malpi.recorder.store import EpisodeInfo, EpisodeStore

log = logging.getLogger(__name__)

DATABASE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
EXPORT_FORMAT = "malpi-episode-export/1"


def export_episode(store: EpisodeStore, episode_id: int, out: Path) -> Path:
    """Export to a database if ``out`` has a database suffix, else to a directory."""
    if out.suffix.lower() in DATABASE_SUFFIXES:
        copy_episode(store, episode_id, out)
    else:
        export_directory(store, episode_id, out)
    return out


def export_directory(store: EpisodeStore, episode_id: int, out: Path) -> Path:
    """Write episode.json, steps.csv and frames/*.jpg into the new directory ``out``."""
    info = store.episode(episode_id)
    with new_directory(out) as tmp:
        _write_directory(store, info, tmp)
    log.debug("exported episode %d (%d steps) to %s", episode_id, info.step_count, out)
    return out


def check_new_directory(out: Path, error: type[StoreError] = StoreError) -> None:
    """Raises ``error`` unless ``out`` is missing or an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise error(f"{out} already exists and is not an empty directory")


@contextmanager
def new_directory(out: Path, error: type[StoreError] = StoreError) -> Iterator[Path]:
    """A temporary directory beside ``out`` to write into, renamed to ``out`` when the block
    ends well, removed when it raises: ``out`` appears complete or not at all."""
    check_new_directory(out, error)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_directory(store: EpisodeStore, info: EpisodeInfo, tmp: Path) -> None:
    (tmp / "frames").mkdir()
    names = info.action_table.names
    with open(tmp / "steps.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["step", "frame", "action", "action_name", "source", "value", "reward", "done",
             "capture_time", "action_time", "wall_time", "policy_version"]
            + [f"p_{n}" for n in names]
        )  # fmt: skip
        for s in store.iter_steps(info.id, decode=False):
            frame = f"frames/{s.step:06d}.jpg"
            (tmp / frame).write_bytes(s.jpeg)
            name = names[s.action] if 0 <= s.action < len(names) else ""
            probs = (
                [str(np.float32(p)) for p in s.probs] if s.probs is not None else [""] * len(names)
            )
            writer.writerow(
                [s.step, frame, s.action, name, s.source, "" if s.value is None else repr(s.value),
                 repr(s.reward), int(s.done), repr(s.capture_time), repr(s.action_time),
                 repr(info.wall_time(s.capture_time)), s.policy_version or ""]
                + probs
            )  # fmt: skip
    meta = {
        "format": EXPORT_FORMAT,
        "source_database": str(store.path.resolve()),
        "id": info.id,
        "uuid": info.uuid,
        "started_at": info.started_at,
        "ended_at": info.ended_at,
        "outcome": info.outcome,
        "terminated": info.terminated,
        "final_reward": info.final_reward,
        "steps": info.step_count,
        "dropped_steps": info.dropped_steps,
        "duration_s": info.duration,
        "policy_version": info.policy_version,
        "notes": info.notes,
        "action_table": info.action_table.to_list(),
        "config": info.config,
    }
    (tmp / "episode.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def copy_episode(store: EpisodeStore, episode_id: int, dest: Path) -> int:
    """Copy an episode (all rows as stored) into the episode database ``dest``; returns its new id."""
    info = store.episode(episode_id)
    if info.running:
        raise StoreError(f"episode {episode_id} is still being recorded; copy it once it has ended")
    if dest.exists() and dest.resolve() == store.path.resolve():
        raise StoreError(f"{dest} is the database the episode is in")
    with EpisodeStore(dest, create=True) as dst:
        existing = dst.find_uuid(info.uuid)
        if existing is not None:
            raise StoreError(
                f"{dest} already holds this episode (uuid {info.uuid}) as episode {existing}"
            )
        dst.begin()  # one transaction: the copy is all there or not at all
        try:
            new_id = dst.insert_episode(
                None, info.uuid, info.started_at, info.started_mono, info.config,
                info.action_table, info.policy_version, info.notes,
                outcome=info.outcome, ended_at=info.ended_at, final_reward=info.final_reward,
            )  # fmt: skip
            chunk: list[tuple] = []
            for row in store.raw_step_rows(episode_id):
                chunk.append(row)
                if len(chunk) >= 256:
                    dst.insert_steps(new_id, chunk)
                    chunk = []
            if chunk:
                dst.insert_steps(new_id, chunk)
            commands = store.raw_command_rows(episode_id)
            if commands:
                dst.insert_commands(new_id, commands)
        except BaseException:
            dst.rollback()
            raise
        dst.commit()
    log.debug("copied episode %d of %s to %s as episode %d", episode_id, store.path, dest, new_id)
    return new_id
