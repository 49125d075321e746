"""`mailnet shell` driven through a pipe, against a real broker: the original program's menu."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import trio
from cli_helpers import Expect, User, start_cli, stop


async def test_shell_sends_a_text_and_announces_incoming_mail(tmp_path: Path, broker) -> None:
    alice = User("alice", tmp_path / "alice-config", broker.address)
    await alice.login()
    async with broker.user("bob") as bob:
        shell = await start_cli("shell", env=alice.env)
        try:
            out = Expect(shell.stdout)
            await out.expect("Connected to")
            await out.expect("0  Disconnect")
            await out.expect("Choose: ")

            await shell.stdin.send_all(b"2\nbob\nhello from the shell\n")
            await out.expect("Sent text #")
            with trio.fail_after(10):
                received = await bob.next_mail()
            assert (received["sender"], received["body"]) == ("alice", "hello from the shell")

            await out.expect("Choose: ")
            await bob.send_text("alice", "hi alice, bob here")
            await out.expect("New text from bob: hi alice, bob here")

            await shell.stdin.send_all(b"4\n")  # notifications: show the unread text, mark read
            shown = await out.expect("marked read.")
            assert "From:    bob" in shown and "hi alice, bob here" in shown

            await out.expect("Choose: ")
            await shell.stdin.send_all(b"5\n")  # who's online: both of them
            who = await out.expect("Choose: ")
            assert "alice" in who and "bob" in who

            await shell.stdin.send_all(b"6\nbob\n")  # rick-roll
            await out.expect("Rick-roll #")
            with trio.fail_after(10):
                prank = await bob.next_mail()
            assert prank["kind"] == "rickroll" and prank["sender"] is None

            await shell.stdin.send_all(b"0\n")
            await out.expect("Disconnected. Bye!")
            with trio.fail_after(30):
                assert await shell.wait() == 0
        finally:
            await stop(shell)

    # What the shell showed was acknowledged and remembered, and marked read on the broker.
    saved = json.loads((alice.config_dir / "session.json").read_text())
    assert saved["last_seq"] == 1
    assert (await alice.ok("inbox", "--unread", "--json")).stdout == ""


async def test_shell_creates_an_account_the_way_the_original_did(tmp_path: Path, broker) -> None:
    erin = User("erin", tmp_path / "erin-config", broker.address)
    shell = await start_cli("shell", env=erin.env)
    try:
        out = Expect(shell.stdout)
        await shell.stdin.send_all(b"erin\nsecret-pw\n")
        await out.expect("Create a new account 'erin'? [y/N] ")
        await shell.stdin.send_all(b"y\nsecret-pw\nsecret-pw\n")
        await out.expect("Connected to")
        await out.expect("Choose: ")
        await shell.stdin.aclose()  # end of input: the shell disconnects cleanly
        await out.expect("Disconnected. Bye!")
        with trio.fail_after(30):
            assert await shell.wait() == 0
    finally:
        await stop(shell)
    saved = json.loads((erin.config_dir / "session.json").read_text())
    assert saved["username"] == "erin"

    # The account exists with that password: a scripted login works.
    erin.password = "secret-pw"
    result = await erin.ok("login", "erin", "--password-stdin", "--no-create", stdin=b"secret-pw\n")
    assert "Logged in as erin" in result.stdout


async def test_shell_shows_mail_that_arrived_while_offline(tmp_path: Path, broker) -> None:
    alice = User("alice", tmp_path / "alice-config", broker.address)
    await alice.login()
    async with broker.user("bob") as bob:
        await bob.send_email(["alice"], "While you were out", "three things")
    shell = await start_cli("shell", env=alice.env)
    try:
        out = Expect(shell.stdout)
        await out.expect("New email from bob: While you were out")
        await out.expect("Choose: ")
        await shell.stdin.send_all(b"0\n")
        with trio.fail_after(30):
            assert await shell.wait() == 0
    finally:
        await stop(shell)


async def test_shell_disconnects_on_sigint(tmp_path: Path, broker) -> None:
    alice = User("alice", tmp_path / "alice-config", broker.address)
    await alice.login()
    shell = await start_cli("shell", env=alice.env)
    try:
        out = Expect(shell.stdout)
        await out.expect("Choose: ")
        assert await stop(shell, signal.SIGINT) == 0
        await out.expect("Disconnected. Bye!")
    finally:
        await stop(shell)
