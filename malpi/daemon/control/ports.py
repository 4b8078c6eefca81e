"""The control process's ends of its channels to the link and recorder processes.

Both belong to the control thread (ZeroMQ sockets are not thread-safe): it
reads them at the start of every period and writes to them during it. A write
never blocks: a full queue (a stalled or restarting child) drops the message;
a step dropped that way leaves a gap in the episode's step numbers and counts
as dropped, exactly like a step the recorder itself could not keep up with.
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import zmq

from malpi.daemon import ipc
from malpi.recorder.recorder import EpisodeMeta, RecorderStats, Step

log = logging.getLogger(__name__)


class Port:
    """A DEALER socket bound at the child's ``ipc://`` endpoint; the child connects."""

    role = ""
    incoming = ""  # ipc decoder direction

    def __init__(self, context: zmq.Context, endpoint: str):
        self.endpoint = endpoint
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)  # the last messages reach a child that is stopping
        self.sock.setsockopt(zmq.SNDHWM, ipc.CONTROL_HWM)
        self.sock.setsockopt(zmq.RCVHWM, 1000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, ipc.MAX_MESSAGE_BYTES)
        self.sock.bind(endpoint)
        self.hello: ipc.Hello | None = None
        self.hellos = 0  # a second one means the child was restarted
        self.last_heard = 0.0
        self.dropped = 0  # messages the child's full queue refused

    def expect_hello(self) -> None:
        """A new child is starting (the supervisor thread calls this before spawning it)."""
        self.hello = None

    def wait(self, timeout: float) -> None:
        self.sock.poll(timeout * 1000)

    def receive(self, limit: int = 64) -> list[Any]:
        """Up to ``limit`` messages from the child (decoded, checked); updates liveness."""
        out = []
        for _ in range(limit):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = ipc.decode(self.incoming, frames[0])
            except ValueError as exc:
                log.error("%s process sent a bad message: %s", self.role, exc)
                continue
            self.last_heard = time.monotonic()
            if isinstance(msg, ipc.Hello):
                self.hello = msg
                self.hellos += 1
            out.append(msg)
        return out

    def send(self, msg: Any, extra: bytes | memoryview | None = None) -> bool:
        try:
            if extra is None:
                self.sock.send(ipc.encode(msg), zmq.NOBLOCK)
            else:
                self.sock.send_multipart([ipc.encode(msg), extra], zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.dropped += 1
            return False

    def close(self) -> None:
        self.sock.close()


class LinkPort(Port):
    """The link process's channel: telemetry, frames and state out; operators' commands in."""

    role = "link"
    incoming = "link"

    def __init__(self, context: zmq.Context, endpoint: str, frame_rate_hz: float = 0.0):
        super().__init__(context, endpoint)
        self.state_fn: Callable[[], ipc.State] | None = None  # set by the loop
        self.stats: dict[str, int] = {}
        self._frame_period = 1.0 / frame_rate_hz if frame_rate_hz > 0 else None
        self._last_frame = -1.0
        self._last_state = 0.0

    def receive(self, limit: int = 64) -> list[Any]:
        out = []
        for msg in super().receive(limit):
            if isinstance(msg, ipc.Heartbeat):
                self.stats = msg.stats
            else:
                if isinstance(msg, ipc.Hello):
                    self.send_state()
                out.append(msg)
        return out

    def sink(self, topic: str, payload: dict[str, Any]) -> None:
        """A telemetry sink (the loop's Telemetry): the link publishes it."""
        self.send(ipc.Telemetry(topic=topic, payload=payload))
        if topic in ("event", "status"):
            self.send_state()

    def send_state(self, now: float | None = None) -> None:
        if self.state_fn is not None:
            self._last_state = time.monotonic() if now is None else now
            self.send(self.state_fn())

    def tick(self, now: float, frame: Any, episode: int, step: int) -> None:
        """Once a period: the state a few times a second, a frame at ``link.frame_rate_hz``."""
        if now - self._last_state >= 0.2:
            self.send_state(now)
        if (
            self._frame_period is not None
            and frame is not None
            and now - self._last_frame >= self._frame_period * 0.95
        ):
            self._last_frame = now
            h, w = frame.image.shape[:2]
            head = ipc.FrameHead(
                index=frame.index,
                t=time.time() - (now - frame.timestamp),
                episode=episode,
                step=step,
                height=h,
                width=w,
            )
            self.send(head, memoryview(frame.image).cast("B"))

    def reply(
        self, token: int, result: dict | None = None, code: str = "", message: str = ""
    ) -> None:
        self.send(ipc.Reply(token=token, result=result, code=code, message=message))


class RecorderPort(Port):
    """The recorder process's channel, with the Recorder interface the control loop uses.

    Episode ids and step numbers are chosen here, so that the loop need not
    wait for the other process. Episode starts and ends that a full queue
    refuses are kept and sent before the next message, in order.
    """

    role = "recorder"
    incoming = "recorder"

    def __init__(self, context: zmq.Context, endpoint: str, path: str):
        super().__init__(context, endpoint)
        self.path = path
        self.status: ipc.RecorderStatus | None = None
        self._next_id = 1
        self._episode: int | None = None
        self._index = 0
        self._backlog: list[Any] = []  # episode starts/ends not yet handed over
        self._steps_dropped = 0
        self._steps_sent = 0

    # -- what the loop calls ------------------------------------------------------------

    @property
    def problem(self) -> str:
        """Why the recorder cannot record now ("" while it can)."""
        return self.status.problem if self.status is not None else ""

    @property
    def episode_id(self) -> int | None:
        return self._episode

    @property
    def stats(self) -> RecorderStats:
        s = self.status
        return RecorderStats(
            steps_written=s.written if s else 0,
            steps_dropped=(s.dropped if s else 0) + self._steps_dropped,
            queue_depth=s.queue if s else 0,
        )

    def receive(self, limit: int = 64) -> list[Any]:
        out = []
        for msg in super().receive(limit):
            if isinstance(msg, ipc.RecorderStatus):
                self.status = msg
            elif isinstance(msg, ipc.Hello):
                if msg.next_episode > self._next_id:
                    self._next_id = msg.next_episode
                if self.hellos > 1:  # a new recorder: what was queued for the dead one is moot
                    self._backlog.clear()
                    self._episode = None
                    self.status = None
                out.append(msg)
        return out

    def start_episode(self, meta: EpisodeMeta) -> int:
        episode_id = self._next_id
        self._next_id += 1
        self._episode, self._index = episode_id, 0
        self._control(
            ipc.StartEpisode(
                episode_id=episode_id,
                uuid=str(uuidlib.uuid4()),
                started_at=time.time(),
                started_mono=time.monotonic(),
                config=meta.config,
                actions=meta.action_table.to_list(),
                policy_version=meta.policy_version,
                notes=meta.notes,
            )
        )
        return episode_id

    def reserve_episode_id(self) -> int:
        """An id no episode started here will get (for one written by someone else: a cut)."""
        episode_id = self._next_id
        self._next_id += 1
        return episode_id

    def record(self, step: Step) -> int | None:
        if self._episode is None:
            return None
        index = self._index
        self._index += 1
        h, w = step.frame.shape[:2]
        head = ipc.StepHead(
            episode_id=self._episode,
            index=index,
            action=int(step.action),
            source=step.source,
            capture_time=step.capture_time,
            action_time=step.action_time,
            probs=None if step.probs is None else [float(p) for p in step.probs],
            value=step.value,
            reward=float(step.reward),
            policy_version=step.policy_version,
            height=h,
            width=w,
        )
        if self._backlog and not self._flush():
            self._steps_dropped += 1
            return None
        if not self.send(head, memoryview(step.frame).cast("B")):
            self._steps_dropped += 1
            return None
        self._steps_sent += 1
        return index

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every step sent so far is written or accounted as dropped (blocks: for
        tests and tools, not the control thread, whose reads of the port this waits on)."""
        target = self._steps_sent
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status
            if s is not None and s.written + s.dropped >= target:
                return True
            time.sleep(0.02)
        return False

    def end_episode(
        self, outcome: str = "finished", final_reward: float | None = None
    ) -> int | None:
        episode_id = self._episode
        if episode_id is not None:
            self._episode = None
            self._control(
                ipc.EndEpisode(
                    episode_id=episode_id,
                    outcome=outcome,
                    ended_at=time.time(),
                    final_reward=final_reward,
                )
            )
        return episode_id

    def resume(self) -> None:
        """Recording was asked for again: a failed writer is reopened."""
        self._control(ipc.Resume())

    # -- in order, never dropped ---------------------------------------------------------

    def _control(self, msg: Any) -> None:
        self._backlog.append(msg)
        del self._backlog[:-100]  # a recorder down for long: keep the newest
        self._flush()

    def _flush(self) -> bool:
        while self._backlog:
            if not self.send(self._backlog[0]):
                return False
            self._backlog.pop(0)
        return True
