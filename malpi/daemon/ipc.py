"""The messages between the daemon's three processes, and the sockets that carry them.

``malpi drive`` is three processes (docs/architecture.md): the **control**
process (camera, policy, motors, safety; the main PID, the only one that
touches GPIO) and two children it starts and supervises, the **link**
process (the network: sockets, CURVE, decoding, bundle validation, episode
serving) and the **recorder** process (JPEG encoding, SQLite). Each child
talks to the control process over one ZeroMQ DEALER pair on ``ipc://`` in a
private directory (mode 0700): the control process binds, the child connects,
so a restarted child simply connects again.

Everything here is small and already validated: the link decodes the
network's requests against the public schema and forwards only these
messages; the control process decodes them with typed decoders and a size
limit, so a child cannot make it allocate more than ``MAX_MESSAGE_BYTES``
(a frame travels as a second, raw ZeroMQ frame of a checked size). Sends
from the control process never block: a full queue drops the message
(steps are counted as dropped, episode boundaries are retried).

Why ZeroMQ over ``ipc://``: ``malpi bench ipc`` measured the ways to move a
step (docs/architecture.md); all cost the control loop a fraction of a
millisecond, and ZeroMQ gives bounded queues, non-blocking sends,
reconnection and one poll loop for free.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

HEARTBEAT = 0.25  # s between a child's heartbeats
LIVENESS = 3.0  # s without a message from a child before it is judged hung
MAX_MESSAGE_BYTES = 1 << 20  # an internal message (a frame travels beside it, not in it)
CONTROL_HWM = 64  # messages queued towards a child before the control process drops


# -- link -> control ------------------------------------------------------------------


class Hello(Struct, tag="hello", kw_only=True):
    """A child's first message: who it is, and what it bound or found."""

    role: str  # "link" | "recorder"
    pid: int
    command_endpoint: str = ""  # link: the bound command socket
    telemetry_endpoint: str = ""  # link: the bound telemetry socket
    next_episode: int = 0  # recorder: the next episode id in its database
    error: str = ""  # the child could not start: why (it exits next)


class Heartbeat(Struct, tag="heartbeat", kw_only=True):
    stats: dict[str, int] = {}  # the child's counters (link: requests, errors, ...)


class Drive(Struct, tag="drive", kw_only=True):
    """An operator's drive command the link has accepted (fresh, in range)."""

    action: int | None  # None: stop
    client: str  # which client (for the log)


class Command(Struct, tag="command", kw_only=True):
    """A command for the control loop; answered with a :class:`Reply` of the same token."""

    token: int
    kind: str  # set_mode | reset_episode | end_episode | record | swap_policy | policy_source
    args: dict[str, Any] = {}


FromLink = Hello | Heartbeat | Drive | Command


# -- control -> link ------------------------------------------------------------------


class Reply(Struct, tag="reply", kw_only=True):
    token: int
    result: dict[str, Any] | None = None
    code: str = ""  # an error: one of the protocol's error codes
    message: str = ""


class State(Struct, tag="state", kw_only=True):
    """What the link answers ``status`` with, sent on every change and a few times a second."""

    mode: str
    episode: int
    step: int
    recording: bool
    recording_note: str | None  # why recording is off although it was asked for
    policy_version: str | None
    policy_sha256: str | None
    policy_source: str
    policy_file: str  # the bundle file it was loaded from ("" if none is known)
    # The policy the next boot runs (the daemon's BootPolicy): it may differ from the running
    # one after a push that was not kept.
    boot_policy_version: str | None = None
    boot_policy_sha256: str | None = None
    boot_policy_source: str = ""
    boot_policy_file: str = ""
    rate_hz: float
    periods: int
    missed_periods: int
    faults: dict[str, str]
    actions: list[dict[str, Any]]
    recorder: dict[str, int] | None
    started_at: float | None  # wall clock when the loop began (None before)


class Telemetry(Struct, tag="telemetry", kw_only=True):
    """A telemetry message of the loop's (step, status, event): the link encodes it with the
    public schema and publishes it, and keeps the latest step for ``status`` and ``drive``."""

    topic: str
    payload: dict[str, Any]


class FrameHead(Struct, tag="frame", kw_only=True):
    """A camera frame for the ``frame`` topic; the RGB pixels follow as a second ZeroMQ frame."""

    index: int
    t: float  # wall clock at capture
    episode: int
    step: int
    height: int
    width: int


ToLink = Reply | State | Telemetry | FrameHead


# -- control <-> recorder -------------------------------------------------------------


class StartEpisode(Struct, tag="start", kw_only=True):
    episode_id: int
    uuid: str
    started_at: float
    started_mono: float
    config: dict[str, Any]
    actions: list[dict[str, Any]]
    policy_version: str | None
    notes: str


class StepHead(Struct, tag="step", kw_only=True):
    """One recorded step; the frame's RGB pixels follow as a second ZeroMQ frame."""

    episode_id: int
    index: int
    action: int
    source: str
    capture_time: float
    action_time: float
    probs: list[float] | None
    value: float | None
    reward: float
    policy_version: str | None
    height: int
    width: int


class EndEpisode(Struct, tag="end", kw_only=True):
    episode_id: int
    outcome: str
    ended_at: float
    final_reward: float | None


class Resume(Struct, tag="resume", kw_only=True):
    """Recording was asked for again: reopen the writer if it had failed."""


ToRecorder = StartEpisode | StepHead | EndEpisode | Resume


class RecorderStatus(Struct, tag="recorder_status", kw_only=True):
    """The recorder's state, every heartbeat: counters, and whether it can record at all."""

    written: int
    dropped: int
    queue: int
    ok: bool  # the writer is healthy and the disk above its floor
    problem: str = ""  # why not
    free_mb: float = -1.0


FromRecorder = Hello | RecorderStatus


# -- encoding ------------------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoders = {
    "link": msgspec.msgpack.Decoder(FromLink),
    "to_link": msgspec.msgpack.Decoder(ToLink),
    "recorder": msgspec.msgpack.Decoder(FromRecorder),
    "to_recorder": msgspec.msgpack.Decoder(ToRecorder),
}


def encode(msg: Struct) -> bytes:
    return _encoder.encode(msg)


def decode(kind: str, data: bytes | memoryview) -> Any:
    """A message of one of the four directions; ValueError for anything else (or too large)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"internal message of {len(data)} bytes (limit {MAX_MESSAGE_BYTES})")
    try:
        return _decoders[kind].decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"bad internal {kind} message: {exc}") from None


def frame_pixels(data: bytes | memoryview, height: int, width: int):
    """The RGB frame that travelled beside a message, checked against its stated size."""
    import numpy as np

    if not (0 < height <= 4096 and 0 < width <= 4096) or len(data) != height * width * 3:
        raise ValueError(f"frame of {len(data)} bytes is not {height}x{width}x3")
    return np.frombuffer(data, np.uint8).reshape(height, width, 3)


# -- where the sockets live ----------------------------------------------------------


def private_dir() -> Path:
    """A fresh directory only this user can enter, for the ipc:// sockets and runtime models.

    Under systemd that is inside ``RuntimeDirectory=`` (``$RUNTIME_DIRECTORY``); else
    ``$XDG_RUNTIME_DIR`` or the temporary directory.
    """
    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or os.environ.get(
        "XDG_RUNTIME_DIR", ""
    )
    if not base or not os.access(base, os.W_OK):
        base = None
    return Path(tempfile.mkdtemp(prefix="malpi-", dir=base))


def endpoint(directory: Path, name: str) -> str:
    path = f"{directory}/{name}"
    if len(path) > 100:  # sun_path is 108 bytes on Linux
        raise ValueError(f"ipc path {path} is too long for a Unix socket")
    return f"ipc://{path}"
