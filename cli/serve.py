"""`mailnet serve` (run the broker until Ctrl-C/SIGTERM) and `mailnet db upgrade|current`.

Settings come from MAILNET_* (Config.with_env) with command-line flags on top. The broker and
store modules are imported inside the commands so client commands start quickly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import click
import trio

from broker.config import REGISTRATION_POLICIES, SEND_WRITERS, Config

from .lan import lan_summary_json, lan_summary_lines
from .output import EXIT_USAGE, CliError, emit_json, fail

LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(node)s] %(name)s: %(message)s"
WILDCARD_HOSTS = {"0.0.0.0": socket.AF_INET, "::": socket.AF_INET6, "": socket.AF_UNSPEC}


def redact_url(url: str) -> str:
    """The database URL with any password replaced by ***."""
    return re.sub(r"^([\w+.-]+://[^:/@]*):[^@]*@", r"\1:***@", url)


def _is_config_problem(exc: BaseException) -> bool:
    from broker import tls
    from broker.config import ConfigError
    from broker.store.entry import StoreUnavailable

    # ValueError covers a malformed --db URL; StoreUnavailable a database that cannot be reached.
    return isinstance(exc, ConfigError | tls.TLSError | ValueError | OSError | StoreUnavailable)


def client_addresses(bound: list[tuple[str, int]]) -> list[str]:
    """Every HOST:PORT a client can use: a wildcard bind lists this machine's addresses."""
    from broker.tls import format_server_address

    seen: dict[str, None] = {}
    for host, port in bound:
        family = WILDCARD_HOSTS.get(host)
        if family is None:
            seen.setdefault(format_server_address(host, port), None)
            continue
        hosts = ["127.0.0.1"] if family != socket.AF_INET6 else []
        if family != socket.AF_INET:
            hosts.append("::1")
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)
        except OSError:
            infos = []
        hosts += [str(info[4][0]) for info in infos]
        if family != socket.AF_INET6:
            hosts += _outbound_ipv4()
        for name in hosts:
            if "%" in name:  # a link-local address needs its zone; skip it
                continue
            seen.setdefault(format_server_address(name, port), None)
    return list(seen)


def _outbound_ipv4() -> list[str]:
    """The address this machine uses toward other networks (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing decision only
            return [str(probe.getsockname()[0])]
    except OSError:
        return []


def client_urls(urls: list[str]) -> list[str]:
    """The web UI's URLs, with a wildcard host replaced by this machine's addresses."""
    result: dict[str, None] = {}
    for url in urls:
        parts = urlsplit(url)
        host = (parts.hostname or "").strip("[]")
        if host not in WILDCARD_HOSTS or parts.port is None:
            result.setdefault(url, None)
            continue
        for address in client_addresses([(host, parts.port)]):
            result.setdefault(urlunsplit(parts._replace(netloc=address)), None)
    return list(result)


# The limits of docs/security.md, one flag each (defaults from broker.config.Config).
LIMIT_FLAGS: tuple[tuple[str, Any, str], ...] = (
    ("max_frame_bytes", click.IntRange(min=1024), "largest frame accepted, in bytes"),
    ("max_pre_login_frame_bytes", click.IntRange(min=1024), "largest frame before login"),
    ("pre_login_buffer_bytes", click.IntRange(min=1024), "bytes held for all not logged in"),
    ("login_timeout", click.FloatRange(min=0.1), "seconds to finish TLS and log in"),
    ("max_connections", click.IntRange(min=1), "open connections in total"),
    ("max_connections_per_ip", click.IntRange(min=1), "open connections per address"),
    ("send_rate", click.FloatRange(min=0.01), "sends per second per user, sustained"),
    ("send_burst", click.IntRange(min=1), "sends per user in a burst"),
    ("mailbox_quota", click.IntRange(min=1), "undelivered entries a mailbox may hold"),
    ("min_free_disk_bytes", click.IntRange(min=0), "refuse sends below this free disk space"),
    ("login_failures_per_hour", click.IntRange(min=1), "failed logins per account per hour"),
    ("login_slow_after", click.IntRange(min=1), "failures before attempts are spaced out"),
    ("login_max_delay", click.FloatRange(min=0), "longest spacing between login attempts"),
    ("invite_ttl", click.FloatRange(min=1), "seconds an invite code stays valid"),
    ("revoked_session_check", click.FloatRange(min=0.1), "seconds between revocation checks"),
    ("max_in_flight_per_connection", click.IntRange(min=1), "sends in flight per connection"),
    ("bcrypt_rounds", click.IntRange(4, 31), "bcrypt cost of new password hashes"),
)


def limit_options(command: Any) -> Any:
    defaults = Config.__dataclass_fields__
    for name, kind, text in reversed(LIMIT_FLAGS):
        default = defaults[name].default
        command = click.option(
            "--" + name.replace("_", "-"),
            type=kind,
            help=f"{text[0].upper()}{text[1:]} [default {default}; env MAILNET_{name.upper()}].",
        )(command)
    return command


@click.command()
@click.option("--host", help="Address to bind [env MAILNET_HOST; default 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port [default 7878; 0: any].")
@click.option("--web-port", type=click.IntRange(-1, 65535), help="Web UI port; -1 turns it off.")
@click.option("--db", metavar="URL", help="SQLAlchemy database URL [default: DATA_DIR/mailnet.db].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--heartbeat-timeout", type=click.FloatRange(min=1), metavar="SECONDS")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--insecure-plaintext", is_flag=True, default=None, help="No TLS (loopback only).")
@click.option(
    "--allow-plaintext-on-network",
    is_flag=True,
    default=None,
    help="Allow --insecure-plaintext on a non-loopback address.",
)
@click.option(
    "--registration",
    type=click.Choice(REGISTRATION_POLICIES),
    help="Who may create accounts [default open].",
)
@click.option(
    "--send-writer",
    type=click.Choice(SEND_WRITERS),
    help="Where SQLite group commits run [default process; env MAILNET_SEND_WRITER].",
)
@click.option(
    "--lan",
    is_flag=True,
    default=None,
    help="Serve the local network: every interface, TLS, advertised by mDNS, QR code.",
)
@click.option("--lan-name", metavar="NAME", help="Name advertised with --lan [default: hostname].")
@click.option(
    "--trusted-proxy",
    multiple=True,
    metavar="CIDR",
    callback=lambda _ctx, _param, values: ",".join(values) or None,
    help="A balancer whose PROXY protocol (TCP) and X-Forwarded-For (web) headers are believed;"
    " repeatable [env MAILNET_TRUSTED_PROXY, comma-separated].",
)
@click.option(
    "--node-name",
    metavar="NAME",
    help="This node's name in logs, admin listings and metrics [default: the host name].",
)
@limit_options
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the startup summary as JSON.")
def serve(log_level: str, as_json: bool, **flags: Any) -> None:
    """Run the broker until Ctrl-C or SIGTERM (every option also as MAILNET_<OPTION>)."""
    try:
        config = Config().with_env()
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    if config.lan and flags["host"] is None and not os.environ.get("MAILNET_HOST"):
        config = dataclasses.replace(config, host="0.0.0.0")  # --lan: every interface
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    _name_node_in_logs(config.node)
    if log_level != "debug":  # alembic narrates every plugin and migration at INFO
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        trio.run(_serve_until_signal, config, as_json)
    except BaseException as raw:
        from .output import innermost

        inner = innermost(raw)
        if isinstance(inner, CliError):
            raise inner from None
        if _is_config_problem(inner):
            raise CliError(f"cannot start the broker: {inner}", EXIT_USAGE) from None
        raise inner from None


def _name_node_in_logs(node: str) -> None:
    """Every log line names this node (several nodes' logs often end up in one place)."""

    def add_node(record: logging.LogRecord) -> bool:
        record.node = node
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(add_node)


async def _serve_until_signal(config: Config, as_json: bool) -> None:
    from broker.server import serve as serve_broker

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(serve_broker, config)
            _print_started(config, info, as_json)
            async for signum in signals:
                logging.getLogger("mailnet.cli").info(
                    "%s received: stopping", signal.Signals(signum).name
                )
                nursery.cancel_scope.cancel()
                break


def _print_started(config: Config, info: Any, as_json: bool) -> None:
    addresses = client_addresses(info.tcp)
    database = redact_url(info.db_url or config.db_url)
    if as_json:
        emit_json(
            {
                "addresses": addresses,
                "tls": info.fingerprint is not None,
                "fingerprint": info.fingerprint,
                "web": client_urls(list(info.web)),
                "db": database,
                **lan_summary_json(info.lan),
                "node": config.node,
            }
        )
    else:
        scheme = "TLS" if info.fingerprint else "plaintext, no TLS"
        lines = [f"mailnet broker listening ({scheme}) on:"]
        lines += [f"  {address}" for address in addresses]
        if info.fingerprint:
            lines.append(f"TLS certificate fingerprint: {info.fingerprint}")
            lines.append("  (clients pin it on first use: check it matches what they print)")
        else:
            lines.append(
                "Clients connect with --insecure-plaintext (or MAILNET_INSECURE_PLAINTEXT=1)."
            )
        lines += [f"Web UI: {url}" for url in client_urls(list(info.web))]
        lines.append(f"Database: {database}")
        lines += lan_summary_lines(info.lan)
        # Named when asked to, or as one of several nodes on one database (not SQLite).
        if config.node_name or not config.db_url.startswith("sqlite"):
            lines.append(f"Node name: {config.node}")
        lines.append("Stop with Ctrl-C.")
        click.echo("\n".join(lines))
    sys.stdout.flush()


# -- db ----------------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """Database schema: apply migrations, show the revision."""


db_option = click.option(
    "--db",
    "url",
    metavar="URL",
    help="SQLAlchemy URL [env MAILNET_DB; default: the broker's SQLite file].",
)


def _database_url(url: str | None) -> str:
    """--db, or the configured database."""
    return url or Config().with_env().db_url


def _database_failure(target: str, exc: Exception) -> NoReturn:
    """One line for a --db URL that cannot be used (ValueError) or reached (StoreUnavailable)."""
    problem = "use" if isinstance(exc, ValueError) else "reach"
    fail(f"cannot {problem} database {redact_url(target)}: {exc}", EXIT_USAGE)


@db.command()
@db_option
def upgrade(url: str | None) -> None:
    """Migrate the database to the newest schema (creating it if needed)."""
    from broker.store.entry import StoreUnavailable, upgrade_schema

    target = _database_url(url)
    try:
        before, after = upgrade_schema(target)
    except (ValueError, StoreUnavailable) as exc:
        _database_failure(target, exc)
    if before == after:
        click.echo(f"Already at the newest revision ({after}).")
    else:
        click.echo(f"Upgraded {before or 'an empty database'} -> {after}.")


@db.command()
@db_option
@click.option("--json", "as_json", is_flag=True)
def current(url: str | None, as_json: bool) -> None:
    """Show the database's schema revision and the newest one."""
    from broker.store.entry import StoreUnavailable, schema_revisions

    target = _database_url(url)
    try:
        revisions = schema_revisions(target)
    except (ValueError, StoreUnavailable) as exc:
        _database_failure(target, exc)
    revision, head = revisions.current, revisions.head
    if as_json:
        emit_json({"current": revision, "head": head, "up_to_date": revision == head})
        return
    state = "up to date" if revision == head else "run `mailnet db upgrade`"
    click.echo(f"current: {revision or '(empty database)'}\nhead:    {head} ({state})")
