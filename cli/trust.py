"""`mailnet trust list|forget`: the certificate pins in known_servers.json, without a text editor.

The file is rewritten atomically (broker.tls.KnownServers), so a forgotten pin can never leave
it half-written or with a trailing comma.
"""

from __future__ import annotations

import click

from broker import tls

from . import output
from .connect import normalize_server
from .output import EXIT_USAGE, CliError, emit_json, json_option, note
from .session_file import known_servers_path


def _known_servers() -> tls.KnownServers:
    return tls.KnownServers(known_servers_path())


def _entries(known: tls.KnownServers) -> dict[str, str]:
    try:
        return known.all()
    except tls.TLSConfigError as exc:
        raise CliError(f"{exc}: fix or delete the file", EXIT_USAGE) from None


@click.group()
def trust() -> None:
    """Certificate pins: the brokers this computer trusts (known_servers.json)."""


@trust.command("list")
@json_option
def trust_list(as_json: bool) -> None:
    """Every pinned broker and its certificate fingerprint."""
    known = _known_servers()
    entries = _entries(known)
    if as_json:
        for server, fingerprint in sorted(entries.items()):
            emit_json({"server": server, "fingerprint": fingerprint})
        return
    if not entries:
        output.echo(f"No pinned brokers (in {known.path}).")
        return
    output.echo(output.table(sorted(entries.items()), ["SERVER", "FINGERPRINT"]))


@trust.command("forget")
@click.argument("server", metavar="HOST:PORT")
def trust_forget(server: str) -> None:
    """Forget the pin of the broker at HOST:PORT; the next connection pins what it presents.

    Do this only when you know why its certificate changed (the broker's data directory was
    replaced, say), and check the fingerprint printed next time against `mailnet serve`'s.
    """
    address = normalize_server(server)
    known = _known_servers()
    _entries(known)  # a malformed file is reported as such, not as "not pinned"
    try:
        forgotten = known.forget(address)
    except OSError as exc:
        raise CliError(f"cannot rewrite {known.path}: {exc.strerror}", EXIT_USAGE) from None
    if forgotten:
        output.echo(f"Forgot the certificate pinned for {address}.")
    else:
        note(f"mailnet: no certificate is pinned for {address}; nothing to forget")
