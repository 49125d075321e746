"""`mailnet passwd`, `block`/`unblock`/`blocks` and `mailnet admin ...` as real processes
against a live broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import User

from tests.conftest import RunningBroker


@pytest.fixture
def root(tmp_path: Path, broker: RunningBroker) -> User:
    return User("root", tmp_path / "root-config", broker.address)


@pytest.fixture
def bob(tmp_path: Path, broker: RunningBroker) -> User:
    return User("bob", tmp_path / "bob-config", broker.address)


def one_error_line(result, code: int) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailnet: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def test_admin_commands_work_for_the_admin_and_refuse_others(root: User, bob: User) -> None:
    await root.login()  # the first account: the admin
    await bob.login()
    users = (await root.ok("admin", "users", "--json")).json_lines()
    assert [(u["username"], u["role"], u["disabled"]) for u in users] == [
        ("bob", "user", False),
        ("root", "admin", False),
    ]
    table = (await root.ok("admin", "users")).stdout
    assert "USER" in table and "admin" in table
    sessions = (await root.ok("admin", "sessions", "--json")).json_lines()
    assert [(s["username"], s["address"]) for s in sessions] == [("root", "127.0.0.1")]
    line = one_error_line(await bob("admin", "users"), 5)
    assert "admin" in line
    one_error_line(await bob("admin", "kick", "root"), 5)

    kicked = await root.ok("admin", "kick", "bob")
    assert "Kicked bob" in kicked.stdout
    one_error_line(await bob("inbox"), 3)  # bob's saved token was revoked
    await bob.login()
    await root.ok("admin", "disable", "bob")
    one_error_line(await bob("inbox"), 3)
    await root.ok("admin", "enable", "bob")
    await bob.login()
    await bob.ok("rickroll", "root")
    audit = (await root.ok("admin", "audit", "--json")).json_lines()
    assert {"type": "rickroll", "sender": "bob", "recipient": "root"}.items() <= audit[0].items()
    actions = [(a["action"], a["target"]) for a in audit if a["type"] == "admin_action"]
    assert actions == [("enable", "bob"), ("disable", "bob"), ("kick", "bob")]
    human = (await root.ok("admin", "audit")).stdout
    assert "Rick-rolls:" in human and "bob" in human
    invite = (await root.ok("admin", "invite")).stdout.strip()
    assert len(invite) >= 22


async def test_block_unblock_and_list(root: User, bob: User) -> None:
    await root.login()
    await bob.login()
    assert "Blocked root." in (await bob.ok("block", "root")).stdout
    assert [b["username"] for b in (await bob.ok("blocks", "--json")).json_lines()] == ["root"]
    sent = await root.ok("text", "bob", "can you hear me?")
    assert "Sent text" in sent.stdout  # the sender is not told
    assert "can you hear me" not in (await bob.ok("inbox")).stdout
    one_error_line(await bob("block", "nobody"), 5)
    assert "Unblocked root." in (await bob.ok("unblock", "root")).stdout
    assert "You block nobody." in (await bob.ok("blocks")).stdout


async def test_passwd_changes_the_password_and_keeps_this_computer_logged_in(
    root: User, tmp_path: Path, broker: RunningBroker
) -> None:
    await root.login()
    elsewhere = User("root", tmp_path / "laptop-config", broker.address)
    await elsewhere.login()
    changed = await root.ok("passwd", "--password-stdin", stdin=b"password1\nnew-password\n")
    assert "Password changed" in changed.stdout
    await root.ok("inbox")  # the saved token was replaced with the new one
    one_error_line(await elsewhere("inbox"), 3)  # the other computer's login is dead
    one_error_line(
        await root("passwd", "--password-stdin", stdin=b"wrong-password\nwhatever1\n"), 3
    )
    one_error_line(await root("passwd", "--password-stdin", stdin=b"new-password\n"), 2)
    one_error_line(await root("passwd"), 2)  # no terminal, no --password-stdin
    root.password = "new-password"
    await root.login()


async def test_login_with_an_invite_creates_an_account_on_an_invite_only_broker(
    tmp_path: Path,
) -> None:
    from tests.conftest import make_config, running_broker

    config = make_config(tmp_path / "data", registration="invite")
    async with running_broker(config) as broker:
        root = User("root", tmp_path / "root-config", broker.address)
        carol = User("carol", tmp_path / "carol-config", broker.address)
        dave = User("dave", tmp_path / "dave-config", broker.address)
        await root.login()  # the first account (the admin) may be made from loopback
        code = (await root.ok("admin", "invite")).stdout.strip()
        refused = await dave("login", "dave", "--password-stdin", stdin=b"password1\n")
        assert "invite" in one_error_line(refused, 5)
        joined = await carol.ok(
            "login", "carol", "--password-stdin", "--invite", code, stdin=b"password1\n"
        )
        assert "new account created" in joined.stdout
        reused = await dave(
            "login", "dave", "--password-stdin", "--invite", code, stdin=b"password1\n"
        )
        one_error_line(reused, 5)  # one use only
