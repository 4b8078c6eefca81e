"""Build the daemon's parts from a validated configuration, and start its child processes.

The order matters for safety: the configuration is validated before this
module is called; the drivetrain is built first, so that the pins are
claimed and driven to stop before anything else happens (after a crash or a
kill the last process may have left them running); then the policy, the
camera, the channels and the children; every part built so far is closed if
a later one fails.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from malpi.actions import ActionTable
from malpi.calibration import apply_overlay, overlay_path
from malpi.camera.base import Camera
from malpi.camera.factory import camera_from_config
from malpi.config import Config
from malpi.daemon import ipc
from malpi.daemon.control.calibrate import Calibrator
from malpi.daemon.control.children import ChildProcess, Supervisor
from malpi.daemon.control.loader import PolicyLoader
from malpi.daemon.control.loop import ControlLoop, LoopSettings
from malpi.daemon.control.notify import Notifier
from malpi.daemon.control.ports import LinkPort, RecorderPort
from malpi.daemon.control.telemetry import Telemetry
from malpi.drivetrain.base import Drivetrain
from malpi.drivetrain.factory import drivetrain_from_config
from malpi.policy.bundle import PolicyBundle
from malpi.policy.runtime import BACKEND_NAMES, StepPolicy, resolve_backend, write_runtime_model
from malpi.policy.store import (
    SHIPPED_SOURCE,
    BootPolicy,
    PolicyStore,
    kept_source,
    path_source,
    shipped_policy,
)

log = logging.getLogger(__name__)


@dataclass
class Robot:
    """Everything the daemon runs, and how to close it all."""

    config: Config
    loop: ControlLoop
    camera: Camera
    drivetrain: Drivetrain
    recorder: RecorderPort | None
    telemetry: Telemetry
    sim_world: Any = None  # the RealTimeWorld when running on the simulator
    _closers: list = field(default_factory=list)
    policy_source: str = ""  # where the boot policy came from (load_policy_bundle)
    link: LinkPort | None = None
    supervisor: Supervisor | None = None
    runtime_dir: Path | None = None

    @property
    def command_endpoint(self) -> str | None:
        """Where the link process serves commands (it says so when it starts)."""
        return self.link.hello.command_endpoint if self.link and self.link.hello else None

    @property
    def telemetry_endpoint(self) -> str | None:
        return self.link.hello.telemetry_endpoint if self.link and self.link.hello else None

    def close(self) -> None:
        self.drivetrain.stop()
        _close_all(self._closers)


def load_policy_bundle(config: Config) -> tuple[PolicyBundle | None, str]:
    """The policy to boot with, in this order:

    1. ``policy.path``, when set;
    2. the policy store's boot policy (the last one kept: ``malpi push --keep``);
    3. the shipped default policy;
    4. a fresh untrained one (needs TensorFlow).

    Returns (bundle or None, where it came from). A configured path that fails
    validation is an error: the daemon must not silently drive another policy.
    A stored policy that fails validation is skipped with a warning.
    """
    bundle, source, _ = _load_boot(config)
    return bundle, source


def _load_boot(config: Config) -> tuple[PolicyBundle | None, str, str]:
    """:func:`load_policy_bundle`, and the bundle file it read ("" if none)."""
    expect = config.bundle_expectations()
    if config.policy.path:
        path = Path(config.policy.path).expanduser()
        return PolicyBundle.load(path, **expect), path_source(path), str(path)
    store = PolicyStore(config.policy.store)
    current = store.current()
    if current is not None:
        try:
            bundle = PolicyBundle.load(store.path(current), **expect)
            return bundle, kept_source(current), str(store.path(current))
        except ValueError as exc:
            log.warning("the policy store's current policy is unusable, skipping it: %s", exc)
    shipped = shipped_policy()
    if shipped.is_file():
        try:
            bundle = PolicyBundle.from_bytes(shipped.read_bytes(), **expect)
            return bundle, SHIPPED_SOURCE, str(shipped)
        except ValueError as exc:
            log.warning("the shipped default policy does not fit this configuration: %s", exc)
    try:
        from malpi.policy.export import make_bundle
        from malpi.policy.model import build_policy
        from malpi.policy.spec import DEFAULT_SPEC, PolicySpec
    except ImportError:
        return None, "none (no policy configured and TensorFlow is not installed to make one)", ""
    spec = PolicySpec.from_dict(
        {
            **DEFAULT_SPEC.to_dict(),
            "image_height": config.camera.height,
            "image_width": config.camera.width,
            "num_actions": len(config.action_table),
        }
    )
    bundle = make_bundle(
        build_policy(spec, seed=0),
        config.action_table,
        provenance={"made_by": "malpi drive (fresh, untrained)"},
    )
    return bundle, "fresh untrained policy", ""


class _SimEpisodes:
    """A telemetry sink: each new episode restarts the simulator's lap count."""

    def __init__(self, sim_world: Any) -> None:
        self.sim_world = sim_world

    def __call__(self, topic: str, payload: dict[str, Any]) -> None:
        if topic == "event" and payload.get("kind") == "episode_reset":
            self.sim_world.new_episode()


def build_sim_world(config: Config) -> Any:
    from malpi.sim.car import CarParams
    from malpi.sim.realtime import RealTimeWorld
    from malpi.sim.render import CameraSpec

    car = CarParams(drivetrain=config.sim.car, noise=config.sim.noise)
    camera = CameraSpec(height=config.camera.height, width=config.camera.width)
    return RealTimeWorld(
        track_seed=config.sim.track_seed, car=car, camera=camera, physics_hz=config.sim.physics_hz
    )


def build_robot(
    config: Config,
    pin_factory: Any = None,
    notifier: Notifier | None = None,
    stage_history: list | None = None,
    debug: bool = False,
    child_cpus: set[int] | None = None,
) -> Robot:
    """Build every part and start the child processes (on ``child_cpus``, if given); on any
    failure close what was built."""
    closers: list = []
    # The calibration kept over the link (malpi.calibration): before anything uses the values.
    overlay = overlay_path(config)
    config, calibrated = apply_overlay(config, overlay)
    if calibrated:
        log.info(
            "calibration from %s: %s",
            overlay,
            ", ".join(f"{k} = {v}" for k, v in calibrated.items()),
        )
    try:
        ratio = config.camera.fps / config.loop.rate_hz
        if config.loop.trigger == "frame" and abs(ratio - round(ratio)) > 0.01:
            log.warning(
                "camera.fps %g is not a whole multiple of loop.rate_hz %g: periods start on "
                "frames unevenly spaced (the rate is kept on average); try camera.fps = %g",
                config.camera.fps, config.loop.rate_hz, config.loop.rate_hz * max(1, round(ratio)),
            )  # fmt: skip
        uses_sim = "sim" in (config.camera.backend, config.drivetrain.backend)
        sim_world = build_sim_world(config) if uses_sim else None
        # Motors first: claimed and stopped before anything else can fail or take time.
        drivetrain = drivetrain_from_config(config, sim_world, pin_factory)
        drivetrain.stop()
        closers.append(drivetrain.close)
        runtime_dir = ipc.private_dir()
        closers.append(lambda: shutil.rmtree(runtime_dir, ignore_errors=True))
        policy, boot = boot_policy(config, runtime_dir / "models")
        camera = camera_from_config(config, sim_world)
        camera.start()
        closers.append(camera.close)
        zctx = zmq.Context()
        closers.append(zctx.term)
        children: list[tuple[ChildProcess, Any]] = []
        settings = {"config": config.to_dict(), "runtime_dir": str(runtime_dir), "debug": debug}
        recorder = rec_port = None
        if config.recording.path:
            path = Path(config.recording.path).expanduser()
            rec_port = RecorderPort(zctx, ipc.endpoint(runtime_dir, "recorder"), str(path))
            closers.append(rec_port.close)
            child = ChildProcess(
                "recorder", {**settings, "endpoint": rec_port.endpoint}, child_cpus
            )
            children.append((child, rec_port))
            recorder = rec_port
            if config.reward.enabled:
                from malpi.daemon.control.reward import RewardingRecorder, RewardSource, SimMeter

                # Progress is measurable where the simulator moves the car.
                meter = SimMeter(sim_world) if config.drivetrain.backend == "sim" else None
                recorder = RewardingRecorder(
                    rec_port, RewardSource.from_config(config.reward, meter)
                )
        link = None
        if config.link.enabled:
            link = LinkPort(
                zctx, ipc.endpoint(runtime_dir, "link"), frame_rate_hz=config.link.frame_rate_hz
            )
            closers.append(link.close)
            child = ChildProcess("link", {**settings, "endpoint": link.endpoint}, child_cpus)
            children.append((child, link))
        telemetry = Telemetry()
        if sim_world is not None:  # the simulator counts laps per episode, as the status shows
            telemetry.add_sink(_SimEpisodes(sim_world))
        loop = ControlLoop(
            camera,
            drivetrain,
            ActionTable.from_list(config.actions),
            LoopSettings(
                rate_hz=config.loop.rate_hz,
                max_frame_age=config.safety.max_frame_age_ms / 1000,
                deadman=config.safety.deadman_ms / 1000,
                max_overruns=config.safety.max_overruns,
                trigger=config.loop.trigger,
                camera_fps=config.camera.fps,
            ),
            policy=policy,
            recorder=recorder,
            telemetry=telemetry,
            notifier=notifier,
            record=config.recording.enabled,
            config=config.to_dict(),
            stage_history=stage_history,
            link=link,
            policy_source=boot.source,
        )
        loop.policy_file = boot.file
        loop.boot_policy = boot
        loop.loader = PolicyLoader(
            config.policy.sample,
            config.policy.num_threads,
            loop.period_ended,
        )
        closers.append(loop.loader.close)
        loop.calibrator = Calibrator(config, overlay, drivetrain, telemetry)
        closers.append(loop.calibrator.close)
        supervisor = Supervisor(children, loop.child_failed, lambda: loop.listening_since)
        closers.append(supervisor.stop_all)
        supervisor.start_all()
        return Robot(
            config,
            loop,
            camera,
            drivetrain,
            rec_port,
            telemetry,
            sim_world,
            closers,
            boot.source,
            link,
            supervisor,
            runtime_dir,
        )
    except BaseException:
        _close_all(closers)
        raise


def boot_policy(config: Config, models: Path) -> tuple[StepPolicy | None, BootPolicy]:
    """The policy the daemon boots with: (policy or None, what it is and where it came from)."""
    bundle, source, file = _load_boot(config)
    if bundle is None:
        log.warning("policy: none: %s; auto mode will not drive", source)
        return None, BootPolicy(None, None, source, file)
    c = config.policy
    backend = resolve_backend(bundle, c.backend)
    model = write_runtime_model(bundle, backend, models)
    policy = StepPolicy.from_model_file(
        model,
        bundle.spec,
        bundle.label,
        bundle.sha256,
        backend=backend,
        sample=c.sample,
        num_threads=c.num_threads,
    )
    # What runs and what the next boot runs, said once where everyone looks first; the link
    # changes the second only when asked (a keep, a rollback), and status says it from then on.
    log.info(
        "policy: %s (%s, %s); boots: the same%s",
        bundle.label,
        source,
        BACKEND_NAMES[backend],
        _unused_store(config),
    )
    return policy, BootPolicy(bundle.label, bundle.sha256, source, file)


def _unused_store(config: Config) -> str:
    """A note for the log when policy.path hides a policy kept in the store."""
    if not config.policy.path:
        return ""
    kept = PolicyStore(config.policy.store).current()
    return f" (policy.path is set: {kept.label}, kept in the store, is not used)" if kept else ""


def _close_all(closers: list) -> None:
    for close in reversed(closers):
        try:
            close()
        except Exception:
            log.exception("closing %r failed", close)
    closers.clear()
