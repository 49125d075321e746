"""Real client addresses behind a balancer: the PROXY protocol (v1, v2) on the TCP listener and
X-Forwarded-For on the web port, believed only from `--trusted-proxy` networks.

The header parser is sans-I/O and tested without sockets; live brokers show that a relayed
client is counted (connection limits, admin sessions) by its own address, and that the same
header from an untrusted address is never believed.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.client import Trust, connect
from broker.config import Config
from broker.protocol import encode_frame
from broker.protocol.proxy import (
    NEED_MORE,
    ProxyHeader,
    ProxyHeaderError,
    TrustedProxies,
    encode_proxy_v1,
    encode_proxy_v2,
    read_proxy_header,
    trusted_proxies,
)
from tests.conftest import make_config, running_broker
from tests.test_security_limits import RawConnection

TIMEOUT = 15

# -- the parser, sans I/O -----------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@settings(max_examples=200, deadline=None)
@given(
    client=st.one_of(ipv4, ipv6),
    port=ports,
    version=st.sampled_from([1, 2]),
    trailing=st.binary(max_size=40),
    data=st.data(),
)
def test_a_header_reads_back_the_client_at_every_split(
    client: str, port: int, version: int, trailing: bytes, data: st.DataObject
) -> None:
    destination = ("::1", 7878) if ":" in client else ("192.0.2.1", 7878)
    encode = encode_proxy_v1 if version == 1 else encode_proxy_v2
    header = encode((client, port), destination)
    stream = header + trailing
    cut = data.draw(st.integers(0, len(header) - 1))
    assert read_proxy_header(stream[:cut]) is NEED_MORE  # incomplete: wait for more
    parsed = read_proxy_header(stream)
    assert isinstance(parsed, ProxyHeader)
    assert parsed.client == (str(ipaddress.ip_address(client)), port)
    assert parsed.version == version
    assert stream[parsed.length :] == trailing  # what follows is left for TLS or the framing


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            bytes.__add__,
            st.sampled_from([b"PROXY ", b"\r\n\r\n\x00\r\nQUIT\n"]),
            st.binary(max_size=300),
        ),
    )
)
def test_any_bytes_are_a_header_need_more_or_refused_never_a_crash(data: bytes) -> None:
    try:
        header = read_proxy_header(data)
    except ProxyHeaderError:
        return
    if isinstance(header, ProxyHeader):
        assert 0 < header.length <= len(data)
    else:
        assert header is NEED_MORE


def test_v1_examples_from_the_specification() -> None:
    header = read_proxy_header(b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\nX")
    assert isinstance(header, ProxyHeader)
    assert header.client == ("255.255.255.255", 65535)
    assert header.length == 56
    unknown = read_proxy_header(b"PROXY UNKNOWN\r\n")
    assert isinstance(unknown, ProxyHeader) and unknown.client is None


def test_v2_local_and_unspecified_headers_carry_no_client() -> None:
    local = read_proxy_header(encode_proxy_v2(None, ("127.0.0.1", 1)))
    assert isinstance(local, ProxyHeader) and local.client is None and local.length == 16
    # PROXY command, AF_UNIX family: nothing to count a client by.
    unix = b"\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\xd8" + bytes(216)
    parsed = read_proxy_header(unix)
    assert isinstance(parsed, ProxyHeader) and parsed.client is None


def test_v2_type_length_value_fields_after_the_addresses_are_skipped() -> None:
    header = encode_proxy_v2(("198.51.100.4", 5000), ("192.0.2.1", 7878))
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    patched = header[:14] + (len(header) - 16 + len(tlv)).to_bytes(2, "big") + header[16:] + tlv
    parsed = read_proxy_header(patched + b"rest")
    assert isinstance(parsed, ProxyHeader)
    assert parsed.client == ("198.51.100.4", 5000)
    assert patched[parsed.length :] + b"rest" == b"rest"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x00\x00\x00\x14{",  # a mailnet frame
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
        b"PROXY TCP4 ::1 ::1 80 80\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 80 80\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 80\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 80\r\n",
        b"PROXY " + b"A" * 200,
        b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
        b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + bytes(12),  # command 2
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4),  # addresses cut short
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",  # 65,535 bytes announced
    ],
)
def test_anything_else_is_not_a_proxy_header(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        read_proxy_header(data)


def test_x_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    trusted = TrustedProxies.parse(["10.0.0.0/8", "::1"])
    # From the balancer: the right-most address that is not itself a trusted proxy.
    assert trusted.forwarded_for("10.1.2.3", "203.0.113.5") == "203.0.113.5"
    assert trusted.forwarded_for("10.1.2.3", "6.6.6.6, 203.0.113.5, 10.9.9.9") == "203.0.113.5"
    assert trusted.forwarded_for("::1", "2001:db8::7") == "2001:db8::7"
    assert trusted.forwarded_for("::ffff:10.0.0.1", "198.51.100.1") == "198.51.100.1"
    # No header, or a garbled entry: the last hop that can be believed.
    assert trusted.forwarded_for("10.1.2.3", None) == "10.1.2.3"
    assert trusted.forwarded_for("10.1.2.3", "not-an-address") == "10.1.2.3"
    assert trusted.forwarded_for("10.1.2.3", "198.51.100.1, junk, 10.2.2.2") == "10.2.2.2"
    # From anyone else the header is ignored: anyone can write one.
    assert trusted.forwarded_for("198.51.100.9", "10.0.0.1") == "198.51.100.9"
    assert trusted.forwarded_for("198.51.100.9", "203.0.113.5") == "198.51.100.9"
    assert not TrustedProxies.parse([])
    with pytest.raises(ValueError, match="not an IP address or network"):
        TrustedProxies.parse(["10.0.0.0/33"])


def test_the_setting_comes_from_the_environment_comma_separated() -> None:
    config = Config().with_env({"MAILNET_TRUSTED_PROXY": "10.0.0.0/8, 192.0.2.7"})
    assert config.trusted_proxy == "10.0.0.0/8, 192.0.2.7"
    assert "192.0.2.7" in trusted_proxies(config.trusted_proxy)


# -- a live broker -------------------------------------------------------------------------------

PROXY = "127.0.0.2"  # the balancer, as the broker sees it


class Balancer:
    """Opens connections to the broker from PROXY (or another source), each starting with the
    given bytes; closes them all at the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: list[trio.SocketStream] = []

    async def __aenter__(self) -> Balancer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for stream in self.streams:
            await trio.aclose_forcefully(stream)

    async def open(self, header: bytes, *, source: str = PROXY) -> RawConnection:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port, local_address=source)
        self.streams.append(stream)
        await stream.send_all(header)
        return RawConnection(stream)


def v1(client: str) -> bytes:
    return encode_proxy_v1((client, 40000), ("127.0.0.1", 7878))


async def sessions_by_address(broker: Any) -> dict[str, int]:
    async with broker.user("root") as admin:  # the first account is the admin
        rows = await admin.admin_sessions()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["address"]] = counts.get(row["address"], 0) + 1
    return counts


async def test_clients_behind_a_trusted_proxy_are_counted_by_their_own_address(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, trusted_proxy=PROXY + "/32", max_connections_per_ip=2)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker, AsyncExitStack() as stack:
            async with broker.user("root"):
                pass
            balancer = await stack.enter_async_context(Balancer(broker.info.tcp_port))
            proxied = balancer.open
            alice = await proxied(v1("203.0.113.10"))
            bob = await proxied(encode_proxy_v2(("2001:db8::20", 1), ("::1", 7878)))
            # The header and the first frame in one segment: nothing after the header is lost.
            carol_first = v1("203.0.113.10") + encode_frame({"op": "ping", "id": 9})
            carol = await proxied(carol_first)
            assert (await carol.receive())["pong"] is True
            for raw, name in ((alice, "alice"), (bob, "bob")):
                reply = await raw.request("login", username=name, password="password1", create=True)
                assert reply["ok"] is True, reply
            # A third connection of 203.0.113.10 is over its own limit of 2 ...
            third = await proxied(v1("203.0.113.10"))
            refused = await third.wait_closed()
            assert refused[0]["error"]["code"] == "too_many_connections"
            # ... while another client of the same balancer still gets in.
            dave = await proxied(v1("198.51.100.30"))
            assert (await dave.request("ping"))["pong"] is True
            addresses = await sessions_by_address(broker)
            assert addresses.get("203.0.113.10") == 1
            assert addresses.get("2001:db8::20") == 1
            assert PROXY not in addresses
            # A health check (v2 LOCAL) is the balancer's own connection.
            check = await proxied(encode_proxy_v2(None, ("127.0.0.1", 7878)))
            assert (await check.request("ping"))["pong"] is True


async def test_a_trusted_proxy_without_a_valid_header_is_closed(tmp_path: Path) -> None:
    config = make_config(tmp_path, trusted_proxy=PROXY, login_timeout=2.0)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker, Balancer(broker.info.tcp_port) as balancer:
            proxied = balancer.open
            garbled = await proxied(encode_frame({"op": "ping", "id": 1}))
            assert await garbled.wait_closed() == []
            silent = await proxied(b"PROXY TCP4 ")  # never finishes its line
            assert await silent.wait_closed() == []
            # The listener is unharmed.
            async with connect(broker.address, trust=Trust.plaintext()) as client:
                await client.login("erin", "password1", create=True)


async def test_a_proxy_header_from_an_untrusted_address_is_not_believed(tmp_path: Path) -> None:
    config = make_config(tmp_path, trusted_proxy=PROXY)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker, Balancer(broker.info.tcp_port) as balancer:
            async with broker.user("root"):
                pass
            spoof = await balancer.open(v1("203.0.113.99"), source="127.0.0.3")
            # "PROX" read as a frame's length prefix: over a gigabyte, refused and closed.
            frames = await spoof.wait_closed()
            assert frames[0]["error"]["code"] == "frame_too_large"
            assert "203.0.113.99" not in await sessions_by_address(broker)


async def test_the_proxy_header_comes_before_the_tls_handshake(tmp_path: Path) -> None:
    config = make_config(tmp_path, insecure_plaintext=False, trusted_proxy=PROXY)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker, Balancer(broker.info.tcp_port) as balancer:
            raw = await balancer.open(v1("203.0.113.77"))
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            tls = trio.SSLStream(raw.stream, context, server_side=False)
            client = RawConnection(tls)
            reply = await client.request(
                "login", username="root", password="password1", create=True
            )
            assert reply["ok"] is True
            await client.send_raw(encode_frame({"op": "admin_sessions", "id": 2}))
            while "event" in (answer := await client.receive()):
                pass  # presence events may come first
            assert answer["sessions"][0]["address"] == "203.0.113.77"
            await tls.aclose()


# -- the web port ---------------------------------------------------------------------------------


async def test_the_web_port_believes_x_forwarded_for_from_trusted_proxies_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path, web_port=0, trusted_proxy=PROXY)
    wrong = {"username": "alice", "password": "wrong-password"}
    forwarded = {"X-Forwarded-For": "192.0.2.200, 198.51.100.50"}
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker:
            for source in (PROXY, "127.0.0.3"):
                transport = httpx.AsyncHTTPTransport(local_address=source)
                async with httpx.AsyncClient(
                    base_url=broker.info.web[0], transport=transport, timeout=TIMEOUT
                ) as web:
                    response = await web.post("/api/login", json=wrong, headers=forwarded)
                    assert response.json()["error"]["code"] == "auth_failed"
    failures = [r.getMessage() for r in caplog.records if "login failed" in r.getMessage()]
    # Through the balancer: the client it saw (the right-most entry), not the balancer, and
    # not the left-most entry, which the client wrote itself. From elsewhere: the peer.
    assert failures == [
        "login failed for 'alice' from 198.51.100.50",
        "login failed for 'alice' from 127.0.0.3",
    ]
