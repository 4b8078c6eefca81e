"""The daemon's one configuration file (TOML), validated completely before any hardware is touched.

Every key has a documented default (``malpi config show`` prints the effective
configuration; ``docs/configuration.md`` explains each key). An unknown key, a
wrong type or an impossible value raises :class:`ConfigError` naming the key,
e.g. ``drivetrain.differential.right_forward: pin 17 is already used by
drivetrain.differential.left_forward``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malpi.actions import DEFAULT_ACTIONS, ActionTable, ActionTableError

ROBOT_CONFIG_PATH = Path("/etc/malpi/malpi.toml")  # the systemd unit's (malpi setup --service)
USER_CONFIG_PATH = Path("~/.config/malpi/malpi.toml")  # malpi setup's, run as a user


class ConfigError(ValueError):
    """A configuration that must not be used; the message starts with the key at fault."""


@dataclass(frozen=True)
class LoopConfig:
    rate_hz: float = 20.0  # control periods per second
    trigger: str = "frame"  # frame: a period starts when a new frame arrives; timer: by the clock


@dataclass(frozen=True)
class SafetyConfig:
    max_frame_age_ms: float = 250.0  # a newest frame older than this stops the car
    deadman_ms: float = 300.0  # manual mode: stop without a drive command this recent
    max_overruns: int = 5  # consecutive overrun periods before a latched stop


@dataclass(frozen=True)
class Picamera2Config:
    camera_num: int = 0
    capture_width: int = 640  # sensor stream size, resized to camera.width x height
    capture_height: int = 480


@dataclass(frozen=True)
class OpenCVConfig:
    source: str = "0"  # a device index, /dev/videoN, a URL or a video file path
    capture_width: int = 0  # 0 = the device's default
    capture_height: int = 0
    loop: bool = False  # video files: start again at the end


@dataclass(frozen=True)
class ReplayConfig:
    db: str = ""  # recording database to replay
    episode: int = 1
    loop: bool = True


@dataclass(frozen=True)
class CameraConfig:
    backend: str = "sim"  # sim | picamera2 | opencv | replay
    width: int = 160  # the policy's input size
    height: int = 120
    fps: float = 20.0  # a whole multiple of loop.rate_hz: periods start on evenly spaced frames
    crop: list[float] = field(default_factory=list)  # [] or [left, top, right, bottom] fractions
    hflip: bool = False
    vflip: bool = False
    picamera2: Picamera2Config = Picamera2Config()
    opencv: OpenCVConfig = OpenCVConfig()
    replay: ReplayConfig = ReplayConfig()


@dataclass(frozen=True)
class DifferentialConfig:
    driver: str = "in_in"  # in_in (gpiozero Motor) | phase_enable (PhaseEnableMotor)
    left_forward: int = 17  # BCM pin numbers; in_in uses *_forward/*_backward (+ optional *_enable)
    left_backward: int = 27
    right_forward: int = 22
    right_backward: int = 23
    left_enable: int = -1  # -1 = not wired
    right_enable: int = -1
    left_phase: int = -1  # phase_enable uses *_phase and *_enable
    right_phase: int = -1
    left_inverted: bool = False
    right_inverted: bool = False
    max_speed: float = 1.0
    min_speed: float = 0.0  # smallest duty cycle that turns the wheels
    steering_trim: float = 0.0
    pwm_frequency: int = 0  # 0 = gpiozero's default (100 Hz)


@dataclass(frozen=True)
class ServoConfig:
    steering_pin: int = 12
    throttle_pin: int = 13
    steering_min_us: int = 1000
    steering_center_us: int = 1500
    steering_max_us: int = 2000
    steering_reversed: bool = False
    throttle_min_us: int = 1000
    throttle_neutral_us: int = 1500
    throttle_max_us: int = 2000
    throttle_reversed: bool = False
    max_speed: float = 1.0


@dataclass(frozen=True)
class DrivetrainConfig:
    backend: str = "sim"  # sim | differential | servo
    differential: DifferentialConfig = DifferentialConfig()
    servo: ServoConfig = ServoConfig()


@dataclass(frozen=True)
class SimConfig:
    track_seed: int = 1000  # the first of the held-out evaluation tracks
    car: str = "differential"  # differential | steering
    noise: float = 1.0  # 0 = exact kinematics
    physics_hz: float = 100.0


@dataclass(frozen=True)
class PolicyConfig:
    path: str = ""  # bundle; "" = the last kept in the store, else the shipped default
    backend: str = "auto"  # auto | litert_int8 | litert_dynamic | litert_float | tf
    sample: bool = False  # draw actions from the probabilities instead of argmax
    num_threads: int = 1
    store: str = "~/.local/share/malpi/policies"  # bundles accepted over the link + history
    allow_rate_mismatch: bool = False  # drive a policy trained at another control rate


@dataclass(frozen=True)
class RecordingConfig:
    enabled: bool = True  # record episodes from boot (the operator can toggle it)
    path: str = "~/.local/share/malpi/episodes.sqlite"
    min_free_mb: float = 256.0  # recording pauses below this much free disk, resumes 32 MB above


@dataclass(frozen=True)
class RewardConfig:
    enabled: bool = True  # record a reward with every step, for reinforcement learning
    progress: float = 1.0  # per metre along the track, where measurable (the simulator)
    time: float = 0.0  # every recorded step (negative: hurry up)
    off_track: float = 0.0  # every step off the road, where measurable (the simulator)
    failed: float = -1.0  # terminal reward of an episode ended "failed" without one


@dataclass(frozen=True)
class RealtimeConfig:
    enabled: bool = True  # ask for a core of its own and a real-time priority, where permitted
    priority: int = 50  # SCHED_FIFO priority of the control thread; its helper threads get one less
    cpu: int = -1  # the control process's core; -1 = the last one (when there are two or more)


@dataclass(frozen=True)
class LinkConfig:
    enabled: bool = True  # malpi drive serves the link
    command: str = "tcp://127.0.0.1:5555"  # request/reply command socket
    telemetry: str = "tcp://127.0.0.1:5556"  # PUB telemetry socket
    curve: bool = False  # CURVE encryption + client-key authorisation (malpi keys init)
    keys_dir: str = "~/.config/malpi/keys"  # holds server.key_secret; on the robot /etc/malpi/keys
    authorized_keys: str = ""  # directory of client public keys; "" = <keys_dir>/authorized
    allow_insecure_remote: bool = False  # non-loopback bind without CURVE (closed bench)
    max_message_bytes: int = 80 * 1024 * 1024  # ZMQ_MAXMSGSIZE: a larger frame drops the peer
    handshake_timeout_ms: int = (
        3000  # a connection not through the ZeroMQ handshake by then is dropped
    )
    telemetry_hwm: int = 100  # messages queued per subscriber before newer ones are dropped
    frame_rate_hz: float = 10.0  # JPEG frames on the frame topic; 0 = none
    frame_jpeg_quality: int = 80


@dataclass(frozen=True)
class WebConfig:
    """``malpi web``, the browser console: an operator client of the link (docs/web.md)."""

    listen: str = "127.0.0.1:8080"  # HOST:PORT to serve; a non-loopback host needs login
    login: bool = True  # ask for the password; false only on a loopback address
    password_file: str = "~/.config/malpi/web-password"  # scrypt hash (malpi web --set-password)
    session_hours: float = 12.0  # a login lasts this long at most
    idle_minutes: float = 60.0  # ... and ends after this long without a request
    tls: bool = False  # HTTPS (phones need it for the tilt sensor)
    cert: str = ""  # PEM certificate and key; "" = a self-signed pair made in tls_dir
    key: str = ""
    tls_dir: str = "~/.local/share/malpi/web-tls"


@dataclass(frozen=True)
class Config:
    loop: LoopConfig = LoopConfig()
    safety: SafetyConfig = SafetyConfig()
    camera: CameraConfig = CameraConfig()
    drivetrain: DrivetrainConfig = DrivetrainConfig()
    sim: SimConfig = SimConfig()
    policy: PolicyConfig = PolicyConfig()
    recording: RecordingConfig = RecordingConfig()
    reward: RewardConfig = RewardConfig()
    link: LinkConfig = LinkConfig()
    realtime: RealtimeConfig = RealtimeConfig()
    web: WebConfig = WebConfig()
    actions: list[dict[str, Any]] = field(default_factory=DEFAULT_ACTIONS.to_list)

    @property
    def action_table(self) -> ActionTable:
        return ActionTable.from_list(self.actions)

    def bundle_expectations(self) -> dict[str, Any]:
        """What a policy bundle must fit to drive this robot (PolicyBundle.from_bytes's checks)."""
        return {
            "expected_actions": self.action_table,
            "expected_image": (self.camera.height, self.camera.width),
            "expected_control_hz": None if self.policy.allow_rate_mismatch else self.loop.rate_hz,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CAMERA_BACKENDS = ("sim", "picamera2", "opencv", "replay")
DRIVETRAIN_BACKENDS = ("sim", "differential", "servo")


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Read and validate a config file (None: all defaults), then apply ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{p}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                "TOML files are UTF-8"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"config file {p}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    config = _build(Config, data, "")
    validate(config)
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """A configuration from its ``to_dict()`` form, validated (how the daemon's children get it)."""
    config = _build(Config, data, "")
    validate(config)
    return config


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where + key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _value(hints[f.name], data[f.name], where + f.name)
    return cls(**kwargs)


def _value(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_value(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate(c: Config) -> None:
    """Cross-field checks: impossible values and conflicts, each naming its key."""
    _require(
        0 < c.loop.rate_hz <= 200, "loop.rate_hz", f"must be in (0, 200], got {c.loop.rate_hz}"
    )
    _require(
        c.loop.trigger in ("frame", "timer"),
        "loop.trigger",
        f"must be frame or timer, got {c.loop.trigger!r}",
    )
    _require(c.safety.max_frame_age_ms > 0, "safety.max_frame_age_ms", "must be positive")
    _require(c.safety.deadman_ms > 0, "safety.deadman_ms", "must be positive")
    _require(c.safety.max_overruns >= 1, "safety.max_overruns", "must be at least 1")

    cam = c.camera
    _require(
        cam.backend in CAMERA_BACKENDS,
        "camera.backend",
        f"must be one of {', '.join(CAMERA_BACKENDS)}, got {cam.backend!r}",
    )
    _require(cam.width > 0 and cam.height > 0, "camera.width", "width and height must be positive")
    _require(cam.fps > 0, "camera.fps", "must be positive")
    _require(
        cam.fps >= c.loop.rate_hz,
        "camera.fps",
        f"{cam.fps:g} is below loop.rate_hz = {c.loop.rate_hz:g}: the policy would see "
        "the same frame twice",
    )
    if cam.crop:
        _require(len(cam.crop) == 4, "camera.crop", "must be [] or [left, top, right, bottom]")
        left, top, right, bottom = cam.crop
        _require(
            0 <= left < right <= 1 and 0 <= top < bottom <= 1,
            "camera.crop",
            f"fractions must satisfy 0 <= left < right <= 1 and 0 <= top < bottom <= 1, got {cam.crop}",
        )
    if cam.backend == "replay":
        _require(
            bool(cam.replay.db), "camera.replay.db", "the replay backend needs a database path"
        )

    dt = c.drivetrain
    _require(
        dt.backend in DRIVETRAIN_BACKENDS,
        "drivetrain.backend",
        f"must be one of {', '.join(DRIVETRAIN_BACKENDS)}, got {dt.backend!r}",
    )
    if dt.backend == "differential":
        d = dt.differential
        _require(
            d.driver in ("in_in", "phase_enable"),
            "drivetrain.differential.driver",
            f"must be in_in or phase_enable, got {d.driver!r}",
        )
        required = (
            ["left_forward", "left_backward", "right_forward", "right_backward"]
            if d.driver == "in_in"
            else ["left_phase", "right_phase", "left_enable", "right_enable"]
        )
        names = required + [n for n in ("left_enable", "right_enable") if n not in required]
        for n in names:
            pin = getattr(d, n)
            _require(
                pin >= 0 or (pin == -1 and n not in required),
                f"drivetrain.differential.{n}",
                f"driver {d.driver} needs this pin (BCM 0..27), got {pin}"
                if n in required
                else f"BCM pin must be 0..27, or -1 for not wired, got {pin}",
            )
        if d.driver == "in_in" and (d.left_enable >= 0) != (d.right_enable >= 0):
            raise ConfigError(
                "drivetrain.differential.left_enable: wire enable pins on both sides or neither"
            )
        _check_pins(
            "drivetrain.differential", {n: getattr(d, n) for n in names if getattr(d, n) >= 0}
        )
        _require(
            0 <= d.min_speed < d.max_speed <= 1,
            "drivetrain.differential.max_speed",
            "need 0 <= min_speed < max_speed <= 1",
        )
        _require(
            -1 <= d.steering_trim <= 1,
            "drivetrain.differential.steering_trim",
            "must be in [-1, 1]",
        )
        _require(d.pwm_frequency >= 0, "drivetrain.differential.pwm_frequency", "must be >= 0")
    elif dt.backend == "servo":
        s = dt.servo
        _check_pins(
            "drivetrain.servo", {"steering_pin": s.steering_pin, "throttle_pin": s.throttle_pin}
        )
        for ch in ("steering", "throttle"):
            lo, mid, hi = (
                getattr(s, f"{ch}_min_us"),
                getattr(s, f"{ch}_{'center' if ch == 'steering' else 'neutral'}_us"),
                getattr(s, f"{ch}_max_us"),
            )
            _require(
                500 <= lo < mid < hi <= 2500,
                f"drivetrain.servo.{ch}_min_us",
                f"need 500 <= min < {'center' if ch == 'steering' else 'neutral'} < max <= 2500 µs, got {lo}, {mid}, {hi}",
            )
        _require(0 < s.max_speed <= 1, "drivetrain.servo.max_speed", "must be in (0, 1]")

    _require(
        c.sim.car in ("differential", "steering"),
        "sim.car",
        f"must be differential or steering, got {c.sim.car!r}",
    )
    _require(c.sim.noise >= 0, "sim.noise", "must be >= 0")
    _require(c.sim.physics_hz >= c.loop.rate_hz, "sim.physics_hz", "must be at least loop.rate_hz")

    from malpi.policy.runtime import BACKENDS

    _require(
        c.policy.backend in BACKENDS,
        "policy.backend",
        f"must be one of {', '.join(BACKENDS)}, got {c.policy.backend!r}",
    )
    _require(c.policy.num_threads >= 1, "policy.num_threads", "must be at least 1")
    for key, addr in (("link.command", c.link.command), ("link.telemetry", c.link.telemetry)):
        _require(
            addr.startswith(("tcp://", "ipc://", "inproc://")),
            key,
            f"must be a tcp://, ipc:// or inproc:// address, got {addr!r}",
        )
    _require(
        c.link.command != c.link.telemetry or c.link.command.endswith(":*"),  # :* = any free port
        "link.telemetry",
        "must differ from link.command",
    )
    _require(bool(c.policy.store), "policy.store", "must name a directory")
    _require(c.recording.min_free_mb >= 0, "recording.min_free_mb", "must be >= 0")
    _require(
        2 <= c.realtime.priority <= 99,
        "realtime.priority",
        f"must be in 2..99 (SCHED_FIFO), got {c.realtime.priority}",
    )
    _require(
        c.realtime.cpu >= -1, "realtime.cpu", f"must be a CPU number or -1, got {c.realtime.cpu}"
    )
    _validate_link(c.link)
    _validate_web(c.web)
    try:
        c.action_table  # noqa: B018 - validates
    except ActionTableError as exc:
        raise ConfigError(f"actions: {exc}") from exc


def _validate_link(link: LinkConfig) -> None:
    _require(
        1024 <= link.max_message_bytes <= 2**31 - 1,
        "link.max_message_bytes",
        f"must be in [1024, 2147483647], got {link.max_message_bytes}",
    )
    _require(link.telemetry_hwm >= 1, "link.telemetry_hwm", "must be at least 1")
    _require(
        100 <= link.handshake_timeout_ms <= 60000,
        "link.handshake_timeout_ms",
        f"must be in [100, 60000], got {link.handshake_timeout_ms}",
    )
    _require(
        0 <= link.frame_rate_hz <= 60,
        "link.frame_rate_hz",
        f"must be in [0, 60], got {link.frame_rate_hz}",
    )
    _require(
        1 <= link.frame_jpeg_quality <= 100,
        "link.frame_jpeg_quality",
        f"must be in 1..100, got {link.frame_jpeg_quality}",
    )
    _require(bool(link.keys_dir) or not link.curve, "link.keys_dir", "CURVE needs a keys directory")
    if link.curve or link.allow_insecure_remote:
        return
    from malpi.protocol.address import is_local

    for key, addr in (("link.command", link.command), ("link.telemetry", link.telemetry)):
        _require(
            is_local(addr),
            key,
            f"{addr} is reachable from the network: set link.curve = true (see malpi keys init), "
            "or link.allow_insecure_remote = true on a closed bench network",
        )


def _validate_web(web: WebConfig) -> None:
    from malpi.protocol.address import is_local

    host, _, port = web.listen.rpartition(":")
    _require(
        bool(host) and port.isdigit() and 0 <= int(port) <= 65535,
        "web.listen",
        f"must be HOST:PORT, got {web.listen!r}",
    )
    _require(
        web.login or is_local(f"tcp://{web.listen}"),
        "web.login",
        f"{web.listen} is reachable from the network: anyone there could drive the car; "
        "keep web.login = true (set a password with malpi web --set-password)",
    )
    _require(0 < web.session_hours <= 24 * 30, "web.session_hours", "must be in (0, 720]")
    _require(0 < web.idle_minutes <= 24 * 60, "web.idle_minutes", "must be in (0, 1440]")
    _require(
        bool(web.cert) == bool(web.key), "web.key", "give both web.cert and web.key, or neither"
    )


def _check_pins(section: str, pins: dict[str, int]) -> None:
    used: dict[int, str] = {}
    for name, pin in pins.items():
        _require(0 <= pin <= 27, f"{section}.{name}", f"BCM pin must be 0..27, got {pin}")
        if pin in used:
            raise ConfigError(
                f"{section}.{name}: pin {pin} is already used by {section}.{used[pin]}"
            )
        used[pin] = name


def to_toml(config: Config) -> str:
    """The effective configuration as TOML (what ``malpi config show`` prints)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return repr(v)

    def table(name: str, d: dict[str, Any]) -> None:
        simple = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if name:
            lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {scalar(v)}" for k, v in simple.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{name}.{k}" if name else k, v)

    d = config.to_dict()
    actions = d.pop("actions")
    table("", d)
    for a in actions:
        lines.append("\n[[actions]]")
        lines.extend(f"{k} = {scalar(v)}" for k, v in a.items())
    return "\n".join(lines).lstrip("\n") + "\n"


def add_config_args(p: argparse.ArgumentParser) -> None:
    """--config FILE and --set KEY=VALUE, for every command that reads the configuration."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (default: $MALPI_CONFIG, else ~/.config/malpi/malpi.toml, else /etc/malpi/malpi.toml, else built-in defaults: the simulator)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set loop.rate_hz=30 (TOML value syntax)",
    )


def find_config(explicit: str | None = None) -> Path | None:
    """The configuration file to use: ``explicit`` (--config), else $MALPI_CONFIG, else the
    user's (~/.config/malpi/malpi.toml), else the robot's (/etc/malpi/malpi.toml); None if
    there is none (built-in defaults, which drive the simulator)."""
    named = explicit or os.environ.get("MALPI_CONFIG")
    if named:
        return Path(named)
    for candidate in (USER_CONFIG_PATH.expanduser(), ROBOT_CONFIG_PATH):
        if candidate.is_file():
            return candidate
    return None


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration named by --config (see :func:`find_config`), with --set overrides."""
    path = find_config(args.config)
    overrides = set_overrides(args.set)
    if getattr(args, "sim", False):
        overrides.setdefault("camera.backend", "sim")
        overrides.setdefault("drivetrain.backend", "sim")
    return load_config(path, overrides)


def set_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` arguments as {dotted key: TOML value} (a bare word is a string)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = raw
    return overrides
