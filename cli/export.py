"""`mailnet export`: a copy of one's own mail (sent and received) as JSON lines or an mbox file.

The CLI pages through `history` (the broker's own view of the user's mail, so nobody can export
another user's mailbox) and writes the oldest message first. The mbox is written by Python's
`mailbox` module (mboxo, with `>From ` quoting), which mutt and Thunderbird open.
"""

from __future__ import annotations

import email.utils
import json
import mailbox
import os
import sys
import tempfile
from collections.abc import Iterable
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import click

from .connect import ClientOptions, client_options, run_async, session_client
from .output import EXIT_USAGE, emit_json, fail, note

PAGE = 1000  # the broker's largest history page
# Addresses in the mbox: `.invalid` is reserved (RFC 2606), so no mail program can ever send a
# reply to a mailnet user through real email by mistake.
DOMAIN = "mailnet.invalid"


async def _all_history(options: ClientOptions) -> tuple[str, list[dict[str, Any]]]:
    """Every history item of the logged-in user, oldest first, and the user's name."""
    items: list[dict[str, Any]] = []
    async with session_client(options) as auth:
        before: int | None = None
        while True:
            page = await auth.client.history(limit=PAGE, before_id=before)
            items.extend(page)
            if len(page) < PAGE:
                break
            before = page[-1]["message_id"]
        username = auth.client.username or ""
    items.reverse()
    return username, items


def _address(name: str | None) -> Address:
    if name is None:  # a received rick-roll: its sender is never shown
        return Address("Someone", "someone", DOMAIN)
    return Address(name, name, DOMAIN)


def as_email(item: dict[str, Any], owner: str) -> EmailMessage:
    """One history item as an RFC 5322 message (utf-8 text/plain)."""
    message = EmailMessage()
    message["From"] = _address(item["sender"] if item["direction"] == "in" else owner)
    if item["kind"] == "announcement":
        message["To"] = "everyone:;"
    else:
        message["To"] = [_address(name) for name in item.get("recipients") or [owner]]
    subject = item.get("subject")
    if subject is None and item["kind"] == "text":
        subject = "Text from " + (item["sender"] or "someone")
    message["Subject"] = subject or f"({item['kind']})"
    sent_at = datetime.fromisoformat(item["sent_at"].replace("Z", "+00:00"))
    message["Date"] = email.utils.format_datetime(sent_at)
    message["Message-ID"] = f"<{item['message_id']}@{DOMAIN}>"
    message["X-Mailnet-Kind"] = item["kind"]
    message["X-Mailnet-Message-Id"] = str(item["message_id"])
    if item.get("seq") is not None:
        message["X-Mailnet-Seq"] = str(item["seq"])
    # Quoted-printable: readable in any mail program, and safe for lines of any length.
    message.set_content(item.get("body") or "", charset="utf-8", cte="quoted-printable")
    return message


def write_mbox(items: Iterable[dict[str, Any]], owner: str, path: Path) -> int:
    """Write the items to a new mbox at path (atomically: a temporary file, then a rename)."""
    handle, temporary = tempfile.mkstemp(prefix=".mailnet-export-", dir=path.parent)
    os.close(handle)
    os.unlink(temporary)  # mailbox.mbox creates the file itself
    count = 0
    box = mailbox.mbox(temporary, create=True)
    try:
        box.lock()
        for item in items:
            entry = mailbox.mboxMessage(as_email(item, owner))
            entry.set_from(item["sender"] or "someone", _utc_tuple(item["sent_at"]))
            # Status: R(ead) O(ld) as mutt and Thunderbird understand them; sent mail is read.
            entry.set_flags("RO" if item.get("read", True) or item["direction"] == "out" else "O")
            box.add(entry)
            count += 1
        box.flush()
        box.unlock()
    finally:
        box.close()
    os.replace(temporary, path)
    return count


def _utc_tuple(sent_at: str) -> Any:
    return datetime.fromisoformat(sent_at.replace("Z", "+00:00")).utctimetuple()


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "mbox"]),
    default="jsonl",
    show_default=True,
    help="JSON lines (as `history --json`) or an mbox for mail programs.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file (required for mbox; jsonl goes to stdout without it).",
)
@click.option("--force", is_flag=True, help="Replace --output if it exists.")
@client_options
def export(fmt: str, output: Path | None, force: bool, options: ClientOptions) -> None:
    """Export all of your own mail, sent and received, oldest first.

    `--format mbox -o mail.mbox` writes a file that mutt, Thunderbird and Python's `mailbox`
    open; `--format jsonl` writes one JSON object per message (the fields of `history --json`).
    """
    if fmt == "mbox" and output is None:
        fail("--format mbox needs --output FILE (an mbox is a file, not a stream)", EXIT_USAGE)
    if output is not None:
        if output.exists() and not force:
            fail(f"{output} exists: choose another file or add --force", EXIT_USAGE)
        if not output.parent.is_dir():
            fail(f"no such directory: {output.parent}", EXIT_USAGE)
    owner, items = run_async(lambda: _all_history(options))
    if fmt == "mbox":
        assert output is not None
        count = write_mbox(items, owner, output)
        note(f"mailnet: exported {count} message(s) to {output}")
        return
    if output is None:
        for item in items:
            emit_json(item)
        sys.stdout.flush()
        return
    _write_jsonl(items, output)
    note(f"mailnet: exported {len(items)} message(s) to {output}")


def _write_jsonl(items: list[dict[str, Any]], path: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=".mailnet-export-", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        for item in items:
            stream.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(temporary, path)
