"""Who may use the console: the password, the sessions it opens, and the limit on guessing it.

The password is stored as an scrypt hash (``malpi web --set-password``), never in
clear. A login opens a session: a random token in an HttpOnly, SameSite=Strict
cookie, with a CSRF token of its own that every state-changing request must
echo in a header. Sessions end after ``web.session_hours``, after
``web.idle_minutes`` without a request, at logout, and when the server
restarts (they live in its memory only). Failed logins are limited per
address and in total, so guessing is slow for one attacker and for many.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

# scrypt at N=2**14, r=8: ~16 MiB and ~50 ms per try on a Pi 4, which is what slows guessing
# down along with the attempt limits below.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # scrypt of a megabyte would cost the robot memory, not the guesser
MAX_SESSIONS = 64  # the oldest is closed past this many
FAILS_PER_ADDRESS = 5  # failed logins from one address per WINDOW
FAILS_IN_TOTAL = 30  # failed logins from everyone per WINDOW
WINDOW = 300.0  # s


class PasswordError(ValueError):
    """A password that cannot be set, or a password file that cannot be read."""


def hash_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise PasswordError(
            f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters, got {len(password)}"
        )
    salt = os.urandom(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    if len(password) > MAX_PASSWORD:
        return False
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 * 1024 * 1024
    )


def write_password_file(path: Path, password: str) -> None:
    """Hash ``password`` into ``path`` (mode 0600), atomically."""
    line = hash_password(password) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_password_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise PasswordError(
            f"no password set: {path} does not exist (set one with: malpi web --set-password)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswordError(f"{path}: cannot be read ({exc})") from None
    if not text.startswith("scrypt$") or text.strip().count("$") != 5:
        raise PasswordError(f"{path}: not a password hash written by malpi web --set-password")
    return text.strip()


@dataclass
class Session:
    token: str
    csrf: str
    created: float
    seen: float = field(default=0.0)


class Sessions:
    def __init__(self, hours: float, idle_minutes: float, clock=time.monotonic):
        self.lifetime = hours * 3600.0
        self.idle = idle_minutes * 60.0
        self._clock = clock
        self._open: OrderedDict[str, Session] = OrderedDict()

    def open(self) -> Session:
        now = self._clock()
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._open[s.token] = s
        while len(self._open) > MAX_SESSIONS:
            self._open.popitem(last=False)
        return s

    def get(self, token: str | None) -> Session | None:
        """The live session with ``token`` (and mark it used), or None."""
        s = self._open.get(token or "")
        if s is None:
            return None
        now = self._clock()
        if now - s.created > self.lifetime or now - s.seen > self.idle:
            del self._open[s.token]
            return None
        s.seen = now
        return s

    def close(self, token: str | None) -> None:
        self._open.pop(token or "", None)

    def __len__(self) -> int:
        return len(self._open)


class LoginLimiter:
    """Failed logins per address and in total over the last ``WINDOW`` seconds."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._fails: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def retry_after(self, address: str) -> float:
        """0 when a login from ``address`` may be tried now, else the seconds to wait."""
        now = self._clock()
        self._forget(now)
        waits = [0.0]
        mine = self._fails.get(address)
        if mine is not None and len(mine) >= FAILS_PER_ADDRESS:
            waits.append(mine[0] + WINDOW - now)
        if len(self._all) >= FAILS_IN_TOTAL:
            waits.append(self._all[0] + WINDOW - now)
        return max(waits)

    def failed(self, address: str) -> None:
        now = self._clock()
        self._fails.setdefault(address, deque()).append(now)
        self._all.append(now)

    def _forget(self, now: float) -> None:
        while self._all and self._all[0] <= now - WINDOW:
            self._all.popleft()
        for address in list(self._fails):
            q = self._fails[address]
            while q and q[0] <= now - WINDOW:
                q.popleft()
            if not q:
                del self._fails[address]
