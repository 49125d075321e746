"""Tests for broker.tls: the self-signed certificate, fingerprints, contexts and pinning."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from broker.tls import (
    CertificatePaths,
    FingerprintMismatch,
    KnownServers,
    ServerNotPinned,
    TLSConfigError,
    certificate_fingerprint,
    check_pinned_fingerprint,
    client_ssl_context_for_ca,
    client_ssl_context_for_pinning,
    ensure_self_signed_certificate,
    fingerprint_of_der,
    format_server_address,
    server_ssl_context,
)

NETWORK_TIMEOUT = 10
FINGERPRINT_PATTERN = re.compile(r"^SHA256:([0-9A-F]{2}:){31}[0-9A-F]{2}$")


@pytest.fixture
def broker_certificate(tmp_path: Path) -> CertificatePaths:
    return ensure_self_signed_certificate(tmp_path / "broker-data", ["broker.example"])


@pytest.fixture
def known_servers(tmp_path: Path) -> KnownServers:
    return KnownServers.in_config_dir(tmp_path / "client-config")


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the self-signed certificate ----------------------------------------------------------


def test_self_signed_certificate_is_created_once_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = ensure_self_signed_certificate(data_dir, ["broker.example"])
    first_cert_pem = first.cert_path.read_bytes()
    second = ensure_self_signed_certificate(data_dir, ["other.example"])

    assert second == first
    assert first.cert_path == data_dir / "tls" / "cert.pem"
    assert first.key_path == data_dir / "tls" / "key.pem"
    assert second.cert_path.read_bytes() == first_cert_pem
    assert certificate_fingerprint(second.cert_path.read_bytes()) == certificate_fingerprint(
        first_cert_pem
    )
    assert file_mode(first.key_path) == 0o600
    assert [path.name for path in data_dir.iterdir()] == ["tls"]


def test_self_signed_certificate_names_every_host_and_is_not_a_ca(
    broker_certificate: CertificatePaths,
) -> None:
    certificate = x509.load_pem_x509_certificate(broker_certificate.cert_path.read_bytes())

    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"broker.example", "localhost"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False
    assert constraints.critical
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime >= datetime.timedelta(days=3650)


def test_self_signed_certificate_accepts_ip_addresses_among_hostnames(tmp_path: Path) -> None:
    paths = ensure_self_signed_certificate(tmp_path, ["10.0.0.5", "[fd00::7]", "localhost"])
    certificate = x509.load_pem_x509_certificate(paths.cert_path.read_bytes())

    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("10.0.0.5") in names.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("fd00::7") in names.get_values_for_type(x509.IPAddress)


def test_half_present_certificate_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_bytes(b"operator supplied")

    with pytest.raises(TLSConfigError, match=r"only one of cert\.pem and key\.pem"):
        ensure_self_signed_certificate(tmp_path, [])
    assert (tmp_path / "tls" / "cert.pem").read_bytes() == b"operator supplied"


# --- fingerprints -------------------------------------------------------------------------


def test_fingerprint_is_upper_case_colon_separated_sha256_of_der(
    broker_certificate: CertificatePaths,
) -> None:
    cert_pem = broker_certificate.cert_path.read_bytes()
    certificate = x509.load_pem_x509_certificate(cert_pem)
    der = certificate.public_bytes(serialization.Encoding.DER)
    digest = certificate.fingerprint(hashes.SHA256())
    recomputed = "SHA256:" + ":".join(f"{byte:02X}" for byte in digest)

    fingerprint = certificate_fingerprint(cert_pem)

    assert FINGERPRINT_PATTERN.match(fingerprint)
    assert fingerprint == recomputed
    assert fingerprint_of_der(der) == recomputed


def test_fingerprint_of_text_that_is_not_a_certificate_is_a_config_error() -> None:
    with pytest.raises(TLSConfigError, match="not a PEM certificate"):
        certificate_fingerprint(b"hello")


# --- contexts -----------------------------------------------------------------------------


def test_every_context_requires_tls_1_2_and_disables_compression(
    broker_certificate: CertificatePaths,
) -> None:
    contexts = [
        server_ssl_context(broker_certificate.cert_path, broker_certificate.key_path),
        client_ssl_context_for_ca(None),
        client_ssl_context_for_pinning(),
    ]
    for context in contexts:
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION


def test_client_contexts_verify_only_when_trusting_a_ca() -> None:
    ca_context = client_ssl_context_for_ca(None)
    pinning_context = client_ssl_context_for_pinning()

    assert ca_context.verify_mode == ssl.CERT_REQUIRED
    assert ca_context.check_hostname
    assert pinning_context.verify_mode == ssl.CERT_NONE
    assert not pinning_context.check_hostname


def test_server_context_names_a_missing_key_file(
    broker_certificate: CertificatePaths, tmp_path: Path
) -> None:
    missing = tmp_path / "missing-key.pem"
    with pytest.raises(TLSConfigError, match=r"cannot read key file .*missing-key\.pem"):
        server_ssl_context(broker_certificate.cert_path, missing)


def test_server_context_names_a_malformed_certificate_file(
    broker_certificate: CertificatePaths, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match=r"certificate file .*garbage\.pem is not a PEM"):
        server_ssl_context(garbage, broker_certificate.key_path)


def test_server_context_refuses_a_key_that_does_not_match_the_certificate(
    broker_certificate: CertificatePaths, tmp_path: Path
) -> None:
    other = ensure_self_signed_certificate(tmp_path / "other", [])
    with pytest.raises(TLSConfigError, match="does the key belong to the certificate"):
        server_ssl_context(broker_certificate.cert_path, other.key_path)


def test_client_context_names_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match=r"cannot read CA file .*nowhere\.pem"):
        client_ssl_context_for_ca(tmp_path / "nowhere.pem")


# --- known servers ------------------------------------------------------------------------


def test_known_servers_file_is_written_privately_and_atomically(
    known_servers: KnownServers, broker_certificate: CertificatePaths
) -> None:
    der = x509.load_pem_x509_certificate(broker_certificate.cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )

    result = check_pinned_fingerprint(known_servers, "broker.example:7443", der)

    assert file_mode(known_servers.path) == 0o600
    assert json.loads(known_servers.path.read_text()) == {"broker.example:7443": result.fingerprint}
    assert list(known_servers.path.parent.iterdir()) == [known_servers.path]


def test_known_servers_can_forget_a_server(known_servers: KnownServers) -> None:
    known_servers.pin("a:1", "SHA256:AA")
    known_servers.pin("b:2", "SHA256:BB")

    assert known_servers.forget("a:1")
    assert not known_servers.forget("a:1")
    assert known_servers.all() == {"b:2": "SHA256:BB"}
    assert file_mode(known_servers.path) == 0o600


def test_malformed_known_servers_file_is_a_config_error(known_servers: KnownServers) -> None:
    known_servers.path.parent.mkdir(parents=True)
    known_servers.path.write_text("[1, 2]")
    with pytest.raises(TLSConfigError, match="must map"):
        known_servers.fingerprint_for("a:1")


def test_unknown_server_is_refused_when_new_pins_are_not_accepted(
    known_servers: KnownServers,
) -> None:
    with pytest.raises(ServerNotPinned, match=r"broker\.example:7443"):
        check_pinned_fingerprint(known_servers, "broker.example:7443", b"der", accept_new=False)
    assert not known_servers.path.exists()


def test_server_address_brackets_ipv6_hosts() -> None:
    assert format_server_address("broker.example", 7443) == "broker.example:7443"
    assert format_server_address("::1", 7443) == "[::1]:7443"


# --- handshakes over loopback -------------------------------------------------------------


@dataclass
class HandshakeOutcome:
    peer_der: bytes | None
    client_error: trio.BrokenResourceError | None
    server_error: trio.BrokenResourceError | None

    def ssl_error(self, side: str) -> ssl.SSLError:
        error = self.client_error if side == "client" else self.server_error
        assert error is not None, f"the {side} handshake succeeded"
        assert isinstance(error.__cause__, ssl.SSLError)
        return error.__cause__


async def handshake(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    server_hostname: str | None = None,
) -> HandshakeOutcome:
    """Run one TLS handshake over loopback and report how each side ended."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    outcome = HandshakeOutcome(peer_der=None, client_error=None, server_error=None)

    async def accept_one() -> None:
        server_stream = trio.SSLStream(await listener.accept(), server_context, server_side=True)
        try:
            await server_stream.do_handshake()
        except trio.BrokenResourceError as error:
            outcome.server_error = error
        await server_stream.aclose()

    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(accept_one)
        tcp_stream = await trio.open_tcp_stream("127.0.0.1", port)
        client_stream = trio.SSLStream(tcp_stream, client_context, server_hostname=server_hostname)
        try:
            await client_stream.do_handshake()
            outcome.peer_der = client_stream.getpeercert(binary_form=True)
        except trio.BrokenResourceError as error:
            outcome.client_error = error
        await client_stream.aclose()
    return outcome


async def test_pin_is_recorded_on_first_use_and_accepted_after(
    broker_certificate: CertificatePaths, known_servers: KnownServers
) -> None:
    server_context = server_ssl_context(broker_certificate.cert_path, broker_certificate.key_path)
    expected = certificate_fingerprint(broker_certificate.cert_path.read_bytes())

    with trio.fail_after(NETWORK_TIMEOUT):
        first = await handshake(server_context, client_ssl_context_for_pinning())
        second = await handshake(server_context, client_ssl_context_for_pinning())

    assert first.peer_der is not None and second.peer_der is not None
    first_result = check_pinned_fingerprint(known_servers, "127.0.0.1:7443", first.peer_der)
    assert first_result.newly_pinned
    assert first_result.fingerprint == expected
    assert known_servers.fingerprint_for("127.0.0.1:7443") == expected

    second_result = check_pinned_fingerprint(known_servers, "127.0.0.1:7443", second.peer_der)
    assert not second_result.newly_pinned
    assert second_result.fingerprint == expected


async def test_pinned_server_with_a_new_certificate_raises_a_readable_warning(
    broker_certificate: CertificatePaths, known_servers: KnownServers, tmp_path: Path
) -> None:
    impostor = ensure_self_signed_certificate(tmp_path / "impostor-data", ["broker.example"])
    pinned = certificate_fingerprint(broker_certificate.cert_path.read_bytes())
    presented = certificate_fingerprint(impostor.cert_path.read_bytes())
    known_servers.pin("127.0.0.1:7443", pinned)

    with trio.fail_after(NETWORK_TIMEOUT):
        outcome = await handshake(
            server_ssl_context(impostor.cert_path, impostor.key_path),
            client_ssl_context_for_pinning(),
        )

    assert outcome.peer_der is not None
    with pytest.raises(FingerprintMismatch) as caught:
        check_pinned_fingerprint(known_servers, "127.0.0.1:7443", outcome.peer_der)
    mismatch = caught.value
    assert (mismatch.server, mismatch.expected, mismatch.actual) == (
        "127.0.0.1:7443",
        pinned,
        presented,
    )
    message = str(mismatch)
    assert f"the broker at 127.0.0.1:7443 presented certificate {presented}" in message
    assert f"but {pinned} was pinned" in message
    assert "man in the middle" in message
    assert str(known_servers.path) in message
    assert "\n" not in message
    assert known_servers.fingerprint_for("127.0.0.1:7443") == pinned


async def test_server_refuses_a_client_that_offers_at_most_tls_1_1(
    broker_certificate: CertificatePaths,
) -> None:
    old_client = client_ssl_context_for_pinning()
    permissive_server = server_ssl_context(
        broker_certificate.cert_path, broker_certificate.key_path
    )
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"ssl\.TLSVersion\.TLSv1(_1)? is deprecated", DeprecationWarning
        )
        old_client.minimum_version = ssl.TLSVersion.TLSv1
        old_client.maximum_version = ssl.TLSVersion.TLSv1_1
        permissive_server.minimum_version = ssl.TLSVersion.TLSv1
    # OpenSSL 3's default security level forbids TLS 1.1 on its own; lowering it on both
    # sides leaves the server's minimum version as the only thing that can refuse.
    old_client.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive_server.set_ciphers("DEFAULT:@SECLEVEL=0")
    broker_server = server_ssl_context(broker_certificate.cert_path, broker_certificate.key_path)
    broker_server.set_ciphers("DEFAULT:@SECLEVEL=0")

    with trio.fail_after(NETWORK_TIMEOUT):
        control = await handshake(permissive_server, old_client)
        refused = await handshake(broker_server, old_client)

    if control.peer_der is None:
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all: {control.ssl_error('client')}")
    # trio drops the server's protocol_version alert when the handshake fails, so the client
    # sees only a closed connection; the server's own error says why it refused.
    assert refused.peer_der is None
    assert refused.client_error is not None
    assert refused.ssl_error("server").reason == "UNSUPPORTED_PROTOCOL"


@pytest.fixture
def trustme_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_issued_server_context(trustme_ca: trustme.CA, tmp_path: Path) -> ssl.SSLContext:
    issued = trustme_ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "issued-cert.pem", tmp_path / "issued-key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert_path))
    issued.private_key_pem.write_to_path(str(key_path))
    return server_ssl_context(cert_path, key_path)


def write_ca_file(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_ca_verified_client_connects_to_a_server_certified_by_that_ca(
    trustme_ca: trustme.CA, ca_issued_server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    client_context = client_ssl_context_for_ca(write_ca_file(trustme_ca, tmp_path / "ca.pem"))

    with trio.fail_after(NETWORK_TIMEOUT):
        outcome = await handshake(
            ca_issued_server_context, client_context, server_hostname="127.0.0.1"
        )

    assert outcome.client_error is None and outcome.server_error is None
    assert outcome.peer_der is not None


async def test_ca_verified_client_refuses_a_certificate_from_another_ca(
    ca_issued_server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    other_ca_file = write_ca_file(trustme.CA(), tmp_path / "other-ca.pem")

    with trio.fail_after(NETWORK_TIMEOUT):
        outcome = await handshake(
            ca_issued_server_context,
            client_ssl_context_for_ca(other_ca_file),
            server_hostname="127.0.0.1",
        )

    error = outcome.ssl_error("client")
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in error.verify_message


async def test_ca_verified_client_refuses_a_certificate_for_another_hostname(
    trustme_ca: trustme.CA, ca_issued_server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    client_context = client_ssl_context_for_ca(write_ca_file(trustme_ca, tmp_path / "ca.pem"))

    with trio.fail_after(NETWORK_TIMEOUT):
        outcome = await handshake(
            ca_issued_server_context, client_context, server_hostname="broker.example"
        )

    error = outcome.ssl_error("client")
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert "mismatch" in error.verify_message.lower()
