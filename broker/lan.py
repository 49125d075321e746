"""The broker on a LAN (`mailnet serve --lan`): the checks, the mDNS advertisement started beside
the listeners, the web UI's LAN address for invitations, and its QR code (text and SVG).
"""

from __future__ import annotations

import io
from urllib.parse import urlsplit

import segno
import trio

from broker.config import Config, ConfigError
from broker.discovery import (
    Advertisement,
    advertise,
    default_broker_name,
    is_loopback_host,
    lan_addresses,
    lan_advertisement,
)
from broker.tls import format_server_address

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def check_lan_config(config: Config) -> None:
    """Refuse the settings under which an advertisement would mislead or expose passwords."""
    if config.insecure_plaintext:
        raise ConfigError(
            "--lan needs TLS: clients check the advertised certificate fingerprint, and "
            "passwords must not cross the network in clear (leave out --insecure-plaintext)"
        )
    if is_loopback_host(config.host):
        raise ConfigError(
            f"--lan with --host {config.host}: other computers cannot reach a loopback address; "
            "leave out --host to listen on every interface"
        )


def advertised_addresses(config: Config) -> list[str]:
    if config.host in WILDCARD_HOSTS:
        return lan_addresses()
    return [config.host]


async def advertise_broker(
    nursery: trio.Nursery,
    config: Config,
    fingerprint: str | None,
    tcp_port: int,
    web: list[str],
) -> Advertisement:
    """Start advertising the started broker (its certificate's fingerprint, TCP port and web
    URLs) in `nursery`; what is advertised."""
    web_port = urlsplit(web[0]).port if web else None
    ad = lan_advertisement(
        config.lan_name or default_broker_name(),
        fingerprint or "",
        tcp_port,
        web_port,
        advertised_addresses(config),
    )
    if ad.addresses:
        await nursery.start(advertise, ad)
    return ad


def web_urls(ad: Advertisement) -> list[str]:
    """The web UI's LAN addresses (empty when the web UI is off)."""
    if ad.web_port is None:
        return []
    return [f"https://{format_server_address(host, ad.web_port)}/" for host in ad.addresses]


def invite_url(config: Config, scheme: str, local_host: str, port: int) -> str | None:
    """The web UI's address for someone else on the LAN, or None when it listens on loopback.

    `local_host` and `port` are where the asking browser reached the web UI: that address is the
    best one to share unless it is loopback (the broker's own computer).
    """
    if config.host in WILDCARD_HOSTS:
        candidates = [local_host] if not is_loopback_host(local_host) else []
        candidates += lan_addresses()
    elif is_loopback_host(config.host):
        return None
    else:
        candidates = [config.host]
    if not candidates:
        return None
    return f"{scheme}://{format_server_address(candidates[0].strip('[]'), port)}/"


def qr_text(url: str) -> str:
    """A QR code of `url` drawn with half blocks, two rows a line, dark on a light quiet zone."""
    buffer = io.StringIO()
    segno.make(url, error="m").terminal(out=buffer, compact=True)
    return buffer.getvalue()


def qr_svg(url: str) -> str:
    """A QR code of `url` as a standalone SVG document."""
    buffer = io.BytesIO()
    segno.make(url, error="m").save(
        buffer, kind="svg", scale=4, border=4, dark="#000", light="#fff", xmldecl=False, title=url
    )
    return buffer.getvalue().decode("utf-8")
