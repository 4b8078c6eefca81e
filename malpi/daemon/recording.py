"""The recorder process: the control loop's steps into the episode database, off the control process.

JPEG encoding and SQLite (and a slow or full SD card) live here, where they
cannot delay a control period. The control process sends episode starts and
ends and every recorded step (``malpi.daemon.ipc``); this process hands them
to a :class:`malpi.recorder.Recorder` and reports, every heartbeat, what it
has written and whether it can record at all:

- below ``recording.min_free_mb`` of free disk it records nothing (steps are
  dropped) and says so; the control process switches recording off, with an
  event, and back on when this process reports room again (32 MB above the
  floor, so that it does not flap);
- a writer that fails (a full disk despite the floor, an I/O error) is
  reported the same way and reopened when the disk has gained 32 MB since, or
  when the operator asks to record again; nothing here crashes.

When the control process goes away without saying so (it was killed), the
running episode is closed as ``interrupted``.

Run by the control process as ``python -m malpi.daemon recorder``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import zmq

from malpi.actions import ActionTable
from malpi.daemon import ipc
from malpi.daemon.child import ChildContext
from malpi.recorder.recorder import EpisodeMeta, Recorder, Step

log = logging.getLogger(__name__)

HYSTERESIS_MB = 32.0  # recording resumes this far above the floor
REOPEN_INTERVAL = 5.0  # s between attempts to reopen a failed writer


class RecorderProcess:
    def __init__(self, ctx: ChildContext, sock: zmq.Socket):
        self.ctx = ctx
        self.sock = sock
        self.path = Path(ctx.config.recording.path).expanduser()
        self.floor_mb = ctx.config.recording.min_free_mb
        self.recorder = Recorder(self.path)  # StoreError here: the daemon does not start
        self.disk_low = False
        self.free_mb = -1.0
        self.dropped = 0  # steps this process dropped (no room, no episode, bad step)
        self._last_reopen = 0.0
        self._episode_from_control: int | None = None
        self._failed_free: float | None = None  # free MB when the writer failed
        self._check_disk()

    def serve(self) -> None:
        self.sock.send(
            ipc.encode(
                ipc.Hello(
                    role="recorder", pid=os.getpid(), next_episode=self.recorder.next_episode_id
                )
            )
        )
        last_beat = 0.0
        while not self.ctx.stop.is_set():
            if self.sock.poll(100):
                for _ in range(256):  # bounded: the heartbeat below must not starve
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(frames)
            now = time.monotonic()
            if now - last_beat >= ipc.HEARTBEAT and not self.ctx.stop.is_set():
                last_beat = now
                self._check_disk()
                self._maybe_reopen(now)
                self._send_status()

    def drain(self) -> None:
        """What the control process sent before it said stop (its episode's end) is written."""
        while self.sock.poll(200):
            try:
                self._handle(self.sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break

    def close(self) -> None:
        outcome = "interrupted" if self.ctx.parent_gone else "finished"
        self.recorder.close(outcome=outcome)

    # -- messages ----------------------------------------------------------------------

    def _handle(self, frames: list) -> None:
        try:
            msg = ipc.decode("to_recorder", frames[0].buffer)
            if isinstance(msg, ipc.StepHead):
                if len(frames) != 2:
                    raise ValueError("a step without its frame")
                self._record(msg, ipc.frame_pixels(frames[1].buffer, msg.height, msg.width))
            elif isinstance(msg, ipc.StartEpisode):
                self._start(msg)
            elif isinstance(msg, ipc.EndEpisode):
                self._end(msg)
            elif isinstance(msg, ipc.Resume):
                self._maybe_reopen(time.monotonic(), force=True)
        except (ValueError, TypeError, RuntimeError) as exc:
            # A message the control process should not have sent: a bug, logged, not fatal.
            log.error("recorder: message refused: %s", exc)

    def _start(self, m: ipc.StartEpisode) -> None:
        meta = EpisodeMeta(
            ActionTable.from_list(m.actions), m.config, m.policy_version, notes=m.notes
        )
        self._episode_from_control = None
        if self.recorder.error is not None:
            return
        self.recorder.start_episode(
            meta, episode_id=m.episode_id, uuid=m.uuid, started=(m.started_at, m.started_mono)
        )
        self._episode_from_control = m.episode_id

    def _record(self, m: ipc.StepHead, pixels) -> None:
        if self.disk_low or self.recorder.error is not None or self.recorder.episode_id is None:
            self.dropped += 1
            return
        self.recorder.record(
            Step(
                frame=pixels,
                action=m.action,
                source=m.source,
                capture_time=m.capture_time,
                action_time=m.action_time,
                probs=m.probs,
                value=m.value,
                reward=m.reward,
                policy_version=m.policy_version,
            ),
            index=m.index,
        )

    def _end(self, m: ipc.EndEpisode) -> None:
        if self.recorder.error is not None:
            return
        current = self.recorder.episode_id
        if current is not None and self._episode_from_control == m.episode_id:
            self.recorder.end_episode(m.outcome, m.final_reward)
        elif m.outcome in ("failed", "aborted") or m.final_reward is not None:
            self.recorder.set_outcome(m.episode_id, m.outcome, m.final_reward)

    # -- health ---------------------------------------------------------------------------

    def _check_disk(self) -> None:
        try:
            st = os.statvfs(self.path.parent)
            self.free_mb = st.f_bavail * st.f_frsize / 1e6
        except OSError:
            self.free_mb = -1.0
            return
        if self.disk_low:
            self.disk_low = self.free_mb < self.floor_mb + HYSTERESIS_MB
            if not self.disk_low:
                log.info(
                    "%.0f MB free on %s again: recording can resume", self.free_mb, self.path.parent
                )
        elif self.free_mb < self.floor_mb:
            self.disk_low = True
            log.warning(
                "only %.0f MB free on %s (recording.min_free_mb = %g): not recording",
                self.free_mb,
                self.path.parent,
                self.floor_mb,
            )
            if self.recorder.episode_id is not None:
                self.recorder.end_episode("finished")

    def _maybe_reopen(self, now: float, force: bool = False) -> None:
        """A failed writer is replaced when asked, or by itself once the disk has gained room
        since it failed (what fails for another reason waits for the operator)."""
        if self.recorder.error is None:
            self._failed_free = None
            return
        if self._failed_free is None:
            self._failed_free = self.free_mb
        if not force:
            room = self.free_mb >= self._failed_free + HYSTERESIS_MB and not self.disk_low
            if not room or now - self._last_reopen < REOPEN_INTERVAL:
                return
        self._last_reopen = now
        self.recorder.close()
        try:
            self.recorder = Recorder(self.path)
            self._failed_free = None
            log.info("recorder reopened %s", self.path)
        except Exception as exc:  # still broken: say so at the next heartbeat, try again later
            log.warning("recorder could not reopen %s: %s", self.path, exc)

    def problem(self) -> str:
        if self.recorder.error is not None:
            return f"recording failed: {self.recorder.error}"
        if self.disk_low:
            return (
                f"only {self.free_mb:.0f} MB free on {self.path.parent}, below "
                f"recording.min_free_mb = {self.floor_mb:g}"
            )
        return ""

    def _send_status(self) -> None:
        s = self.recorder.stats
        problem = self.problem()
        msg = ipc.RecorderStatus(
            written=s.steps_written,
            dropped=s.steps_dropped + self.dropped,
            queue=s.queue_depth,
            ok=not problem,
            problem=problem,
            free_mb=round(self.free_mb, 1),
        )
        with contextlib.suppress(zmq.Again):
            self.sock.send(ipc.encode(msg), zmq.NOBLOCK)


def main(ctx: ChildContext) -> int:
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.RCVHWM, 4 * ipc.CONTROL_HWM)
    sock.connect(ctx.endpoint)
    try:
        try:
            proc = RecorderProcess(ctx, sock)
        except Exception as exc:
            sock.send(ipc.encode(ipc.Hello(role="recorder", pid=os.getpid(), error=str(exc))))
            return 2
        try:
            proc.serve()
            proc.drain()
        finally:
            proc.close()
        return 0
    finally:
        sock.close()
        zctx.term()
