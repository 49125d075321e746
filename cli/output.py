"""What the CLI prints and how it exits: exit codes, the one-line error, JSON lines, tables.

Every failure becomes a CliError carrying its exit code; `run_cli` turns it (and anything
unexpected) into `mailnet: error: ...` on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

from .terminal import json_safe_for_terminal, safe_for_terminal

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_REFUSED = 5

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 unexpected error, 2 usage error, 3 authentication failed or not "
    "logged in, 4 broker unreachable or TLS trust failure, 5 request refused by the broker."
)


class CliError(Exception):
    """A failure to report as one line on stderr, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_UNEXPECTED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_UNEXPECTED) -> NoReturn:
    raise CliError(message, exit_code)


def error_line(message: str) -> None:
    first_line = " ".join(safe_for_terminal(message).split()) or "failed"
    click.echo(f"mailnet: error: {first_line}", err=True)


def note(message: str) -> None:
    """A diagnostic for the person at the terminal: stderr, so stdout stays parseable."""
    click.echo(safe_for_terminal(message), err=True)


def echo(text: str = "") -> None:
    """Human-readable output on stdout; other people's text in it is made terminal-safe."""
    click.echo(safe_for_terminal(text))


json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")


def emit_json(obj: Any) -> None:
    # The exact text, with controls and bidi characters as JSON escapes (see cli.terminal).
    click.echo(json_safe_for_terminal(json.dumps(obj, ensure_ascii=False, sort_keys=True)))


def innermost(exc: BaseException) -> BaseException:
    """Unwrap one-item exception groups (trio nurseries wrap what escapes them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def run_cli(invoke: Callable[[], Any]) -> int:
    """Run click (not in standalone mode) and map every outcome to an exit code."""
    try:
        result = invoke()
    except click.exceptions.Abort:
        note("")
        error_line("interrupted")
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        # A group run without a command (bare `mailnet`, `mailnet db`): its whole help, as
        # click prints it, on stderr with exit 2 (a command is missing), not squashed.
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "mailnet"
        error_line(f"{exc.format_message()} (see `{where} --help`)")
        return exc.exit_code
    except click.ClickException as exc:
        error_line(exc.format_message())
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except BaseException as raw:  # the last line of defence: no tracebacks
        inner = innermost(raw)
        if isinstance(inner, CliError):
            error_line(inner.message)
            return inner.exit_code
        if isinstance(inner, KeyboardInterrupt):
            error_line("interrupted")
            return 130
        if isinstance(inner, BrokenPipeError):
            return _quiet_broken_pipe()
        if isinstance(inner, UnicodeDecodeError):  # input read without cli.inputs' checks
            error_line(f"the input is not UTF-8 text: {inner}")
            return EXIT_USAGE
        if isinstance(inner, SystemExit):
            return inner.code if isinstance(inner.code, int) else EXIT_UNEXPECTED
        error_line(f"unexpected {type(inner).__name__}: {inner}")
        return EXIT_UNEXPECTED
    # Without standalone mode click returns --help's exit code (an int) instead of exiting.
    return result if isinstance(result, int) else EXIT_OK


def _quiet_broken_pipe() -> int:
    # The reader went away (`mailnet inbox | head`): point stdout at /dev/null so the
    # interpreter's final flush does not complain, and exit as a filter would.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return EXIT_UNEXPECTED


# -- human output ------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def relative_time(value: str | datetime, now: datetime | None = None) -> str:
    moment = parse_time(value) if isinstance(value, str) else value
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    return f"{duration(seconds)} ago" if seconds >= 1 else "just now"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d"


def table(rows: Iterable[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns; the last column is never padded (it may be long)."""
    grid = [list(headers), *[[safe_for_terminal(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers) - 1)]
    lines = []
    for row in grid:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def shorten(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def sender_label(entry: dict[str, Any]) -> str:
    if entry.get("direction") == "out":
        return "to " + ", ".join(entry.get("recipients") or ["everyone"])
    return entry.get("sender") or "someone"


def summary(entry: dict[str, Any]) -> str:
    """One line: the subject of an email or announcement, the body of a text or prank."""
    if entry.get("subject") and entry["kind"] != "rickroll":
        return str(entry["subject"])
    return str(entry.get("body") or "")


def notification_line(entry: dict[str, Any]) -> str:
    """How newly arrived mail is announced: 'New text from alice: hi'."""
    if entry["kind"] == "rickroll":
        return f"Someone sent you a surprise: {shorten(entry.get('body') or '', 100)}"
    kind = {"email": "email", "text": "text", "announcement": "announcement"}[entry["kind"]]
    return f"New {kind} from {sender_label(entry)}: {shorten(summary(entry), 100)}"


def entry_table(entries: Sequence[dict[str, Any]]) -> str:
    rows = []
    for entry in entries:
        seq = "" if entry.get("seq") is None else str(entry["seq"])
        flag = "" if entry.get("direction") == "out" else ("" if entry.get("read") else "*")
        rows.append(
            [
                seq + flag,
                entry["kind"],
                sender_label(entry),
                relative_time(entry["sent_at"]),
                ("(archived) " if entry.get("archived") else "") + shorten(summary(entry)),
            ]
        )
    return table(rows, ["SEQ", "KIND", "FROM", "WHEN", "SUBJECT / TEXT"])


def receipt_mark(item: dict[str, Any]) -> str:
    """How far a sent message got: 'read', '2/3 read', '1/40 acked' ('' for received mail)."""
    receipts = item.get("receipts")
    if not receipts or not receipts["total"]:
        return ""
    total = receipts["total"]
    if item.get("require_ack"):
        return f"{receipts['acked']}/{total} acked"
    for state in ("read", "delivered"):
        if receipts[state]:
            return (
                state
                if total == 1 and receipts[state] == 1
                else f"{receipts[state]}/{total} {state}"
            )
    return "queued"


def history_table(items: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            str(item["message_id"]),
            item["kind"],
            sender_label(item) if item["direction"] == "out" else "from " + sender_label(item),
            relative_time(item["sent_at"]),
            shorten(summary(item)),
        ]
        for item in items
    ]
    headers = ["ID", "KIND", "WITH", "WHEN", "SUBJECT / TEXT"]
    if any(receipt_mark(item) for item in items):  # marks on what the user sent
        for row, item in zip(rows, items, strict=True):
            row.insert(3, receipt_mark(item))
        headers.insert(3, "STATUS")
    return table(rows, headers)


def entry_full(entry: dict[str, Any]) -> str:
    """The whole of one entry, headers first; a rick-roll's link is shown, never opened."""
    lines = [f"#{entry['seq']} {entry['kind']}" if entry.get("seq") else entry["kind"]]
    if entry.get("direction") == "out":
        lines.append(f"To:      {', '.join(entry.get('recipients') or ['everyone'])}")
    else:
        lines.append(f"From:    {entry.get('sender') or 'someone'}")
        if entry["kind"] == "email":
            lines.append(f"To:      {', '.join(entry.get('recipients') or [])}")
    lines.append(f"Date:    {entry['sent_at']} ({relative_time(entry['sent_at'])})")
    if entry.get("subject"):
        lines.append(f"Subject: {entry['subject']}")
    lines.append("")
    lines.append(entry.get("body") or "")
    return "\n".join(lines)
