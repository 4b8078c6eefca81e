"""Why the car is not allowed to move right now.

Two kinds of fault stop the motors:

- *conditions* (``stale_frame``, ``deadman``) hold only while their cause
  does: the loop re-checks them every period and the car may move again once
  the cause has cleared (a fresh frame, a new drive command);
- *latched* faults (``policy_error``, ``thread_crash``, ``process_crash``,
  ``overrun``) are cleared only by an operator re-arming, i.e. choosing a mode
  again; until then the loop is paused. ``process_crash``: the link or the
  recorder process died or stopped answering (it is restarted).
"""

from __future__ import annotations

CONDITIONS = frozenset({"stale_frame", "deadman"})
LATCHED = frozenset({"policy_error", "thread_crash", "process_crash", "overrun"})


class Faults:
    def __init__(self) -> None:
        self._active: dict[str, str] = {}

    def raise_(self, name: str, reason: str) -> bool:
        """Mark a fault; True if it was not active before (so the caller announces it once)."""
        if name not in CONDITIONS | LATCHED:
            raise ValueError(f"unknown fault {name!r}")
        new = name not in self._active
        self._active[name] = reason
        return new

    def clear(self, name: str) -> bool:
        """Clear a condition; True if it was active."""
        if name in LATCHED:
            raise ValueError(f"{name} is latched: only rearm() clears it")
        return self._active.pop(name, None) is not None

    def rearm(self) -> list[str]:
        """Clear the latched faults (an operator chose a mode); returns those cleared."""
        cleared = [n for n in self._active if n in LATCHED]
        for n in cleared:
            del self._active[n]
        return cleared

    def __contains__(self, name: str) -> bool:
        return name in self._active

    @property
    def latched(self) -> bool:
        return any(n in LATCHED for n in self._active)

    @property
    def any(self) -> bool:
        return bool(self._active)

    def snapshot(self) -> dict[str, str]:
        return dict(self._active)
