"""How long a drive command was held up on its way, measured on its client's own clock.

A link that drops and comes back delivers what was queued meanwhile: drive
commands an operator gave seconds ago, each of which would move the car for a
deadman period. No clock has to agree with the robot's: per connection, the
smallest lag seen (arrival on this clock minus the client's ``sent`` stamp) is
the baseline, and a command's delay is its lag above it. The baseline creeps
up by :data:`DRIFT` so that two clocks running at slightly different rates
never make every command look late.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

DRIFT = 1e-3  # s per s (clock crystals differ by ~1e-5)
MAX_CLIENTS = 1024  # connections remembered (the least recently heard are forgotten)


class TransitDelay:
    def __init__(self) -> None:
        self._baseline: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def delay(self, client: bytes, sent: float | None, now: float | None = None) -> float:
        """Seconds this message was held up beyond the connection's usual; 0 without a stamp."""
        if sent is None or not math.isfinite(sent):
            return 0.0
        now = time.monotonic() if now is None else now
        lag = now - sent
        known = self._baseline.get(client)
        baseline = lag if known is None else min(lag, known[0] + DRIFT * (now - known[1]))
        self._baseline[client] = (baseline, now)
        self._baseline.move_to_end(client)
        while len(self._baseline) > MAX_CLIENTS:
            self._baseline.popitem(last=False)
        return lag - baseline
