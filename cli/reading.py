"""`mailnet inbox`, `read`, `who`, `history` and `listen`: received mail, and who is on."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from broker.protocol import RemoteProtocolError
from broker.protocol.requests import KINDS
from broker.protocol.search import parse_search

from . import output
from .connect import (
    Authenticated,
    ClientOptions,
    client_options,
    run_async,
    session_client,
    stop_on_signals,
)
from .output import EXIT_REFUSED, EXIT_USAGE, emit_json, fail, json_option, note
from .reconnect import stay_connected
from .session_file import save_session


@click.command()
@click.option("--unread", is_flag=True, help="Only unread mail.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--before", type=click.IntRange(min=1), metavar="SEQ", help="Page: mail before SEQ.")
@click.option("--archived", is_flag=True, help="Include archived mail (hidden otherwise).")
@json_option
@client_options
def inbox(
    unread: bool,
    limit: int,
    before: int | None,
    archived: bool,
    as_json: bool,
    options: ClientOptions,
) -> None:
    """List your mail, newest first (* marks unread)."""

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.inbox(
                unread_only=unread, limit=limit, before_seq=before, archived=archived
            )

    result = run_async(run)
    entries = result["entries"]
    if as_json:
        for entry in entries:
            emit_json(entry)
        return
    if not entries:
        output.echo("No unread mail." if unread else "No mail.")
        return
    output.echo(output.entry_table(entries))
    output.echo(f"\n{result['unread']} unread. Read one with `mailnet read SEQ`.")
    if len(entries) == limit:
        output.echo(f"More: add --before {entries[-1]['seq']}")


async def find_entries(client: Any, seqs: list[int]) -> list[dict[str, Any]]:
    """Each of the user's mailbox entries with these seqs, looked up through the inbox."""
    found = []
    for seq in seqs:
        page = await client.inbox(limit=1, before_seq=seq + 1, archived=True)
        entries = [entry for entry in page["entries"] if entry["seq"] == seq]
        if not entries:
            fail(f"no message #{seq} in your mailbox", EXIT_REFUSED)
        found.append(entries[0])
    return found


@click.command()
@click.argument("seqs", nargs=-1, required=True, type=click.IntRange(min=1))
@json_option
@client_options
def read(seqs: tuple[int, ...], as_json: bool, options: ClientOptions) -> None:
    """Show the messages with these SEQ numbers (from `inbox`) and mark them read."""
    wanted = list(dict.fromkeys(seqs))

    async def run() -> list[dict[str, Any]]:
        async with session_client(options) as auth:
            entries = await find_entries(auth.client, wanted)
            await auth.client.mark_read(wanted)
            return [{**entry, "read": True} for entry in entries]

    entries = run_async(run)
    if as_json:
        for entry in entries:
            emit_json(entry)
        return
    output.echo("\n\n".join(output.entry_full(entry) for entry in entries))


@click.command()
@json_option
@client_options
def who(as_json: bool, options: ClientOptions) -> None:
    """Who is online now: since when, and idle for how long."""

    async def run() -> list[dict[str, Any]]:
        async with session_client(options) as auth:
            return await auth.client.who()

    users = run_async(run)
    if as_json:
        for user in users:
            emit_json(user)
        return
    rows = [
        [
            user["username"],
            output.relative_time(user["since"]),
            output.duration(user["idle_seconds"]),
            str(user["sessions"]),
        ]
        for user in users
    ]
    output.echo(output.table(rows, ["USER", "ONLINE SINCE", "IDLE", "SESSIONS"]))


_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str) -> str:
    """An ISO date/date-time, or a relative '30m', '2h', '7d': as the ISO text the broker wants."""
    match = _RELATIVE.match(value.strip())
    if match:
        delta = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return (datetime.now(UTC) - delta).isoformat()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(
            f"--since {value!r}: use an ISO date (2026-11-30), date-time, or 30m/2h/7d", EXIT_USAGE
        )
    return moment.isoformat()


@click.command()
@click.option("--with", "with_user", metavar="USER", help="Only mail to or from USER.")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind of message.")
@click.option("--search", metavar="TEXT", help="Text in the subject or body.")
@click.option("--since", metavar="DATE", help="ISO date/date-time, or relative: 30m, 2h, 7d.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--before-id", type=click.IntRange(min=1), help="Page: messages older than this id.")
@click.option(
    "--thread", type=click.IntRange(min=1), metavar="ID", help="Only this thread (its thread_id)."
)
@json_option
@client_options
def history(
    with_user: str | None,
    kind: str | None,
    search: str | None,
    since: str | None,
    limit: int,
    before_id: int | None,
    thread: int | None,
    as_json: bool,
    options: ClientOptions,
) -> None:
    """Mail you sent and received, newest first, with filters."""
    since_iso = parse_since(since) if since else None

    async def run() -> list[dict[str, Any]]:
        async with session_client(options) as auth:
            return await auth.client.history(
                with_user=with_user,
                kind=kind,
                search=search,
                since=since_iso,
                limit=limit,
                before_id=before_id,
                thread=thread,
            )

    items = run_async(run)
    if as_json:
        for item in items:
            emit_json(item)
        return
    if not items:
        output.echo("Nothing found.")
        return
    output.echo(output.history_table(items))
    if len(items) == limit:
        output.echo(f"\nMore: add --before-id {items[-1]['message_id']}")


@click.command()
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many messages.")
@click.option(
    "--no-reconnect",
    is_flag=True,
    help="Exit (code 4) when the connection is lost instead of reconnecting.",
)
@json_option
@client_options
def listen(count: int | None, no_reconnect: bool, as_json: bool, options: ClientOptions) -> None:
    """Stay connected and print mail as it arrives (queued mail first), acknowledging it.

    When the broker restarts or the network drops, it reconnects (one line on stderr) and goes
    on right after the last message it printed. Ctrl-C or SIGTERM stops it (exit 0).
    """
    shown = 0
    last_seq: int | None = None  # the last seq printed (None: start from the saved session)

    async def follow(auth: Authenticated) -> None:
        nonlocal shown, last_seq
        client = auth.client
        if last_seq is None:
            note(f"mailnet: listening as {client.username} on {auth.server} (Ctrl-C stops)")
        last_seq = max(last_seq or 0, auth.resume_after)
        while count is None or shown < count:
            entry = await client.next_mail()
            if entry["seq"] is not None and entry["seq"] <= last_seq:
                continue  # shown before the connection was lost
            if as_json:
                emit_json(entry)
            else:
                output.echo(
                    f"[{output.relative_time(entry['sent_at'])}] #{entry['seq']} "
                    + output.notification_line(entry)
                )
            sys.stdout.flush()
            shown += 1
            if entry["seq"] is not None:
                last_seq = entry["seq"]
            await client.flush_ack()
            if auth.saved is not None:
                auth.saved = auth.saved.with_last_seq(last_seq)
                save_session(auth.saved)

    async def run() -> None:
        async with stop_on_signals():
            await stay_connected(
                options, follow, resume_after=lambda: last_seq, reconnect=not no_reconnect
            )

    run_async(run)


@click.command()
@click.argument("words", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--page", type=click.IntRange(1, 200), default=1, show_default=True)
@json_option
@client_options
def search(
    words: tuple[str, ...], limit: int, page: int, as_json: bool, options: ClientOptions
) -> None:
    """Search your mail: words, "exact phrases" and from: to: with: kind: is: before: after:.

    Example: mailnet search 'from:bob kind:email is:unread "budget meeting" agenda'.
    With words or phrases, the best matches come first (ranked); otherwise the newest.
    """
    query = " ".join(words)
    try:  # a mistake in the query is a usage error, found before connecting
        parse_search(query)
    except RemoteProtocolError as exc:
        fail(exc.message, EXIT_USAGE)

    async def run() -> list[dict[str, Any]]:
        async with session_client(options) as auth:
            return await auth.client.history(query=query, limit=limit, offset=(page - 1) * limit)

    items = run_async(run)
    if as_json:
        for item in items:
            emit_json(item)
        return
    if not items:
        output.echo("Nothing found.")
        return
    output.echo(output.history_table(items))
    if len(items) == limit:
        output.echo(f"\nMore: add --page {page + 1}")
