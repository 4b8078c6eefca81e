"""``malpi bench ipc``: how to move a control period's step (a frame and a few numbers) between processes.

The daemon's control process hands every step to the recorder process and
telemetry to the link process. What matters is what the *control loop* pays
per message (it must never wait for a reader) and how late the reader sees
it. Four ways, one run, the same messages (a 120x160 RGB frame plus ~200
bytes of step data), a reader process on the other side:

- ``zmq_ipc``: ZeroMQ PUSH/PULL over ``ipc://``, the frame copied into the message;
- ``zmq_ipc_zerocopy``: the same, the frame handed over without a copy;
- ``pipe``: a non-blocking OS pipe, length-prefixed, the writer buffering what the pipe refuses;
- ``shm_ring``: frames written into a shared-memory ring of slots, a ZeroMQ message names the slot.

Each is measured sending at the control rate (30 Hz, what the daemon does)
and as fast as it can (what a backlog looks like).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("zmq_ipc", "zmq_ipc_zerocopy", "pipe", "shm_ring")
FRAME_SHAPE = (120, 160, 3)
META_BYTES = 200
RING_SLOTS = 64
HWM = 64  # messages queued for a slow reader before the writer drops (the recorder's bound)
_HEADER = struct.Struct("<Qd")  # sequence number, send time (time.monotonic, shared by processes)


def run(
    messages: int = 3000, rate_hz: float = 30.0, paced: int = 300, json_path: str | None = None
) -> dict[str, Any]:
    results = {
        kind: {
            "burst": _measure(kind, messages, None),
            "paced": _measure(kind, paced, rate_hz),
        }
        for kind in KINDS
    }
    out = {
        "frame_bytes": int(np.prod(FRAME_SHAPE)),
        "messages": messages,
        "paced": paced,
        "rate_hz": rate_hz,
        "results": results,
    }
    print(format_table(out))
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _measure(kind: str, n: int, rate_hz: float | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="malpi-bench-ipc-") as tmp:
        address = f"ipc://{tmp}/ipc"
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from malpi.bench.ipc import _reader; _reader({kind!r}, {address!r}, {n})",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            send_us, dropped = _writer(kind, address, n, rate_hz, reader)
            latencies = np.array(json.loads(reader.stdout.read() or b"[]"), dtype=np.float64)
        finally:
            reader.kill()
            reader.wait()
    received = len(latencies)
    return {
        "send_us_median": round(float(np.median(send_us)), 1),
        "send_us_p99": round(float(np.percentile(send_us, 99)), 1),
        "send_us_max": round(float(np.max(send_us)), 1),
        "latency_us_median": round(float(np.median(latencies)), 1) if received else None,
        "latency_us_p99": round(float(np.percentile(latencies, 99)), 1) if received else None,
        "received": received,
        "dropped": dropped,
        "sent": n,
    }


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8) for _ in range(min(n, 8))]


def _writer(kind: str, address: str, n: int, rate_hz: float | None, reader) -> np.ndarray:
    import zmq

    frames = _frames(n)
    meta = b"m" * META_BYTES
    costs = np.zeros(n)
    dropped = 0
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.bind(address)
    pipe_w, pending = None, bytearray()
    shm = None
    if kind == "pipe":
        pipe_w = reader.stdin.fileno()
        os.set_blocking(pipe_w, False)
    if kind == "shm_ring":
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(
            create=True,
            size=RING_SLOTS * int(np.prod(FRAME_SHAPE)),
            name=address.rsplit("/", 2)[-2],
        )
        ring = np.ndarray((RING_SLOTS, *FRAME_SHAPE), np.uint8, buffer=shm.buf)
    time.sleep(0.5)  # the reader connects
    period = 1.0 / rate_hz if rate_hz else 0.0
    next_t = time.monotonic()
    for i in range(n):
        frame = frames[i % len(frames)]
        t0 = time.monotonic()
        head = _HEADER.pack(i, t0)
        try:
            if kind == "zmq_ipc":
                sock.send_multipart([head + meta, frame.tobytes()], zmq.NOBLOCK)
            elif kind == "zmq_ipc_zerocopy":
                sock.send_multipart([head + meta, frame], zmq.NOBLOCK, copy=False)
            elif kind == "pipe":
                data = frame.tobytes()
                if len(pending) > HWM * len(data):  # the same bound as the sockets' HWM
                    raise BlockingIOError
                pending += struct.pack("<I", len(head) + len(meta) + len(data)) + head + meta
                pending += data
                with contextlib.suppress(BlockingIOError):
                    del pending[: os.write(pipe_w, pending)]
            else:
                ring[i % RING_SLOTS] = frame
                sock.send(head + meta + struct.pack("<I", i % RING_SLOTS), zmq.NOBLOCK)
        except (zmq.Again, BlockingIOError):
            dropped += 1
        costs[i] = (time.monotonic() - t0) * 1e6
        if period:
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
    while kind == "pipe" and pending:  # finish what the pipe refused, so the reader sees all
        try:
            del pending[: os.write(pipe_w, pending)]
        except BlockingIOError:
            time.sleep(0.001)
    if kind == "pipe":
        os.close(pipe_w)
        reader.stdin = None
    sock.close()
    ctx.term()
    if shm is not None:
        reader.wait(30)
        shm.close()
        shm.unlink()
    return costs, dropped


def _reader(kind: str, address: str, n: int) -> None:
    """The other process: receive ``n`` steps, print each one's latency (µs) as JSON."""
    import zmq

    latencies: list[float] = []
    if kind == "pipe":
        stream = sys.stdin.buffer
        while True:
            size = stream.read(4)
            if len(size) < 4:
                break
            body = stream.read(struct.unpack("<I", size)[0])
            _, t_sent = _HEADER.unpack_from(body)
            latencies.append((time.monotonic() - t_sent) * 1e6)
    else:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.connect(address)
        ring = None
        if kind == "shm_ring":
            from multiprocessing import resource_tracker, shared_memory

            name = address.rsplit("/", 2)[-2]
            for _ in range(100):
                try:
                    shm = shared_memory.SharedMemory(name=name)
                    break
                except FileNotFoundError:
                    time.sleep(0.01)
            resource_tracker.unregister(shm._name, "shared_memory")  # the writer owns it
            ring = np.ndarray((RING_SLOTS, *FRAME_SHAPE), np.uint8, buffer=shm.buf)
        while len(latencies) < n and sock.poll(1000):
            parts = sock.recv_multipart(copy=False)
            head = parts[0].buffer
            _, t_sent = _HEADER.unpack_from(head)
            if ring is not None:
                slot = struct.unpack_from("<I", head, len(head) - 4)[0]
                frame = ring[slot].copy()  # what the recorder would do: take it out of the ring
            else:
                frame = np.frombuffer(parts[1].buffer, np.uint8).reshape(FRAME_SHAPE)
            assert frame.shape == FRAME_SHAPE
            latencies.append((time.monotonic() - t_sent) * 1e6)
        del ring
        sock.close()
        ctx.term()
    sys.stdout.write(json.dumps(latencies))


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"one step per message: a {r['frame_bytes']:,}-byte frame + {META_BYTES} bytes, "
        "to a reader process",
        "",
        f"{'way':<18} {'mode':<6} {'send med µs':>11} {'send p99':>9} {'send max':>9} "
        f"{'latency med µs':>15} {'lat p99':>9} {'received':>10}",
    ]
    for kind, modes in r["results"].items():
        for mode, m in modes.items():
            label = "burst" if mode == "burst" else f"{r['rate_hz']:g} Hz"
            lines.append(
                f"{kind:<18} {label:<6} {m['send_us_median']:>11} {m['send_us_p99']:>9} "
                f"{m['send_us_max']:>9} {m['latency_us_median']!s:>15} "
                f"{m['latency_us_p99']!s:>9} {m['received']:>5}/{m['sent']}"
            )
    return "\n".join(lines)
