"""TensorBoard logs written with TensorFlow's core summary ops.

``tf.summary.scalar`` lives in the ``tensorboard`` package; the trainer does
not need it installed to *write* logs. ``tf.summary.write`` with the scalars
plugin's metadata produces the same event records, which ``tensorboard
--logdir DIR`` (installed wherever you look at them) shows as scalar charts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class ScalarLog:
    """A TensorBoard event-file writer for scalars, one per directory (e.g. train/, val/)."""

    def __init__(self, logdir: str | os.PathLike[str]):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        Path(logdir).mkdir(parents=True, exist_ok=True)
        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(logdir))
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        ).SerializeToString()

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        tf = self._tf
        with self._writer.as_default():
            for name, value in values.items():
                if value is None:
                    continue
                tf.summary.write(
                    name,
                    tf.constant(float(value), tf.float32),
                    step=int(step),
                    metadata=self._metadata,
                )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_scalars(logdir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of ``logdir``: name -> [(step, value)] (for tests and plots)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for v in event.summary.value:
                value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
                out.setdefault(v.tag, []).append((int(event.step), value))
    return out
