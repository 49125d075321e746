"""Other people's text cannot steer the reader's terminal: every printer escapes control and
bidi characters, and --json keeps the exact text. Real CLI processes against a live broker."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import trio
from cli_helpers import Expect, User, start_cli, stop
from hypothesis import given
from hypothesis import strategies as st

from cli.output import table
from cli.terminal import json_safe_for_terminal, safe_for_terminal
from tests.conftest import RunningBroker

# What a hostile sender puts in a body: retitle the window, clear the screen, write the
# clipboard (OSC 52), an 8-bit CSI, a right-to-left override that disguises a file name.
TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4=\x07"
CSI8 = "\x9b31m"
RLO = "invoice\u202egnp.exe"
HOSTILE_BODY = f"hello {TITLE}{CLEAR}{CLIPBOARD}{CSI8} {RLO}\ttab\nsecond line\r!"

# Nothing of these may reach the terminal raw.
DANGEROUS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def is_dangerous(char: str) -> bool:
    code = ord(char)
    return (
        (code < 0x20 and char not in "\n\t")
        or 0x7F <= code <= 0x9F
        or char in "\u061c\u200e\u200f\u2028\u2029"
        or 0x202A <= code <= 0x202E
        or 0x2066 <= code <= 0x2069
        or 0xD800 <= code <= 0xDFFF
    )


# -- the function every printer uses ------------------------------------------------------------


def test_every_code_point_is_either_kept_or_shown_as_printable_ascii() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        shown = safe_for_terminal(char)
        if is_dangerous(char):
            assert shown.isascii() and shown.isprintable() and shown.startswith("\\"), hex(code)
            assert int(shown[2:], 16) == code  # the escape names the character
        else:
            assert shown == char, hex(code)


@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_safe_text_emits_no_dangerous_character_and_keeps_the_rest(text: str) -> None:
    shown = safe_for_terminal(text)
    assert not any(is_dangerous(char) for char in shown)
    assert safe_for_terminal(shown) == shown  # idempotent: escapes are plain ASCII
    remaining = iter(shown)  # every harmless character is kept, in order
    assert all(char in remaining for char in text if not is_dangerous(char))
    if not any(is_dangerous(char) for char in text):
        assert shown == text


@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_json_output_keeps_the_exact_text_and_no_dangerous_character(text: str) -> None:
    document = json_safe_for_terminal(json.dumps({"body": text}, ensure_ascii=False))
    assert json.loads(document) == {"body": text}
    assert not any(is_dangerous(char) for char in document)


def test_the_named_sequences_are_shown_visibly() -> None:
    shown = safe_for_terminal(HOSTILE_BODY)
    assert "\\x1b]0;pwned\\x07" in shown
    assert "\\x1b[2J" in shown
    assert "\\x1b]52;c;" in shown
    assert "\\x9b31m" in shown
    assert "invoice\\u202egnp.exe" in shown
    assert "\ttab\nsecond line\\x0d!" in shown  # tab and newline kept, carriage return shown


def test_tables_align_on_the_escaped_text() -> None:
    lines = table([["a\x1bb", "x"], ["c", "y"]], ["NAME", "V"]).splitlines()
    assert lines[1] == "a\\x1bb  x"
    assert lines[2] == "c       y"


# -- through the CLI ---------------------------------------------------------------------------


@pytest.fixture
def alice(tmp_path: Path, broker: RunningBroker) -> User:
    return User("alice", tmp_path / "alice-config", broker.address)


@pytest.fixture
def bob(tmp_path: Path, broker: RunningBroker) -> User:
    return User("bob", tmp_path / "bob-config", broker.address)


def assert_terminal_safe(text: str) -> None:
    found = DANGEROUS.findall(text)
    assert not found, f"raw control/bidi characters {found!r} in:\n{text!r}"


async def send_hostile_mail(alice: User, bob: User) -> None:
    await alice.login()
    await bob.login()
    await alice.ok("text", "bob", stdin=HOSTILE_BODY.encode())
    subject = f"Re: {RLO}"  # subjects refuse controls, but bidi overrides are allowed
    await alice.ok("send", "--to", "bob", "--subject", subject, "--body", HOSTILE_BODY)


async def test_inbox_read_and_history_show_control_sequences_visibly(
    alice: User, bob: User
) -> None:
    await send_hostile_mail(alice, bob)
    for args in (["inbox"], ["history"], ["history", "--search", "pwned"], ["read", "1", "2"]):
        result = await bob.ok(*args)
        assert_terminal_safe(result.stdout + result.stderr)
        assert "\\x1b" in result.stdout or "\\u202e" in result.stdout, args
    full = (await bob.ok("read", "1")).stdout
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x1b]52;c;" in full
    assert "invoice\\u202egnp.exe\ttab\nsecond line\\x0d!" in full


async def test_json_output_keeps_the_exact_text(alice: User, bob: User) -> None:
    await send_hostile_mail(alice, bob)
    for args in (["inbox", "--json"], ["history", "--json"], ["read", "1", "--json"]):
        result = await bob.ok(*args)
        assert_terminal_safe(result.stdout)
        bodies = {line["body"] for line in result.json_lines()}
        assert HOSTILE_BODY in bodies, args


@pytest.mark.parametrize("as_json", [False, True])
async def test_listen_never_prints_control_sequences(
    alice: User, bob: User, broker: RunningBroker, as_json: bool
) -> None:
    await bob.login()
    args = ["listen", "--count", "2"] + (["--json"] if as_json else [])
    process = await start_cli(*args, env=bob.env)
    try:
        await Expect(process.stderr).expect("listening as bob")
        async with broker.user("alice") as client:
            await client.send_text("bob", HOSTILE_BODY)
            await client.send_email(["bob"], f"Re: {RLO}", "x")
        out = Expect(process.stdout)
        await out.expect("\n")
        await out.expect("\n")
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        await stop(process)
    assert_terminal_safe(out.seen)
    if as_json:
        assert [json.loads(line)["body"] for line in out.seen.splitlines()] == [HOSTILE_BODY, "x"]
    else:
        assert "\\x1b]0;pwned\\x07" in out.seen and "invoice\\u202egnp.exe" in out.seen


async def test_shell_announces_and_shows_mail_with_control_sequences_visibly(
    alice: User, bob: User, broker: RunningBroker
) -> None:
    await bob.login()
    process = await start_cli("shell", env=bob.env)
    try:
        out = Expect(process.stdout)
        await out.expect("Choose: ")
        async with broker.user("alice") as client:
            await client.send_text("bob", HOSTILE_BODY)
        await out.expect("New text from alice")
        assert process.stdin is not None
        await process.stdin.send_all(b"4\n")
        await out.expect("marked read")
        await process.stdin.send_all(b"0\n")
        await out.expect("Bye!")
    finally:
        await stop(process)
    assert_terminal_safe(out.seen.replace("\r\x1b[K", ""))  # the shell's own line wipe
    assert "\\x1b]52;c;" in out.seen


async def test_admin_views_show_a_hostile_client_name_visibly(
    alice: User, broker: RunningBroker
) -> None:
    await alice.login()  # the first account: the admin
    async with broker.client() as client:
        await client.login("mallory", "password1", create=True, client=f"evil{TITLE}{CLEAR}")
        sessions = await alice.ok("admin", "sessions")
        as_json = await alice.ok("admin", "sessions", "--json")
    assert_terminal_safe(sessions.stdout)
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in sessions.stdout
    assert f"evil{TITLE}{CLEAR}" in {row["client"] for row in as_json.json_lines()}
