"""`mailnet send`, `text`, `announce` and `rickroll`: one message each, acknowledged once stored."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import output
from .connect import ClientOptions, client_options, run_async, session_client
from .inputs import check_body, check_subject, read_stdin_text
from .output import EXIT_USAGE, emit_json, fail, json_option, note

client_id_option = click.option(
    "--client-id",
    metavar="ID",
    help="Client message id: a retried send with the same id is stored once.",
)


def _read_body(body: str | None) -> str:
    if body is None:
        if sys.stdin.isatty():
            note("Type the message; end it with Ctrl-D on a line of its own.")
        body = read_stdin_text("the message on standard input")
    return check_body(body)


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
    output.echo(f"Sent {kind} #{result['message_id']} to {where}.{again}")


@click.command()
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
    check_subject(subject)
    text = _read_body(body)

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.send_email(users, subject, text, client_msg_id=client_id)

    _sent(run_async(run), "email", users, as_json)


@click.command()
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


@click.command()
@click.option("--subject", required=True, help="One-line subject.")
@click.option("--body", help="The body; read from stdin when omitted.")
@click.option(
    "--require-ack",
    is_flag=True,
    help="Ask everyone to acknowledge it (`mailnet ack ID`); see who did with `mailnet status ID`.",
)
@client_id_option
@json_option
@client_options
def announce(
    subject: str,
    body: str | None,
    require_ack: bool,
    client_id: str | None,
    as_json: bool,
    options: ClientOptions,
) -> None:
    """Send an announcement to every user, online or not."""
    check_subject(subject)
    message = _read_body(body)

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.announce(
                subject, message, client_msg_id=client_id, require_ack=require_ack
            )

    _sent(run_async(run), "announcement", [], as_json)


@click.command()
@click.argument("user")
@json_option
@client_options
def rickroll(user: str, as_json: bool, options: ClientOptions) -> None:
    """Send USER a harmless rick-roll; they see it from "someone" (the link is never opened)."""

    async def run() -> dict[str, Any]:
        async with session_client(options) as auth:
            return await auth.client.rickroll(user)

    _sent(run_async(run), "rickroll", [user], as_json)
