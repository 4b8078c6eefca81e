"""``malpi bench link``: the link's costs, measured over real sockets on loopback.

1. Command round trip (``ping`` and ``drive``), median and p99, plain and with CURVE,
   against a daemon driving on the simulator.
2. Telemetry throughput: ``step`` messages and ``frame`` messages (JPEG of a
   simulator frame) through the PUB socket to one subscriber, messages/s and MB/s.
3. Hot reload: bundles loaded over the link while the policy drives in auto
   mode; the missed periods and the longest period while loads were under way.
   The default-size policy and the seed post's 5.9 M-parameter one (the worst
   case: a ~50 MB bundle) when TensorFlow is there to make it.
4. Pulling the recording (``malpi pull``, from another process) while the
   policy drives: steps/s and MB/s, and the missed and longest periods meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from malpi.bench.daemon import BenchDaemon, Watcher, hogs

log = logging.getLogger(__name__)


def run(
    rate_hz: float = 30.0,
    requests: int = 2000,
    reloads: int = 5,
    json_path: str | None = None,
    seed_size: bool = True,
    policy: str | None = None,
    pull_drive_s: float = 20.0,
    busy: int = 0,
) -> dict[str, Any]:
    """Run it all; ``policy``: a bundle to drive and reload (default: the daemon's usual policy);
    ``pull_drive_s``: seconds driven (and recorded) before the pull; ``busy``: CPU hogs beside."""
    from malpi.bench.loop import daemon_overrides
    from malpi.config import load_config

    result: dict[str, Any] = {"rate_hz": rate_hz, "busy": busy}
    with tempfile.TemporaryDirectory() as tmp, hogs(busy):
        tmp_path = Path(tmp)
        base = daemon_overrides(tmp_path, rate_hz)
        files = _bundle_files(tmp_path, load_config(None, base), seed_size, policy)
        # The daemon boots from the first bundle's file, as a robot boots from its store.
        base.update(_policy_overrides(files[0][1]))
        bundles = [(name, path.read_bytes()) for name, path in files]
        with _curve_daemon(base, tmp_path) as (curve, keys):
            result.update(_round_trips(curve, requests, "rtt_curve", keys))
        daemon = BenchDaemon(base)
        watcher = Watcher(daemon).start()
        try:
            result.update(_round_trips(daemon, requests, "rtt"))
            result.update(_throughput(load_config(None, base)))
            result.update(_reloads(daemon, watcher, bundles, reloads, rate_hz))
            pulled = tmp_path / "pulled.sqlite"
            result.update(_pull(daemon, watcher, pulled, rate_hz, pull_drive_s))
            with daemon.client() as c:
                result["policy"] = c.status().policy_version
            result["clients_on_cpus"] = daemon.client_cpus
        finally:
            watcher.stop()
            daemon.stop()
    print(format_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def _policy_overrides(path: str) -> dict[str, Any]:
    """Drive ``path``, with the camera sized to fit it."""
    from malpi.policy.bundle import PolicyBundle

    spec = PolicyBundle.load(path, check_models=False).spec
    return {
        "policy.path": str(path),
        "camera.height": spec.image_height,
        "camera.width": spec.image_width,
    }


def _bundle_files(tmp: Path, config, seed_size: bool, policy: str | None) -> list[tuple[str, Path]]:
    """The bundles to reload: ``policy`` or the daemon's usual one, and the seed-size one.

    Made in a subprocess when TensorFlow is needed, so that the daemon's process stays as it
    is on the robot: without TensorFlow (whose heap makes garbage collection pauses longer).
    """
    import subprocess
    import sys

    from malpi.daemon.control.build import load_policy_bundle

    out: list[tuple[str, Path]] = []
    if policy:
        out.append(("default", Path(policy)))
    elif config.policy.path or _store_or_installed(config):
        bundle, _ = load_policy_bundle(config)
        out.append(("default", bundle.save(tmp / "default.malpi")))
    wanted = [] if out else ["default"]
    wanted += ["seed"] if seed_size else []
    if wanted:
        h, w = config.camera.height, config.camera.width
        code = f"from malpi.bench.link import _make; _make({str(tmp)!r}, {h}, {w}, {wanted!r})"
        made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if made.returncode != 0:
            log.warning("no %s bundle (needs TensorFlow): %s", wanted, made.stderr[-500:])
        out += [(n, tmp / f"{n}.malpi") for n in wanted if (tmp / f"{n}.malpi").is_file()]
    if not out:
        raise RuntimeError("no policy bundle to drive: give --policy FILE, or install TensorFlow")
    return out


def _store_or_installed(config) -> bool:

    from malpi.policy.store import PolicyStore, shipped_policy

    shipped = shipped_policy()
    return PolicyStore(config.policy.store).current() is not None or shipped.is_file()


def _make(directory: str, height: int, width: int, names: list[str]) -> None:
    """(In a subprocess, with TensorFlow) untrained bundles: the default and the seed architecture."""
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy
    from malpi.policy.spec import DEFAULT_SPEC, SEED_SPEC, PolicySpec

    for name in names:
        base = DEFAULT_SPEC if name == "default" else SEED_SPEC
        spec = PolicySpec.from_dict(
            {**base.to_dict(), "image_height": height, "image_width": width}
        )
        provenance = {"made_by": f"malpi bench link ({name}, untrained)"}
        bundle = make_bundle(build_policy(spec, seed=0), DEFAULT_ACTIONS, provenance=provenance)
        bundle.save(Path(directory) / f"{name}.malpi")


def _pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def _round_trips(daemon, n: int, prefix: str, keys: dict | None = None) -> dict[str, Any]:
    from malpi.operator.client import RobotClient

    client = RobotClient(
        command=daemon.command, telemetry=daemon.telemetry, insecure=keys is None, **(keys or {})
    )
    try:
        for _ in range(100):  # warm up: connect, handshake, caches
            client.ping()
        out: dict[str, Any] = {}
        for name, call in (("ping", client.ping), ("drive", lambda: client.drive(None))):
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1000)
            out[f"{prefix}_{name}_median_ms"] = _pct(times, 50)
            out[f"{prefix}_{name}_p99_ms"] = _pct(times, 99)
        out[f"{prefix}_median_ms"] = out[f"{prefix}_ping_median_ms"]
        out[f"{prefix}_p99_ms"] = out[f"{prefix}_ping_p99_ms"]
        return out
    finally:
        client.close()


@contextlib.contextmanager
def _curve_daemon(base: dict[str, Any], tmp: Path):
    """The same daemon with CURVE on, one client authorised, nothing recorded."""
    from malpi.protocol.keys import authorize, init_keys

    keys = tmp / "keys"
    server = init_keys(keys, "server")
    client = init_keys(tmp / "client-keys", "client")
    authorize(str(client.path), keys / "authorized")
    daemon = BenchDaemon(
        {**base, "link.curve": True, "link.keys_dir": str(keys), "recording.path": ""}
    )
    try:
        yield (
            daemon,
            {"server_key": server.path, "client_key": tmp / "client-keys/client.key_secret"},
        )
    finally:
        daemon.stop()


def _throughput(config, seconds: float = 1.5) -> dict[str, Any]:
    """Messages/s and MB/s from the link's publisher to one subscriber, for step- and frame-sized
    messages (a simulator frame as JPEG)."""
    import dataclasses

    import zmq

    from malpi.daemon.link.publisher import TelemetryPublisher
    from malpi.protocol import schema
    from malpi.recorder.codec import encode_jpeg
    from malpi.sim.render import CameraSpec
    from malpi.sim.world import World

    link = dataclasses.replace(config.link, telemetry_hwm=10000, curve=False)
    world = World(1000, camera=CameraSpec(height=config.camera.height, width=config.camera.width))
    image = world.render()
    jpeg = encode_jpeg(image, link.frame_jpeg_quality)
    frame_body = schema.encode(
        schema.FrameMsg(
            v=1,
            t=time.time(),
            index=0,
            episode=1,
            step=0,
            width=image.shape[1],
            height=image.shape[0],
            encoding="jpeg",
            data=jpeg,
        )
    )
    step = {
        "t": time.time(),
        "episode": 1,
        "step": 0,
        "mode": "auto",
        "action": 2,
        "source": "policy",
        "probs": [0.1, 0.2, 0.4, 0.2, 0.1],
        "value": 0.5,
        "faults": [],
        "latency_ms": {"commands": 0.01, "inference": 0.3, "frame_to_motor": 20.0},
    }
    out: dict[str, Any] = {}
    for name, send in (
        ("step", lambda p: p.publish("step", step)),
        ("frame", lambda p: p._send(b"frame", frame_body)),
    ):
        pub = TelemetryPublisher(link)
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 10000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub.endpoint)
        time.sleep(0.3)  # let the subscription reach the publisher
        stop = threading.Event()

        def publish(pub=pub, send=send, stop=stop):
            while not stop.is_set():
                for _ in range(100):
                    send(pub)

        sender = threading.Thread(target=publish, daemon=True)
        received = nbytes = 0
        sender.start()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if sub.poll(100):
                frames = sub.recv_multipart()
                received += 1
                nbytes += len(frames[0]) + len(frames[1])
        elapsed = time.perf_counter() - t0
        stop.set()
        sender.join(5)
        sub.close(0)
        ctx.term()
        pub.close()
        out[f"telemetry_{name}_msgs_per_s"] = round(received / elapsed)
        out[f"telemetry_{name}_mb_per_s"] = round(nbytes / elapsed / 1e6, 2)
        out[f"telemetry_{name}_bytes"] = round(nbytes / max(received, 1))
    return out


def _reloads(daemon, watcher, bundles, reloads: int, rate_hz: float) -> dict[str, Any]:
    """Bundles pushed from another process (as from the trainer's machine) while driving in auto."""
    import subprocess
    import sys

    if not bundles:
        return {"reload_missed_periods": None, "reload_max_period_ms": None, "reloads": 0}
    files = []
    tmp = Path(tempfile.mkdtemp(prefix="malpi-bench-"))
    for name, data in bundles:
        # Each bundle and a twin of the next version, loaded in turn: every load is a real swap
        # (pushing the bundle that runs changes nothing). Copies: the originals stay put.
        pair = [tmp / f"{name}-twin.malpi", tmp / f"{name}.malpi"]
        pair[0].write_bytes(_twin(data))
        pair[1].write_bytes(data)
        files.append((name, pair, len(data)))
    pusher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from malpi.bench.link import _pusher; _pusher({daemon.command!r})",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    per_bundle: dict[str, Any] = {}
    windows: list[tuple[float, float]] = []
    by_name: dict[str, list[tuple[float, float]]] = {}
    try:
        with daemon.client() as client:
            client.set_mode("auto")
            pusher.stdin.write("ready\n")
            pusher.stdin.flush()
            pusher.stdout.readline()  # the pusher has started and connected
            time.sleep(0.5)
            # As long as the loads will take, without them: the machine's own noise.
            quiet_s = max(2.0, reloads * len(files) * 0.6)
            missed_before = client.status().missed_periods
            quiet = (time.monotonic(), time.monotonic() + quiet_s)
            time.sleep(quiet_s)
            missed_quiet = client.status().missed_periods
            for name, pair, size in files:
                load_ms = []
                for k in range(reloads):
                    path = pair[k % 2]
                    t0 = time.monotonic()
                    pusher.stdin.write(f"{path}\n")
                    pusher.stdin.flush()
                    reply = json.loads(pusher.stdout.readline())
                    windows.append((t0, time.monotonic()))
                    by_name.setdefault(name, []).append(windows[-1])
                    if "error" in reply:
                        raise RuntimeError(f"loading {name} failed: {reply['error']}")
                    if reply["version"] == reply["previous"]:  # a no-op would measure nothing
                        raise RuntimeError(f"loading {name} did not swap: {reply['version']} ran")
                    load_ms.append(reply["load_ms"])
                    time.sleep(0.3)
                per_bundle[name] = {"bytes": size, "load_ms_median": _pct(load_ms, 50)}
            time.sleep(0.2)
            missed = client.status().missed_periods - missed_quiet
    finally:
        pusher.stdin.close()
        pusher.wait(30)
        for _, pair, _ in files:
            for path in pair:
                path.unlink(missing_ok=True)
        tmp.rmdir()

    def periods_in(spans):
        slack = 2 / rate_hz
        return [
            lat["period"]
            for t, lat in watcher.steps
            if "period" in lat and any(a <= t <= b + slack for a, b in spans)
        ]

    during, baseline = periods_in(windows), periods_in([quiet])
    for name, spans in by_name.items():
        longest = periods_in(spans)
        per_bundle[name]["max_period_ms"] = round(float(max(longest)), 3) if longest else None
    return {
        "reloads": len(windows),
        "reload_missed_periods": int(missed),
        "reload_max_period_ms": round(float(max(during)), 3) if during else None,
        "reload_period_p99_ms": _pct(during, 99),
        "quiet_max_period_ms": round(float(max(baseline)), 3) if baseline else None,
        "quiet_missed_periods": int(missed_quiet - missed_before),
        "quiet_seconds": round(quiet_s, 1),
        "reload_bundles": per_bundle,
    }


def _pull(daemon, watcher, dest: Path, rate_hz: float, drive_s: float) -> dict[str, Any]:
    """Everything recorded so far, pulled by another process while the policy drives."""
    import subprocess
    import sys

    with daemon.client() as client:
        client.set_mode("auto")
        time.sleep(drive_s)  # a longer episode to pull
        client.end_episode("finished")  # ended, so that it can be pulled
        time.sleep(1.0)  # its end is written
        missed_before = client.status().missed_periods
        t0 = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json; from malpi.operator.client import RobotClient; "
                "from malpi.operator.pull import pull_episodes; "
                f"c = RobotClient(command={daemon.command!r}, insecure=True); "
                f"r = pull_episodes(c, {str(dest)!r}, wait=10); "
                "print(json.dumps([sum(p.steps for p in r.pulled), sum(p.bytes for p in r.pulled), "
                "len(r.pulled), r.seconds])); c.close()",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        t1 = time.monotonic()
        missed = client.status().missed_periods - missed_before
    steps, size, episodes, seconds = json.loads(out.stdout.strip().splitlines()[-1])
    during = [
        lat["period"] for t, lat in watcher.steps if "period" in lat and t0 <= t <= t1 + 2 / rate_hz
    ]
    return {
        "pull_episodes": episodes,
        "pull_steps": steps,
        "pull_steps_per_s": round(steps / seconds, 1) if seconds else None,
        "pull_mb_per_s": round(size / 1e6 / seconds, 2) if seconds else None,
        "pull_missed_periods": int(missed),
        "pull_max_period_ms": round(float(max(during)), 3) if during else None,
    }


def _twin(data: bytes) -> bytes:
    """The same policy as the next version (a new label), without TensorFlow."""
    from malpi.policy.bundle import PolicyBundle

    b = PolicyBundle.from_bytes(data, check_models=False)
    return PolicyBundle.create(
        b.spec,
        b.actions,
        b.weights,
        b.tflite_float,
        b.tflite_dynamic,
        b.manifest.get("provenance", {}),
        tflite_integer=b.tflite_integer,
        version=b.version + 1,
        parent=b.id,
    ).to_bytes()


def _pusher(endpoint: str) -> None:
    """The bench's pusher process: loads each bundle file named on stdin, prints the reply."""
    import sys

    from malpi.operator.client import RobotClient, RobotError

    cache: dict[str, bytes] = {}
    with RobotClient(command=endpoint, insecure=True, timeout=300) as client:
        client.ping()
        for line in sys.stdin:
            path = line.strip()
            if path == "ready":
                print("{}", flush=True)
                continue
            if path not in cache:
                cache[path] = Path(path).read_bytes()
            data = cache[path]
            try:
                reply = client.load_policy(data, timeout=300)
                out = {"load_ms": reply.load_ms, "version": reply.version}
                out["previous"] = reply.previous
            except RobotError as exc:
                out = {"error": str(exc)}
            print(json.dumps(out), flush=True)


def format_table(r: dict[str, Any]) -> str:
    def f(v):
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        f"Link on loopback, malpi drive on the simulator at {r['rate_hz']:g} Hz (policy "
        f"{r.get('policy')}), {r.get('busy', 0)} CPU hog(s) beside it on any core; the "
        f"benchmark's clients on CPUs {r.get('clients_on_cpus') or 'any'}",
        f"{'command round trip':<28}{'median ms':>12}{'p99 ms':>10}",
    ]
    for prefix, label in (("rtt", "plain"), ("rtt_curve", "CURVE")):
        for cmd in ("ping", "drive"):
            lines.append(
                f"{cmd + ' (' + label + ')':<28}{f(r.get(f'{prefix}_{cmd}_median_ms')):>12}"
                f"{f(r.get(f'{prefix}_{cmd}_p99_ms')):>10}"
            )
    lines.append(f"{'telemetry to one subscriber':<28}{'msgs/s':>12}{'MB/s':>10}{'bytes':>8}")
    for name in ("step", "frame"):
        lines.append(
            f"{name:<28}{f(r.get(f'telemetry_{name}_msgs_per_s')):>12}"
            f"{f(r.get(f'telemetry_{name}_mb_per_s')):>10}{f(r.get(f'telemetry_{name}_bytes')):>8}"
        )
    lines.append(
        f"hot reload while driving: {r.get('reloads')} loads, missed periods "
        f"{f(r.get('reload_missed_periods'))}, longest period {f(r.get('reload_max_period_ms'))} ms "
        f"(target {1000 / r['rate_hz']:.1f} ms), p99 {f(r.get('reload_period_p99_ms'))} ms"
    )
    lines.append(
        f"  the same {f(r.get('quiet_seconds'))} s without loads: missed periods "
        f"{f(r.get('quiet_missed_periods'))}, longest period {f(r.get('quiet_max_period_ms'))} ms"
    )
    for name, b in (r.get("reload_bundles") or {}).items():
        lines.append(
            f"  {name} bundle {b['bytes'] / 1e6:.1f} MB: validated and built in "
            f"{f(b['load_ms_median'])} ms (median), off the control thread; "
            f"longest period {f(b.get('max_period_ms'))} ms"
        )
    lines.append(
        f"pulling the recording while driving: {r.get('pull_episodes')} episodes, "
        f"{r.get('pull_steps')} steps at {f(r.get('pull_steps_per_s'))} steps/s "
        f"({f(r.get('pull_mb_per_s'))} MB/s); missed periods {f(r.get('pull_missed_periods'))}, "
        f"longest period {f(r.get('pull_max_period_ms'))} ms"
    )
    return "\n".join(lines)
