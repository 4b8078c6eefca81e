"""A policy bundle arriving in parts: one upload at a time, in order, from one client.

A bundle sent whole is one message, and with CURVE ZeroMQ decrypts a message
in one piece on the I/O thread its connection was given: ~40 ms for 48 MB
here, during which that thread's other connections (an operator's stop among
them) wait. Sent in parts of a few MB, each costs a few milliseconds. The
parts are kept here until the last arrives; what one client can make the
link hold is bounded by the bundle limit, and an upload left unfinished is
dropped after ``UPLOAD_TIMEOUT`` when another client wants to upload.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from malpi.protocol.schema import MAX_BUNDLE_BYTES, LoadPolicy, ProtocolError

UPLOAD_TIMEOUT = 30.0  # s between two parts before another client may take over


@dataclass
class _Upload:
    client: bytes
    total: int
    last: float
    data: bytearray = field(default_factory=bytearray)


class Uploads:
    """Assembles the parts of ``load_policy`` requests (those with a ``total``)."""

    def __init__(self, limit: int = MAX_BUNDLE_BYTES, timeout: float = UPLOAD_TIMEOUT):
        self.limit = limit
        self.timeout = timeout
        self._current: _Upload | None = None

    def add(self, client: bytes, req: LoadPolicy, now: float) -> tuple[memoryview | None, int]:
        """Take one part: (the whole bundle once the last part is in, else None; bytes received).
        ProtocolError for a part that does not fit; a client's bad part abandons its upload."""
        total, offset, part = req.total, req.offset, req.bundle
        assert total is not None
        if total > self.limit:
            raise ProtocolError(
                "too_large", f"load_policy of {total} bytes; the limit is {self.limit}"
            )
        up = self._current
        if offset == 0:
            if up is not None and up.client != client and now - up.last < self.timeout:
                raise ProtocolError("busy", "another client's policy upload is in progress")
            up = self._current = _Upload(client, total, now)
        elif up is None or up.client != client:
            raise ProtocolError(
                "invalid", f"a part at offset {offset}, but no upload from this client is open"
            )
        try:
            if total != up.total or offset != len(up.data):
                raise ProtocolError(
                    "invalid",
                    f"a part at offset {offset} of {total} bytes; expected offset "
                    f"{len(up.data)} of {up.total} (the upload is abandoned)",
                )
            if offset + len(part) > total:
                raise ProtocolError(
                    "invalid",
                    f"a part of {len(part)} bytes at offset {offset} runs past the bundle's "
                    f"{total} bytes (the upload is abandoned)",
                )
        except ProtocolError:
            self._current = None
            raise
        up.data += part
        up.last = now
        if len(up.data) < total:
            return None, len(up.data)
        self._current = None
        return memoryview(up.data), total
