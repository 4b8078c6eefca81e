"""The ``tf.distribute`` strategy the trainer runs under.

- ``default``: one device (TensorFlow's default strategy; what a laptop uses).
- ``mirrored``: synchronous data parallelism over this machine's devices (GPUs,
  or logical CPU devices): one replica per device, gradients summed.
- ``multiworker``: the same across machines; each reads ``TF_CONFIG``
  (``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type":
  "worker", "index": 0}}``) and runs the same command. Worker 0 is the chief:
  it alone writes checkpoints, logs and the bundle.
- ``auto``: multiworker when ``TF_CONFIG`` names a cluster, mirrored when there
  is more than one GPU, otherwise default.

The trainer splits each global batch itself (see ``data.Plan.rows_for``): one
input pipeline per worker, per-replica batches handed out round robin.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


def use_logical_cpus(n: int) -> None:
    """Split the CPU into ``n`` logical devices (call before TensorFlow touches a device).

    For testing the mirrored strategy without GPUs, and for running replicas on a
    many-core CPU.
    """
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    )


def make_strategy(kind: str = "auto") -> Any:
    """The strategy called ``kind`` (see the module doc)."""
    import tensorflow as tf

    if kind not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {kind!r}")
    if kind == "auto":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            kind = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "default":
        strategy = tf.distribute.get_strategy()
    elif kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        # NCCL needs GPUs; a plain reduction works on any device.
        ops = None if gpus else tf.distribute.ReductionToOneDevice()
        strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=ops)
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    log.info("distribution: %s, %d replica(s) in sync", type(strategy).__name__, replicas(strategy))
    return strategy


def replicas(strategy: Any) -> int:
    return int(strategy.num_replicas_in_sync)


def is_chief(strategy: Any) -> bool:
    """True on the worker that writes files (the only one outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    if not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)
