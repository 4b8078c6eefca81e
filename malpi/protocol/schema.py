"""Every message the link carries, defined once: commands, replies and telemetry.

Messages are msgpack maps (msgspec Structs). A command is one map with a
``type`` naming it, the protocol version ``v`` and a client-chosen ``id``; its
reply has the same ``type`` (or ``error``) and echoes ``id``. Telemetry is a
two-frame message: the topic, then a map. ``docs/protocol.md`` describes the
framing and every field for clients written in other languages; this module
is the reference it is checked against.

Decoding validates completely. Anything malformed, of an unknown type, of
another protocol version or too large raises :class:`ProtocolError`, which
carries the error code the server replies with.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

if TYPE_CHECKING:
    from malpi.actions import ActionTable

PROTOCOL_VERSION = 1
MAX_COMMAND_BYTES = 64 * 1024  # any request but load_policy
MAX_BUNDLE_BYTES = 64 * 1024 * 1024  # the policy bundle's own limit (malpi.policy.bundle)
PART_BYTES = 4 * 1024 * 1024  # clients send bigger bundles in parts of this size

TOPICS = ("step", "frame", "status", "event")

ErrorCode = Literal[
    "malformed",  # not msgpack, not a map, or the wrong number of frames
    "unknown_type",  # no ``type``, or one this server does not know
    "invalid",  # a known type with missing, extra or wrongly typed fields, or values out of range
    "bad_version",  # ``v`` is not this server's protocol version
    "too_large",  # over MAX_COMMAND_BYTES (or a bundle over MAX_BUNDLE_BYTES)
    "busy",  # a policy load, keep or rollback is already running
    "rejected",  # the policy bundle failed validation; the running policy is untouched
    "refused",  # valid, but not possible now (e.g. recording not configured, nothing to roll back to)
    "not_found",  # no such episode in the robot's recording
    "timeout",  # the control loop did not carry the command out in time
    "stopped",  # the daemon is shutting down
    "internal",  # a bug; the message says what failed
]
ERROR_CODES: tuple[str, ...] = ErrorCode.__args__  # type: ignore[attr-defined]

Mode = Literal["paused", "manual", "auto"]
Outcome = Literal["finished", "failed", "aborted"]
UInt = Annotated[int, Meta(ge=0, le=2**63 - 1)]
ActionIndex = Annotated[int, Meta(ge=0, le=255)]
MAX_LIST_EPISODES = 1000  # episodes per list_episodes reply
MAX_CHUNK_STEPS = 1024  # steps per get_episode reply
CHUNK_FRAME_BYTES = 4 * 1024 * 1024  # a get_episode reply stops adding steps past this many
EPISODE_TIMEOUT = 30.0  # s: an episode request not answered by then gets a "timeout" error
TOO_DEEP = "nested too deeply (the robot decodes about 1,000 levels; a valid request nests 2)"


class ProtocolError(Exception):
    """A request that cannot be carried out; ``code`` is one of ERROR_CODES, ``request_id`` the
    id to echo (0 when the request had none that could be read)."""

    def __init__(self, code: str, message: str, request_id: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


# -- commands (client -> robot) ---------------------------------------------------------


# Every request type is kw_only, so that its fields follow ``v`` and ``id`` on the wire: the
# robot reads a request's id from its first entries only (request_head), and echoes it in an
# error reply only if it found it there.
class Request(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    v: int  # the protocol version the client speaks; must equal PROTOCOL_VERSION
    id: UInt = 0  # chosen by the client, echoed in the reply


class Ping(Request, tag="ping", kw_only=True):
    pass


class GetStatus(Request, tag="status", kw_only=True):
    pass


class SetMode(Request, tag="set_mode", kw_only=True):
    mode: Mode


class Drive(
    Request, tag="drive", omit_defaults=True, kw_only=True
):  # no sent: encoded as before it
    action: ActionIndex | None  # an index into the action table; None (nil) = stop
    seq: UInt  # must increase from one drive command to the next (stale ones are ignored)
    # The client's own clock (any epoch, seconds, e.g. a monotonic one) when it sent this. The
    # robot learns each connection's usual lag and refuses a drive held up in transit.
    sent: float | None = None


class ResetEpisode(Request, tag="reset_episode", kw_only=True):
    pass


class EndEpisode(Request, tag="end_episode", kw_only=True):
    outcome: Outcome  # "failed" marks the episode's last step terminal (the car crashed)
    final_reward: float | None = None  # added to the last step's reward by the trainer


class Record(Request, tag="record", kw_only=True):
    on: bool


class LoadPolicy(Request, tag="load_policy", omit_defaults=True, kw_only=True):
    # A policy bundle file (msgpack bin), whole or a part of it. Decoded as a zero-copy view of
    # the received frame, so that a 50 MB bundle is never copied while holding the GIL.
    bundle: memoryview
    # A bundle over PART_BYTES should come in parts, in order: each part's offset into the file
    # and the file's size (None: the whole bundle in this message). Every part but the last
    # is answered with a PolicyPartReply; the last with the load's reply.
    offset: UInt = 0
    total: UInt | None = None
    # Also make it the boot policy (keep it in the policy store). Without it the bundle runs
    # until the next boot only. Left out when false (omit_defaults), so that a robot older than
    # this field still takes a plain push; in parts, the last part's counts.
    keep: bool = False


class RollbackPolicy(Request, tag="rollback_policy", kw_only=True):
    pass


class KeepPolicy(Request, tag="keep_policy", kw_only=True):
    """Make the running policy the boot policy (e.g. after a push, once it has driven well)."""


class ListEpisodes(Request, tag="list_episodes", kw_only=True):
    since: UInt = 0  # only episodes with a larger id (page with the last id received)
    limit: Annotated[int, Meta(ge=1, le=MAX_LIST_EPISODES)] = MAX_LIST_EPISODES


class GetEpisode(Request, tag="get_episode", kw_only=True):
    episode: UInt  # the recorder's episode id (list_episodes, end_episode's ``ended``)
    from_step: UInt = 0  # the first step index wanted (the previous reply's ``next_step``)
    max_steps: Annotated[int, Meta(ge=1, le=MAX_CHUNK_STEPS)] = 256


# -- curating the recording (docs/protocol.md, "Curating episodes"): ended episodes only ----


class DeleteEpisode(Request, tag="delete_episode", kw_only=True):
    episode: UInt  # the recorder's episode id


class CutEpisode(Request, tag="cut_episode", kw_only=True):
    """Remove the steps numbered from_step <= step < to_step (the head keeps the episode; steps
    after a cut in the middle become a new episode)."""

    episode: UInt
    from_step: UInt
    to_step: UInt


class SetOutcome(Request, tag="set_outcome", kw_only=True):
    episode: UInt
    outcome: Outcome  # "failed": the last step is terminal
    final_reward: float | None = None  # replaces the episode's; nil keeps it


class ListPolicies(Request, tag="list_policies", kw_only=True):
    """What runs, what boots, the policy store's history and the shipped default."""


EPISODE_TYPES = (ListEpisodes, GetEpisode, DeleteEpisode, CutEpisode, SetOutcome)


# -- calibration: the motor test and calibration of ``malpi setup``, on the running car ------
# (docs/protocol.md, "Calibration"). Only in paused mode; the control loop runs a test as a
# bounded, timed command and stops it on any mode change, drive command, fault or stop.

MAX_TEST_POWER = 0.5  # of full throttle (malpi.setup.outputs.MAX_POWER): a test, not a drive
MAX_TEST_SECONDS = 3.0  # malpi.setup.outputs.MAX_SECONDS
CalibrationKey = Annotated[str, Meta(min_length=1, max_length=128)]


class GetCalibration(Request, tag="calibration", kw_only=True):
    """What can be tested and adjusted on this robot, and the values now."""


class MotorTest(Request, tag="motor_test", kw_only=True):
    output: Annotated[str, Meta(min_length=1, max_length=64)]  # a name from ``calibration``
    power: Annotated[float, Meta(gt=0.0, le=MAX_TEST_POWER)] = 0.3
    seconds: Annotated[float, Meta(gt=0.0, le=MAX_TEST_SECONDS)] = 1.0


class SetCalibration(Request, tag="set_calibration", kw_only=True):
    key: CalibrationKey  # one of ``calibration``'s adjustments
    value: float  # checked by the configuration's own validation


CALIBRATION_TYPES = (GetCalibration, MotorTest, SetCalibration)


REQUEST_TYPES = (
    Ping,
    GetStatus,
    SetMode,
    Drive,
    ResetEpisode,
    EndEpisode,
    Record,
    LoadPolicy,
    RollbackPolicy,
    KeepPolicy,
    ListEpisodes,
    GetEpisode,
    DeleteEpisode,
    CutEpisode,
    SetOutcome,
    ListPolicies,
    *CALIBRATION_TYPES,
)
AnyRequest = (
    Ping
    | GetStatus
    | SetMode
    | Drive
    | ResetEpisode
    | EndEpisode
    | Record
    | LoadPolicy
    | RollbackPolicy
    | KeepPolicy
    | ListEpisodes
    | GetEpisode
    | DeleteEpisode
    | CutEpisode
    | SetOutcome
    | ListPolicies
    | GetCalibration
    | MotorTest
    | SetCalibration
)
REQUEST_TAGS = tuple(t.__struct_config__.tag for t in REQUEST_TYPES)


# -- replies (robot -> client) ----------------------------------------------------------


class Reply(Struct, tag_field="type", kw_only=True):
    v: int = PROTOCOL_VERSION
    id: int = 0  # the request's id


class ActionInfo(Struct, kw_only=True):
    name: str
    steering: float
    throttle: float


class RecorderInfo(Struct, kw_only=True):
    written: int  # steps committed
    dropped: int  # steps dropped (queue full or writer failed)
    queue: int  # steps waiting to be written


class Pong(Reply, tag="ping"):
    server_time: float  # the robot's wall clock (Unix seconds)


class StatusReply(Reply, tag="status"):
    mode: Mode
    episode: int
    step: int
    recording: bool
    policy_version: str | None  # the running policy's label, e.g. "v3-1a2b3c4d"
    policy_source: str | None  # where the running policy came from
    rate_hz: float
    periods: int
    missed_periods: int
    faults: dict[str, str]  # active fault -> reason
    actions: list[ActionInfo]  # the action table: drive's ``action`` indexes it
    recorder: RecorderInfo | None = None
    cpu_temp_c: float | None = None
    curve: bool = False  # the link is encrypted and authenticated
    server_time: float = 0.0
    policy_sha256: str | None = None  # the running policy's identity: its bundle file's SHA-256
    recording_note: str | None = None  # why recording is off although it was asked for
    started_at: float | None = None  # when the control loop started (wall clock)
    # The policy the next boot runs, and where it comes from: the running one unless a push was
    # not kept (e.g. "policy.path /x/y.malpi", "kept in the store, pushed ...", "shipped default").
    boot_policy_version: str | None = None
    boot_policy_source: str | None = None
    boot_policy_sha256: str | None = None


class ModeReply(Reply, tag="set_mode"):
    mode: Mode
    previous: Mode
    rearmed: list[str]  # latched faults cleared by choosing the mode


class DriveReply(Reply, tag="drive"):
    accepted: bool
    mode: Mode
    reason: str | None = None  # why not accepted


class EpisodeReply(Reply, tag="reset_episode"):
    episode: int  # the new episode's number


class EndEpisodeReply(Reply, tag="end_episode"):
    episode: int  # the new episode's number
    ended: int | None  # the recorder's id of the episode that ended (None if not recording)
    outcome: Outcome


class RecordReply(Reply, tag="record"):
    recording: bool
    episode: int


class PolicyReply(Reply, tag="load_policy"):
    version: str  # the running policy now, e.g. "v3-1a2b3c4d"
    previous: str | None
    episode: int  # the new episode started with it
    load_ms: float  # validating and building it, off the control loop
    persisted: bool  # the policy running now is the one the next boot runs
    note: str | None = None  # e.g. "running, not kept: the car boots v2-... (...)"


class RollbackReply(PolicyReply, tag="rollback_policy"):
    pass


class KeepReply(Reply, tag="keep_policy"):
    boot_policy_version: str  # the policy the car boots now: the running one
    boot_policy_source: str  # where it boots from, e.g. "kept in the store, pushed ..."
    previous_boot: str | None  # what it booted before (the same when nothing changed)
    changed: bool  # False: the running policy was the boot policy already
    note: str | None = None


class PolicyPartReply(Reply, tag="load_policy_part"):
    received: int  # bytes of the bundle the robot holds so far
    total: int


class EpisodeSummary(Struct, kw_only=True):
    id: int  # the recorder's id on the robot
    uuid: str  # identity across databases: a copy keeps it
    started_at: float  # wall clock (Unix seconds)
    ended_at: float | None
    outcome: str  # running, finished, failed, aborted, interrupted
    final_reward: float | None  # readers add it to the last step's reward
    policy_version: str | None  # the policy loaded when it started
    steps: int  # steps stored
    dropped_steps: int  # gaps in the step numbers (the recorder's queue was full)
    notes: str


class EpisodeList(Reply, tag="list_episodes"):
    episodes: list[EpisodeSummary]  # oldest first
    more: bool  # there are more: ask again with ``since`` = the last id


class StepRecord(Struct, kw_only=True):
    """One recorded step, as stored (``reward`` without the episode's ``final_reward``)."""

    step: int
    action: int  # index into the episode's action table
    source: str  # human, policy, intervention
    probs: list[float] | None  # the policy's probabilities (float32 values), nil if none ran
    value: float | None
    reward: float
    done: bool
    capture_time: float  # time.monotonic() on the robot; wall = started_at + t - started_mono
    action_time: float
    policy_version: str | None
    frame: bytes  # JPEG, RGB, the policy's input size


class EpisodeChunk(Reply, tag="get_episode"):
    episode: EpisodeSummary
    started_mono: float  # time.monotonic() on the robot at ``started_at``
    config: dict[str, Any]  # the daemon's configuration when it started
    actions: list[ActionInfo]  # the episode's action table
    steps: list[StepRecord]  # in step order, from ``from_step``
    next_step: int | None  # ``from_step`` for the rest; nil: no more steps


class DeleteReply(Reply, tag="delete_episode"):
    episode: int  # the id deleted (never reused)
    removed: int  # its steps deleted


class CutReply(Reply, tag="cut_episode"):
    removed: int  # steps deleted
    episode: EpisodeSummary  # what is left under the episode's id (and uuid)
    tail: EpisodeSummary | None  # after a cut in the middle: the steps after it, a new episode


class OutcomeReply(Reply, tag="set_outcome"):
    episode: EpisodeSummary  # as it is now


EvaluationValue = float | int | str | bool


class PolicyInfo(Struct, kw_only=True):
    """One policy bundle as list_policies describes it (read from its file's manifest)."""

    label: str | None  # e.g. "v3-1a2b3c4d"; None when unknown (unreadable file, no policy)
    sha256: str | None  # its identity
    source: str | None = None  # where it comes from / would boot from, as status says it
    file: str | None = None  # the bundle file's name (in the store, or its path)
    accepted: str | None = None  # when it was pushed (ISO time; store entries)
    note: str = ""  # the store entry's note
    created: str | None = None  # when it was made (the manifest's ``created``)
    trainer: str | None = None  # what made it (provenance ``trainer`` or ``made_by``)
    bytes: int | None = None  # the file's size
    # The evaluation figures its provenance carries, summarised (at most MAX_EVALUATION keys)
    evaluation: dict[str, EvaluationValue] = msgspec.field(default_factory=dict)
    running: bool = False  # it is the running policy
    boots: bool = False  # it is the one the next boot runs
    error: str | None = None  # why its file could not be read (the other fields as known)


MAX_EVALUATION = 16


class PolicyList(Reply, tag="list_policies"):
    running: PolicyInfo | None  # nil: no policy runs
    boot: PolicyInfo | None  # what the next boot runs
    history: list[PolicyInfo]  # the store's kept policies, newest first (the first boots)
    shipped: PolicyInfo | None  # the shipped default (nil: none installed)
    policy_path: str | None  # policy.path when set: it boots whatever is kept


class Adjustment(Struct, kw_only=True):
    key: str  # the configuration key, e.g. "drivetrain.differential.min_speed"
    value: float  # now
    step: float  # one press of - or + (malpi setup's arrow keys)
    low: float  # the range set_calibration accepts
    high: float
    help: str  # what to adjust it for


class TestOutput(Struct, kw_only=True):
    name: str  # motor_test's ``output``
    question: str  # what to check while (or after) it runs
    on_floor: bool  # the car drives on the floor (the trim trial); else: wheels off the ground
    adjusts: str | None  # the adjustment whose effect it shows, if any
    seconds: float  # the suggested run time (malpi setup's)
    uses_power: bool  # motor_test's ``power`` matters (else the command is fixed)


class CalibrationReply(Reply, tag="calibration"):
    backend: str  # the drivetrain: differential, servo or sim
    adjustments: list[Adjustment]  # in malpi setup's order
    outputs: list[TestOutput]
    max_power: float
    max_seconds: float
    file: str  # where set_calibration keeps values for the next boot
    testing: str | None = None  # the output a motor test runs now


class MotorTestReply(Reply, tag="motor_test"):
    output: str
    power: float
    seconds: float  # asked for
    ran_s: float  # how long the outputs ran
    completed: bool  # ran its whole time; False: stopped early (``stopped_by`` says why)
    stopped_by: str | None = None  # e.g. "mode changed to manual", "drive command", "fault ..."


class SetCalibrationReply(Reply, tag="set_calibration"):
    key: str
    value: float  # now in force on the drivetrain
    previous: float
    persisted: bool  # the next boot uses it (written to ``file``)
    file: str
    note: str | None = None  # why it is not persisted


class ErrorReply(Reply, tag="error"):
    code: ErrorCode
    message: str


AnyReply = (
    Pong
    | StatusReply
    | ModeReply
    | DriveReply
    | EpisodeReply
    | EndEpisodeReply
    | RecordReply
    | PolicyReply
    | PolicyPartReply
    | RollbackReply
    | KeepReply
    | EpisodeList
    | EpisodeChunk
    | DeleteReply
    | CutReply
    | OutcomeReply
    | PolicyList
    | CalibrationReply
    | MotorTestReply
    | SetCalibrationReply
    | ErrorReply
)


# -- telemetry (robot -> subscribers; frame 1 = topic, frame 2 = one of these) -----------


class StepMsg(Struct, kw_only=True):
    v: int
    t: float  # wall clock (Unix seconds)
    episode: int
    step: int
    mode: Mode
    action: int | None  # what the motors got; None = stopped
    source: str | None  # "policy", "human", "intervention"; None when stopped
    probs: list[float] | None  # the policy's action probabilities (None when it did not run)
    value: float | None
    faults: list[str]
    latency_ms: dict[str, float]  # per stage of this period (commands, inference, ...)


class FrameMsg(Struct, kw_only=True):
    v: int
    t: float  # capture time, wall clock
    index: int  # the camera's frame counter
    episode: int
    step: int
    width: int
    height: int
    encoding: Literal["jpeg"]
    data: bytes


class StatusMsg(Struct, kw_only=True):
    v: int
    t: float
    mode: Mode
    episode: int
    step: int
    recording: bool
    policy_version: str | None
    rate_hz: float
    periods: int
    missed_periods: int
    faults: dict[str, str]
    recorder: RecorderInfo | None = None
    cpu_temp_c: float | None = None
    policy_source: str | None = None  # as in StatusReply
    boot_policy_version: str | None = None
    boot_policy_source: str | None = None
    # CPU ms per period over the last status interval: the control process's (all threads)
    # and the loop thread's; None before the first interval (absent from older robots)
    cpu_ms_per_period: float | None = None
    loop_cpu_ms_per_period: float | None = None


class EventMsg(Struct, kw_only=True):
    v: int
    t: float
    kind: str  # started, stopped, mode, episode_reset, policy_loaded, policy_rejected, ...
    message: str  # for people
    details: dict[str, Any]  # the event's own fields (fault, mode, previous, version, ...)


TELEMETRY_TYPES: dict[str, type[Struct]] = {
    "step": StepMsg,
    "frame": FrameMsg,
    "status": StatusMsg,
    "event": EventMsg,
}


# -- encoding and decoding ---------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    """numpy scalars and anything else unexpected in an event's details."""
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_request_decoder = msgspec.msgpack.Decoder(AnyRequest)
_reply_decoder = msgspec.msgpack.Decoder(AnyReply)
_telemetry_decoders = {t: msgspec.msgpack.Decoder(cls) for t, cls in TELEMETRY_TYPES.items()}


def encode(msg: Struct) -> bytes:
    return _encoder.encode(msg)


PEEK_ENTRIES = 8  # map entries request_head looks at


def request_head(data: bytes | memoryview) -> tuple[str | None, int | None, int]:
    """(type, v, id) of a request as far as its first few map entries show them, each None
    (id 0) if not; ProtocolError("malformed") when it is not a msgpack map at all.

    Constant work whatever the message: it reads at most PEEK_ENTRIES entries and stops at the
    first value that is not a small scalar, so that a bomb is never walked to learn an id.
    Every client that encodes ``type``, ``v`` and ``id`` first (as this module does) is seen.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    found: dict[str, Any] = {}
    n, pos = _map_header(buf)
    for _ in range(min(n, PEEK_ENTRIES)):
        key, pos = _small_scalar(buf, pos)
        if not isinstance(key, str):
            break
        value, pos = _small_scalar(buf, pos)
        if value is _STOP:
            break
        found.setdefault(key, value)
    kind, v, rid = found.get("type"), found.get("v"), found.get("id")
    return (
        kind if isinstance(kind, str) else None,
        v if isinstance(v, int) and not isinstance(v, bool) else None,
        rid if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63 else 0,
    )


_STOP = object()


def _map_header(buf) -> tuple[int, int]:
    if not len(buf):
        raise ProtocolError("malformed", "an empty message")
    b = buf[0]
    if 0x80 <= b <= 0x8F:
        return b & 0x0F, 1
    if b == 0xDE and len(buf) >= 3:
        return int.from_bytes(buf[1:3], "big"), 3
    if b == 0xDF and len(buf) >= 5:
        return int.from_bytes(buf[1:5], "big"), 5
    if b in (0xC1, 0xDE, 0xDF):
        raise ProtocolError("malformed", f"not a msgpack message (byte 0x{b:02x})")
    raise ProtocolError("malformed", "a request is a msgpack map")


def _small_scalar(buf, pos: int) -> tuple[Any, int]:
    """The msgpack value at ``pos`` if it is an int, nil, bool or a string of up to 255 bytes
    (and where the next value starts); ``_STOP`` for anything else."""
    if pos >= len(buf):
        return _STOP, pos
    b = buf[pos]
    if b <= 0x7F:
        return b, pos + 1
    if b >= 0xE0:
        return b - 0x100, pos + 1
    if b == 0xC0:
        return None, pos + 1
    if b in (0xC2, 0xC3):
        return b == 0xC3, pos + 1
    if 0xCC <= b <= 0xD3:  # uint8..64, int8..64
        size = 1 << ((b - 0xCC) % 4)
        raw = bytes(buf[pos + 1 : pos + 1 + size])
        if len(raw) < size:
            return _STOP, pos
        return int.from_bytes(raw, "big", signed=b >= 0xD0), pos + 1 + size
    if 0xA0 <= b <= 0xBF or b == 0xD9:
        size, start = (b & 0x1F, pos + 1) if b != 0xD9 else (buf[pos + 1], pos + 2)
        raw = bytes(buf[start : start + size])
        if len(raw) < size:
            return _STOP, pos
        try:
            return raw.decode(), start + size
        except UnicodeDecodeError:
            return _STOP, pos
    return _STOP, pos


def decode_request(data: bytes | memoryview) -> AnyRequest:
    """A validated request, or ProtocolError with the code to reply with (and the id to echo,
    when the request has a usable one).

    The checks, in order: size (``too_large``); a msgpack map (``malformed``); ``v`` an
    integer other than PROTOCOL_VERSION (``bad_version``); ``type`` missing or unknown
    (``unknown_type``); every field against the type's schema, ``v`` included (``invalid``).
    Nothing that fails is decoded further than it takes to find that out.
    """
    kind, v, rid = None, None, 0
    if len(data) > MAX_COMMAND_BYTES:
        kind, v, rid = request_head(data)
        limit = MAX_BUNDLE_BYTES + 1024 if kind == "load_policy" else MAX_COMMAND_BYTES
        if len(data) > limit:
            what = "load_policy" if kind == "load_policy" else "request"
            raise ProtocolError(
                "too_large", f"{what} of {len(data)} bytes; the limit is {limit}", rid
            )
    try:
        request = _request_decoder.decode(data)
    except Exception as exc:  # DecodeError, RecursionError, UnicodeDecodeError, ...
        raise _classify(data, exc) from None
    if request.v != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version",
            f"protocol version {request.v}; this robot speaks version {PROTOCOL_VERSION}",
            request.id,
        )
    if isinstance(request, LoadPolicy) and len(request.bundle) > MAX_BUNDLE_BYTES:
        raise ProtocolError(
            "too_large",
            f"a bundle of {len(request.bundle)} bytes; a bundle may be at most {MAX_BUNDLE_BYTES}",
            request.id,
        )
    if isinstance(request, CutEpisode) and not request.from_step < request.to_step:
        raise ProtocolError(
            "invalid",
            f"cut_episode: from_step ({request.from_step}) must be below to_step "
            f"({request.to_step}) - at `$.to_step`",
            request.id,
        )
    if isinstance(request, SetCalibration) and not math.isfinite(request.value):
        raise ProtocolError(
            "invalid", "set_calibration: value must be finite - at `$.value`", request.id
        )
    reward = getattr(request, "final_reward", None)
    if reward is not None and not math.isfinite(reward):
        raise ProtocolError(
            "invalid", "final_reward must be finite - at `$.final_reward`", request.id
        )
    return request


def _classify(data: bytes | memoryview, exc: Exception) -> ProtocolError:
    """Why a request failed to decode, as the most specific error code."""
    kind, v, rid = request_head(data)  # raises "malformed" for what is not a map
    if isinstance(exc, RecursionError):
        return ProtocolError("malformed", TOO_DEEP, rid)
    if v is not None and v != PROTOCOL_VERSION:
        return ProtocolError(
            "bad_version",
            f"protocol version {v}; this robot speaks version {PROTOCOL_VERSION}",
            rid,
        )
    if kind is None:
        return ProtocolError("unknown_type", "the request has no 'type' (a string)", rid)
    if kind not in REQUEST_TAGS:
        return ProtocolError(
            "unknown_type",
            f"unknown request type {kind[:64]!r}; known: {', '.join(REQUEST_TAGS)}",
            rid,
        )
    return ProtocolError("invalid", f"{kind}: {exc}", rid)


def error_reply(code: str, message: str, request_id: int = 0) -> bytes:
    return encode(ErrorReply(id=request_id, code=code, message=message))  # type: ignore[arg-type]


def decode_reply(data: bytes) -> AnyReply:
    return _reply_decoder.decode(data)


def encode_telemetry(topic: str, payload: dict[str, Any], **extra: Any) -> bytes:
    """The loop's telemetry dict for ``topic`` as its wire message (ValueError if it does not fit)."""
    p = payload
    if topic == "step":
        msg: Struct = StepMsg(
            v=PROTOCOL_VERSION,
            t=p["t"],
            episode=p["episode"],
            step=p["step"],
            mode=p["mode"],
            action=p["action"],
            source=p["source"],
            probs=p["probs"],
            value=p["value"],
            faults=p["faults"],
            latency_ms=p["latency_ms"],
        )
    elif topic == "status":
        rec = p.get("recorder")
        msg = StatusMsg(
            v=PROTOCOL_VERSION,
            t=p["t"],
            mode=p["mode"],
            episode=p["episode"],
            step=p["step"],
            recording=p["recording"],
            policy_version=p["policy_version"],
            rate_hz=p["rate_hz"],
            periods=p["periods"],
            missed_periods=p["missed_periods"],
            faults=p["faults"],
            recorder=RecorderInfo(**rec) if rec else None,
            cpu_temp_c=extra.get("cpu_temp_c"),
            policy_source=p.get("policy_source"),
            boot_policy_version=p.get("boot_policy_version"),
            boot_policy_source=p.get("boot_policy_source"),
            cpu_ms_per_period=p.get("cpu_ms_per_period"),
            loop_cpu_ms_per_period=p.get("loop_cpu_ms_per_period"),
        )
    elif topic == "event":
        details = {k: v for k, v in p.items() if k not in ("t", "kind", "message")}
        msg = EventMsg(
            v=PROTOCOL_VERSION,
            t=p.get("t", time.time()),
            kind=p["kind"],
            message=p["message"],
            details=details,
        )
    else:
        raise ValueError(f"no wire message for telemetry topic {topic!r}")
    return _encoder.encode(msg)


def decode_telemetry(topic: str, data: bytes) -> Struct:
    try:
        decoder = _telemetry_decoders[topic]
    except KeyError:
        raise ValueError(f"unknown telemetry topic {topic!r}") from None
    return decoder.decode(data)


def action_table(actions: list[ActionInfo]) -> ActionTable:
    """The action table a status or get_episode reply carries."""
    from malpi.actions import ActionTable

    return ActionTable.from_list(msgspec.structs.asdict(a) for a in actions)


def to_builtins(msg: Struct) -> dict[str, Any]:
    """A message as plain JSON-able Python (bytes as base64), for scripts and logs."""
    return msgspec.to_builtins(msg)
