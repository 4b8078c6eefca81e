"""The control loop: newest frame -> policy step -> drivetrain -> recorder and telemetry, at a fixed rate.

Everything that changes the loop's state runs on the loop's own thread. The
link process's commands arrive on its port (:mod:`malpi.daemon.control.ports`),
read at the start of every period; in-process callers (a test, a timer) use
the thread-safe methods below, which queue a command the loop applies at the
start of its next period. Only ``drive()`` writes a slot directly, so the
deadman sees the operator's latest command.

The policy is stepped exactly on the periods that act (and are recorded):
the LSTM state on the car follows the same sequence of frames and previous
actions that training replays from the recording.

Safety (see :mod:`malpi.daemon.control.safety`): the motors are stopped, and an event
says why, on a stale frame, a policy error or non-finite output, a lost
operator in manual mode, SIGTERM/SIGINT, an exception in any thread, and a
loop that keeps overrunning its period. Boot mode is ``paused``.
"""

from __future__ import annotations

import enum
import gc
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from malpi.actions import NO_ACTION, ActionTable
from malpi.camera.base import Camera
from malpi.daemon import ipc
from malpi.daemon.control.calibrate import COMMANDS as CALIBRATE_COMMANDS
from malpi.daemon.control.calibrate import CalibrationError, Calibrator
from malpi.daemon.control.loader import PolicyLoader
from malpi.daemon.control.notify import Notifier
from malpi.daemon.control.ports import LinkPort
from malpi.daemon.control.safety import LATCHED, Faults
from malpi.daemon.control.telemetry import Telemetry
from malpi.drivetrain.base import Drivetrain
from malpi.policy.runtime import StepPolicy
from malpi.policy.store import BootPolicy
from malpi.recorder.recorder import EpisodeMeta, Step

log = logging.getLogger(__name__)

PHASE_GAIN = 0.2  # the share of a frame's offset from its due time the schedule takes up


class Mode(enum.StrEnum):
    PAUSED = "paused"  # motors stopped; the boot mode
    MANUAL = "manual"  # the operator drives; recorded as demonstration
    AUTO = "auto"  # the policy drives; an operator command overrides it (an intervention)


@dataclass(frozen=True)
class LoopSettings:
    rate_hz: float = 20.0
    max_frame_age: float = 0.25  # s: an older newest frame is stale
    deadman: float = 0.3  # s: manual mode stops without a drive command this recent
    max_overruns: int = 5  # consecutive overrun periods before the loop stops the car
    status_interval: float = 1.0  # s between status messages
    trigger: str = "frame"  # frame: a period starts when a new frame arrives; timer: on the clock
    camera_fps: float = 30.0  # the camera's nominal rate (frame trigger: which frames to act on)

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz


@dataclass
class LoopStats:
    periods: int = 0
    missed_periods: int = 0
    overrun_streak: int = 0
    rate_hz: float = 0.0  # measured over the last status interval
    last_stages_ms: dict[str, float] = field(default_factory=dict)
    # CPU time per period over the last status interval (None before the first): the control
    # process's (all its threads: this loop, the camera's capture and resize, the simulator,
    # the policy loader, ZeroMQ's I/O) and the loop thread's own.
    cpu_ms_per_period: float | None = None
    loop_cpu_ms_per_period: float | None = None


@dataclass(frozen=True)
class OperatorCommand:
    action: int | None  # None: the operator says stop
    received: float  # time.monotonic()


class DaemonStopped(RuntimeError):
    """A command sent to a loop that is no longer running."""


class ControlLoop:
    def __init__(
        self,
        camera: Camera,
        drivetrain: Drivetrain,
        actions: ActionTable,
        settings: LoopSettings | None = None,
        policy: StepPolicy | None = None,
        recorder: Any = None,  # a RecorderPort (or anything with its interface)
        telemetry: Telemetry | None = None,
        notifier: Notifier | None = None,
        record: bool = True,
        config: dict[str, Any] | None = None,
        stage_history: list[dict[str, float]] | None = None,
        link: LinkPort | None = None,
        loader: PolicyLoader | None = None,
        policy_source: str = "",
    ):
        self.camera = camera
        self.drivetrain = drivetrain
        self.actions = actions
        self.settings = settings or LoopSettings()
        self.policy = policy
        self.policy_source = policy_source  # where the running policy came from
        self.policy_file = ""  # and the bundle file it was read from, if known
        # What the next boot runs: set at build, changed by the link when it keeps or rolls back.
        self.boot_policy = BootPolicy(None, None, "")
        self.recorder = recorder
        self.link = link
        # Set as each period ends: the policy loader clears it and waits, to start its GIL-held
        # work at the beginning of the loop's idle time rather than just before a period.
        self.period_ended = threading.Event()
        self.loader = loader
        # The motor test and calibration (malpi.daemon.control.calibrate), set by build_robot.
        self.calibrator: Calibrator | None = None
        self.telemetry = telemetry or Telemetry()
        self.notifier = notifier or Notifier({})
        self.config = config or {}
        self.stage_history = (
            stage_history  # when given, every period's stage times are appended (bench)
        )
        self.mode = Mode.PAUSED
        self.faults = Faults()
        self.stats = LoopStats()
        # What the operator (or the configuration) asked for, and whether it happens: a recorder
        # that cannot record (no room on the disk, a failed writer) turns the second off.
        self.recording_wanted = bool(record and recorder is not None)
        self.recording = self.recording_wanted
        self.recording_note: str | None = None
        self.episode = 0
        self.step_index = 0
        self.prev_action = NO_ACTION
        self.started_at: float | None = None  # wall clock of the first period
        self.listening_since = 0.0  # when the loop last read its children's ports
        self._frame_index = -1  # the frame the last period used
        self._last_start: float | None = None
        self._last_publish_ms = 0.0
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._operator: OperatorCommand | None = None  # the latest drive command
        self._thread_errors: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._running = False
        self._last_status = 0.0
        self._last_watchdog = 0.0
        self._rate_mark = (0.0, 0)
        self._cpu_mark = (0.0, 0.0, 0)  # process CPU s, loop thread CPU s, periods
        if link is not None:
            link.state_fn = self.state
            self.telemetry.add_sink(link.sink)

    # -- the interface for the link (any thread) -----------------------------------

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the loop thread between two periods; the future holds its result."""
        future: Future = Future()
        if self._stop.is_set():
            future.set_exception(DaemonStopped("the control loop is stopping"))
        else:
            self._commands.put((fn, future))
        return future

    def set_mode(self, mode: str) -> Future:
        """Choose a mode; choosing one also re-arms after a latched fault."""
        return self.submit(lambda: self._set_mode(Mode(mode)))

    def reset_episode(self) -> Future:
        return self.submit(lambda: self._new_episode("finished", reason="reset requested"))

    def end_episode(self, outcome: str = "finished", final_reward: float | None = None) -> Future:
        """End the episode with an outcome (e.g. the operator saw the car fail); a new one starts."""
        return self.submit(
            lambda: self._new_episode(
                outcome, reason=f"episode {outcome}", final_reward=final_reward
            )
        )

    def set_recording(self, on: bool) -> Future:
        return self.submit(lambda: self._set_recording(on))

    def swap_policy(self, policy: StepPolicy) -> Future:
        """Swap in an already-built policy between two periods; a new episode starts."""
        return self.submit(lambda: self._swap_policy(policy))

    def drive(self, action: int | None) -> None:
        """An operator command: an action index, or None to stop. Feeds the deadman.

        The latest command wins, whoever sent it; a stop is never refused. (Ordering one
        client's commands is the link's job: it knows the clients.)
        """
        if action is not None and not 0 <= action < len(self.actions):
            raise ValueError(f"action {action} is outside the table of {len(self.actions)}")
        self._operator = OperatorCommand(action, time.monotonic())

    def child_failed(self, role: str, reason: str) -> None:
        """The supervisor's report (any thread): a latched fault at the next period."""
        self.drivetrain.stop()
        self._thread_errors.put(("process_crash", reason))

    def request_stop(self, reason: str) -> None:
        """Stop the motors now and end the loop after this period (signal-handler safe)."""
        self.drivetrain.stop()
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {
            "mode": str(self.mode),
            "episode": self.episode,
            "step": self.step_index,
            "recording": self.recording,
            "policy_version": self.policy.version if self.policy else None,
            "policy_source": self.policy_source or None,
            "boot_policy_version": self.boot_policy.version,
            "boot_policy_source": self.boot_policy.source or None,
            "rate_hz": round(self.stats.rate_hz, 2),
            "periods": self.stats.periods,
            "missed_periods": self.stats.missed_periods,
            "faults": self.faults.snapshot(),
        }

    def state(self) -> ipc.State:
        """Everything the link needs to answer ``status`` without asking this process."""
        rec = None
        if self.recorder is not None:
            r = self.recorder.stats
            rec = {"written": r.steps_written, "dropped": r.steps_dropped, "queue": r.queue_depth}
        return ipc.State(
            mode=str(self.mode),
            episode=self.episode,
            step=self.step_index,
            recording=self.recording,
            recording_note=self.recording_note,
            policy_version=self.policy.version if self.policy else None,
            policy_sha256=self.policy.sha256 if self.policy else None,
            policy_source=self.policy_source,
            policy_file=self.policy_file,
            boot_policy_version=self.boot_policy.version,
            boot_policy_sha256=self.boot_policy.sha256,
            boot_policy_source=self.boot_policy.source,
            boot_policy_file=self.boot_policy.file,
            rate_hz=round(self.stats.rate_hz, 2),
            periods=self.stats.periods,
            missed_periods=self.stats.missed_periods,
            faults=self.faults.snapshot(),
            actions=self.actions.to_list(),
            recorder=rec,
            started_at=self.started_at,
        )

    # -- running ------------------------------------------------------------------

    def run(self, install_signal_handlers: bool = True, max_periods: int | None = None) -> int:
        """Run until stopped; returns 0 after a clean stop. Re-raises a crash after stopping the motors."""
        period = self.settings.period
        old_handlers = self._install_signals() if install_signal_handlers else {}
        old_hook = threading.excepthook
        threading.excepthook = self._thread_excepthook
        self._running = True
        self.drivetrain.stop()
        self.started_at = time.time()
        self._new_episode(None, reason="boot")
        self.notifier.ready(f"paused, policy {self.policy.version if self.policy else 'none'}")
        self.telemetry.event(
            "started", f"control loop at {self.settings.rate_hz:g} Hz, mode paused"
        )
        # What exists now (libraries, the policy, buffers) lives as long as the loop: out of the
        # collector's sight, a full collection no longer walks it. With a large heap (hundreds
        # of thousands of objects) that walk holds the GIL for hundreds of ms: a stopped car.
        gc.freeze()
        due = time.monotonic()
        self._rate_mark = (due, 0)
        self._cpu_mark = (time.process_time(), time.thread_time(), 0)
        try:
            while not self._stop.is_set():
                self._period()
                self.period_ended.set()
                self.stats.periods += 1
                if max_periods is not None and self.stats.periods >= max_periods:
                    break
                due += period
                now = time.monotonic()
                if now > due:
                    self._overran(now, due, period)
                    due = now  # re-synchronise rather than burst to catch up
                else:
                    self.stats.overrun_streak = 0
                    self._feed_watchdog(now)
                    if self.settings.trigger == "frame":
                        due = self._wait_for_frame(due, period)
                    else:
                        time.sleep(due - now)
            return 0
        except BaseException as exc:
            self.drivetrain.stop()
            self.telemetry.event(
                "crash", f"control loop crashed: {exc!r}; motors stopped", logging.ERROR
            )
            self._stop_reason = self._stop_reason or f"crash: {exc!r}"
            raise
        finally:
            self._shutdown()
            gc.unfreeze()
            threading.excepthook = old_hook
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _period(self) -> None:
        """One control period. The order of the steps is the contract."""
        t0 = time.monotonic()
        self._run_commands()
        t_cmd = time.monotonic()
        self._check_threads()

        # 1. The newest frame, and whether it is fresh enough to act on.
        frame = self.camera.latest()
        self._frame_index = frame.index if frame is not None else -1
        t_frame = time.monotonic()
        age = t_frame - frame.timestamp if frame is not None else math.inf
        if age > self.settings.max_frame_age:
            self._fault(
                "stale_frame",
                "no frame yet" if frame is None else f"newest frame is {age * 1000:.0f} ms old",
            )
        else:
            self._clear("stale_frame")

        # 2. The operator: a fresh drive command (manual driving, or an intervention in auto).
        operator = self._operator
        if operator is not None and t_frame - operator.received > self.settings.deadman:
            operator = None
        if self.mode is Mode.MANUAL and operator is None:
            self._fault("deadman", f"no drive command for {self.settings.deadman * 1000:.0f} ms")
        else:
            self._clear("deadman")

        # 3. Who acts this period, if anyone: nothing moves while a fault is active or paused.
        source = None
        if not self.faults.any and self.mode is not Mode.PAUSED:
            if operator is not None and operator.action is not None:
                source = "human" if self.mode is Mode.MANUAL else "intervention"
            elif self.mode is Mode.AUTO and operator is None and self.policy is not None:
                source = "policy"
        t_checks = time.monotonic()

        # 4. The policy steps on exactly the periods that act, so that its LSTM state follows
        #    the sequence the recording keeps (and training replays).
        result = None
        if source is not None and self.policy is not None:
            try:
                result = self.policy.step(frame.image, self.prev_action)
            except Exception as exc:
                self._latch("policy_error", f"policy step failed: {exc}")
                source = None
        t_inf = time.monotonic()
        action = None
        if source == "policy":
            action = result.action
        elif source is not None:
            action = operator.action

        # 5. Actuate. Paused, a motor test (calibrate) may drive the outputs: never recorded.
        test = None
        if action is None and self.calibrator is not None and self.mode is Mode.PAUSED:
            test = self.calibrator.command(t_frame, self._drove_since)
        if action is not None:
            self.drivetrain.apply(self.actions.command(action))
        elif test is not None:
            self.drivetrain.apply(test)
        else:
            self.drivetrain.stop()
        t_act = time.monotonic()

        # 6. Record (a hand-off to the recorder process; never blocks).
        if action is not None:
            if self.recording:
                self.recorder.record(
                    Step(
                        frame.image,
                        action,
                        source,
                        frame.timestamp,
                        t_act,
                        probs=None if result is None else result.probs,
                        value=None if result is None else result.value,
                        policy_version=self.policy.version if self.policy else None,
                    )
                )
            self.prev_action = action
        t_rec = time.monotonic()

        # 7. Telemetry. The stages (docs/protocol.md, ``latency_ms``) partition the loop thread's
        #    work in a period, in wall time; what other threads and processes spend is in
        #    ``status``'s CPU figures (see _cpu_status).
        stages = {
            "commands": (t_cmd - t0) * 1000,  # queued commands, the link's and recorder's messages
            "checks": (t_checks - t_cmd) * 1000,  # threads, newest frame, stale, deadman, who acts
            "inference": (t_inf - t_checks) * 1000,  # the policy's step (0 when none acts)
            "actuation": (t_act - t_inf) * 1000,  # the drivetrain's command
            "record_handoff": (t_rec - t_act) * 1000,  # the step to the recorder process's queue
        }
        if frame is not None:
            stages["frame_to_motor"] = (t_act - frame.timestamp) * 1000
        if self._last_start is not None:
            stages["period"] = (t0 - self._last_start) * 1000  # since the previous period began
            stages["publish"] = self._last_publish_ms  # the previous period's (this one's is later)
        self._last_start = t0
        self.telemetry.publish(
            "step",
            {
                "t": time.time(),
                "episode": self.episode,
                "step": self.step_index,
                "mode": str(self.mode),
                "action": action,
                "source": source if action is not None else "test" if test else None,
                "probs": None if result is None else [round(float(p), 4) for p in result.probs],
                "value": None if result is None else result.value,
                "faults": sorted(self.faults.snapshot()),
                "latency_ms": stages,
                "periods": self.stats.periods + 1,  # for the link's status replies
                "missed_periods": self.stats.missed_periods,
            },
        )
        if self.link is not None:
            self.link.tick(t_rec, frame, self.episode, self.step_index)
        stages["publish"] = self._last_publish_ms = (time.monotonic() - t_rec) * 1000
        self.stats.last_stages_ms = stages
        if self.stage_history is not None:
            self.stage_history.append({"start": t0, **stages})
        if action is not None:
            self.step_index += 1
        self._maybe_status(t0)

    def _wait_for_frame(self, due: float, period: float) -> float:
        """Frame-synchronous timing: the next period starts when the first frame captured at or
        after ``due`` (less half a frame interval) arrives, so the policy acts on a frame that
        just came. The schedule stays at rate_hz on average: a faster camera's other frames are
        skipped, ``due`` drifts a little towards the frames' phase each period, and it jumps
        only when the camera is later than it (it is then followed).
        A late or dead camera cannot hold the loop: half a period past ``due`` the period runs
        with the newest frame, and the stale-frame rule judges it. Returns the period's ``due``."""
        half_frame = 0.5 / self.settings.camera_fps
        deadline = due + period / 2
        index = self._frame_index
        while True:
            frame = self.camera.wait_newer(index, max(0.0, deadline - time.monotonic()))
            if frame is None:
                return time.monotonic()
            if frame.timestamp >= due - half_frame:
                if frame.timestamp > due + half_frame:
                    return frame.timestamp  # the camera is later than the schedule: follow it
                # Nudge the schedule towards the camera's phase: frames then come mid-window,
                # and a frame's jitter does not push it out of the window.
                return due + PHASE_GAIN * (frame.timestamp - due)
            index = frame.index  # captured too early for this period: down-sampled away

    # -- pieces of a period ------------------------------------------------------

    def _run_commands(self) -> None:
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:
                    future.set_exception(exc)
        self.listening_since = time.monotonic()
        if self.recorder is not None and hasattr(self.recorder, "receive"):
            for msg in self.recorder.receive():
                if isinstance(msg, ipc.Hello) and self.recorder.hellos > 1:
                    self.telemetry.event(
                        "process_restarted", f"recorder process restarted (pid {msg.pid})",
                        role="recorder", pid=msg.pid,
                    )  # fmt: skip
                    if self.recording:  # the new recorder records from a new episode on
                        self._new_episode(None, reason="recorder restarted")
        if self.link is not None:
            for msg in self.link.receive():
                self._on_link(msg)

    def _check_threads(self) -> None:
        while True:
            try:
                self._latch(*self._thread_errors.get_nowait())
            except queue.Empty:
                break
        cam_error = self.camera.error
        if cam_error is not None:
            self._latch("thread_crash", f"camera failed: {cam_error!r}")
        if self.recorder is not None:
            self._check_recorder(getattr(self.recorder, "problem", ""))

    def _check_recorder(self, problem: str) -> None:
        """A recorder that cannot record switches recording off (the car stays drivable) and
        back on when it can again, if it is still wanted; each change is an event."""
        if problem and self.recording:
            self.recording, self.recording_note = False, problem
            self._new_episode("finished", reason="recording stopped: " + problem)
            self.telemetry.event(
                "recording_stopped", f"recording stopped: {problem}", logging.WARNING,
                reason=problem,
            )  # fmt: skip
        elif not problem and self.recording_note is not None:
            self.recording_note = None
            if self.recording_wanted and not self.recording:
                self.recording = True
                self._new_episode("finished", reason="recording resumed")
                self.telemetry.event("recording_resumed", "recording resumed")
        elif problem:
            self.recording_note = problem

    def _fault(self, name: str, reason: str) -> None:
        if self.faults.raise_(name, reason):
            self.drivetrain.stop()
            self._end_test(f"fault {name}: {reason}")
            if self.mode is not Mode.PAUSED:
                self.telemetry.event("safety_stop", reason, logging.WARNING, fault=name)

    def _clear(self, name: str) -> None:
        if self.faults.clear(name) and self.mode is not Mode.PAUSED:
            self.telemetry.event("fault_cleared", f"{name} cleared", fault=name)

    def _latch(self, name: str, reason: str) -> None:
        self.drivetrain.stop()
        self._end_test(f"fault {name}: {reason}")
        if self.faults.raise_(name, reason):
            self.telemetry.event(
                "safety_stop",
                f"{reason}; paused until an operator re-arms",
                logging.ERROR,
                fault=name,
            )
            if self.mode is not Mode.PAUSED:
                self.mode = Mode.PAUSED
                self._new_episode("aborted", reason=name)

    def _overran(self, now: float, deadline: float, period: float) -> None:
        self.stats.overrun_streak += 1
        self.stats.missed_periods += int((now - deadline) // period) + 1
        if self.stats.overrun_streak >= self.settings.max_overruns:
            self._latch(
                "overrun",
                f"loop overran its {period * 1000:.0f} ms period "
                f"{self.stats.overrun_streak} times in a row",
            )

    def _feed_watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval
        if interval and now - self._last_watchdog >= interval / 3:
            self.notifier.watchdog()
            self._last_watchdog = now

    def _maybe_status(self, now: float) -> None:
        # The rate over the last status interval (over the time since the start, at first).
        mark_t, mark_n = self._rate_mark
        if now - mark_t >= min(0.25, self.settings.period * 5) or not self.stats.rate_hz:
            self.stats.rate_hz = (self.stats.periods + 1 - mark_n) / max(
                now - mark_t, self.settings.period
            )
        if now - self._last_status < self.settings.status_interval:
            return
        self._rate_mark = (now, self.stats.periods + 1)
        self._last_status = now
        status = self.status()
        status.update(self._cpu_status())
        if self.recorder is not None:
            s = self.recorder.stats
            status["recorder"] = {
                "written": s.steps_written,
                "dropped": s.steps_dropped,
                "queue": s.queue_depth,
            }
        self.telemetry.publish("status", {"t": time.time(), **status})
        faults = ",".join(status["faults"]) or "ok"
        self.notifier.status(
            f"{status['mode']} ep {self.episode} {status['rate_hz']} Hz faults: {faults}"
        )

    def _cpu_status(self) -> dict[str, float | None]:
        """CPU time per period since the last status (on the loop thread, once a status
        interval: two clock reads)."""
        cpu, loop_cpu, n = self._cpu_mark
        now_cpu, now_loop, periods = time.process_time(), time.thread_time(), self.stats.periods + 1
        if periods > n:
            per = 1000 / (periods - n)
            self.stats.cpu_ms_per_period = round((now_cpu - cpu) * per, 3)
            self.stats.loop_cpu_ms_per_period = round((now_loop - loop_cpu) * per, 3)
        self._cpu_mark = (now_cpu, now_loop, periods)
        return {
            "cpu_ms_per_period": self.stats.cpu_ms_per_period,
            "loop_cpu_ms_per_period": self.stats.loop_cpu_ms_per_period,
        }

    # -- commands (on the loop thread) --------------------------------------------

    def _set_mode(self, mode: Mode) -> dict[str, Any]:
        self._end_test(f"mode set to {mode}")
        rearmed = self.faults.rearm()
        old, self.mode = self.mode, mode
        if mode is Mode.PAUSED:
            self.drivetrain.stop()
        if old is not mode or rearmed:
            msg = f"{old} -> {mode}" + (  # logged and shown as "mode: paused -> auto"
                f", re-armed after {', '.join(rearmed)}" if rearmed else ""
            )
            self.telemetry.event("mode", msg, mode=str(mode), previous=str(old), rearmed=rearmed)
        return {"mode": str(mode), "previous": str(old), "rearmed": rearmed}

    def _set_recording(self, on: bool) -> dict[str, Any]:
        if on and self.recorder is None:
            raise RuntimeError("recording is not configured (no recording path)")
        self.recording_wanted = on
        if on and self.recording_note is not None:
            if hasattr(self.recorder, "resume"):
                self.recorder.resume()  # a failed writer tries again; it reports how it went
            raise RuntimeError(f"cannot record now: {self.recording_note}")
        if on != self.recording:
            self.recording = on
            # A recorded episode always starts from a reset state, as training will replay it.
            self._new_episode("finished", reason="recording " + ("started" if on else "stopped"))
        return {"recording": self.recording, "episode": self.episode}

    def _swap_policy(self, policy: StepPolicy, source: str = "", file: str = "") -> dict[str, Any]:
        old = self.policy
        self.policy = policy
        self.policy_source = source or self.policy_source
        self.policy_file = file
        previous = old.version if old else None
        self.telemetry.event(
            "policy_loaded",
            f"policy {previous} -> {policy.version}",
            version=policy.version,
            previous=previous,
            sha256=policy.sha256,
        )
        self._new_episode("finished", reason="policy swapped")
        if self.loader is not None:
            self.loader.dispose(old)  # its interpreter is freed there, not here
        return {"version": policy.version, "previous": previous, "episode": self.episode}

    # -- the link process's messages (already validated there) ---------------------

    def _on_link(self, msg: Any) -> None:
        if isinstance(msg, ipc.Drive):
            try:
                self.drive(msg.action)
            except ValueError as exc:
                log.error("link forwarded a bad drive command: %s", exc)
        elif isinstance(msg, ipc.Command):
            self._link_command(msg)
        elif isinstance(msg, ipc.Hello) and self.link.hellos > 1:
            self.telemetry.event(
                "process_restarted", f"link process restarted (pid {msg.pid})",
                role="link", pid=msg.pid,
            )  # fmt: skip

    def _link_command(self, cmd: ipc.Command) -> None:
        a = cmd.args
        try:
            if cmd.kind == "swap_policy":
                self._load_policy(cmd.token, a)
                return  # answered when the loader is done
            if cmd.kind in CALIBRATE_COMMANDS:
                self._calibrate_command(cmd)
                return  # answered by it (a motor test: when it ends)
            if cmd.kind == "set_mode":
                result = self._set_mode(Mode(a["mode"]))
            elif cmd.kind == "reset_episode":
                result = self._new_episode("finished", reason="reset requested")
            elif cmd.kind == "end_episode":
                outcome, reward = a["outcome"], a.get("final_reward")
                result = self._new_episode(outcome, f"episode {outcome}", final_reward=reward)
            elif cmd.kind == "record":
                result = self._set_recording(bool(a["on"]))
            elif cmd.kind == "policy_source":
                result = self._set_policy_source(a)
            elif cmd.kind == "reserve_episode":
                result = self._reserve_episode()
            else:
                raise ValueError(f"unknown command {cmd.kind!r}")
        except RuntimeError as exc:  # not possible now (e.g. recording not configured)
            self.link.reply(cmd.token, code="refused", message=str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            self.link.reply(cmd.token, code="invalid", message=f"{type(exc).__name__}: {exc}")
        else:
            self.link.reply(cmd.token, result)

    # -- calibrate: the motor test and calibration (malpi.daemon.control.calibrate) -------

    def _calibrate_command(self, cmd: ipc.Command) -> None:
        token, a = cmd.token, cmd.args

        def reply(result: dict[str, Any] | None, code: str = "", message: str = "") -> None:
            self.link.reply(token, result, code=code, message=message)

        self._calibrate(cmd.kind, a, reply, lambda *r: self.submit(lambda: reply(*r)))

    def _calibrate(self, kind: str, a: dict[str, Any], reply: Callable, later: Callable) -> None:
        """Carry out a calibration command; ``reply`` on this thread, ``later`` from another."""
        cal = self.calibrator
        try:
            if cal is None:
                raise CalibrationError("refused", "this daemon has no calibration")
            paused = self.mode is Mode.PAUSED
            if kind == "calibration":
                reply(cal.read())
            elif kind == "motor_test":  # answered when it ends
                latched = [n for n in self.faults.snapshot() if n in LATCHED]
                power, seconds = float(a["power"]), float(a["seconds"])
                cal.start_test(str(a["output"]), power, seconds, paused, latched, reply)
            elif kind == "set_calibration":  # answered once the overlay is written
                cal.set(str(a["key"]), float(a["value"]), paused, later)
            else:
                raise CalibrationError("invalid", f"unknown calibration command {kind!r}")
        except CalibrationError as exc:
            reply(None, exc.code, str(exc))

    def calibrate(self, kind: str, **args: Any) -> Future:
        """In-process: a calibration command (``calibration``, ``motor_test`` with output,
        power, seconds, ``set_calibration`` with key, value); the Future holds its result dict
        (a motor test's once it ends) or raises CalibrationError."""
        future: Future = Future()

        def reply(result: dict[str, Any] | None, code: str = "", message: str = "") -> None:
            if future.set_running_or_notify_cancel():
                if code:
                    future.set_exception(CalibrationError(code, message))
                else:
                    future.set_result(result)

        self.submit(lambda: self._calibrate(kind, args, reply, reply))
        return future

    def _drove_since(self, t: float) -> bool:
        operator = self._operator
        return operator is not None and operator.received >= t

    def _end_test(self, why: str) -> None:
        if self.calibrator is not None:
            self.calibrator.end_test(why)

    def _reserve_episode(self) -> dict[str, Any]:
        """An episode id no episode of this daemon will get: the link's, for the new episode a
        cut of a recorded one makes (ids are chosen here; the recorder only writes them)."""
        reserve = getattr(self.recorder, "reserve_episode_id", None)
        if reserve is None:
            raise RuntimeError("this daemon records no episodes")
        return {"episode": reserve()}

    def _set_policy_source(self, a: dict[str, Any]) -> dict[str, Any]:
        """The link's word after it changed the policy store (a keep, a rollback): where the
        running policy comes from now (``source``, ``file``; only if it still runs the policy
        ``sha256``) and what boots (``boot``). Bookkeeping only: nothing about driving changes."""
        if "source" in a and (self.policy is None or self.policy.sha256 != a.get("sha256")):
            raise RuntimeError("the running policy is not the one the link meant")
        boot = BootPolicy(**a["boot"]) if "boot" in a else self.boot_policy
        if "source" in a:
            self.policy_source, self.policy_file = str(a["source"]), str(a.get("file", ""))
        self.boot_policy = boot
        if self.link is not None:  # before the reply: a status asked after it is current
            self.link.send_state()
        return {"policy_source": self.policy_source, "boot_policy_version": boot.version}

    def _load_policy(self, token: int, args: dict[str, Any]) -> None:
        if self.loader is None:
            raise RuntimeError("this daemon cannot load policies")

        def done(policy: StepPolicy | None, error: str) -> None:  # on the loader's thread
            if policy is None:
                self.submit(lambda: self.link.reply(token, code="rejected", message=error))
            else:
                self.submit(
                    lambda: self.link.reply(
                        token, self._swap_policy(policy, args["source"], args.get("file", ""))
                    )
                )

        self.loader.build(args, done)

    def _new_episode(
        self, end_outcome: str | None, reason: str, final_reward: float | None = None
    ) -> dict[str, Any]:
        ended = None
        if self.recorder is not None and end_outcome is not None:
            ended = self.recorder.end_episode(end_outcome, final_reward)
        if self.policy is not None:
            self.policy.reset()
        self.prev_action = NO_ACTION
        self.step_index = 0
        self.episode += 1
        if self.recording and self.recorder is not None:
            self.recorder.start_episode(
                EpisodeMeta(
                    self.actions,
                    config=self.config,
                    policy_version=self.policy.version if self.policy else None,
                    notes=reason,
                )
            )
        if reason != "boot":
            self.telemetry.event(
                "episode_reset", f"episode {self.episode} ({reason})", episode=self.episode
            )
        return {"episode": self.episode, "ended": ended}

    # -- process-level plumbing -----------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        old = {}
        if threading.current_thread() is not threading.main_thread():
            return old
        # SIGHUP too: a terminal that goes away (an ssh session dropped) stops the car cleanly,
        # like SIGTERM and Ctrl-C, rather than killing the process with the motors running.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            old[sig] = signal.signal(sig, lambda s, _f: self.request_stop(signal.Signals(s).name))
        return old

    def _thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        self.drivetrain.stop()
        self._thread_errors.put(
            ("thread_crash", f"thread {name} crashed: {args.exc_type.__name__}: {args.exc_value}")
        )
        log.error(
            "thread %s crashed", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
        )

    def _shutdown(self) -> None:
        self.drivetrain.stop()
        reason = self._stop_reason or "stopped"
        self._end_test(f"the daemon is stopping ({reason})")
        self.notifier.stopping(f"stopping: {reason}")
        self.telemetry.event(
            "stopped", f"control loop stopped ({reason}); motors stopped", reason=reason
        )
        self._stop.set()
        self._running = False
        if self.recorder is not None:
            self.recorder.end_episode("finished" if not reason.startswith("crash") else "aborted")
        while True:  # fail what is still queued rather than leave callers waiting
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                future.set_exception(DaemonStopped("the control loop stopped"))
