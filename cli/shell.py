"""`mailnet shell`: the interactive client, following the original program's numbered menu.

Input is plain line reading in a worker thread (trio.to_thread), not prompt_toolkit: it works
the same on a terminal and on a pipe, and prompt_toolkit would need its own asyncio loop in
another thread to live beside trio. Incoming mail is announced as it arrives, above the prompt.
"""

from __future__ import annotations

import contextlib
import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import click
import trio

from broker.client import BrokerUnreachable, Client, RequestFailed

from . import output
from .connect import (
    DEFAULT_SERVER,
    Authenticated,
    ClientOptions,
    client_options,
    env_credentials,
    normalize_server,
    open_client,
    run_async,
    session_client,
    stop_on_signals,
)
from .inputs import check_body, check_subject, check_utf8
from .output import EXIT_AUTH, CliError, fail
from .reconnect import stay_connected
from .session_file import SavedSession, load_session, save_session
from .terminal import safe_for_terminal

MENU = """
What would you like to do?
  1  Send an email
  2  Send a text
  3  Send an announcement
  4  Notifications{unread}
  5  Who's online
  6  Rick-roll someone
  7  History / search
  0  Disconnect"""
SHORT_MENU = (
    "\n1 email · 2 text · 3 announcement · 4 notifications{unread} · 5 who's online · "
    "6 rick-roll · 7 history · 0 disconnect"
)


class InputClosed(Exception):
    """Standard input reached its end: the user is done."""


class Console:
    """Prompts and printing. All output happens on the trio thread; reading in a worker."""

    def __init__(self) -> None:
        self.interactive = sys.stdin.isatty()
        self.pending_prompt: str | None = None

    def say(self, text: str = "") -> None:
        sys.stdout.write(safe_for_terminal(text) + "\n")
        sys.stdout.flush()

    def announce(self, text: str) -> None:
        """Print a notification; if a prompt is waiting, show it again below the notice."""
        if self.pending_prompt is None:
            self.say(text)
            return
        clear_line = "\r\x1b[K" if self.interactive else "\n"  # ours: wipe the prompt line
        sys.stdout.write(clear_line + safe_for_terminal(text) + "\n")
        sys.stdout.write(self.pending_prompt)
        sys.stdout.flush()

    async def ask(self, prompt: str, *, secret: bool = False) -> str:
        """One line of input; a line that is not UTF-8 text is asked for again."""
        while True:
            line = await self._ask_once(prompt, secret=secret)
            try:
                return check_utf8(line, "that line")
            except CliError as exc:
                self.say(f"{exc.message}: type it again.")

    async def _ask_once(self, prompt: str, *, secret: bool) -> str:
        if secret and self.interactive:
            line = await trio.to_thread.run_sync(getpass.getpass, prompt, abandon_on_cancel=True)
            return line
        prompt = safe_for_terminal(prompt)
        sys.stdout.write(prompt)
        sys.stdout.flush()
        self.pending_prompt = prompt
        try:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        finally:
            self.pending_prompt = None
        if not line:
            self.say()
            raise InputClosed
        return line.rstrip("\r\n")

    async def ask_lines(self, prompt: str) -> str:
        """Several lines, ended by an empty one."""
        self.say(prompt + " (end with an empty line)")
        lines = []
        while line := await self.ask("| "):
            lines.append(line)
        return "\n".join(lines)

    async def confirm(self, prompt: str) -> bool:
        return (await self.ask(prompt + " [y/N] ")).strip().lower() in ("y", "yes")


@click.command()
@client_options
def shell(options: ClientOptions) -> None:
    """Interactive client: a menu to send, read notifications, see who is online.

    Logs in with the saved session (or MAILNET_USER/MAILNET_PASSWORD), else asks for a user
    name and password, offering to create the account when it is new.
    """
    run_async(run_shell, options)


async def run_shell(options: ClientOptions) -> None:
    console = Console()
    try:
        async with shell_session(options, console) as auth:
            async with stop_on_signals():  # Ctrl-C and SIGTERM disconnect, as 0 does
                await Shell(auth, console, options).run()
            console.say("Disconnected. Bye!")
    except BaseException as exc:
        if not isinstance(output.innermost(exc), InputClosed):  # input ended while logging in
            raise


@asynccontextmanager
async def shell_session(options: ClientOptions, console: Console) -> AsyncIterator[Authenticated]:
    saved = load_session()
    usable = saved is not None and options.server in (None, normalize_server(saved.server))
    if env_credentials() is not None or usable:
        async with session_client(options, live=True) as auth:
            yield auth
        return
    server = options.server or DEFAULT_SERVER
    # Questions are asked while no connection is open: the broker closes a connection that
    # does not log in within its login timeout, and people type slower than that.
    username = (await console.ask("Username: ")).strip()
    password = await console.ask("Password: ", secret=True)
    async with open_client(options, server) as client:
        try:
            response = await client.login(username, password, create=False)
        except RequestFailed as exc:
            if exc.code != "auth_failed":
                raise
        else:
            yield _saved(client, server, response)
            return
    new_password = await ask_new_account(console, username)
    async with open_client(options, server) as client:
        response = await client.login(username, new_password, create=True)
        yield _saved(client, server, response)


def _saved(client: Client, server: str, response: dict[str, Any]) -> Authenticated:
    saved = SavedSession(server, response["username"], response["token"], response["resume_after"])
    save_session(saved)
    return Authenticated(client, server, saved, response["resume_after"])


async def ask_new_account(console: Console, username: str) -> str:
    """The original flow: an unknown user name is offered a new account, password twice."""
    if not await console.confirm(f"Login failed. Create a new account '{username}'?"):
        fail("unknown user or wrong password", EXIT_AUTH)
    for _ in range(3):
        first = await console.ask("New password: ", secret=True)
        second = await console.ask("Repeat the new password: ", secret=True)
        if first == second:
            return first
        console.say("The passwords differ; try again.")
    fail("the passwords did not match", EXIT_AUTH)


class Shell:
    def __init__(self, auth: Authenticated, console: Console, options: ClientOptions) -> None:
        self.auth = auth
        self.client = auth.client
        self.console = console
        self.options = options
        self.arrived = 0  # mail announced since the last look at the notifications
        self.last_seq: int | None = None  # the last seq announced

    async def run(self) -> None:
        self.console.say(f"Connected to {self.auth.server} as {self.client.username}.")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.stay_connected)
            with contextlib.suppress(InputClosed):  # the end of input means "disconnect"
                await self.menu()
            nursery.cancel_scope.cancel()

    async def stay_connected(self) -> None:
        """Announce mail; after a lost connection, reconnect and go on after the last seq shown."""
        await stay_connected(
            self.options,
            self.announce_incoming,
            resume_after=lambda: self.last_seq,
            first=self.auth,
        )

    async def announce_incoming(self, auth: Authenticated) -> None:
        if auth is not self.auth:
            self.auth, self.client = auth, auth.client
            self.console.announce(f"Reconnected to {auth.server}.")
        client = auth.client
        self.last_seq = max(self.last_seq or 0, auth.resume_after)
        while True:
            entry = await client.next_mail()
            if entry["seq"] is not None:
                if entry["seq"] <= self.last_seq:
                    continue  # announced before the connection was lost
                self.last_seq = entry["seq"]
            self.arrived += 1
            self.console.announce(output.notification_line(entry))
            await client.flush_ack()
            if auth.saved is not None:
                auth.saved = auth.saved.with_last_seq(self.last_seq)
                save_session(auth.saved)

    async def menu(self) -> None:
        actions = {
            "1": self.send_email,
            "2": self.send_text,
            "3": self.send_announcement,
            "4": self.show_notifications,
            "5": self.show_who,
            "6": self.send_rickroll,
            "7": self.show_history,
        }
        menu = MENU
        while True:
            unread = f" ({self.arrived} new)" if self.arrived else ""
            self.console.say(menu.format(unread=unread))
            menu = SHORT_MENU  # the full menu once, then a reminder line
            choice = (await self.console.ask("Choose: ")).strip()
            if choice in ("0", "q", "quit", "exit"):
                return
            action = actions.get(choice)
            if action is None:
                if choice not in ("", "?", "h", "help"):
                    self.console.say(f"Unknown choice {choice!r}: type a number from the menu.")
                menu = MENU
                continue
            try:
                await action()
            except CliError as exc:  # an input check of cli.inputs
                self.console.say(f"Not sent: {exc.message}")
            except RequestFailed as exc:
                self.console.say(f"Refused: {exc.message or exc.code}")
            except BrokerUnreachable:
                self.console.say("Not connected to the broker (reconnecting): try again soon.")

    def _sent(self, kind: str, result: dict[str, Any], to: str) -> None:
        self.console.say(f"Sent {kind} #{result['message_id']} to {to}.")

    async def send_email(self) -> None:
        to = [n.strip() for n in (await self.console.ask("To (a, b, ...): ")).split(",")]
        to = [n for n in to if n]
        if not to:
            self.console.say("No recipients: nothing sent.")
            return
        subject = check_subject(await self.console.ask("Subject: "))
        body = check_body(await self.console.ask_lines("Body"))
        self._sent("email", await self.client.send_email(to, subject, body), ", ".join(to))

    async def send_text(self) -> None:
        to = (await self.console.ask("To: ")).strip()
        body = check_body(await self.console.ask("Message: "))
        self._sent("text", await self.client.send_text(to, body), to)

    async def send_announcement(self) -> None:
        subject = check_subject(await self.console.ask("Subject: "))
        body = check_body(await self.console.ask_lines("Body"))
        self._sent("announcement", await self.client.announce(subject, body), "everyone")

    async def send_rickroll(self) -> None:
        to = (await self.console.ask("Who gets rick-rolled? ")).strip()
        result = await self.client.rickroll(to)
        self.console.say(f"Rick-roll #{result['message_id']} sent to {to}; they'll never know.")

    async def show_notifications(self) -> None:
        """Unread mail (kept on the broker, so it includes mail from before this session)."""
        page = await self.client.inbox(unread_only=True, limit=100)
        entries = list(reversed(page["entries"]))  # oldest first, like a conversation
        self.arrived = 0
        if not entries:
            self.console.say("No new notifications.")
            return
        for entry in entries:
            self.console.say("")
            self.console.say(output.entry_full(entry))
        await self.client.mark_read([entry["seq"] for entry in entries])
        more = page["unread"] - len(entries)
        self.console.say(
            f"\n{len(entries)} marked read." + (f" {more} more unread." if more > 0 else "")
        )

    async def show_who(self) -> None:
        users = await self.client.who()
        rows = [
            [
                u["username"],
                output.relative_time(u["since"]),
                output.duration(u["idle_seconds"]),
            ]
            for u in users
        ]
        self.console.say(output.table(rows, ["USER", "ONLINE SINCE", "IDLE"]))

    async def show_history(self) -> None:
        with_user = (await self.console.ask("With user (empty: anyone): ")).strip() or None
        search = (await self.console.ask("Containing text (empty: anything): ")).strip() or None
        items = await self.client.history(with_user=with_user, search=search, limit=20)
        if not items:
            self.console.say("Nothing found.")
            return
        self.console.say(output.history_table(items))
