"""`mailnet reply`, `unread`, `ack`, `status`, `delete`, `archive`, `unarchive`,
`admin retention`: commands about mail already sent or received."""

from __future__ import annotations

from typing import Any

import click

from broker.client import Client
from broker.protocol import KINDS
from broker.protocol.requests import MAX_RETENTION_DAYS

from . import output
from .connect import ClientOptions, client_options, run_async, session_client
from .output import EXIT_REFUSED, EXIT_USAGE, emit_json, fail, json_option
from .sending import _read_body

MAX_SUBJECT_CHARS = 200


def reply_subject(entry: dict[str, Any]) -> str:
    """'Re: <subject>', never 'Re: Re: ...'; a text's first line stands in for a subject."""
    original = entry.get("subject") or " ".join(str(entry.get("body") or "").split()[:8])
    original = " ".join(original.split()) or "your message"
    if original[:3].lower() == "re:":
        original = original[3:].lstrip()
    return ("Re: " + original)[:MAX_SUBJECT_CHARS]


def reply_recipients(entry: dict[str, Any], me: str, *, to_all: bool) -> list[str]:
    """The sender; with `to_all`, also everyone the message was addressed to, except me."""
    sender = entry.get("sender")
    if entry["kind"] == "rickroll" or not sender:
        fail("a rick-roll has no sender to reply to", EXIT_REFUSED)
    names = [sender]
    if to_all:
        names += entry.get("recipients") or []
    names = [name for name in dict.fromkeys(names) if name != me]
    return names or [sender]


async def entry_by_seq(client: Client, seq: int) -> dict[str, Any]:
    """The entry at `seq` in the user's own mailbox (CliError when there is none)."""
    page = await client.inbox(limit=1, before_seq=seq + 1, archived=True)
    entries = page["entries"]
    if not entries or entries[0]["seq"] != seq:
        fail(f"no message #{seq} in your mailbox", EXIT_REFUSED)
    found: dict[str, Any] = entries[0]
    return found


@click.command()
@click.argument("seq", type=click.IntRange(min=1))
@click.option("--all", "to_all", is_flag=True, help="Reply to everyone on it but yourself.")
@click.option("--body", help="The body; read from stdin when omitted.")
@json_option
@client_options
def reply(seq: int, to_all: bool, body: str | None, as_json: bool, options: ClientOptions) -> None:
    """Reply by email to the message SEQ of your mailbox, in its thread."""
    text = _read_body(body)

    async def run() -> tuple[dict[str, Any], list[str], str]:
        async with session_client(options) as auth:
            client = auth.client
            entry = await entry_by_seq(client, seq)
            to = reply_recipients(entry, client.username or "", to_all=to_all)
            subject = reply_subject(entry)
            sent = await client.send_email(to, subject, text, in_reply_to=entry["message_id"])
            return {**sent, "thread_id": entry.get("thread_id") or entry["message_id"]}, to, subject

    result, to, subject = run_async(run)
    if as_json:
        emit_json(
            {
                "message_id": result["message_id"],
                "kind": "email",
                "to": to,
                "subject": subject,
                "thread_id": result["thread_id"],
                "duplicate": result.get("duplicate", False),
            }
        )
        return
    output.echo(f"Sent email #{result['message_id']} to {', '.join(to)}: {subject}")


@click.command()
@click.argument("seqs", nargs=-1, required=True, type=click.IntRange(min=1))
@json_option
@client_options
def unread(seqs: tuple[int, ...], as_json: bool, options: ClientOptions) -> None:
    """Mark messages SEQ... of your mailbox unread again (every session of yours sees it)."""

    async def run() -> int:
        async with session_client(options) as auth:
            return await auth.client.mark_unread(list(seqs))

    marked = run_async(run)
    if as_json:
        emit_json({"marked": marked, "seqs": list(seqs)})
        return
    output.echo(f"Marked {marked} unread.")


@click.command()
@click.argument("message_id", type=click.IntRange(min=1))
@json_option
@client_options
def ack(message_id: int, as_json: bool, options: ClientOptions) -> None:
    """Acknowledge MESSAGE_ID, a message in your mailbox that asks for it."""

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.acknowledge(message_id)

    result = run_async(run)
    if as_json:
        emit_json(result)
        return
    again = "" if result["changed"] else " (already, earlier)"
    output.echo(f"Acknowledged #{message_id}{again}.")


_STATE_WORDS = {
    "queued": "queued",
    "delivered": "delivered",
    "read": "read",
    "acked": "acknowledged",
}


def status_lines(status: dict[str, Any]) -> list[str]:
    """'37 of 40 acknowledged; not yet: ...' for a message that asks for it, else counts; then
    one line per recipient."""
    total = status["total"]
    if status["require_ack"]:
        waiting = [line["username"] for line in status["recipients"] if line["state"] != "acked"]
        head = f"{status['acked']} of {total} acknowledged"
        if waiting:
            head += "; not yet: " + ", ".join(waiting)
    else:
        head = f"{status['delivered']} of {total} delivered, {status['read']} read"
    lines = [f"#{status['message_id']} {status['kind']}: {head}"]
    for line in status["recipients"]:
        moment = line["acked_at"] or line["read_at"] or line["delivered_at"]
        when = f" {output.relative_time(moment)}" if moment else ""
        lines.append(f"  {line['username']}: {_STATE_WORDS[line['state']]}{when}")
    return lines


@click.command()
@click.argument("message_id", type=click.IntRange(min=1))
@json_option
@client_options
def status(message_id: int, as_json: bool, options: ClientOptions) -> None:
    """Who got, read and acknowledged MESSAGE_ID (a message you sent; admins: any)."""

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.message_status(message_id)

    result = run_async(run)
    if as_json:
        emit_json(result)
        return
    for line in status_lines(result):
        output.echo(line)


@click.command()
@click.argument("seqs", nargs=-1, required=True, type=click.IntRange(min=1))
@json_option
@client_options
def delete(seqs: tuple[int, ...], as_json: bool, options: ClientOptions) -> None:
    """Delete messages SEQ... from your mailbox (your copy only; senders keep theirs)."""

    async def run() -> int:
        async with session_client(options) as auth:
            return await auth.client.delete(list(seqs))

    deleted = run_async(run)
    if as_json:
        emit_json({"deleted": deleted, "seqs": list(seqs)})
        return
    output.echo(f"Deleted {deleted}.")


@click.command()
@click.argument("seqs", nargs=-1, required=True, type=click.IntRange(min=1))
@json_option
@client_options
def archive(seqs: tuple[int, ...], as_json: bool, options: ClientOptions) -> None:
    """Archive messages SEQ...: kept, but out of `inbox` (see them with `inbox --archived`)."""

    async def run() -> int:
        async with session_client(options) as auth:
            return await auth.client.archive(list(seqs))

    archived = run_async(run)
    if as_json:
        emit_json({"archived": archived, "seqs": list(seqs)})
        return
    output.echo(f"Archived {archived}.")


@click.command()
@click.argument("seqs", nargs=-1, required=True, type=click.IntRange(min=1))
@json_option
@client_options
def unarchive(seqs: tuple[int, ...], as_json: bool, options: ClientOptions) -> None:
    """Bring archived messages SEQ... back to `inbox`."""

    async def run() -> int:
        async with session_client(options) as auth:
            return await auth.client.unarchive(list(seqs))

    unarchived = run_async(run)
    if as_json:
        emit_json({"unarchived": unarchived, "seqs": list(seqs)})
        return
    output.echo(f"Unarchived {unarchived}.")


@click.command("retention")
@click.option("--kind", type=click.Choice(KINDS), help="The kind of message the rule is for.")
@click.option("--days", type=click.IntRange(1, MAX_RETENTION_DAYS), help="Keep it this many days.")
@click.option("--forever", is_flag=True, help="Keep this kind for ever (remove its rule).")
@json_option
@client_options
def retention(
    kind: str | None, days: int | None, forever: bool, as_json: bool, options: ClientOptions
) -> None:
    """Show or set how long mail of each kind is kept (admins). Only mail a client of its owner
    has received is ever removed; a kind without a rule is kept for ever."""
    if kind is not None and (days is None) == (not forever):
        fail("with --kind, give --days N or --forever", EXIT_USAGE)
    if kind is None and (days is not None or forever):
        fail("--days and --forever need --kind", EXIT_USAGE)

    async def run() -> dict[str, int]:
        async with session_client(options) as auth:
            return await auth.client.admin_retention(kind, days)

    rules = run_async(run)
    if as_json:
        emit_json({"rules": rules})
        return
    if not rules:
        output.echo("Every kind of mail is kept for ever.")
    for name in KINDS:
        if name in rules:
            output.echo(f"{name}: kept {rules[name]} days")
