"""`serve(config)`: open the store, migrate it, and run the broker's listeners in one nursery."""

from __future__ import annotations

import dataclasses
import logging
import ssl
from dataclasses import dataclass, field
from functools import partial

import trio

from broker import tls
from broker.config import Config, ConfigError
from broker.core import Broker
from broker.core.commits import choose_committer
from broker.core.throttle import ConnectionLimits
from broker.discovery import Advertisement
from broker.gctune import tune_gc
from broker.protocol.proxy import trusted_proxies
from broker.store import MailStore, call_guarded, named_connections
from broker.store.entry import open_store as open_migrated_store
from broker.tls import certificate_paths  # shared with the web server (broker/web/app.py)
from broker.transport.deadlines import ReadDeadlines
from broker.transport.tcp import handle_connection

log = logging.getLogger("mailnet.server")


@dataclass(frozen=True)
class ServerInfo:
    """What a started broker listens on: (host, port) pairs, and its TLS fingerprint if any."""

    tcp: list[tuple[str, int]]
    fingerprint: str | None
    web: list[str] = field(default_factory=list)
    db_url: str = ""
    lan: Advertisement | None = None  # what `--lan` advertises by mDNS

    @property
    def tcp_port(self) -> int:
        return self.tcp[0][1]


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


def use_cluster_certificate(config: Config, store: MailStore) -> Config:
    """The config with the certificate every node on this database presents (stored in the
    database by the first node; see docs/security.md)."""
    paths = tls.ensure_cluster_certificate(
        config.data_dir, [config.host], partial(call_guarded, store.shared_certificate)
    )
    return dataclasses.replace(config, tls_cert=paths.cert_path, tls_key=paths.key_path)


def open_store(config: Config) -> MailStore:
    # Named in pg_stat_activity (application_name) after this node.
    return open_migrated_store(named_connections(config.db_url, f"mailnet {config.node}"))


async def serve(
    config: Config, *, task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the broker until cancelled. Acknowledged sends are committed before any answer."""
    if config.lan:
        from broker.lan import check_lan_config

        check_lan_config(config)
    _tls_context(config)  # a bad certificate or address is refused before the database
    try:
        trusted_proxies(config.trusted_proxy)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    store = await trio.to_thread.run_sync(open_store, config)
    tune_gc()
    try:
        own_pair = config.tls_cert and config.tls_key
        if store.shares_commits and not config.insecure_plaintext and not own_pair:
            config = await trio.to_thread.run_sync(use_cluster_certificate, config, store)
        ssl_context, fingerprint = _tls_context(config)
        broker = Broker(store, config, committer=choose_committer(store, config))
        limits = ConnectionLimits(config.max_connections, config.max_connections_per_ip)
        broker.metrics.watch_connections("tcp", lambda: limits.open)
        deadlines = ReadDeadlines(config.login_timeout, config.heartbeat_timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            nursery.start_soon(deadlines.run)
            listeners = await nursery.start(
                partial(
                    trio.serve_tcp,
                    partial(
                        handle_connection,
                        broker,
                        config,
                        limits,
                        deadlines,
                        ssl_context=ssl_context,
                    ),
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
            if config.lan:
                from broker.lan import advertise_broker

                lan = await advertise_broker(
                    nursery, config, info.fingerprint, info.tcp_port, info.web
                )
                info = dataclasses.replace(info, lan=lan)
            log.info("mailnet listening on %s", addresses)
            task_status.started(info)
    finally:
        store.close()
