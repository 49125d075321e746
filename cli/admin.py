"""`mailnet passwd`, `mailnet block|unblock|blocks` and `mailnet admin ...`: parse, call the
client library, print. Refusals (not an admin: `forbidden`) exit with code 5."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from broker.client import Client

from . import output
from .connect import ClientOptions, client_options, run_async, session_client
from .inputs import read_stdin_line
from .output import EXIT_USAGE, emit_json, fail, json_option, note, relative_time, table
from .session_file import save_session


def _call(options: ClientOptions, action: Callable[[Client], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with session_client(options) as auth:
            return await action(auth.client)

    return run_async(run)


def _emit_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        emit_json(row)


# -- any user ------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the current password, then the new one, from two stdin lines.",
)
@client_options
def passwd(password_stdin: bool, options: ClientOptions) -> None:
    """Change your password. Every other session of yours is logged out."""
    if password_stdin:
        lines = [read_stdin_line("a password on standard input") for _ in range(2)]
        if not all(lines):
            fail("give the current and the new password on two stdin lines", EXIT_USAGE)
        old, new = lines
    elif sys.stdin.isatty():
        old = click.prompt("Current password", hide_input=True)
        new = click.prompt(
            "New password", hide_input=True, confirmation_prompt="Repeat the new password"
        )
    else:
        fail("no terminal to ask for passwords: use --password-stdin", EXIT_USAGE)

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            result = await auth.client.change_password(old, new)
            if auth.saved is not None:  # the saved token died with the old password
                save_session(dataclasses.replace(auth.saved, token=result["token"]))
            return result

    result = run_async(run)
    ended = result["sessions_ended"]
    output.echo(f"Password changed; {ended} other live session(s) logged out.")


@click.command()
@click.argument("user")
@client_options
def block(user: str, options: ClientOptions) -> None:
    """Block USER: their emails, texts and pranks no longer reach you (they are not told)."""
    result = _call(options, lambda c: c.block(user))
    already = "" if result["changed"] else " (already blocked)"
    output.echo(f"Blocked {result['blocked']}{already}.")


@click.command()
@click.argument("user")
@client_options
def unblock(user: str, options: ClientOptions) -> None:
    """Unblock USER."""
    result = _call(options, lambda c: c.unblock(user))
    was = "" if result["changed"] else " (was not blocked)"
    output.echo(f"Unblocked {result['unblocked']}{was}.")


@click.command()
@json_option
@client_options
def blocks(as_json: bool, options: ClientOptions) -> None:
    """List the users you block."""
    rows = _call(options, lambda c: c.list_blocks())
    if as_json:
        _emit_rows(rows)
    elif not rows:
        output.echo("You block nobody.")
    else:
        output.echo(
            table([(r["username"], relative_time(r["since"])) for r in rows], ["USER", "SINCE"])
        )


# -- admins ----------------------------------------------------------------------------------


@click.group()
def admin() -> None:
    """Administer the broker (admin accounts only; the first account is the admin)."""


@admin.command("users")
@json_option
@client_options
def admin_users(as_json: bool, options: ClientOptions) -> None:
    """Every account: role, disabled, created, online."""
    rows = _call(options, lambda c: c.admin_users())
    if as_json:
        _emit_rows(rows)
        return
    output.echo(
        table(
            [
                (
                    r["username"],
                    r["role"],
                    "disabled" if r["disabled"] else "-",
                    "online" if r["online"] else "-",
                    relative_time(r["created"]),
                )
                for r in rows
            ],
            ["USER", "ROLE", "DISABLED", "ONLINE", "CREATED"],
        )
    )


def _set_disabled(user: str, disabled: bool, as_json: bool, options: ClientOptions) -> None:
    result = _call(options, lambda c: c.admin_set_disabled(user, disabled))
    if as_json:
        emit_json(result)
    elif disabled:
        output.echo(f"Disabled {result['username']}; {result['sessions_ended']} session(s) closed.")
    else:
        output.echo(f"Enabled {result['username']}.")


@admin.command("disable")
@click.argument("user")
@json_option
@client_options
def admin_disable(user: str, as_json: bool, options: ClientOptions) -> None:
    """Disable USER: they cannot log in, and their sessions end now."""
    _set_disabled(user, True, as_json, options)


@admin.command("enable")
@click.argument("user")
@json_option
@client_options
def admin_enable(user: str, as_json: bool, options: ClientOptions) -> None:
    """Enable USER again."""
    _set_disabled(user, False, as_json, options)


@admin.command("kick")
@click.argument("user")
@json_option
@client_options
def admin_kick(user: str, as_json: bool, options: ClientOptions) -> None:
    """End USER's live sessions and revoke their saved logins (they may log in again)."""
    result = _call(options, lambda c: c.admin_kick(user))
    if as_json:
        emit_json(result)
        return
    output.echo(
        f"Kicked {result['username']}: {result['sessions_ended']} live session(s) closed, "
        f"{result['tokens_revoked']} login(s) revoked."
    )


@admin.command("sessions")
@json_option
@client_options
def admin_sessions(as_json: bool, options: ClientOptions) -> None:
    """Live sessions on every node: user, client, since, idle, address, node.

    Other nodes report one line per user (client and address unknown here) with its count."""
    rows = _call(options, lambda c: c.admin_sessions())
    if as_json:
        _emit_rows(rows)
        return
    headers = ["USER", "CLIENT", "SINCE", "IDLE", "ADDRESS"]
    # One node: its name is noise. Several (nodes sharing PostgreSQL): which, and how many.
    cluster = len({r.get("node") for r in rows}) > 1
    table_rows = [
        [
            r["username"],
            r["client"] or "-",
            relative_time(r["since"]),
            f"{r['idle_seconds']:.0f}s",
            r["address"] or "-",
            *([r.get("node") or "-", str(r.get("sessions", 1))] if cluster else []),
        ]
        for r in rows
    ]
    output.echo(table(table_rows, headers + (["NODE", "SESSIONS"] if cluster else [])))


@admin.command("audit")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@client_options
def admin_audit(limit: int, as_json: bool, options: ClientOptions) -> None:
    """Recent rick-rolls with their real senders, and recent admin actions."""
    result = _call(options, lambda c: c.admin_audit(limit=limit))
    if as_json:
        for prank in result["rickrolls"]:
            emit_json({"type": "rickroll", **prank})
        for action in result["actions"]:
            emit_json({"type": "admin_action", **action})
        return
    output.echo("Rick-rolls:")
    pranks = [
        (relative_time(p["sent_at"]), p["sender"], p["recipient"], str(p["message_id"]))
        for p in result["rickrolls"]
    ]
    output.echo(table(pranks, ["WHEN", "SENDER", "RECIPIENT", "MESSAGE"]) if pranks else "  none")
    output.echo("\nAdmin actions:")
    actions = [
        (relative_time(a["at"]), a["admin"] or "?", a["action"], a["target"], a["detail"])
        for a in result["actions"]
    ]
    output.echo(
        table(actions, ["WHEN", "ADMIN", "ACTION", "TARGET", "DETAIL"]) if actions else "  none"
    )


@admin.command("invite")
@json_option
@client_options
def admin_invite(as_json: bool, options: ClientOptions) -> None:
    """Make a one-use invite code (for a broker started with --registration invite)."""
    result = _call(options, lambda c: c.admin_invite())
    if as_json:
        emit_json(result)
        return
    output.echo(result["invite"])
    note(f"mailnet: one use, valid until {result['expires']}")
