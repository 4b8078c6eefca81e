"""Episode recording: the recorder the control loop calls, and the reader the trainer uses.

Nothing here imports TensorFlow, gpiozero or ZeroMQ; OpenCV is imported only
to encode or decode frames.
"""

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
    "StoredStep",
    "StoreError",
]
