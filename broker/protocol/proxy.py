"""The PROXY protocol (HAProxy's, versions 1 and 2), sans I/O, and who counts as a trusted proxy.

A balancer in front of the broker opens every connection with one PROXY header naming the
client it relays. `read_proxy_header(bytes)` returns the parsed header and how many bytes it
took, `NEED_MORE` while the header is incomplete, or raises `ProxyHeaderError`. The broker reads
a header only from `TrustedProxies` (see broker/transport/proxied.py); from anyone else the
bytes are never looked at. `forwarded_for` picks the client out of an X-Forwarded-For header
the same way: only hops appended by trusted proxies are believed.

Specification: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

V1_PREFIX: Final = b"PROXY "
V1_MAX_BYTES: Final = 107  # the specification's worst case, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = struct.Struct("!12sBBH")  # signature, version+command, family+protocol, length
# v2 allows 65,535 bytes of addresses and TLVs; no balancer sends more than a few hundred.
V2_MAX_PAYLOAD: Final = 4096

_V2_FAMILIES: Final = {
    0x11: (4, 12),  # TCP over IPv4: two 4-byte addresses, two ports
    0x21: (16, 36),  # TCP over IPv6
}


class ProxyHeaderError(ValueError):
    """Bytes that are not a valid PROXY header; the connection cannot be trusted or read."""


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: the relayed client's address and port, or None for a connection the
    proxy made itself (v2 LOCAL, v1 UNKNOWN: a health check); `length` bytes were consumed."""

    length: int
    version: int
    client: tuple[str, int] | None
    destination: tuple[str, int] | None = None


def read_proxy_header(data: bytes) -> ProxyHeader | _NeedMore:
    """The PROXY header at the start of `data` (which may hold more bytes after it)."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)] and len(data) < len(V2_SIGNATURE):
        return NEED_MORE  # could still become a v2 signature ...
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)] and len(data) < len(V1_PREFIX):
        return NEED_MORE  # ... or a v1 line
    if data.startswith(V2_SIGNATURE):
        return _read_v2(data)
    if data.startswith(V1_PREFIX):
        return _read_v1(data)
    raise ProxyHeaderError("the connection does not start with a PROXY protocol header")


def _read_v1(data: bytes) -> ProxyHeader | _NeedMore:
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_BYTES} bytes")
        return NEED_MORE
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    fields = line.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(length=end + 2, version=1, client=None)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    _, family, source, destination, source_port, destination_port = fields
    version = 4 if family == "TCP4" else 6
    return ProxyHeader(
        length=end + 2,
        version=1,
        client=(_v1_address(source, version), _v1_port(source_port)),
        destination=(_v1_address(destination, version), _v1_port(destination_port)),
    )


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address {text[:45]!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 address {text!r} is not IPv{version}")
    return str(address)


def _v1_port(text: str) -> int:
    # Decimal digits only, no sign, no leading zeros (as the specification says).
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1 port {text[:8]!r} is not a port number")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {port} is out of range")
    return port


def _read_v2(data: bytes) -> ProxyHeader | _NeedMore:
    if len(data) < V2_HEADER.size:
        return NEED_MORE
    _, version_command, family, length = V2_HEADER.unpack_from(data)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header of version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes is over {V2_MAX_PAYLOAD}")
    total = V2_HEADER.size + length
    if len(data) < total:
        return NEED_MORE
    if command == 0:  # LOCAL: the proxy's own connection; the addresses are to be ignored
        return ProxyHeader(length=total, version=2, client=None)
    shape = _V2_FAMILIES.get(family)
    if shape is None:  # UNSPEC, UDP or UNIX: nothing the broker can count a client by
        return ProxyHeader(length=total, version=2, client=None)
    size, needed = shape
    if length < needed:
        raise ProxyHeaderError(f"PROXY v2 addresses need {needed} bytes, got {length}")
    body = data[V2_HEADER.size : total]
    source = ipaddress.ip_address(body[:size])
    destination = ipaddress.ip_address(body[size : 2 * size])
    source_port, destination_port = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(
        length=total,
        version=2,
        client=(str(source), source_port),
        destination=(str(destination), destination_port),
    )


def encode_proxy_v1(client: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header (what a balancer sends; for tests and tools)."""
    family = "TCP6" if ":" in client[0] else "TCP4"
    return (f"PROXY {family} {client[0]} {destination[0]} {client[1]} {destination[1]}\r\n").encode(
        "ascii"
    )


def encode_proxy_v2(client: tuple[str, int] | None, destination: tuple[str, int]) -> bytes:
    """A v2 header; `client=None` makes a LOCAL one (a balancer's health check)."""
    if client is None:
        return V2_HEADER.pack(V2_SIGNATURE, 0x20, 0x00, 0)
    source, target = ipaddress.ip_address(client[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if source.version == 4 else 0x21
    body = source.packed + target.packed + struct.pack("!HH", client[1], destination[1])
    return V2_HEADER.pack(V2_SIGNATURE, 0x21, family, len(body)) + body


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The networks whose PROXY headers and X-Forwarded-For entries are believed."""

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, cidrs: Iterable[str]) -> TrustedProxies:
        """From `--trusted-proxy` values (`10.0.0.0/8`, `192.0.2.7`, `::1`); ValueError for
        anything that is not an address or a network."""
        networks = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted proxy {cidr!r} is not an IP address or network (CIDR)"
                ) from None
        return cls(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        ip = _address(address)
        return ip is not None and any(ip in network for network in self.networks)

    def forwarded_for(self, peer: str, header: str | None) -> str:
        """The client's address for a request from `peer` carrying this X-Forwarded-For.

        From an untrusted peer the header is ignored: anyone can write one. From a trusted
        proxy the entries are read from the right (each proxy appends the address it saw),
        skipping further trusted proxies, and the first other address is the client. An
        entry that is not an IP address ends the walk at the last believed hop.
        """
        if peer not in self or not header:
            return peer
        client = peer
        for entry in reversed(header.split(",")):
            address = _address(entry)
            if address is None:
                break
            client = str(address)
            if client not in self:
                break
        return client


@functools.cache
def trusted_proxies(setting: str) -> TrustedProxies:
    """The `trusted_proxy` setting (comma-separated), parsed once; the broker checks it when it
    starts."""
    return TrustedProxies.parse(cidr for cidr in setting.split(",") if cidr.strip())
