"""`mailnet login`, `logout` and `prefs`: the saved session and the user's own settings."""

from __future__ import annotations

import sys
from typing import Any

import click

from broker.client import RequestFailed

from . import output
from .connect import (
    DEFAULT_SERVER,
    ClientOptions,
    client_options,
    normalize_server,
    open_client,
    run_async,
    session_client,
)
from .discover import server_from_lan
from .inputs import check_config_dir, read_stdin_line
from .output import (
    EXIT_AUTH,
    EXIT_USAGE,
    CliError,
    emit_json,
    fail,
    json_option,
    note,
)
from .session_file import (
    SavedSession,
    config_dir,
    delete_session,
    load_session,
    save_session,
)

AUTH_FAILED_MESSAGE = "unknown user or wrong password"


def _interactive() -> bool:
    return sys.stdin.isatty()


def _read_password_line() -> str:
    password = read_stdin_line("the password on standard input")
    if not password:
        fail("no password on standard input", EXIT_USAGE)
    return password


@click.command()
@click.argument("username", required=False)
@click.option("--password-stdin", is_flag=True, help="Read the password from one stdin line.")
@click.option(
    "--create/--no-create",
    default=None,
    help="Create the account if it is new (default: ask at a terminal; yes with --password-stdin).",
)
@click.option(
    "--invite",
    metavar="CODE",
    envvar="MAILNET_INVITE",
    help="Invite code for a new account, on a broker with --registration invite.",
)
@json_option
@client_options
def login(
    username: str | None,
    password_stdin: bool,
    create: bool | None,
    invite: str | None,
    as_json: bool,
    options: ClientOptions,
) -> None:
    """Log in (creating the account when new) and save the session token.

    The token is saved with 0600 permissions in the config directory, and later commands use it.
    """
    interactive = _interactive() and not password_stdin
    if not password_stdin and not _interactive():
        fail("no terminal to ask for the password: use --password-stdin", EXIT_USAGE)
    check_config_dir(config_dir())  # before an account is made whose token could not be kept
    # No --server and no saved session: look for a broker on the LAN (cli/discover.py).
    server = (
        options.server
        or _saved_server()
        or server_from_lan(options, interactive=interactive, as_json=as_json)
        or DEFAULT_SERVER
    )
    if username is None:
        if password_stdin:
            fail("give the USERNAME when the password comes from stdin", EXIT_USAGE)
        username = click.prompt("Username").strip()
    password = (
        _read_password_line() if password_stdin else click.prompt("Password", hide_input=True)
    )
    if create is None:
        create = password_stdin

    offer_to_create = interactive and not create

    async def attempt(password: str, create: bool) -> tuple[dict[str, Any], int] | None:
        async with open_client(options, server) as client:
            try:
                response = await client.login(
                    username, password, create=create, invite=invite if create else None
                )
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
    output.echo(f"Logged in as {response['username']} on {server}{created}.")
    if unread:
        output.echo(f"You have {unread} unread message(s): run `mailnet inbox --unread`.")


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


@click.command()
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
    except CliError as exc:
        if exc.exit_code != EXIT_AUTH:  # unreachable: keep the token so logout can be retried
            raise
    delete_session()
    output.echo(f"Logged out {saved.username} from {saved.server}.")


@click.command()
@click.option(
    "--allow-pranks/--no-pranks",
    "allow_pranks",
    default=None,
    help="Accept rick-rolls, or refuse them.",
)
@click.option(
    "--read-receipts/--no-read-receipts",
    "read_receipts",
    default=None,
    help="Let senders see when you read their mail, or only that it was delivered.",
)
@json_option
@client_options
def prefs(
    allow_pranks: bool | None, read_receipts: bool | None, as_json: bool, options: ClientOptions
) -> None:
    """Set your preferences."""
    if allow_pranks is None and read_receipts is None:
        fail(
            "nothing to set: give --allow-pranks/--no-pranks or --read-receipts/--no-read-receipts",
            EXIT_USAGE,
        )

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.set_prefs(
                prank_opt_out=None if allow_pranks is None else not allow_pranks,
                read_receipts=read_receipts,
            )

    result = run_async(run)
    if as_json:
        emit_json(result)
        return
    if allow_pranks is not None:
        output.echo(
            "Pranks are now refused." if result["prank_opt_out"] else "Pranks are now allowed."
        )
    if read_receipts is not None:
        output.echo(
            "Senders now see when you read their mail."
            if result["read_receipts"]
            else "Senders now see only that their mail was delivered, not when you read it."
        )
