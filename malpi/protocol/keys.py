"""CURVE keys: the daemon's key pair, the clients it lets in, and the robots a client trusts.

Files are zmq.auth certificates (``NAME.key`` holds a public key,
``NAME.key_secret`` both keys), so they interoperate with any ZeroMQ tool.

On the robot (``link.keys_dir``, e.g. /etc/malpi/keys)::

    server.key, server.key_secret   the daemon's key pair (malpi keys init --server)
    authorized/NAME.key             one public key per client allowed in (malpi keys authorize)

On an operator's machine (~/.config/malpi/keys)::

    client.key, client.key_secret   this client's key pair (malpi keys init)
    servers/HOST.key                the public key of the robot HOST (malpi keys trust HOST FILE)
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_KEYS_DIR = "~/.config/malpi/keys"
SERVER = "server"
ZAP_DOMAIN = "malpi"  # the sockets' ZAP domain; the authenticator checks keys for it
CLIENT = "client"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class KeyFileError(ValueError):
    """A key file that is missing or unusable; the message says which and what to do."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    public: str  # Z85, 40 characters
    path: Path
    has_secret: bool


def keys_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or DEFAULT_KEYS_DIR).expanduser()


def authorized_dir(keys: str | os.PathLike, authorized: str | os.PathLike | None = "") -> Path:
    return Path(authorized).expanduser() if authorized else keys_dir(keys) / "authorized"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise KeyFileError(
            f"key name {name!r}: use letters, digits and _.@- (at most 64, not starting with a symbol)"
        )
    return name


def init_keys(directory: str | os.PathLike, name: str, force: bool = False) -> KeyInfo:
    """Create ``NAME.key`` and ``NAME.key_secret`` in ``directory`` (private: 0700 / 0600)."""
    import zmq.auth

    check_name(name)
    d = Path(directory).expanduser()
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if (public.exists() or secret.exists()) and not force:
        raise KeyFileError(f"{secret} already exists (use --force to replace it and re-authorise)")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    old = os.umask(0o077)  # the secret must never be readable by others, not even briefly
    try:
        zmq.auth.create_certificates(str(d), name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return read_key(public)


def read_key(path: str | os.PathLike) -> KeyInfo:
    """A certificate file's public key (and whether it holds the secret too)."""
    import zmq.auth

    p = Path(path).expanduser()
    try:
        public, secret = zmq.auth.load_certificate(str(p))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{p}: not a readable ZeroMQ certificate ({exc})") from exc
    if not public or len(public) != 40:
        raise KeyFileError(f"{p}: no 40-character Z85 public key in it")
    name = p.name.removesuffix("_secret").removesuffix(".key")
    return KeyInfo(name, public.decode("ascii"), p, secret is not None)


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file, refusing one others can read."""
    import zmq.auth

    p = Path(path).expanduser()
    if not p.is_file():
        raise KeyFileError(f"{p} does not exist: create it with malpi keys init")
    if os.stat(p).st_mode & 0o077:
        raise KeyFileError(f"{p} is readable by other users: chmod 600 {p}")
    public, secret = zmq.auth.load_certificate(str(p))
    if not secret:
        raise KeyFileError(f"{p} holds no secret key")
    return public, secret


def load_public(path: str | os.PathLike) -> bytes:
    return read_key(path).public.encode("ascii")


def authorize(source: str, directory: str | os.PathLike, name: str | None = None) -> KeyInfo:
    """Let a client in: copy its public key (a ``.key`` file, or the Z85 key itself) into ``directory``."""
    d = Path(directory).expanduser()
    public, info = _public_key(source)
    name = check_name(name or (info.name if info else "client"))
    d.mkdir(parents=True, exist_ok=True)
    target = d / f"{name}.key"
    if target.exists() and read_key(target).public != public:
        raise KeyFileError(f"{target} already holds another key: choose another --name")
    _write_public(target, public, f"authorised client {name}")
    return read_key(target)


def trust(host: str, source: str, directory: str | os.PathLike) -> KeyInfo:
    """Remember robot ``host``'s public key, so that clients connect to it with CURVE."""
    check_name(host.replace(":", "_"))
    public, _ = _public_key(source)
    target = Path(directory).expanduser() / "servers" / f"{host.replace(':', '_')}.key"
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_public(target, public, f"robot {host}")
    return read_key(target)


def revoke(name: str, directory: str | os.PathLike) -> Path:
    target = Path(directory).expanduser() / f"{check_name(name)}.key"
    if not target.is_file():
        raise KeyFileError(f"no authorised key named {name!r} in {target.parent}")
    target.unlink()
    return target


def list_keys(directory: str | os.PathLike) -> list[KeyInfo]:
    d = Path(directory).expanduser()
    if not d.is_dir():
        return []
    found = []
    for p in sorted(d.glob("*.key")):
        try:
            info = read_key(p)
        except KeyFileError as exc:
            log.warning("%s", exc)
            continue
        secret = p.with_name(p.name + "_secret")
        found.append(KeyInfo(info.name, info.public, p, secret.is_file()))
    return found


def server_key_for(host: str, directory: str | os.PathLike) -> Path | None:
    """The trusted public key of robot ``host`` (servers/HOST.key), else this machine's own daemon key."""
    d = Path(directory).expanduser()
    for candidate in (d / "servers" / f"{host.replace(':', '_')}.key", d / f"{SERVER}.key"):
        if candidate.is_file():
            return candidate
    return None


def _public_key(source: str) -> tuple[str, KeyInfo | None]:
    """The public key in ``source``: a ``.key`` file (and its KeyInfo), or a Z85 key itself."""
    src = Path(source).expanduser()
    if src.is_file():
        info = read_key(src)
        return info.public, info
    if len(source) != 40:
        raise KeyFileError(
            f"{source} does not exist (neither a key file nor a 40-character Z85 public key)"
        )
    _check_z85(source)
    return source, None


def _check_z85(key: str) -> None:
    import zmq.utils.z85

    try:
        if len(zmq.utils.z85.decode(key.encode("ascii"))) != 32:
            raise ValueError
    except Exception as exc:
        raise KeyFileError(f"{key!r} is not a Z85-encoded 32-byte key") from exc


def _write_public(target: Path, public: str, comment: str) -> None:
    text = f'#   ZeroMQ CURVE public key: {comment}\nmetadata\ncurve\n    public-key = "{public}"\n'
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def apply_client_curve(sock, server_public: bytes, client_secret_file: str | os.PathLike) -> None:
    public, secret = load_secret(client_secret_file)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
