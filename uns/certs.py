"""The plant's own certificate authority for MQTT over TLS (`uns make-certs`).

One CA per plant signs the broker's server certificate (with the host names and addresses clients
use for it as subjectAltNames) and any client certificates. The CA's key is made once and reused:
running the command again adds or renews certificates under the same CA, so clients that trust it
keep working. Private keys are written readable by their owner only; nothing secret is printed.

Files, in one directory (compose mounts `mosquitto/certs`): `ca.crt`, `ca.key`, `server.crt`,
`server.key`, and `<name>.crt`, `<name>.key` per client.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
DEFAULT_SERVER_NAMES = ("mosquitto", "localhost", "127.0.0.1")  # compose's service name, this host
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Made:
    """What one run wrote (paths), for the command to list."""

    ca_created: bool
    files: tuple[Path, ...]


def _key(kind: str) -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"key type {kind!r}: use ec (P-256) or rsa (3072 bits)")


def _write_key(path: Path, key: PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
                raise ValueError(f"server name {name!r} is neither a host name nor an IP address") from None
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _load_ca(directory: Path) -> tuple[x509.Certificate, PrivateKey] | None:
    cert_file, key_file = directory / "ca.crt", directory / "ca.key"
    if not cert_file.exists() and not key_file.exists():
        return None
    if not (cert_file.exists() and key_file.exists()):
        raise ValueError(f"{directory}: ca.crt and ca.key go together; one of them is missing")
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{key_file}: not an EC or RSA key")
    return cert, key


def _builder(
    subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _leaf(
    name: str,
    ca: tuple[x509.Certificate, PrivateKey],
    key: PrivateKey,
    usage: x509.ObjectIdentifier,
    days: int,
    san: x509.SubjectAlternativeName | None = None,
) -> x509.Certificate:
    ca_cert, ca_key = ca
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        _builder(name, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=rsa_key,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make_certs(
    directory: Path,
    *,
    server_names: Sequence[str] = (),
    clients: Sequence[str] = (),
    server: bool = True,
    ca_name: str = "shop-floor UNS plant CA",
    key_type: str = "ec",
    days: int = 825,
    ca_days: int = 3650,
) -> Made:
    """Make the CA (unless `directory` has one), the broker's certificate for `server_names` (host
    names and IP addresses, beside DEFAULT_SERVER_NAMES) and a client certificate per name."""
    for client in clients:
        if not _NAME.fullmatch(client) or client in ("ca", "server"):
            raise ValueError(f"client name {client!r}: letters, digits, '_', '-', '.', not 'ca' or 'server'")
    san = _san(list(dict.fromkeys([*DEFAULT_SERVER_NAMES, *server_names]))) if server else None
    directory.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    ca = _load_ca(directory)
    created = ca is None
    if ca is None:
        key = _key(key_type)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        cert = (
            _builder(ca_name, name, key.public_key(), ca_days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(directory / "ca.key", key)
        _write_cert(directory / "ca.crt", cert)
        files += [directory / "ca.crt", directory / "ca.key"]
        ca = (cert, key)
    leaves: list[tuple[str, str, x509.ObjectIdentifier, x509.SubjectAlternativeName | None]] = []
    if server:
        leaves.append(("server", "mosquitto", ExtendedKeyUsageOID.SERVER_AUTH, san))
    leaves += [(c, c, ExtendedKeyUsageOID.CLIENT_AUTH, None) for c in clients]
    for stem, common_name, usage, alt in leaves:
        key = _key(key_type)
        cert = _leaf(common_name, ca, key, usage, days, alt)
        _write_key(directory / f"{stem}.key", key)
        _write_cert(directory / f"{stem}.crt", cert)
        files += [directory / f"{stem}.crt", directory / f"{stem}.key"]
    return Made(created, tuple(files))
