"""The daemon's outbound messages, fanned out to whoever listens (the ZeroMQ link, tests).

Topics: ``step`` (every period), ``status`` (about once a second), ``event``
(mode changes, episode resets, policy swaps, safety stops), ``frame`` (JPEG,
rate-limited, published by the link). A sink must not block; one that raises
is logged and skipped, never allowed to stop the control loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Sink = Callable[[str, dict[str, Any]], None]


class Telemetry:
    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()

    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = [*self._sinks, sink]

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = [s for s in self._sinks if s is not sink]

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        for sink in self._sinks:  # a copy-on-write list: no lock on the hot path
            try:
                sink(topic, payload)
            except Exception:
                log.exception("telemetry sink %r failed on %s", sink, topic)

    def event(self, kind: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
        """Log an event and publish it on the ``event`` topic."""
        log.log(level, "%s: %s", kind, message)
        self.publish("event", {"t": time.time(), "kind": kind, "message": message, **fields})
