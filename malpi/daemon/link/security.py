"""CURVE on the robot's side of the link: its key pair, and the ZAP authenticator that lets clients in.

Only clients whose public key is in the authorised-keys directory complete
the handshake; anyone else gets nothing at all (no reply, no telemetry).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path

from malpi.protocol.keys import SERVER, ZAP_DOMAIN, authorized_dir, keys_dir, list_keys, load_secret

log = logging.getLogger(__name__)

REFUSED_LOG_INTERVAL = 10.0  # s between log lines about refused keys


class AuthorizedKeys:
    """The ZAP credentials provider: a client is let in if its public key is in the directory.

    The directory is read at every handshake (they are rare), so ``malpi keys
    authorize`` and ``revoke`` take effect for the next connection without a restart.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        self.refused = 0
        self._unlogged = 0
        self._last_log = -math.inf
        self._lock = threading.Lock()

    def keys(self) -> set[bytes]:
        return {k.public.encode("ascii") for k in list_keys(self.directory)}

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys()
        if not allowed:
            self._refused(key)
        return allowed

    def _refused(self, key: bytes) -> None:
        """One log line per ``REFUSED_LOG_INTERVAL`` at most: a client trying a new key at every
        connection must not fill the journal."""
        with self._lock:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_log < REFUSED_LOG_INTERVAL:
                self._unlogged += 1
                return
            more, self._unlogged, self._last_log = self._unlogged, 0, now
        log.warning(
            "link: refused a client with unknown key %s%s",
            key.decode("ascii", "replace"),
            f" (and {more} more refusals since the last report)" if more else "",
        )


class ServerSecurity:
    """CURVE for the daemon's sockets: its key pair and a ZAP authenticator on the context."""

    def __init__(self, keys: str | os.PathLike, authorized: str | os.PathLike | None = ""):
        self.keys_dir = keys_dir(keys)
        self.public, self.secret = load_secret(self.keys_dir / f"{SERVER}.key_secret")
        self.authorized = AuthorizedKeys(authorized_dir(keys, authorized))
        if not self.authorized.directory.is_dir():
            log.warning(
                "link: %s does not exist: no client can connect (malpi keys authorize)",
                self.authorized.directory,
            )
        self._auth = None

    def start(self, context) -> None:
        """Start the authenticator; it must run before any CURVE socket binds."""
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(context, log=logging.getLogger("malpi.link.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.authorized)

    def apply(self, sock) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
