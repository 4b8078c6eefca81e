"""Where independent simulator jobs run: here, one after another, or as Ray tasks on a cluster.

The trainer's roll-outs (demonstrations, DAgger, ``malpi eval``'s tracks) are
independent jobs: a pure function of a shared part (the policy bundle, the
configuration) and one job's own part (a track seed, its random seed). Each
caller writes its jobs once, as such a function, and hands them to
:class:`Workers`:

- ``Workers()`` runs them in this process, in order: no Ray, nothing imported.
- ``Workers("auto")`` connects to the Ray cluster this machine belongs to
  (``RAY_ADDRESS``, or the one ``ray start`` started here), else starts a Ray of
  this machine alone; ``Workers("HOST:PORT")`` connects to that cluster's head.
  Jobs then run as Ray tasks, one CPU each, on whichever node has one free.

Either way :meth:`Workers.map` yields the results in the jobs' order, so what a
caller makes of them (an episode database, a report) is the same, given the
same seeds, whichever ran them. The learner stays in the calling process.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")


class Workers:
    """Runs ``fn(shared, job)`` for each job, here or on Ray (see the module doc)."""

    def __init__(self, ray: str | None = None):
        self.address = ray
        self._remote: dict[Callable[..., Any], Any] = {}
        if ray is not None:
            connect(ray)

    @property
    def on_ray(self) -> bool:
        return self.address is not None

    @property
    def count(self) -> int:
        """How many jobs run at once: the cluster's CPUs on Ray, else one."""
        if not self.on_ray:
            return 1
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(
        self,
        fn: Callable[[Any, J], R],
        jobs: Iterable[J],
        shared: Any = None,
        in_flight: int | None = None,
    ) -> Iterator[R]:
        """``fn(shared, job)`` for each job, yielded in the jobs' order.

        On Ray at most ``in_flight`` jobs (default: twice the CPUs) are submitted
        and not yet taken, so results as big as an episode's frames never pile
        up in the object store. ``fn`` must be a module-level function (workers
        import it by name).
        """
        if not self.on_ray:
            for job in jobs:
                yield fn(shared, job)
            return
        import ray

        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(num_cpus=1, max_retries=0)(fn)
        shared_ref = ray.put(shared)  # once, not once per job
        limit = max(1, in_flight or 2 * self.count)
        pending: deque[Any] = deque()
        try:
            for job in jobs:
                pending.append(remote.remote(shared_ref, job))
                if len(pending) >= limit:
                    yield ray.get(pending.popleft())
            while pending:
                yield ray.get(pending.popleft())
        finally:
            for ref in pending:  # a caller that stops early, or a job that failed
                ray.cancel(ref, force=True)


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``auto``: see the module doc), once per process."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(
            "--ray needs Ray, the ray extra: pip install -e '.[ray]' (on every node)"
        ) from exc
    if ray.is_initialized():
        return
    if address != "auto":
        _check_reachable(address)
    ray.init(
        address=None if address == "auto" else address,
        include_dashboard=False,
        configure_logging=False,
    )
    log.info(
        "Ray: %d CPUs on %d node(s)",
        int(ray.cluster_resources().get("CPU", 0)),
        len([n for n in ray.nodes() if n.get("Alive")]),
    )


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once, and clearly, when nothing listens at ``address``: ``ray.init`` would
    instead retry for minutes, logging timeouts."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeError(f"--ray {address!r}: expected auto or HOST:PORT (the head's address)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(
            f"no Ray cluster answers at {address} ({exc}): is the head started "
            "(ray start --head) and its port open from here?"
        ) from None


def add_ray_argument(parser: Any) -> None:
    """The ``--ray auto|ADDRESS`` option, the same on every command whose roll-outs can use it."""
    parser.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        help="run the simulator roll-outs as Ray tasks: 'auto' joins this machine's Ray cluster "
        "(or starts one here), HOST:PORT a cluster's head; the same results as without it "
        "(needs the ray extra)",
    )
