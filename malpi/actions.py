"""The discrete action table shared by the policy, the simulator and the drivetrains.

An action is a named motor command: ``steering`` in [-1, 1] (negative turns
left, positive turns right) and ``throttle`` in [-1, 1] (negative reverses).
Each drivetrain turns a command into outputs of its own: a differential drive
mixes it into left/right motor speeds, a servo car sends it to the steering
servo and the ESC. The policy only ever sees action indices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NO_ACTION = -1
"""The "previous action" at the start of an episode: no action taken yet."""


@dataclass(frozen=True)
class MotorCommand:
    steering: float
    throttle: float

    def clamped(self) -> MotorCommand:
        return MotorCommand(_clamp(self.steering), _clamp(self.throttle))

    def mixed(self) -> tuple[float, float]:
        """(left, right) motor speeds of a differential drive, each in [-1, 1]."""
        c = self.clamped()
        return _clamp(c.throttle + c.steering), _clamp(c.throttle - c.steering)


STOP = MotorCommand(0.0, 0.0)


@dataclass(frozen=True)
class Action:
    name: str
    steering: float
    throttle: float

    @property
    def command(self) -> MotorCommand:
        return MotorCommand(self.steering, self.throttle)


class ActionTableError(ValueError):
    """An action table that cannot be used; the message names what is wrong."""


class ActionTable(Sequence[Action]):
    """An ordered, validated list of actions; index i is the policy's output i."""

    def __init__(self, actions: Iterable[Action]):
        self._actions = tuple(actions)
        if not self._actions:
            raise ActionTableError("the action table is empty")
        seen: set[str] = set()
        for i, a in enumerate(self._actions):
            if not a.name or not isinstance(a.name, str):
                raise ActionTableError(f"action {i}: name must be a non-empty string")
            if a.name in seen:
                raise ActionTableError(f"action {i}: duplicate name {a.name!r}")
            seen.add(a.name)
            for field in ("steering", "throttle"):
                v = getattr(a, field)
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ActionTableError(f"action {a.name!r}: {field} must be a finite number")
                if not -1.0 <= v <= 1.0:
                    raise ActionTableError(f"action {a.name!r}: {field}={v} is outside [-1, 1]")

    def __getitem__(self, i):  # type: ignore[override]
        return self._actions[i]

    def __len__(self) -> int:
        return len(self._actions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActionTable) and self._actions == other._actions

    def __hash__(self) -> int:
        return hash(self._actions)

    def __repr__(self) -> str:
        return f"ActionTable({[a.name for a in self._actions]})"

    @property
    def names(self) -> list[str]:
        return [a.name for a in self._actions]

    def index(self, name: str) -> int:  # type: ignore[override]
        for i, a in enumerate(self._actions):
            if a.name == name:
                return i
        raise KeyError(f"no action named {name!r}; the table has {self.names}")

    def command(self, index: int) -> MotorCommand:
        if not 0 <= index < len(self._actions):
            raise IndexError(f"action {index} is outside the table of {len(self._actions)}")
        return self._actions[index].command

    def to_list(self) -> list[dict[str, Any]]:
        return [
            {"name": a.name, "steering": a.steering, "throttle": a.throttle} for a in self._actions
        ]

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]]) -> ActionTable:
        actions = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise ActionTableError(
                    f"action {i}: expected a table with name, steering, throttle"
                )
            extra = set(item) - {"name", "steering", "throttle"}
            if extra:
                raise ActionTableError(f"action {i}: unknown key(s) {sorted(extra)}")
            missing = {"name", "steering", "throttle"} - set(item)
            if missing:
                raise ActionTableError(f"action {i}: missing key(s) {sorted(missing)}")
            actions.append(Action(item["name"], item["steering"], item["throttle"]))
        return cls(actions)


DEFAULT_ACTIONS = ActionTable(
    [
        Action("hard_left", -0.8, 0.45),
        Action("left", -0.35, 0.6),
        Action("straight", 0.0, 0.7),
        Action("right", 0.35, 0.6),
        Action("hard_right", 0.8, 0.45),
    ]
)


def _clamp(v: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo if v < lo else hi if v > hi else float(v)


def one_hot(actions: np.ndarray | Sequence[int] | int, num_actions: int) -> np.ndarray:
    """One-hot float32 encoding of action indices; NO_ACTION (-1) becomes all zeros ("none")."""
    actions = np.asarray(actions)
    out = np.zeros((*actions.shape, num_actions), np.float32)
    valid = actions >= 0
    out[valid, actions[valid]] = 1.0
    return out


def previous_actions(actions: np.ndarray) -> np.ndarray:
    """The policy's "previous action" input along an episode: NO_ACTION, then ``actions[:-1]``."""
    prev = np.empty_like(actions)
    if len(prev):
        prev[0] = NO_ACTION
        prev[1:] = actions[:-1]
    return prev
