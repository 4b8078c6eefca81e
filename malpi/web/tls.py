"""HTTPS for the console: the owner's certificate, or a self-signed one made once and kept."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

log = logging.getLogger(__name__)

CERT, KEY = "cert.pem", "key.pem"
DAYS = 825  # the longest validity browsers accept for a TLS certificate


def server_context(cert: str, key: str, tls_dir: str) -> ssl.SSLContext:
    """An SSL context with ``cert``/``key``, or the self-signed pair in ``tls_dir`` (made if missing)."""
    if not cert:
        d = Path(tls_dir).expanduser()
        cert, key = str(d / CERT), str(d / KEY)
        if not (Path(cert).exists() and Path(key).exists()):
            self_signed(d)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"web.cert / web.key ({cert}, {key}): {exc}") from None
    return ctx


def self_signed(directory: Path) -> Path:
    """Write a self-signed certificate for this machine's names and addresses into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    host = socket.gethostname()
    names: list[x509.GeneralName] = [
        x509.DNSName(n) for n in dict.fromkeys([host, f"{host}.local", "localhost"])
    ]
    for address in _addresses(host):
        names.append(x509.IPAddress(address))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"MaLPi console on {host}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(directory / KEY, key_pem, 0o600)
    _write(directory / CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    log.info("made a self-signed certificate in %s (SHA-256 %s)", directory, fingerprint)
    return directory / CERT


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = {ipaddress.ip_address("127.0.0.1")}
    try:
        for info in socket.getaddrinfo(host, None):
            found.add(ipaddress.ip_address(info[4][0].split("%")[0]))
    except (OSError, ValueError):
        pass
    return sorted(found, key=str)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
