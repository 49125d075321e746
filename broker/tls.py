"""TLS for the broker: a self-signed certificate on first start, server and client contexts,
and SSH-style "trust on first use" pinning of broker certificates by SHA-256 fingerprint.

Exceptions::

    TLSError
    ├── TLSConfigError        a certificate, key, CA or known-servers file cannot be used
    ├── FingerprintMismatch   a pinned broker presented a different certificate
    └── ServerNotPinned       an unknown broker, when new pins are not accepted

The pinning client context does no verification at the TLS layer, so a client using it must call
`check_pinned_fingerprint` right after the handshake and before it sends anything (credentials
included) over the connection.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.config import Config

__all__ = [
    "ALWAYS_INCLUDED_HOSTNAMES",
    "CERTIFICATE_VALIDITY",
    "CertificatePaths",
    "FingerprintMismatch",
    "KnownServers",
    "PinResult",
    "ServerNotPinned",
    "TLSConfigError",
    "TLSError",
    "certificate_fingerprint",
    "certificate_paths",
    "check_pinned_fingerprint",
    "client_ssl_context_for_ca",
    "client_ssl_context_for_pinning",
    "ensure_cluster_certificate",
    "ensure_self_signed_certificate",
    "fingerprint_of_der",
    "format_server_address",
    "server_ssl_context",
]

ALWAYS_INCLUDED_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
CERTIFICATE_VALIDITY = datetime.timedelta(days=3650)
# Backdating the start tolerates a client whose clock is a little behind the broker's.
_CLOCK_SKEW_ALLOWANCE = datetime.timedelta(hours=1)
_TLS_DIR_NAME = "tls"
_CLUSTER_TLS_DIR_NAME = "tls-cluster"  # the pair nodes sharing a database all present
_CERT_FILE_NAME = "cert.pem"
_KEY_FILE_NAME = "key.pem"
_KNOWN_SERVERS_FILE_NAME = "known_servers.json"


class TLSError(Exception):
    """Base class for every error raised by this module."""


class TLSConfigError(TLSError):
    """A certificate, key, CA or known-servers file is missing, unreadable or malformed."""


class FingerprintMismatch(TLSError):
    """A broker presented a certificate other than the one pinned for it."""

    def __init__(
        self,
        server: str,
        expected: str,
        actual: str,
        known_servers_path: Path | None = None,
    ) -> None:
        self.server = server
        self.expected = expected
        self.actual = actual
        self.known_servers_path = known_servers_path
        super().__init__(server, expected, actual, known_servers_path)

    def __str__(self) -> str:
        where = self.known_servers_path or "your known servers file"
        return (
            f"WARNING: the broker at {self.server} presented certificate {self.actual}, "
            f"but {self.expected} was pinned for it. This could be an attack (a man in the "
            f"middle) or the broker may simply have a new certificate. "
            f"If you trust the new certificate, run `mailnet trust forget {self.server}` "
            f"(it edits {where}) and connect again to pin it."
        )


class ServerNotPinned(TLSError):
    """A broker has no pinned certificate and the caller did not accept new pins."""

    def __init__(self, server: str, actual: str) -> None:
        self.server = server
        self.actual = actual
        super().__init__(server, actual)

    def __str__(self) -> str:
        return (
            f"the broker at {self.server} is not in the known servers file; it presented "
            f"certificate {self.actual}, which was not pinned because new servers are not "
            f"being accepted"
        )


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificatePaths:
    cert_path: Path
    key_path: Path


def ensure_self_signed_certificate(data_dir: Path, hostnames: list[str]) -> CertificatePaths:
    """Return the broker's certificate and key under `data_dir/tls`, creating them if absent.

    Existing files are reused as they are (the hostnames of a later call are not added), so
    the fingerprint that clients pinned stays valid across restarts.
    """
    tls_dir = data_dir / _TLS_DIR_NAME
    paths = CertificatePaths(tls_dir / _CERT_FILE_NAME, tls_dir / _KEY_FILE_NAME)
    if paths.cert_path.exists() and paths.key_path.exists():
        return paths
    if paths.cert_path.exists() or paths.key_path.exists():
        raise TLSConfigError(
            f"{tls_dir} holds only one of {_CERT_FILE_NAME} and {_KEY_FILE_NAME}; "
            f"supply both, or remove the directory to have a new certificate made"
        )

    cert_pem, key_pem = _make_self_signed_certificate(hostnames)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Both files are written into a private directory that is then renamed into place in one
    # step, so a concurrent start can never pair one process's key with another's certificate.
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{_TLS_DIR_NAME}-", dir=data_dir))
    try:
        _write_private_file(staging_dir / _KEY_FILE_NAME, key_pem)
        _write_private_file(staging_dir / _CERT_FILE_NAME, cert_pem)
        try:
            staging_dir.rename(tls_dir)
        except OSError as error:
            # Another process won the race to create the files: use its certificate.
            if not (paths.cert_path.exists() and paths.key_path.exists()):
                raise TLSConfigError(
                    f"cannot create {tls_dir} (does it hold other files?): {error}"
                ) from error
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return paths


def certificate_paths(config: Config) -> tuple[Path, Path]:
    """The broker's certificate and key: configured ones, or its own self-signed pair.

    The TCP listener and the web server use the same pair, so one pinned fingerprint covers both.
    """
    if config.tls_cert and config.tls_key:
        return config.tls_cert, config.tls_key
    paths = ensure_self_signed_certificate(config.data_dir, [config.host])
    return paths.cert_path, paths.key_path


def ensure_cluster_certificate(
    data_dir: Path,
    hostnames: list[str],
    share: Callable[[tuple[bytes, bytes]], tuple[bytes, bytes]],
) -> CertificatePaths:
    """The certificate and key every node of a cluster presents, under `data_dir/tls-cluster`.

    `share` offers a pair (this node's own self-signed one, so the fingerprint its clients
    pinned lives on if it is the first node of the cluster) and returns the cluster's: the
    offered one or one another node stored first.
    """
    own = ensure_self_signed_certificate(data_dir, hostnames)
    cert_pem, key_pem = share((own.cert_path.read_bytes(), own.key_path.read_bytes()))
    tls_dir = data_dir / _CLUSTER_TLS_DIR_NAME
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = CertificatePaths(tls_dir / _CERT_FILE_NAME, tls_dir / _KEY_FILE_NAME)
    _write_private_file(paths.key_path, key_pem)
    _write_private_file(paths.cert_path, cert_pem)
    return paths


def _make_self_signed_certificate(hostnames: list[str]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    names = _unique_names([*hostnames, *ALWAYS_INCLUDED_HOSTNAMES])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + CERTIFICATE_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _unique_names(names: list[str]) -> list[str]:
    unique: dict[str, None] = {}
    for name in names:
        cleaned = name.strip().strip("[]")
        if cleaned:
            unique.setdefault(cleaned, None)
    return list(unique)


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    general_names: list[x509.GeneralName] = []
    for name in names:
        try:
            general_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general_names.append(x509.DNSName(name))
    return general_names


def fingerprint_of_der(der: bytes) -> str:
    """Format the SHA-256 of a DER certificate as `SHA256:AB:CD:...`."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def certificate_fingerprint(cert_pem: bytes) -> str:
    """Return the fingerprint of the first certificate in `cert_pem`."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as error:
        raise TLSConfigError(f"not a PEM certificate: {error}") from error
    return fingerprint_of_der(certificate.public_bytes(serialization.Encoding.DER))


# --- contexts -----------------------------------------------------------------------------


def server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Build the broker's TLS server context: TLS 1.2 or newer, no compression."""
    _check_certificate_file(cert_path)
    _check_key_file(key_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _harden(context)
    try:
        context.load_cert_chain(certfile=cert_path, keyfile=key_path)
    except (OSError, ssl.SSLError) as error:
        raise TLSConfigError(
            f"cannot use certificate {cert_path} with key {key_path} "
            f"(does the key belong to the certificate?): {error}"
        ) from error
    return context


def client_ssl_context_for_ca(ca_file: Path | None) -> ssl.SSLContext:
    """Build a client context that verifies the broker against `ca_file`, or the system CAs."""
    if ca_file is not None:
        _check_certificate_file(ca_file, role="CA")
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as error:
        raise TLSConfigError(f"cannot load CA certificates from {ca_file}: {error}") from error
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _harden(context)
    return context


def client_ssl_context_for_pinning() -> ssl.SSLContext:
    """Build a client context that accepts any certificate, for `check_pinned_fingerprint`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _harden(context)
    return context


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION


def _check_certificate_file(path: Path, role: str = "certificate") -> None:
    data = _read_tls_file(path, role)
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise TLSConfigError(f"{role} file {path} is not a PEM certificate: {error}") from error


def _check_key_file(path: Path) -> None:
    data = _read_tls_file(path, "key")
    try:
        serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise TLSConfigError(
            f"key file {path} is not an unencrypted PEM private key: {error}"
        ) from error


def _read_tls_file(path: Path, role: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSConfigError(f"cannot read {role} file {path}: {error.strerror}") from error


# --- pinning ------------------------------------------------------------------------------


def format_server_address(host: str, port: int) -> str:
    """Return the `host:port` key of a broker, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class PinResult:
    server: str
    fingerprint: str
    newly_pinned: bool


class KnownServers:
    """The pinned fingerprint of each broker, kept in a JSON file of `"host:port": fingerprint`.

    The file is read on every lookup and replaced atomically on every change, so several
    client processes can share it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_config_dir(cls, config_dir: Path) -> KnownServers:
        return cls(config_dir / _KNOWN_SERVERS_FILE_NAME)

    def all(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise TLSConfigError(
                f"cannot read known servers file {self.path}: {error.strerror}"
            ) from error
        try:
            entries = json.loads(text)
        except ValueError as error:
            raise TLSConfigError(f"known servers file {self.path} is not JSON: {error}") from error
        if not isinstance(entries, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in entries.items()
        ):
            raise TLSConfigError(
                f'known servers file {self.path} must map "host:port" to a fingerprint'
            )
        return entries

    def fingerprint_for(self, server: str) -> str | None:
        return self.all().get(server)

    def pin(self, server: str, fingerprint: str) -> None:
        entries = self.all()
        entries[server] = fingerprint
        self._write(entries)

    def forget(self, server: str) -> bool:
        entries = self.all()
        if entries.pop(server, None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = json.dumps(entries, indent=2, sort_keys=True) + "\n"
        _write_private_file(self.path, text.encode("utf-8"))


def _write_private_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, readable by the owner only."""
    # mkstemp creates the file with mode 0600, so no other user ever sees it readable.
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def check_pinned_fingerprint(
    known: KnownServers, server: str, der_cert: bytes, *, accept_new: bool = True
) -> PinResult:
    """Check the certificate a broker presented against the one pinned for it.

    An unknown broker is pinned (or refused with `ServerNotPinned` when `accept_new` is
    false); a known one must present the pinned certificate or `FingerprintMismatch` is raised.
    """
    actual = fingerprint_of_der(der_cert)
    expected = known.fingerprint_for(server)
    if expected is None:
        if not accept_new:
            raise ServerNotPinned(server, actual)
        known.pin(server, actual)
        return PinResult(server, actual, newly_pinned=True)
    if expected.upper() != actual:
        raise FingerprintMismatch(server, expected, actual, known.path)
    return PinResult(server, actual, newly_pinned=False)
