"""Episode recording: the recorder the control loop calls, and the reader the trainer uses.

Nothing here imports TensorFlow, gpiozero or ZeroMQ; OpenCV is imported only
to encode or decode frames. The names below are imported on first use, so
that ``malpi.recorder.cli`` can register its commands without loading numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "EpisodeMeta": "recorder",
    "Recorder": "recorder",
    "RecorderStats": "recorder",
    "Step": "recorder",
    "END_OUTCOMES": "schema",
    "OUTCOMES": "schema",
    "SCHEMA_VERSION": "schema",
    "SOURCES": "schema",
    "NotAMalpiDatabase": "schema",
    "SchemaVersionError": "schema",
    "StoreError": "schema",
    "EpisodeData": "store",
    "EpisodeInfo": "store",
    "EpisodeStore": "store",
    "StoredStep": "store",
}

__all__ = [
    "END_OUTCOMES",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "SOURCES",
    "EpisodeData",
    "EpisodeInfo",
    "EpisodeMeta",
    "EpisodeStore",
    "NotAMalpiDatabase",
    "Recorder",
    "RecorderStats",
    "SchemaVersionError",
    "Step",
    "StoreError",
    "StoredStep",
]

if TYPE_CHECKING:
    from malpi.recorder.recorder import EpisodeMeta, Recorder, RecorderStats, Step
    from malpi.recorder.schema import (
        END_OUTCOMES,
        OUTCOMES,
        SCHEMA_VERSION,
        SOURCES,
        NotAMalpiDatabase,
        SchemaVersionError,
        StoreError,
    )
    from malpi.recorder.store import EpisodeData, EpisodeInfo, EpisodeStore, StoredStep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'malpi.recorder' has no attribute {name!r}")
    return getattr(importlib.import_module(f"malpi.recorder.{module}"), name)
