"""Calibration kept by the daemon: a small TOML overlay applied over the configuration at boot.

An operator can change a few calibration values of the running car over the
link (``set_calibration``; the console's Calibrate tab): the drivetrain's
speeds, trim and servo pulses, the values ``malpi setup`` finds with the arrow
keys. The daemon may not be able to rewrite its configuration file (on a robot
it is root's ``/etc/malpi/malpi.toml``), so it keeps them in
``calibration.toml`` beside its policy store (``policy.store``'s parent:
``/var/lib/malpi/calibration.toml`` on a robot set up by ``install-pi.sh``)
and its next boot applies that file over the configuration. ``malpi setup``
starts from it and, once it has written a configuration holding the values,
removes it. Writes are atomic (a temporary file, fsync, rename); a file that
cannot be read or holds anything but these keys stops the boot with an error
naming the file.

Neutral code (the configuration only): the daemon and ``malpi setup`` use it.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from malpi.config import Config, ConfigError, config_from_dict

OVERLAY_NAME = "calibration.toml"

# Every key an overlay may hold: what set_calibration can change, on any drivetrain.
KEYS = (
    "drivetrain.differential.min_speed",
    "drivetrain.differential.max_speed",
    "drivetrain.differential.steering_trim",
    "drivetrain.servo.steering_center_us",
    "drivetrain.servo.steering_min_us",
    "drivetrain.servo.steering_max_us",
    "drivetrain.servo.throttle_neutral_us",
    "drivetrain.servo.max_speed",
)

HEADER = (
    "# Calibration set on the running car over its link (malpi web's Calibrate tab).\n"
    "# The daemon applies it over its configuration at every boot; malpi setup starts\n"
    "# from it and removes it once the configuration it writes holds these values.\n"
)


def overlay_path(config: Config) -> Path:
    """Where the daemon keeps its calibration: beside its policy store."""
    return Path(config.policy.store).expanduser().parent / OVERLAY_NAME


def value_of(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """``config`` with the dotted ``values`` set, validated as a whole (ConfigError naming the
    key otherwise). An integral float for an integer key (a JSON or msgpack number) is taken
    as the integer."""
    data = config.to_dict()
    for key, value in values.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = _typed(config, key, value)
    return config_from_dict(data)


def _typed(config: Config, key: str, value: Any) -> Any:
    current = value_of(config, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be finite, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return int(value)
    return value


def read_overlay(path: Path) -> dict[str, Any]:
    """The overlay's values by dotted key ({} when there is none); ConfigError naming the file
    when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # nothing calibrated over the link yet
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"calibration overlay {path}: cannot be read: {exc}{REMOVE}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"calibration overlay {path}: not valid TOML: {exc}{REMOVE}") from exc
    values = dict(_flatten(data))
    for key, value in values.items():
        if key not in KEYS:
            raise ConfigError(
                f"calibration overlay {path}: {key} is not a calibration key "
                f"(known: {', '.join(KEYS)}){REMOVE}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"calibration overlay {path}: {key}: expected a number{REMOVE}")
    return values


REMOVE = "; remove the file to boot with the configuration's own values"


def _flatten(data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        yield prefix.rstrip("."), data
        return
    for k, v in data.items():
        yield from _flatten(v, f"{prefix}{k}.")


def apply_overlay(config: Config, path: Path | None = None) -> tuple[Config, dict[str, Any]]:
    """``config`` with the overlay applied (and the values it changed); ConfigError naming the
    file when the overlay is unusable or makes the configuration invalid."""
    path = overlay_path(config) if path is None else path
    values = read_overlay(path)
    if not values:
        return config, {}
    try:
        return with_values(config, values), values
    except ConfigError as exc:
        raise ConfigError(f"calibration overlay {path}: {exc}{REMOVE}") from None


def write_overlay(path: Path, values: dict[str, Any]) -> None:
    """Replace the overlay with ``values`` atomically (a crash leaves the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for key in sorted(values):
        v = values[key]
        lines.append(f"{key} = {v!r}\n" if isinstance(v, int) else f"{key} = {float(v)!r}\n")
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        dirfd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


__all__ = [
    "KEYS",
    "OVERLAY_NAME",
    "apply_overlay",
    "overlay_path",
    "read_overlay",
    "value_of",
    "with_values",
    "write_overlay",
]
