"""What `mailnet serve --lan` prints: the advertised name, the LAN addresses and the web UI's LAN
address with a QR code of it for phones."""

from __future__ import annotations

from typing import Any

from broker.discovery import SERVICE_TYPE, Advertisement
from broker.lan import qr_text, web_urls
from broker.tls import format_server_address


def lan_summary_json(ad: Advertisement | None) -> dict[str, Any]:
    if ad is None:
        return {}
    return {
        "lan": {
            "name": ad.name,
            "service": SERVICE_TYPE,
            "addresses": [format_server_address(a, ad.port) for a in ad.addresses],
            "web": web_urls(ad),
            "advertised": bool(ad.addresses),
        }
    }


def lan_summary_lines(ad: Advertisement | None) -> list[str]:
    if ad is None:
        return []
    if not ad.addresses:
        return [
            "LAN: this computer has no network address other than loopback; not advertising.",
            "  (connect it to the network and start the broker again)",
        ]
    lines = [f"On the LAN as '{ad.name}' (mDNS {SERVICE_TYPE.removesuffix('.local.')}):"]
    lines += [f"  {format_server_address(a, ad.port)}" for a in ad.addresses]
    lines.append("  other computers on this network just run `mailnet login NAME`")
    urls = web_urls(ad)
    if urls:
        lines += [f"Web UI on the LAN: {url}" for url in urls]
        lines.append(f"Scan to open {urls[0]} on a phone:")
        lines.append(qr_text(urls[0]).rstrip("\n"))
    return lines
