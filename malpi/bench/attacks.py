"""What an attacker (or an unlucky operator) sends the robot: built here for ``malpi bench stress``
and the tests that check the daemon holds.

Each builder returns bytes as they go on the wire; nothing here needs the daemon.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zipfile
import zlib
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
    archive itself is about a thousandth of that). Written by hand from one compressed MiB
    repeated, so it takes a fraction of a second, not the seconds deflating it all would."""
    if inflated >= 1 << 32:
        raise ValueError("a zip bomb of 4 GiB or more needs zip64, which this does not write")
    manifest = json.dumps({"format": "malpi-policy", "format_version": 1}).encode()
    members = [
        ("manifest.json", zlib.crc32(manifest), len(manifest), _deflate(manifest)),
        ("weights.npz", *_zeros_deflated(inflated)),
        ("float.tflite", 0, 0, _deflate(b"")),
        ("int8.tflite", 0, 0, _deflate(b"")),
    ]
    out, central = io.BytesIO(), io.BytesIO()
    for name, crc, size, data in members:
        offset = out.tell()
        fields = (8, 0, _DOS_DATE, crc, len(data), size, len(name))  # deflated, 1980-01-01
        out.write(struct.pack("<IHH" + "HHHIIIHH", 0x04034B50, 20, 0, *fields, 0))
        out.write(name.encode() + data)
        central.write(struct.pack("<IHHH" + "HHHIIIHH", 0x02014B50, 20, 20, 0, *fields, 0))
        central.write(struct.pack("<HHHII", 0, 0, 0, 0, offset) + name.encode())
    start, directory = out.tell(), central.getvalue()
    out.write(directory)
    n = len(members)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(directory), start, 0))
    return out.getvalue()


_DOS_DATE = (1 << 5) | 1  # 1980-01-01 in a zip header's date field


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as in a zip
    return c.compress(data) + c.flush()


def _zeros_deflated(size: int) -> tuple[int, int, bytes]:
    """(CRC-32, size, raw deflate stream) of ``size`` zero bytes. After a full flush deflate
    starts afresh, so every MiB of zeros compresses to the same bytes: compress one, repeat it."""
    chunk = bytes(1 << 20)
    full, rest = divmod(size, len(chunk))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(full):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(chunk[:rest], crc)
    return crc, size, block * full + _deflate(chunk[:rest])


def huge_manifest_bundle(bundle: bytes, provenance_bytes: int = 256 * 1024 * 1024) -> bytes:
    """A real bundle whose manifest carries ``provenance_bytes`` of provenance (it compresses
    to almost nothing, so the file is small)."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as src:
        files = {n: src.read(n) for n in src.namelist()}
    manifest = json.loads(files["manifest.json"])
    manifest["provenance"] = {"notes": ""}
    # json.dumps of the notes themselves would take seconds: the same text, spliced in
    empty = b'"provenance": {"notes": ""}'
    notes = b'"provenance": {"notes": "' + b"x" * provenance_bytes + b'"}'
    files["manifest.json"] = json.dumps(manifest).encode().replace(empty, notes, 1)
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
