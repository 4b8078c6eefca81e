"""What an attacker (or an unlucky operator) sends the robot: built here for ``malpi bench stress``
and the tests that check the daemon holds.

Each builder returns bytes as they go on the wire; nothing here needs the daemon.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator

import msgspec

from malpi.protocol.schema import PROTOCOL_VERSION


def array_bomb(size: int, kind: str = "load_policy") -> bytes:
    """A request of about ``size`` bytes whose ``bundle`` is an array of empty arrays: one byte
    each on the wire, a Python list each if decoded without a schema."""
    head = msgspec.msgpack.encode({"type": kind, "v": PROTOCOL_VERSION, "id": 7})
    n = max(0, size - len(head) - 16)
    # A map of 4 entries: the head's 3 (re-encoded below) and "bundle": [[], [], ...].
    body = b"\x84" + head[1:] + msgspec.msgpack.encode("bundle")
    return body + b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def nesting_bomb(depth: int = 60_000) -> bytes:
    """A small request nested far deeper than any decoder should follow."""
    return b"\x82\xa4type\xa4ping\xa3pad" + b"\x91" * depth + b"\xc0"


def oversized(size: int) -> bytes:
    """A well-formed ping padded past the command size limit."""
    return msgspec.msgpack.encode({"type": "ping", "v": PROTOCOL_VERSION, "pad": b"\0" * size})


def zip_bomb_bundle(inflated: int = 512 * 1024 * 1024) -> bytes:
    """A bundle-shaped zip whose weights.npz inflates to ``inflated`` bytes of zeros (the
    archive itself is about a thousandth of that)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("manifest.json", json.dumps({"format": "malpi-policy", "format_version": 1}))
        with zf.open("weights.npz", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(inflated >> 20):
                f.write(chunk)
        zf.writestr("float.tflite", b"")
        zf.writestr("int8.tflite", b"")
    return out.getvalue()


def huge_manifest_bundle(bundle: bytes, provenance_bytes: int = 256 * 1024 * 1024) -> bytes:
    """A real bundle whose manifest carries ``provenance_bytes`` of provenance (it compresses
    to almost nothing, so the file is small)."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as src:
        files = {n: src.read(n) for n in src.namelist()}
    manifest = json.loads(files["manifest.json"])
    manifest["provenance"] = {"notes": "x" * provenance_bytes}
    files["manifest.json"] = json.dumps(manifest).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def flood_requests() -> Iterator[bytes]:
    """An endless mix of the worst requests: decode bombs, oversized and malformed messages."""
    kinds = [
        array_bomb(64 * 1024 - 100, "ping"),  # just under the command limit
        array_bomb(4 * 1024 * 1024),  # a load_policy of 4 MiB of empty arrays
        nesting_bomb(),
        oversized(1 << 20),  # too_large
        b"\xc1" * 1000,  # not msgpack
        msgspec.msgpack.encode([1, 2, 3]),  # not a map
        msgspec.msgpack.encode({"type": "drive", "v": PROTOCOL_VERSION, "action": 99, "seq": 1}),
        msgspec.msgpack.encode({"type": "ping", "v": 99}),  # bad_version
        msgspec.msgpack.encode({"type": "fly", "v": PROTOCOL_VERSION}),  # unknown_type
    ]
    while True:
        yield from kinds


class IdleConnections:
    """``count`` plain TCP connections to ``host:port`` that never speak, re-opened whenever the
    server drops them (as it should, after its handshake time-out)."""

    def __init__(self, host: str, port: int, count: int):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < count + 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
        self.host, self.port, self.count = host, port, count
        self.opened = 0
        self.dropped = 0
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-connections", daemon=True)

    def start(self) -> IdleConnections:
        self._thread.start()
        return self

    def _open(self) -> socket.socket | None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex((self.host, self.port))
        except OSError:
            s.close()
            return None
        self.opened += 1
        return s

    def _run(self) -> None:
        import select

        poller = select.poll()
        by_fd: dict[int, socket.socket] = {}
        while not self._stop.is_set():
            while len(by_fd) < self.count and not self._stop.is_set():
                s = self._open()
                if s is None:
                    break
                by_fd[s.fileno()] = s
                poller.register(s, select.POLLIN)
            for fd, _ in poller.poll(200):
                s = by_fd[fd]
                try:
                    data = s.recv(4096)  # the server's greeting is read and ignored
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # closed by the server: replace it
                    poller.unregister(fd)
                    del by_fd[fd]
                    s.close()
                    self.dropped += 1
            self._socks = list(by_fd.values())
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self._socks:
            s.close()
        self._socks.clear()
