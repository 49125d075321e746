"""Finding a broker on the LAN by DNS-SD/mDNS (`_mailnet._tcp`): the TXT record both sides agree
on, advertising (`mailnet serve --lan`), browsing (`mailnet login`, `mailnet servers`), and the
check that a broker presents the certificate its advertisement names.

python-zeroconf keeps its own threads; trio only starts it, waits, and stops it from a worker
thread. mDNS is unauthenticated: an advertisement is a hint where to look, and the TLS
certificate the broker presents is what is trusted (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass

import ifaddr
import trio
from zeroconf import Error as ZeroconfError
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf
from zeroconf._protocol.outgoing import DNSOutgoing

from broker import tls

log = logging.getLogger("mailnet.discovery")

SERVICE_TYPE = "_mailnet._tcp.local."
# The wire protocol of docs/protocol.md, as a TXT value; a client skips brokers of another one.
PROTOCOL_VERSION = "1"
DEFAULT_BROWSE_SECONDS = 3.0
PROBE_TIMEOUT = 3.0
_FINGERPRINT = re.compile(r"^SHA256(:[0-9A-F]{2}){32}$")
_MAX_NAME = 60  # a DNS label holds 63 bytes; zeroconf may append "-2" on a clash


class AdvertisementError(ValueError):
    """A TXT record that is not a mailnet broker's advertisement."""


@dataclass(frozen=True)
class Advertisement:
    """What a broker says about itself on the LAN (every field is the sender's claim)."""

    name: str
    fingerprint: str
    addresses: tuple[str, ...]
    port: int
    web_port: int | None = None
    protocol: str = PROTOCOL_VERSION

    def txt(self) -> dict[str, str]:
        record = {"name": self.name, "fp": self.fingerprint, "proto": self.protocol}
        if self.web_port is not None:
            record["web"] = str(self.web_port)
        return record

    @classmethod
    def from_txt(
        cls, txt: dict[bytes, bytes | None], addresses: Iterable[str], port: int
    ) -> Advertisement:
        """Parse a TXT record; raises AdvertisementError when it is not a usable one."""
        fields = {
            k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
            for k, v in txt.items()
        }
        name = printable(fields.get("name", ""))[:_MAX_NAME]
        fingerprint = fields.get("fp", "").upper()
        if not name:
            raise AdvertisementError("no broker name in the advertisement")
        if not _FINGERPRINT.match(fingerprint):
            raise AdvertisementError(f"advertisement of {name!r} has no valid fingerprint")
        web = fields.get("web", "")
        web_port = int(web) if web.isdigit() and 0 < int(web) < 65536 else None
        return cls(
            name=name,
            fingerprint=fingerprint,
            addresses=tuple(addresses),
            port=port,
            web_port=web_port,
            protocol=printable(fields.get("proto", ""))[:16],
        )


def printable(text: str) -> str:
    """`text` without control characters: names from the network reach terminals."""
    return "".join(ch for ch in text if ch.isprintable()).strip()


def default_broker_name() -> str:
    return printable(socket.gethostname().split(".")[0])[:_MAX_NAME] or "mailnet"


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other computers can reach (loopback left out).

    Link-local 169.254.x.y addresses count: a LAN with no DHCP server has only those.
    """
    found: dict[str, None] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6: the listener of --lan is IPv4 (0.0.0.0)
            address = ipaddress.ip_address(ip.ip)
            if not (address.is_loopback or address.is_multicast or address.is_unspecified):
                found.setdefault(ip.ip, None)
    return list(found)


def is_loopback_host(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# -- advertising -------------------------------------------------------------------------------


def _service_info(ad: Advertisement) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE,
        f"{ad.name}.{SERVICE_TYPE}",
        port=ad.port,
        properties=ad.txt(),
        server=f"{re.sub(r'[^A-Za-z0-9-]', '-', ad.name)}-mailnet.local.",
        parsed_addresses=list(ad.addresses),
    )


class _MulticastProbing(Zeroconf):
    """python-zeroconf whose probes for a name ask for multicast answers.

    Its probes set the unicast-response (QU) bit. A unicast answer reaches only one of the
    sockets that share port 5353 on a computer (RFC 6762 section 15.1), so a second responder
    there (another broker of the same name, a spoofer) often missed the answer defending the
    name, advertised a twin under the same instance name, and browsers saw only one of the two.
    A multicast answer reaches every socket, and zeroconf renames ours to "NAME-2".
    """

    def generate_service_query(self, info: ServiceInfo) -> DNSOutgoing:
        probe = super().generate_service_query(info)
        for question in probe.questions:
            question.unique = False  # the QU bit
        return probe


def register(ad: Advertisement) -> tuple[Zeroconf, ServiceInfo]:
    """Start advertising (blocking for zeroconf's probe and announcement, about a second)."""
    zc = _MulticastProbing(ip_version=IPVersion.V4Only)
    info = _service_info(ad)
    try:
        zc.register_service(info, allow_name_change=True)
    except BaseException:
        zc.close()
        raise
    return zc, info


def unregister(zc: Zeroconf, info: ServiceInfo) -> None:
    try:
        zc.unregister_service(info)  # a goodbye packet: browsers drop the broker at once
    finally:
        zc.close()


async def advertise(ad: Advertisement, *, task_status: trio.TaskStatus[None]) -> None:
    """Advertise `ad` until cancelled, then say goodbye."""
    try:
        zc, info = await trio.to_thread.run_sync(register, ad)
    except (OSError, ZeroconfError) as exc:  # `serve` reports an OSError as a start-up problem
        raise OSError(f"cannot advertise the broker on the LAN by mDNS: {exc}") from None
    log.info("advertising %r on %s by mDNS (%s)", ad.name, ", ".join(ad.addresses), SERVICE_TYPE)
    try:
        task_status.started()
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(unregister, zc, info, abandon_on_cancel=True)


# -- browsing ----------------------------------------------------------------------------------


class _Names(ServiceListener):
    """Collects the service names a browser sees (resolving happens after the browse)."""

    def __init__(self) -> None:
        self.names: dict[str, None] = {}

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.setdefault(name, None)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.setdefault(name, None)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.pop(name, None)


def browse_blocking(seconds: float) -> list[Advertisement]:
    """Every mailnet broker advertised on the LAN within `seconds` (blocks this thread)."""
    zc = Zeroconf(ip_version=IPVersion.V4Only)
    try:
        listener = _Names()
        browser = ServiceBrowser(zc, SERVICE_TYPE, listener)
        time.sleep(seconds)
        browser.cancel()
        found: list[Advertisement] = []
        for name in list(listener.names):
            info = ServiceInfo(SERVICE_TYPE, name)
            if not info.request(zc, 1500) or info.port is None:
                continue
            try:
                found.append(
                    Advertisement.from_txt(
                        info.properties, info.parsed_addresses(IPVersion.V4Only), info.port
                    )
                )
            except AdvertisementError as exc:
                log.info("ignoring %s: %s", name, exc)
        return found
    finally:
        zc.close()


async def browse(seconds: float = DEFAULT_BROWSE_SECONDS) -> list[Advertisement]:
    return await trio.to_thread.run_sync(browse_blocking, seconds, abandon_on_cancel=True)


# -- checking an advertisement against the broker ------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A browsed advertisement and what the broker at its address presented."""

    ad: Advertisement
    address: str | None  # HOST:PORT that answered the TLS handshake; None if none did
    presented: str | None  # the fingerprint of the certificate it presented

    @property
    def verified(self) -> bool:
        return self.presented is not None and self.presented == self.ad.fingerprint

    @property
    def spoofed(self) -> bool:
        """Reachable, but presenting a certificate other than the advertised one."""
        return self.presented is not None and self.presented != self.ad.fingerprint

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.ad.name,
            "server": self.address
            or (
                tls.format_server_address(self.ad.addresses[0], self.ad.port)
                if self.ad.addresses
                else None
            ),
            "addresses": [tls.format_server_address(a, self.ad.port) for a in self.ad.addresses],
            "fingerprint": self.ad.fingerprint,
            "presented_fingerprint": self.presented,
            "verified": self.verified,
            "protocol": self.ad.protocol,
            "web_port": self.ad.web_port,
        }


async def presented_fingerprint(host: str, port: int) -> str:
    """The fingerprint of the certificate the broker at host:port presents (nothing is sent)."""
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, tls.client_ssl_context_for_pinning(), server_hostname=host)
    try:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
    finally:
        await trio.aclose_forcefully(stream)
    if der is None:
        raise ssl.SSLError("no certificate presented")
    return tls.fingerprint_of_der(der)


async def _check(ad: Advertisement) -> Found:
    """Try every advertised address at once (a broker may list addresses of networks this
    client is not on); the first address in the advertisement's order that answers is used."""
    presented: dict[str, str] = {}

    async def try_address(host: str) -> None:
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                presented[host] = await presented_fingerprint(host, ad.port)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            log.info("cannot check %r at %s:%s: %s", ad.name, host, ad.port, exc)

    async with trio.open_nursery() as nursery:
        for host in ad.addresses:
            nursery.start_soon(try_address, host)
    for host in ad.addresses:
        if host in presented:
            return Found(ad, tls.format_server_address(host, ad.port), presented[host])
    return Found(ad, None, None)


async def check_advertisements(ads: list[Advertisement]) -> list[Found]:
    """Connect to each advertised broker (concurrently) and note the certificate it presents."""
    results: list[Found | None] = [None] * len(ads)

    async def check_one(index: int) -> None:
        results[index] = await _check(ads[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(ads)):
            nursery.start_soon(check_one, index)
    return [found for found in results if found is not None]


async def discover(seconds: float = DEFAULT_BROWSE_SECONDS) -> list[Found]:
    """Browse the LAN, then check each broker found; sorted by name, then address."""
    found = await check_advertisements(await browse(seconds))
    return sorted(found, key=lambda f: (f.ad.name.lower(), f.address or "", f.ad.fingerprint))


def lan_advertisement(
    name: str, fingerprint: str, port: int, web_port: int | None, addresses: list[str]
) -> Advertisement:
    return Advertisement(
        name=printable(name)[:_MAX_NAME] or default_broker_name(),
        fingerprint=fingerprint,
        addresses=tuple(addresses),
        port=port,
        web_port=web_port,
    )
