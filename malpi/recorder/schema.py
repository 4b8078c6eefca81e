"""The episode database: its schema, its version, and opening it safely.

One SQLite file holds any number of episodes. It is identified as MaLPi's by
``PRAGMA application_id`` and versioned by ``PRAGMA user_version``; a file
that is not SQLite, is someone else's database, or was written by a newer
schema is refused with a message that says which.

Durability. The file is in WAL mode with ``synchronous=FULL``:

* WAL alone guarantees the database is never corrupted by a crash or a power
  cut at any instant; an interrupted transaction simply is not there.
* ``synchronous=NORMAL`` (the usual WAL pairing) is enough to survive a
  *process* crash (the WAL is in the OS page cache), but after a *power cut*
  it may lose every transaction since the last checkpoint, which at 20 Hz of
  JPEG frames is tens of seconds of driving. ``FULL`` fsyncs the WAL at every
  commit, so a committed step survives a power cut. The recorder commits at
  most every half second, off the control thread, so this costs two fsyncs a
  second on a thread that can afford them.

Versions. 1: ``episodes`` and ``steps``. 2 adds ``step_commands``: the motor
command actually sent at a step where it differs from the action table's entry
for the step's action (an imported DonkeyCar tub's continuous angle and
throttle). A version 1 file opened writable is upgraded in one transaction
(the new table and the new ``user_version`` together); opened read-only it is
read as it is, with no commands.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

SCHEMA_VERSION = 2
APPLICATION_ID = 0x4D4C5049  # "MLPI" in the SQLite header: this file is a MaLPi episode store

SOURCES = ("human", "policy", "intervention")
"""Who chose a step's action: the operator driving (demonstration), the policy, or
the operator overriding the policy (an intervention)."""

OUTCOMES = ("running", "finished", "failed", "aborted", "interrupted")
"""``running``: being recorded. ``finished``: ended normally (a time limit, the
operator stopping it). ``failed``: ended by failure (crash, off the track; the
last step is terminal, no value bootstrap). ``aborted``: discarded by the
operator or replaced by a reset. ``interrupted``: the recording process died;
set when the next recorder opens the file."""

END_OUTCOMES = ("finished", "failed", "aborted")
"""Outcomes a caller may end an episode with."""

_SCHEMA_V1 = (
    """
CREATE TABLE episodes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused after a delete
    uuid           TEXT NOT NULL UNIQUE,   -- identity across databases (copies, merges)
    started_at     REAL NOT NULL,          -- wall clock, Unix seconds
    started_mono   REAL NOT NULL,          -- time.monotonic() at the same instant
    ended_at       REAL,                   -- wall clock, NULL while running
    outcome        TEXT NOT NULL DEFAULT 'running'
                   CHECK (outcome IN ('running', 'finished', 'failed', 'aborted', 'interrupted')),
    final_reward   REAL,                   -- added to the last step's reward by readers
    config         TEXT NOT NULL DEFAULT '{}',  -- JSON object: the daemon's configuration
    action_table   TEXT NOT NULL,          -- JSON list of {name, steering, throttle}
    policy_version TEXT,                   -- the policy loaded at the start
    notes          TEXT NOT NULL DEFAULT ''
)""",
    """
CREATE TABLE steps (
    episode_id     INTEGER NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
    step           INTEGER NOT NULL CHECK (step >= 0),  -- 0, 1, ... (a gap is a dropped step)
    action         INTEGER NOT NULL,       -- index into the episode's action table
    source         TEXT NOT NULL CHECK (source IN ('human', 'policy', 'intervention')),
    probs          BLOB,                   -- float32 little-endian, one per action, NULL if no policy ran
    value          REAL,                   -- the policy's value estimate, NULL if none
    reward         REAL NOT NULL DEFAULT 0,
    done           INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
    capture_time   REAL NOT NULL,          -- time.monotonic() when the frame was captured
    action_time    REAL NOT NULL,          -- time.monotonic() when the action was applied
    policy_version TEXT,                   -- the policy that produced probs/value
    frame          BLOB NOT NULL,          -- JPEG, RGB. Last, so reading the other columns
                                           -- never walks the image's overflow pages.
    PRIMARY KEY (episode_id, step)
)""",
)

# A table of its own, not columns after ``frame``: columns placed after the image BLOB
# would make every read of them walk the frame's overflow pages.
_SCHEMA_V2 = (
    """
CREATE TABLE step_commands (
    episode_id     INTEGER NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
    step           INTEGER NOT NULL,       -- the steps row this belongs to
    steering       REAL NOT NULL,          -- the motor command actually sent, where it
    throttle       REAL NOT NULL,          -- differs from the action table's entry
    PRIMARY KEY (episode_id, step)
) WITHOUT ROWID""",
)


class StoreError(Exception):
    """The episode database cannot be used; the message names the file and the problem."""


class NotAMalpiDatabase(StoreError):
    """The file is missing, not SQLite, damaged, or not a MaLPi episode store."""


class SchemaVersionError(StoreError):
    """The file is a MaLPi store of a schema version this code does not know."""


def connect(
    path: str | os.PathLike[str], *, create: bool = False, readonly: bool = False
) -> sqlite3.Connection:
    """Open (and with ``create``, initialise) an episode database; check what it is.

    ``readonly`` opens it without write access (a file on a read-only mount or
    owned by another user). The connection is in autocommit mode: callers open
    transactions explicitly.
    """
    if create and readonly:
        raise ValueError("an episode database cannot be created read-only")
    p = Path(path)
    if p.is_dir():
        raise NotAMalpiDatabase(f"{p} is a directory, not an episode database")
    if not create and not p.exists():
        raise NotAMalpiDatabase(f"{p}: no such episode database")
    mode = "rwc" if create else "ro" if readonly else "rw"
    # A reader that may write opens read-write but query-only: then the last connection to
    # close removes the -wal and -shm files; a mode=ro connection would leave them behind.
    query_only = readonly and os.access(p, os.W_OK) and os.access(p.parent, os.W_OK)
    if query_only:
        mode = "rw"
    uri = f"file:{urllib.parse.quote(str(p.resolve()))}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise NotAMalpiDatabase(f"{p}: cannot open: {exc}") from exc
    try:
        if query_only:
            conn.execute("PRAGMA query_only = ON")
        _check_and_init(conn, p, create, readonly)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")  # see the module docstring
    except BaseException:
        conn.close()
        raise
    return conn


def _check_and_init(
    conn: sqlite3.Connection, p: Path, create: bool, readonly: bool = False
) -> None:
    try:
        # The first read of the header: "file is not a database" shows up here.
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as exc:
        raise NotAMalpiDatabase(f"{p} is not an SQLite database, or is damaged ({exc})") from exc
    if app_id == 0 and version == 0 and not tables:
        if not create:
            raise NotAMalpiDatabase(f"{p} is an empty SQLite file, not an episode database")
        _initialise(conn, p)
        return
    if app_id != APPLICATION_ID:
        shown = ", ".join(sorted(tables)[:8]) or "none"
        raise NotAMalpiDatabase(
            f"{p} is an SQLite database but not a MaLPi episode store (its tables: {shown})"
        )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{p} has episode schema version {version}, written by a newer MaLPi; "
            f"this one reads up to version {SCHEMA_VERSION}: upgrade malpi"
        )
    if version == 1 and not readonly:
        _upgrade_v1(conn, p)
    elif version not in (1, SCHEMA_VERSION):
        raise SchemaVersionError(f"{p} has unknown episode schema version {version}")
    if not readonly and conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        _set_wal(conn, p)


def _set_wal(conn: sqlite3.Connection, p: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreError(
            f"{p}: cannot switch to WAL journaling (got {mode!r}); is it on a network drive?"
        )


def _initialise(conn: sqlite3.Connection, p: Path) -> None:
    # auto_vacuum must be chosen before the first table exists; INCREMENTAL lets a
    # delete hand the space back to the SD card without a full VACUUM.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    _set_wal(conn, p)
    conn.execute("PRAGMA synchronous = FULL")
    # One transaction: a crash part-way leaves an empty file, which the next open
    # initialises again. user_version and application_id live in the header,
    # which is written by this same transaction.
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            conn.execute("ROLLBACK")  # another process initialised it first
            _check_and_init(conn, p, create=False)
            return
        for statement in (*_SCHEMA_V1, *_SCHEMA_V2):
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _upgrade_v1(conn: sqlite3.Connection, p: Path) -> None:
    """Version 1 to 2 in one transaction: the new table and the version number together."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 1:  # not upgraded meanwhile
            for statement in _SCHEMA_V2:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"{p}: cannot upgrade the episode schema to version 2: {exc}") from exc
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def has_commands_table(conn: sqlite3.Connection) -> bool:
    """Whether the file has ``step_commands`` (a version 1 file opened read-only has not)."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'step_commands'"
    ).fetchone()
    return row is not None
