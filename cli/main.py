"""The `mailnet` command: a click group whose client commands parse, call broker.client, print.

Other modules add their commands to `main` (serve/db here below; admin, bench elsewhere via
`main.add_command(...)`). Exit codes and the error line live in cli.output.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from broker.client import RequestFailed
from broker.protocol.requests import KINDS

from . import output
from .connect import (
    DEFAULT_SERVER,
    ClientOptions,
    client_options,
    normalize_server,
    open_client,
    run_async,
    session_client,
    stop_on_signals,
)
from .output import (
    EXIT_AUTH,
    EXIT_CODES_HELP,
    EXIT_REFUSED,
    EXIT_USAGE,
    emit_json,
    fail,
    note,
)
from .session_file import SavedSession, delete_session, load_session, save_session

AUTH_FAILED_MESSAGE = "unknown user or wrong password"
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class MailnetGroup(click.Group):
    """A group whose standalone run never shows a traceback: see cli.output.run_cli."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        parent = super()
        sys.exit(
            output.run_cli(
                lambda: parent.main(args, prog_name or "mailnet", complete_var, False, **extra)
            )
        )


@click.group(cls=MailnetGroup, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
def main() -> None:
    """mailnet: a persistent store-and-forward message broker and its client.

    Start a broker with `mailnet serve`, log in with `mailnet login`, then send emails, texts and
    announcements, read your inbox, see who is online, or use the interactive `mailnet shell`.
    """


json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
client_id_option = click.option(
    "--client-id",
    metavar="ID",
    help="Client message id: a retried send with the same id is stored once.",
)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _read_body(body: str | None) -> str:
    if body is None:
        if _interactive():
            note("Type the message; end it with Ctrl-D on a line of its own.")
        body = sys.stdin.read()
    if not body.strip():
        fail("the message body is empty", EXIT_USAGE)
    return body


def _split_users(values: tuple[str, ...]) -> list[str]:
    users = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not users:
        fail("--to needs at least one user name", EXIT_USAGE)
    return users


def _sent(result: dict[str, Any], kind: str, to: list[str], as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "message_id": result["message_id"],
                "kind": kind,
                "to": to,
                "duplicate": result.get("duplicate", False),
            }
        )
        return
    where = "everyone" if kind == "announcement" else ", ".join(to)
    again = " (already sent earlier: stored once)" if result.get("duplicate") else ""
    click.echo(f"Sent {kind} #{result['message_id']} to {where}.{again}")


# -- login / logout ------------------------------------------------------------------------------


def _read_password_line() -> str:
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        fail("no password on standard input", EXIT_USAGE)
    return password


@main.command()
@click.argument("username", required=False)
@click.option("--password-stdin", is_flag=True, help="Read the password from one stdin line.")
@click.option(
    "--create/--no-create",
    default=None,
    help="Create the account if it is new (default: ask at a terminal; yes with --password-stdin).",
)
@json_option
@client_options
def login(
    username: str | None,
    password_stdin: bool,
    create: bool | None,
    as_json: bool,
    options: ClientOptions,
) -> None:
    """Log in (creating the account when new) and save the session token.

    The token is saved with 0600 permissions in the config directory, and later commands use it.
    """
    interactive = _interactive() and not password_stdin
    if not password_stdin and not _interactive():
        fail("no terminal to ask for the password: use --password-stdin", EXIT_USAGE)
    if username is None:
        if password_stdin:
            fail("give the USERNAME when the password comes from stdin", EXIT_USAGE)
        username = click.prompt("Username").strip()
    password = (
        _read_password_line() if password_stdin else click.prompt("Password", hide_input=True)
    )
    if create is None:
        create = password_stdin
    server = options.server or _saved_server() or DEFAULT_SERVER

    offer_to_create = interactive and not create

    async def attempt(password: str, create: bool) -> tuple[dict[str, Any], int] | None:
        async with open_client(options, server) as client:
            try:
                response = await client.login(username, password, create=create)
            except RequestFailed as exc:
                if exc.code == "auth_failed" and offer_to_create and not create:
                    return None
                raise
            inbox = await client.inbox(unread_only=True, limit=1)
            return response, inbox["unread"]

    result = run_async(attempt, password, create)
    if result is None:
        # The broker does not say whether the account exists: offer to create it. The questions
        # are asked with no connection open, so a slow answer cannot hit the login timeout.
        if not _ask_create(username):
            fail(AUTH_FAILED_MESSAGE, EXIT_AUTH)
        result = run_async(attempt, _ask_new_password(), True)
        assert result is not None
    response, unread = result
    path = save_session(
        SavedSession(
            server=server,
            username=response["username"],
            token=response["token"],
            last_seq=response["resume_after"],
        )
    )
    if as_json:
        emit_json(
            {
                "username": response["username"],
                "server": server,
                "created": response["created"],
                "unread": unread,
                "session_file": str(path),
            }
        )
        return
    created = " (new account created)" if response["created"] else ""
    click.echo(f"Logged in as {response['username']} on {server}{created}.")
    if unread:
        click.echo(f"You have {unread} unread message(s): run `mailnet inbox --unread`.")


def _saved_server() -> str | None:
    saved = load_session()
    return normalize_server(saved.server) if saved else None


def _ask_create(username: str) -> bool:
    return click.confirm(f"Login failed. Create account '{username}'?", default=False)


def _ask_new_password() -> str:
    return click.prompt(
        "New password",
        hide_input=True,
        confirmation_prompt="Repeat the new password",
    )


@main.command()
@client_options
def logout(options: ClientOptions) -> None:
    """Revoke the saved session token on the broker and delete it here."""
    saved = load_session()
    if saved is None:
        note("mailnet: not logged in; nothing to do")
        return

    async def run() -> None:
        async with session_client(options) as auth:
            await auth.client.logout()

    try:
        run_async(run)
    except output.CliError as exc:
        if exc.exit_code != EXIT_AUTH:  # unreachable: keep the token so logout can be retried
            raise
    delete_session()
    click.echo(f"Logged out {saved.username} from {saved.server}.")


# -- sending -----------------------------------------------------------------------------------


@main.command()
@click.option("--to", "to", multiple=True, required=True, help="Recipients: a,b (repeatable).")
@click.option("--subject", required=True, help="One-line subject.")
@click.option("--body", help="The body; read from stdin when omitted.")
@client_id_option
@json_option
@client_options
def send(
    to: tuple[str, ...],
    subject: str,
    body: str | None,
    client_id: str | None,
    as_json: bool,
    options: ClientOptions,
) -> None:
    """Send an email to one or more users."""
    users = _split_users(to)
    text = _read_body(body)

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.send_email(users, subject, text, client_msg_id=client_id)

    _sent(run_async(run), "email", users, as_json)


@main.command()
@click.argument("user")
@click.argument("body", nargs=-1)
@client_id_option
@json_option
@client_options
def text(
    user: str, body: tuple[str, ...], client_id: str | None, as_json: bool, options: ClientOptions
) -> None:
    """Send a text (body only) to one user; the words of BODY, or stdin when none."""
    message = _read_body(" ".join(body) if body else None)

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.send_text(user, message, client_msg_id=client_id)

    _sent(run_async(run), "text", [user], as_json)


@main.command()
@click.option("--subject", required=True, help="One-line subject.")
@click.option("--body", help="The body; read from stdin when omitted.")
@client_id_option
@json_option
@client_options
def announce(
    subject: str, body: str | None, client_id: str | None, as_json: bool, options: ClientOptions
) -> None:
    """Send an announcement to every user, online or not."""
    message = _read_body(body)

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.announce(subject, message, client_msg_id=client_id)

    _sent(run_async(run), "announcement", [], as_json)


@main.command()
@click.argument("user")
@json_option
@client_options
def rickroll(user: str, as_json: bool, options: ClientOptions) -> None:
    """Send USER a harmless rick-roll; they see it from "someone" (the link is never opened)."""

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.rickroll(user)

    _sent(run_async(run), "rickroll", [user], as_json)


# -- reading -----------------------------------------------------------------------------------


@main.command()
@click.option("--unread", is_flag=True, help="Only unread mail.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@client_options
def inbox(unread: bool, limit: int, as_json: bool, options: ClientOptions) -> None:
    """List your mail, newest first (* marks unread)."""

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.inbox(unread_only=unread, limit=limit)

    result = run_async(run)
    if as_json:
        for entry in result["entries"]:
            emit_json(entry)
        return
    if not result["entries"]:
        click.echo("No unread mail." if unread else "No mail.")
        return
    click.echo(output.entry_table(result["entries"]))
    click.echo(f"\n{result['unread']} unread. Read one with `mailnet read SEQ`.")


async def find_entries(client: Any, seqs: list[int]) -> list[dict[str, Any]]:
    """Each of the user's mailbox entries with these seqs, looked up through the inbox."""
    found = []
    for seq in seqs:
        page = await client.inbox(limit=1, before_seq=seq + 1)
        entries = [entry for entry in page["entries"] if entry["seq"] == seq]
        if not entries:
            fail(f"no message #{seq} in your mailbox", EXIT_REFUSED)
        found.append(entries[0])
    return found


@main.command()
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
    click.echo("\n\n".join(output.entry_full(entry) for entry in entries))


@main.command()
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
    click.echo(output.table(rows, ["USER", "ONLINE SINCE", "IDLE", "SESSIONS"]))


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


@main.command()
@click.option("--with", "with_user", metavar="USER", help="Only mail to or from USER.")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind of message.")
@click.option("--search", metavar="TEXT", help="Text in the subject or body.")
@click.option("--since", metavar="DATE", help="ISO date/date-time, or relative: 30m, 2h, 7d.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--before-id", type=click.IntRange(min=1), help="Page: messages older than this id.")
@json_option
@client_options
def history(
    with_user: str | None,
    kind: str | None,
    search: str | None,
    since: str | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
    options: ClientOptions,
) -> None:
    """Mail you sent and received, newest first, with filters."""
    filters = {
        "with_user": with_user,
        "kind": kind,
        "search": search,
        "since": parse_since(since) if since else None,
        "limit": limit,
        "before_id": before_id,
    }

    async def run() -> list[dict[str, Any]]:
        async with session_client(options) as auth:
            return await auth.client.history(**filters)

    items = run_async(run)
    if as_json:
        for item in items:
            emit_json(item)
        return
    if not items:
        click.echo("Nothing found.")
        return
    click.echo(output.history_table(items))
    if len(items) == limit:
        click.echo(f"\nMore: add --before-id {items[-1]['message_id']}")


@main.command()
@click.option(
    "--allow-pranks/--no-pranks",
    "allow_pranks",
    default=None,
    help="Accept rick-rolls, or refuse them.",
)
@json_option
@client_options
def prefs(allow_pranks: bool | None, as_json: bool, options: ClientOptions) -> None:
    """Set your preferences."""
    if allow_pranks is None:
        fail("nothing to set: give --allow-pranks or --no-pranks", EXIT_USAGE)

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.set_prefs(prank_opt_out=not allow_pranks)

    result = run_async(run)
    if as_json:
        emit_json(result)
        return
    click.echo("Pranks are now refused." if result["prank_opt_out"] else "Pranks are now allowed.")


@main.command()
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many messages.")
@json_option
@client_options
def listen(count: int | None, as_json: bool, options: ClientOptions) -> None:
    """Stay connected and print mail as it arrives (queued mail first), acknowledging it.

    Ctrl-C or SIGTERM stops it (exit 0).
    """

    async def run() -> None:
        async with session_client(options, live=True) as auth, stop_on_signals():
            client, shown = auth.client, 0
            note(f"mailnet: listening as {client.username} on {auth.server} (Ctrl-C stops)")
            while count is None or shown < count:
                entry = await client.next_mail()
                if as_json:
                    emit_json(entry)
                else:
                    click.echo(
                        f"[{output.relative_time(entry['sent_at'])}] #{entry['seq']} "
                        + output.notification_line(entry)
                    )
                sys.stdout.flush()
                shown += 1
                await client.flush_ack()
                if auth.saved is not None:
                    save_session(auth.saved.with_last_seq(client.last_seq))

    run_async(run)


# -- commands defined in other modules (cli/admin.py, cli/bench.py register here the same way) --

from .serve import db, serve  # noqa: E402
from .shell import shell  # noqa: E402

main.add_command(serve)
main.add_command(db)
main.add_command(shell)

from .admin import admin, block, blocks, passwd, unblock  # noqa: E402

main.add_command(passwd)
main.add_command(block)
main.add_command(unblock)
main.add_command(blocks)
main.add_command(admin)
