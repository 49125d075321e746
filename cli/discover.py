"""Brokers found on the LAN by mDNS: `mailnet servers`, and the choice `mailnet login` makes when
no server is configured (one found: use it; several: ask at a terminal; scripts pass --server).

An advertisement is only a hint: each broker found is connected to and must present the
certificate its advertisement names, or it is refused with a warning (docs/security.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import click

from broker import tls
from broker.discovery import DEFAULT_BROWSE_SECONDS, PROTOCOL_VERSION, Found, discover

from .connect import DEFAULT_SERVER, ClientOptions, run_async
from .output import EXIT_UNREACHABLE, EXIT_USAGE, emit_json, fail, json_option, note, table
from .session_file import known_servers_path

BROWSE_SECONDS_ENV = "MAILNET_BROWSE_SECONDS"


def browse_seconds(value: float | None = None) -> float:
    """How long to browse: `value`, else MAILNET_BROWSE_SECONDS, else 3 (0 turns browsing off)."""
    if value is not None:
        return value
    raw = os.environ.get(BROWSE_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_BROWSE_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        fail(f"{BROWSE_SECONDS_ENV}={raw!r} is not a number of seconds", EXIT_USAGE)
    if not 0 <= seconds <= 60:
        fail(f"{BROWSE_SECONDS_ENV} must be between 0 and 60", EXIT_USAGE)
    return seconds


def trustworthy(found: Sequence[Found]) -> list[Found]:
    """The brokers that can be used, after a warning on stderr for each one that cannot."""
    usable: list[Found] = []
    for item in found:
        name = item.ad.name
        if item.spoofed:
            note(
                f"mailnet: WARNING: refusing the broker advertised as '{name}' at "
                f"{item.address}: it advertises certificate {item.ad.fingerprint} but presented "
                f"{item.presented}. Someone on this network may be impersonating a broker; "
                "ask its owner for the fingerprint `mailnet serve` prints."
            )
        elif item.presented is None:
            note(f"mailnet: found '{name}' but could not reach it at {_addresses(item)}")
        elif item.ad.protocol != PROTOCOL_VERSION:
            note(
                f"mailnet: skipping '{name}' at {item.address}: it speaks protocol "
                f"{item.ad.protocol!r}, this client {PROTOCOL_VERSION!r}"
            )
        else:
            usable.append(item)
    by_name: dict[str, set[str]] = {}
    for item in usable:
        by_name.setdefault(item.ad.name.lower(), set()).add(item.ad.fingerprint)
    for name, fingerprints in by_name.items():
        if len(fingerprints) > 1:
            note(
                f"mailnet: WARNING: {len(fingerprints)} brokers call themselves '{name}' with "
                "different certificates; one may be an impostor: compare the fingerprint with "
                "the one `mailnet serve` prints on the broker's computer."
            )
    return usable


def _addresses(item: Found) -> str:
    return ", ".join(tls.format_server_address(a, item.ad.port) for a in item.ad.addresses)


def _status(item: Found) -> str:
    if item.spoofed:
        return "REFUSED: certificate differs from the advertised one"
    if item.presented is None:
        return "unreachable"
    if item.ad.protocol != PROTOCOL_VERSION:
        return f"protocol {item.ad.protocol}"
    return "ok"


def _rows(found: Sequence[Found]) -> list[list[str]]:
    return [
        [str(item.ad.name), item.address or _addresses(item), item.ad.fingerprint, _status(item)]
        for item in found
    ]


@click.command()
@click.option(
    "--seconds",
    type=click.FloatRange(0.5, 60),
    help=f"How long to look [default {DEFAULT_BROWSE_SECONDS:g}; env {BROWSE_SECONDS_ENV}].",
)
@json_option
def servers(seconds: float | None, as_json: bool) -> None:
    """List the brokers advertised on this network (mDNS), each checked against its certificate."""
    try:
        found = run_async(discover, browse_seconds(seconds) or DEFAULT_BROWSE_SECONDS)
    except OSError as exc:
        fail(f"cannot look for brokers on this network: {exc}", EXIT_UNREACHABLE)
    if as_json:
        for item in found:
            emit_json(item.as_json())
        return
    if not found:
        note("mailnet: no broker found on this network")
        return
    trustworthy(found)  # the warnings
    click.echo(table(_rows(found), ["NAME", "SERVER", "FINGERPRINT", "STATUS"]))


def server_from_lan(options: ClientOptions, *, interactive: bool, as_json: bool) -> str | None:
    """The address of the broker found on the LAN for `mailnet login`, or None to use the default.

    One found: it is used, and its advertised certificate is pinned (first use) before anything
    is sent to it. Several: a numbered choice at a terminal, else a usage error listing them.
    """
    seconds = browse_seconds()
    if seconds <= 0 or options.insecure_plaintext:  # a LAN broker always uses TLS
        return None
    note(f"mailnet: looking for brokers on this network for {seconds:g}s (--server skips this)")
    try:
        found = run_async(discover, seconds)
    except OSError as exc:  # no network at all, or multicast refused
        note(f"mailnet: cannot look for brokers on this network ({exc}); trying {DEFAULT_SERVER}")
        return None
    if not found:
        note(f"mailnet: no broker found on this network; trying {DEFAULT_SERVER}")
        return None
    usable = trustworthy(found)
    if not usable:
        fail(
            "no trustworthy broker found on this network (see the warnings above); "
            "pass --server HOST:PORT",
            EXIT_UNREACHABLE,
        )
    chosen = _choose(usable, interactive=interactive, as_json=as_json)
    assert chosen.address is not None
    note(
        f"mailnet: using broker '{chosen.ad.name}' at {chosen.address}, "
        f"certificate {chosen.ad.fingerprint}"
    )
    if options.ca_file is None:
        _pin_on_first_use(chosen)
    return chosen.address


def _choose(usable: list[Found], *, interactive: bool, as_json: bool) -> Found:
    if len(usable) == 1:
        return usable[0]
    pinned = set(tls.KnownServers(known_servers_path()).all().values())
    known = [item for item in usable if item.ad.fingerprint in pinned]
    if len(known) == 1:
        note(f"mailnet: {len(usable)} brokers found; '{known[0].ad.name}' is the one you know")
        return known[0]
    if not interactive:
        if as_json:
            for item in usable:
                emit_json(item.as_json())
        fail(
            f"{len(usable)} brokers found on this network: choose one with --server HOST:PORT "
            "(`mailnet servers` lists them)",
            EXIT_USAGE,
        )
    click.echo("Brokers on this network:", err=True)
    for number, row in enumerate(_rows(usable), start=1):
        click.echo(f"  {number}) {row[0]}  {row[1]}  {row[2]}", err=True)
    number = click.prompt(
        f"Which one [1-{len(usable)}]", type=click.IntRange(1, len(usable)), err=True
    )
    return usable[number - 1]


def _pin_on_first_use(chosen: Found) -> None:
    """Pin the checked certificate now, so the login connection must present that very one."""
    assert chosen.address is not None
    known = tls.KnownServers(known_servers_path())
    if known.fingerprint_for(chosen.address) is None:
        known.pin(chosen.address, chosen.ad.fingerprint)
        note(
            f"mailnet: pinned the certificate of {chosen.address}: {chosen.ad.fingerprint} "
            f"(saved in {known_servers_path()})"
        )
