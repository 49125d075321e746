"""`serve(config)`: open the store, migrate it, and run the broker's listeners in one nursery."""

from __future__ import annotations

import dataclasses
import logging
import ssl
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from broker import tls
from broker.config import Config
from broker.core import Broker
from broker.core.throttle import ConnectionLimits
from broker.store import MailStore, call_guarded, migrate, named_connections
from broker.transport.tcp import handle_connection

log = logging.getLogger("mailnet.server")


@dataclass(frozen=True)
class ServerInfo:
    """What a started broker listens on: (host, port) pairs, and its TLS fingerprint if any."""

    tcp: list[tuple[str, int]]
    fingerprint: str | None
    web: list[str] = field(default_factory=list)
    db_url: str = ""

    @property
    def tcp_port(self) -> int:
        return self.tcp[0][1]


class ConfigError(Exception):
    """The broker cannot start with this configuration; the message says why."""


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _tls_context(config: Config) -> tuple[ssl.SSLContext | None, str | None]:
    if config.insecure_plaintext:
        if not _is_loopback(config.host) and not config.allow_plaintext_on_network:
            raise ConfigError(
                f"refusing plaintext on {config.host}: passwords would cross the network in "
                "clear. Add --allow-plaintext-on-network if you really mean it."
            )
        return None, None
    cert, key = certificate_paths(config)
    context = tls.server_ssl_context(cert, key)
    return context, tls.certificate_fingerprint(cert.read_bytes())


def certificate_paths(config: Config) -> tuple[Path, Path]:
    """The broker's certificate and key: configured ones, or its own self-signed pair.

    The TCP listener and the web server use the same pair, so one pinned fingerprint covers both.
    """
    if config.tls_cert and config.tls_key:
        return config.tls_cert, config.tls_key
    paths = tls.ensure_self_signed_certificate(config.data_dir, [config.host])
    return paths.cert_path, paths.key_path


def use_cluster_certificate(config: Config, store: MailStore) -> Config:
    """The config with the certificate every node on this database presents (stored in the
    database by the first node; see docs/security.md)."""
    paths = tls.ensure_cluster_certificate(
        config.data_dir, [config.host], partial(call_guarded, store.shared_certificate)
    )
    return dataclasses.replace(config, tls_cert=paths.cert_path, tls_key=paths.key_path)


def open_store(config: Config) -> MailStore:
    store = MailStore.open(named_connections(config.db_url, f"mailnet {config.node}"))
    migrate.upgrade(store.engines.write)
    return store


async def serve(
    config: Config, *, task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the broker until cancelled. Acknowledged sends are committed before any answer."""
    _tls_context(config)  # a bad certificate or address is refused before the database
    store = await trio.to_thread.run_sync(open_store, config)
    try:
        own_pair = config.tls_cert and config.tls_key
        if store.shares_commits and not config.insecure_plaintext and not own_pair:
            config = await trio.to_thread.run_sync(use_cluster_certificate, config, store)
        ssl_context, fingerprint = _tls_context(config)
        broker = Broker(store, config)
        limits = ConnectionLimits(config.max_connections, config.max_connections_per_ip)
        broker.metrics.watch_connections("tcp", lambda: limits.open)
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            listeners = await nursery.start(
                partial(
                    trio.serve_tcp,
                    partial(handle_connection, broker, config, limits, ssl_context=ssl_context),
                    config.port,
                    host=config.host,
                )
            )
            addresses = [tuple(lst.socket.getsockname()[:2]) for lst in listeners]
            web: list[str] = []
            if config.web_port >= 0:
                from broker.web.app import serve_web

                web = await nursery.start(serve_web, broker, config)
            info = ServerInfo(tcp=addresses, fingerprint=fingerprint, web=web, db_url=config.db_url)
            log.info("mailnet listening on %s", addresses)
            task_status.started(info)
    finally:
        store.close()
