"""The `mailnet` CLI as users run it: real processes against a real broker on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from cli_helpers import REPO, Expect, User, cli_env, read_to_end, run_cli, start_cli, stop

from cli.output import duration, relative_time, table
from cli.serve import client_addresses, client_urls, redact_url


@pytest.fixture
def alice(tmp_path: Path, broker) -> User:
    return User("alice", tmp_path / "alice-config", broker.address)


@pytest.fixture
def bob(tmp_path: Path, broker) -> User:
    return User("bob", tmp_path / "bob-config", broker.address, password="bobspassword")


def assert_one_error_line(result, code: int) -> str:
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mailnet: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def both_log_in(*users: User) -> None:
    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(user.login)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- accounts and sessions -------------------------------------------------------------------


async def test_login_creates_the_account_and_saves_a_private_token(alice: User) -> None:
    first = await alice.login()
    assert "new account created" in first.stdout

    session_file = alice.config_dir / "session.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    saved = json.loads(session_file.read_text())
    assert saved["username"] == "alice"
    assert saved["server"] == alice.server
    assert len(saved["token"]) >= 22  # at least 128 random bits, url-safe

    again = await alice.ok("login", "alice", "--password-stdin", "--json", stdin=b"password1\n")
    assert again.json_lines()[0]["created"] is False
    assert json.loads(session_file.read_text())["token"] != saved["token"]


async def test_wrong_password_and_unknown_user_fail_alike_with_exit_3(alice: User) -> None:
    await alice.login()
    wrong = await alice("login", "alice", "--password-stdin", stdin=b"not-the-password\n")
    unknown = await alice(
        "login", "nobody", "--password-stdin", "--no-create", stdin=b"password1\n"
    )
    assert assert_one_error_line(wrong, 3) == assert_one_error_line(unknown, 3)


async def test_commands_need_a_login(alice: User) -> None:
    result = await alice("inbox")
    assert "not logged in: run `mailnet login`" in assert_one_error_line(result, 3)


async def test_env_credentials_work_without_a_saved_session(alice: User, tmp_path: Path) -> None:
    await alice.login()
    scripted = User(
        "alice",
        tmp_path / "empty-config",
        alice.server,
        extra_env={"MAILNET_USER": "alice", "MAILNET_PASSWORD": "password1"},
    )
    result = await scripted.ok("inbox", "--json")
    assert result.json_lines() == []  # authenticated: an empty inbox, not an error
    # A one-shot command is not "online": it does not show in who.
    assert (await scripted.ok("who", "--json")).json_lines() == []
    assert not (tmp_path / "empty-config" / "session.json").exists()


async def test_logout_revokes_the_token_and_deletes_the_file(alice: User) -> None:
    await alice.login()
    session_file = alice.config_dir / "session.json"
    saved = session_file.read_text()
    await alice.ok("logout")
    assert not session_file.exists()

    session_file.write_text(saved)  # the old token, restored: the broker must refuse it
    result = await alice("inbox")
    assert "expired or was logged out" in assert_one_error_line(result, 3)


# -- sending and reading ---------------------------------------------------------------------


async def test_send_text_announce_inbox_read_history_as_json(
    alice: User, bob: User, broker
) -> None:
    await both_log_in(alice, bob)

    email = await alice.ok(
        "send", "--to", "bob,alice", "--subject", "Lunch?", "--body", "At noon", "--json"
    )
    text = await alice.ok("text", "bob", "see", "you", "there", "--json")
    announcement = await alice.ok(
        "announce", "--subject", "Maintenance", "--body", "Down at 5", "--json"
    )
    assert email.json_lines()[0]["kind"] == "email"
    assert text.json_lines()[0]["to"] == ["bob"]
    ids = [r.json_lines()[0]["message_id"] for r in (email, text, announcement)]
    assert len(set(ids)) == 3

    inbox = (await bob.ok("inbox", "--json")).json_lines()
    assert [(e["kind"], e["sender"], e["read"]) for e in inbox] == [
        ("announcement", "alice", False),
        ("text", "alice", False),
        ("email", "alice", False),
    ]
    assert inbox[1]["body"] == "see you there"

    text_seq = inbox[1]["seq"]
    shown = (await bob.ok("read", str(text_seq), "--json")).json_lines()
    assert [(e["seq"], e["body"], e["read"]) for e in shown] == [(text_seq, "see you there", True)]
    unread = (await bob.ok("inbox", "--unread", "--json")).json_lines()
    assert text_seq not in [e["seq"] for e in unread]
    assert len(unread) == 2

    history = (await bob.ok("history", "--with", "alice", "--kind", "text", "--json")).json_lines()
    assert [(h["kind"], h["body"]) for h in history] == [("text", "see you there")]
    found = (await alice.ok("history", "--search", "noon", "--json")).json_lines()
    assert [(h["subject"], h["direction"]) for h in found] == [("Lunch?", "out")]

    async with broker.user("carol"):
        who = (await bob.ok("who", "--json")).json_lines()
    # carol holds a live session; bob only runs one-shot commands, so he is not online.
    assert [u["username"] for u in who] == ["carol"]
    assert all("idle_seconds" in u and "since" in u for u in who)

    human = await bob.ok("inbox")
    assert "Maintenance" in human.stdout and "unread" in human.stdout


async def test_body_is_read_from_stdin_when_omitted(alice: User, bob: User) -> None:
    await both_log_in(alice, bob)
    await alice.ok("send", "--to", "bob", "--subject", "Report", stdin=b"line one\nline two\n")
    await alice.ok("text", "bob", stdin=b"texted from a pipe\n")
    bodies = [e["body"] for e in (await bob.ok("inbox", "--json")).json_lines()]
    assert bodies == ["texted from a pipe\n", "line one\nline two\n"]


async def test_rickroll_hides_the_sender_and_only_shows_the_link(alice: User, bob: User) -> None:
    await both_log_in(alice, bob)
    await alice.ok("rickroll", "bob")
    entry = (await bob.ok("inbox", "--json")).json_lines()[0]
    assert entry["kind"] == "rickroll" and entry["sender"] is None
    shown = await bob.ok("read", str(entry["seq"]))
    assert "From:    someone" in shown.stdout
    assert "alice" not in shown.stdout
    assert "https://www.youtube.com/watch?v=dQw4w9WgXcQ" in shown.stdout

    await bob.ok("prefs", "--no-pranks")
    refused = await alice("rickroll", "bob")
    assert_one_error_line(refused, 5)


async def test_offline_recipient_sees_queued_mail_after_logging_in(alice: User, bob: User) -> None:
    await both_log_in(alice, bob)  # bob now exists, and is offline: no command of his runs
    await alice.ok("text", "bob", "you were away")
    await alice.ok("send", "--to", "bob", "--subject", "Minutes", "--body", "attached")

    relogin = await bob.login()
    assert "2 unread" in relogin.stdout
    unread = (await bob.ok("inbox", "--unread", "--json")).json_lines()
    assert [e["body"] for e in unread] == ["attached", "you were away"]

    # `listen` delivers the queue in order, acknowledges it, and remembers where it stopped.
    heard = (await bob.ok("listen", "--count", "2", "--json")).json_lines()
    assert [e["body"] for e in heard] == ["you were away", "attached"]
    saved = json.loads((bob.config_dir / "session.json").read_text())
    assert saved["last_seq"] == heard[-1]["seq"]


async def test_listen_prints_mail_as_it_arrives(alice: User, bob: User, broker) -> None:
    await bob.login()
    process = await start_cli("listen", "--count", "1", "--json", env=bob.env)
    try:
        await Expect(process.stderr).expect("listening as bob")
        async with broker.user("alice") as client:
            await client.send_text("bob", "live and direct")
        out = Expect(process.stdout)
        line = await out.expect("\n")
        assert json.loads(line)["body"] == "live and direct"
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        await stop(process)


async def test_listen_stops_cleanly_on_sigterm(bob: User) -> None:
    await bob.login()
    process = await start_cli("listen", env=bob.env)
    try:
        await Expect(process.stderr).expect("listening as bob")
    finally:
        assert await stop(process) == 0


async def test_inbox_pages_back_with_before(alice: User, bob: User, broker) -> None:
    await both_log_in(alice, bob)
    async with broker.user("alice", "password1") as client:
        for n in range(3):
            await client.send_text("bob", f"number {n}")
    first = (await bob.ok("inbox", "--limit", "2", "--json")).json_lines()
    assert [e["body"] for e in first] == ["number 2", "number 1"]
    human = await bob.ok("inbox", "--limit", "2")
    assert f"More: add --before {first[-1]['seq']}" in human.stdout
    rest = await bob.ok("inbox", "--before", str(first[-1]["seq"]), "--json")
    assert [e["body"] for e in rest.json_lines()] == ["number 0"]


# -- failures ------------------------------------------------------------------------------------


async def test_unknown_recipient_is_exit_5_with_one_line(alice: User) -> None:
    await alice.login()
    result = await alice("text", "zed", "hello?")
    assert "no such user: zed" in assert_one_error_line(result, 5)
    assert result.stdout == ""


async def test_broker_down_is_exit_4(tmp_path: Path) -> None:
    scripted = User(
        "alice",
        tmp_path / "config",
        f"127.0.0.1:{closed_port()}",
        extra_env={"MAILNET_USER": "alice", "MAILNET_PASSWORD": "password1"},
    )
    result = await scripted("inbox")
    assert "cannot reach the broker" in assert_one_error_line(result, 4)


async def test_tls_client_against_a_plaintext_broker_gets_a_hint(tmp_path: Path, broker) -> None:
    env = cli_env(tmp_path, broker.address, MAILNET_USER="alice", MAILNET_PASSWORD="password1")
    result = await run_cli("inbox", env=env)  # TLS with pinning: the default
    line = assert_one_error_line(result, 4)
    assert "TLS handshake" in line and "--insecure-plaintext" in line


@pytest.mark.parametrize(
    "args",
    [
        ["send", "--subject", "no recipients"],
        ["text"],
        ["history", "--since", "the day before"],
        ["read", "not-a-number"],
        ["no-such-command"],
        ["send", "--to", "bob", "--subject", "x", "--body", "   "],
    ],
)
async def test_usage_errors_are_exit_2(tmp_path: Path, args: list[str]) -> None:
    env = cli_env(tmp_path, "127.0.0.1:1", MAILNET_USER="a", MAILNET_PASSWORD="password1")
    result = await run_cli(*args, env=env)
    assert_one_error_line(result, 2)


async def test_help_documents_the_exit_codes(tmp_path: Path) -> None:
    result = await run_cli("--help", env=cli_env(tmp_path, None))
    assert result.returncode == 0
    assert "Exit codes: 0 ok" in result.stdout
    assert "4 broker unreachable" in " ".join(result.stdout.split())


# -- serve and db, as subprocesses -------------------------------------------------------------


async def start_broker(data_dir: Path, *args: str) -> tuple[trio.Process, str, str]:
    """`mailnet serve` on a free loopback port; returns the process, its address, its banner."""
    env = cli_env(None, None)
    process = await start_cli(
        "serve", "--web-port", "-1", "--data-dir", str(data_dir), *args, env=env
    )
    out = Expect(process.stdout)
    banner = await out.expect("Stop with Ctrl-C.", timeout=60)
    address = next(
        line.strip() for line in banner.splitlines() if line.strip().startswith("127.0.0.1:")
    )
    return process, address, banner


async def test_serve_prints_its_address_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process, address, banner = await start_broker(
        tmp_path / "data", "--port", "0", "--insecure-plaintext"
    )
    try:
        assert "plaintext" in banner
        assert f"Database: sqlite:///{tmp_path / 'data' / 'mailnet.db'}" in banner
        user = User("alice", tmp_path / "config", address)
        await user.login()
        await user.ok("text", "alice", "note to self")
    finally:
        assert await stop(process) == 0
    stderr = await read_to_end(process.stderr)
    assert "SIGTERM received: stopping" in stderr
    assert "Traceback" not in stderr


async def test_serve_flags_set_the_limits(tmp_path: Path) -> None:
    process, address, _ = await start_broker(
        tmp_path / "data",
        "--port", "0", "--insecure-plaintext", "--send-burst", "1", "--send-rate", "0.01",
    )  # fmt: skip
    try:
        user = User("alice", tmp_path / "config", address)
        await user.login()
        await user.ok("text", "alice", "the one send the burst allows")
        result = await user("text", "alice", "one too many")
        assert "sending too fast" in assert_one_error_line(result, 5)
    finally:
        assert await stop(process) == 0


async def test_tls_pins_on_first_use_and_refuses_a_changed_certificate(tmp_path: Path) -> None:
    config = tmp_path / "config"
    first, address, banner = await start_broker(tmp_path / "data-1", "--port", "0")
    port = address.rsplit(":", 1)[1]
    try:
        fingerprint = next(
            line.split(": ", 1)[1] for line in banner.splitlines() if "fingerprint" in line
        )
        env = cli_env(config, address)  # TLS with pinning: the default
        login = await run_cli("login", "alice", "--password-stdin", env=env, stdin=b"password1\n")
        assert login.returncode == 0, login
        assert f"pinned the certificate of {address}: {fingerprint}" in login.stderr
        again = await run_cli("who", env=env)
        assert again.returncode == 0 and "pinned" not in again.stderr
    finally:
        assert await stop(first) == 0

    # Another broker (another data dir: a new self-signed certificate) on the same address.
    second, _, _ = await start_broker(tmp_path / "data-2", "--port", port)
    try:
        refused = await run_cli("who", env=env)
        line = assert_one_error_line(refused, 4)
        assert "WARNING" in line and "presented certificate" in line
    finally:
        assert await stop(second) == 0


async def test_serve_with_a_bad_database_url_is_exit_2(tmp_path: Path) -> None:
    result = await run_cli(
        "serve", "--port", "0", "--web-port", "-1", "--db", "nonsense", env=cli_env(None, None)
    )
    assert "cannot start the broker" in assert_one_error_line(result, 2)


async def test_db_commands_on_an_unreachable_database_are_exit_2_with_one_line(
    tmp_path: Path,
) -> None:
    # Nothing listens on loopback port 1: the connection is refused at once.
    url = "postgresql+psycopg://mailnet:secret@127.0.0.1:1/mailnet"
    for command in ("upgrade", "current"):
        result = await run_cli("db", command, "--db", url, env=cli_env(None, None))
        line = assert_one_error_line(result, 2)
        assert "cannot reach database" in line
        assert "secret" not in line


async def test_db_upgrade_and_current_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = cli_env(tmp_path, None)
    before = await run_cli("db", "current", "--db", url, "--json", env=env)
    assert before.returncode == 0, before
    state = before.json_lines()[0]
    assert state["current"] is None and state["head"] and not state["up_to_date"]

    upgraded = await run_cli("db", "upgrade", "--db", url, env=env)
    assert upgraded.returncode == 0, upgraded
    assert state["head"] in upgraded.stdout
    after = (await run_cli("db", "current", "--db", url, "--json", env=env)).json_lines()[0]
    assert after == {"current": state["head"], "head": state["head"], "up_to_date": True}


def test_database_passwords_are_not_printed() -> None:
    assert redact_url("postgresql+psycopg://mail:s3cret@db:5432/mailnet") == (
        "postgresql+psycopg://mail:***@db:5432/mailnet"
    )
    assert redact_url("sqlite:////var/lib/mailnet.db") == "sqlite:////var/lib/mailnet.db"


async def test_login_at_a_terminal_offers_to_create_the_account(alice: User) -> None:
    """The interactive path: a pseudo-terminal, prompts, and the new password asked twice."""
    import pexpect

    def converse() -> tuple[int, str]:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "cli", "login"],
            env=alice.env,
            cwd=str(REPO),
            encoding="utf-8",
            timeout=30,
        )
        child.expect("Username: ")
        child.sendline("alice")
        child.expect("Password: ")
        child.sendline("first-try")
        child.expect(r"Create account 'alice'\? \[y/N\]: ")
        child.sendline("y")
        child.expect("New password: ")
        child.sendline("password1")
        child.expect("Repeat the new password: ")
        child.sendline("password1")
        child.expect(pexpect.EOF)
        child.close()
        return child.exitstatus, child.before

    status, said = await trio.to_thread.run_sync(converse)
    assert status == 0, said
    assert "Logged in as alice" in said and "new account created" in said
    assert "first-try" not in said and "password1" not in said  # never echoed
    await alice.ok("who")


def test_a_wildcard_bind_is_shown_as_addresses_clients_can_use() -> None:
    addresses = client_addresses([("0.0.0.0", 7878)])
    assert addresses[0] == "127.0.0.1:7878"
    assert all(a.endswith(":7878") and not a.startswith("0.0.0.0") for a in addresses)
    assert client_addresses([("::", 7878)])[0] == "[::1]:7878"
    assert client_addresses([("192.168.1.5", 7878)]) == ["192.168.1.5:7878"]
    assert client_urls(["https://0.0.0.0:8080/"])[0] == "https://127.0.0.1:8080/"
    assert client_urls(["http://127.0.0.1:8080/"]) == ["http://127.0.0.1:8080/"]


def test_human_output_uses_relative_times_and_aligned_columns() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert relative_time("2026-11-30T11:58:30.000000Z", now) == "1m ago"
    assert relative_time(now - timedelta(hours=3, minutes=5), now) == "3h05m ago"
    assert relative_time(now, now) == "just now"
    assert duration(2 * 86400 + 5) == "2d"
    assert table([["alice", "x"], ["bo", "longer text"]], ["USER", "NOTE"]).splitlines() == [
        "USER   NOTE",
        "alice  x",
        "bo     longer text",
    ]
