"""Connections relayed by a trusted balancer: read the PROXY header, count the real client.

A connection from an address in `--trusted-proxy` must open with a PROXY protocol header
(v1 or v2, before any TLS); the client it names is then the connection's peer for the
connection limits, the login throttle and the logs. Connections from other addresses are never
read this way: a PROXY header from them reaches the TLS handshake or the framing as ordinary
bytes and fails there.
"""

from __future__ import annotations

import logging

import trio

from broker.config import Config
from broker.protocol.proxy import (
    NEED_MORE,
    V1_MAX_BYTES,
    V2_HEADER,
    V2_MAX_PAYLOAD,
    ProxyHeader,
    ProxyHeaderError,
    read_proxy_header,
    trusted_proxies,
)

log = logging.getLogger("mailnet.proxy")

MAX_HEADER_BYTES = max(V1_MAX_BYTES, V2_HEADER.size + V2_MAX_PAYLOAD)


class PrefixedStream(trio.abc.Stream):
    """A stream that first returns bytes already read from it (what followed the header)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = stream
        self._prefix = prefix

    @property
    def socket(self) -> object:  # peer_address() and getpeername() callers look for it
        return getattr(self.transport_stream, "socket", None)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self.transport_stream, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


async def accept_proxied(
    stream: trio.abc.Stream, peer: str, config: Config, *, deadline: float
) -> tuple[trio.abc.Stream, str] | None:
    """The stream to go on with and the client's address. None if a trusted proxy sent no
    valid header in time: the connection is then closed already. Untrusted peers: unchanged."""
    if not config.trusted_proxy or peer not in trusted_proxies(config.trusted_proxy):
        return stream, peer
    try:
        relayed = await _read_header(stream, peer, deadline)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("proxy %s dropped the connection before its PROXY header: %s", peer, exc)
        relayed = None
    if relayed is None:
        await trio.aclose_forcefully(stream)
    return relayed


async def _read_header(
    stream: trio.abc.Stream, peer: str, deadline: float
) -> tuple[trio.abc.Stream, str] | None:
    data = b""
    with trio.move_on_at(deadline):
        while True:
            try:
                header = read_proxy_header(data)
            except ProxyHeaderError as exc:
                log.warning("closing connection from proxy %s: %s", peer, exc)
                return None
            if header is not NEED_MORE:
                break
            chunk = await stream.receive_some(MAX_HEADER_BYTES)
            if not chunk:  # a health check that only connects, or a proxy giving up
                log.debug("proxy %s closed the connection before its PROXY header", peer)
                return None
            data += chunk
        assert isinstance(header, ProxyHeader)
        rest = data[header.length :]
        # No client: the proxy's own connection (a health check) counts as the proxy.
        client = peer if header.client is None else header.client[0]
        log.debug("connection from %s relayed by proxy %s", client, peer)
        return (PrefixedStream(stream, rest) if rest else stream), client
    log.info("closing connection from proxy %s: no PROXY header in time", peer)
    return None
