"""Accounts over a live broker: creation on first login, password checks, tokens, logout."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
import trio

from broker.client import RequestFailed

WAIT = 10


def db_rows(config, sql: str, *params: object) -> list[tuple]:
    """Read the broker's SQLite file through a separate connection, as an admin would."""
    with closing(sqlite3.connect(config.data_dir / "mailnet.db")) as db:
        return db.execute(sql, params).fetchall()


async def test_first_login_creates_the_account_and_the_first_account_is_admin(broker):
    with trio.fail_after(WAIT):
        async with broker.client() as first, broker.client() as second:
            made = await first.login("alice", "password1", create=True)
            assert made["created"] is True
            assert made["role"] == "admin"
            assert made["username"] == "alice"
            other = await second.login("bob", "password2", create=True)
            assert other["created"] is True
            assert other["role"] == "user"
    assert db_rows(broker.config, "SELECT username, role FROM users ORDER BY id") == [
        ("alice", "admin"),
        ("bob", "user"),
    ]


async def test_later_login_checks_the_password_and_does_not_create_again(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice", "password1"):
            pass
        async with broker.client() as again:
            response = await again.login("alice", "password1", create=True)
            assert response["created"] is False
        async with broker.client() as wrong:
            with pytest.raises(RequestFailed) as refused:
                await wrong.login("alice", "not-the-password", create=True)
            assert refused.value.code == "auth_failed"
    assert db_rows(broker.config, "SELECT count(*) FROM users") == [(1,)]


async def test_wrong_password_and_unknown_user_give_the_same_error(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice", "password1"):
            pass
        async with broker.client() as client:
            with pytest.raises(RequestFailed) as wrong_password:
                await client.login("alice", "password2")
            with pytest.raises(RequestFailed) as unknown_user:
                await client.login("nobody", "password1", create=False)
    assert wrong_password.value.code == unknown_user.value.code == "auth_failed"
    assert wrong_password.value.message == unknown_user.value.message
    assert wrong_password.value.details == unknown_user.value.details
    # Asking about an unknown user did not create it.
    assert db_rows(broker.config, "SELECT username FROM users") == [("alice",)]


async def test_passwords_are_stored_as_bcrypt_hashes(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice", "password1"):
            pass
    [(stored,)] = db_rows(broker.config, "SELECT password_hash FROM users")
    assert stored.startswith("$2b$")
    assert "password1" not in stored


@pytest.mark.parametrize(
    ("password", "complaint"),
    [("short", "at least 6 characters"), ("é" * 37, "at most 72 bytes")],  # 74 bytes
)
async def test_new_account_with_unusable_password_is_refused_clearly(broker, password, complaint):
    with trio.fail_after(WAIT):
        async with broker.client() as client:
            with pytest.raises(RequestFailed) as refused:
                await client.login("alice", password, create=True)
    assert refused.value.code == "bad_request"
    assert complaint in refused.value.message
    assert db_rows(broker.config, "SELECT count(*) FROM users") == [(0,)]


async def test_password_of_exactly_72_bytes_is_accepted(broker):
    password = "x" * 72
    with trio.fail_after(WAIT):
        async with broker.user("alice", password):
            pass
        async with broker.client() as client:
            assert (await client.login("alice", password))["created"] is False


async def test_login_with_a_password_over_72_bytes_is_refused_not_truncated(broker):
    # bcrypt only looks at the first 72 bytes; a longer password must not log in just
    # because its first 72 bytes match.
    password = "y" * 72
    with trio.fail_after(WAIT):
        async with broker.user("alice", password):
            pass
        async with broker.client() as client:
            with pytest.raises(RequestFailed) as refused:
                await client.login("alice", password + "extra")
            assert refused.value.code == "bad_request"
            assert "72 bytes" in refused.value.message


async def test_username_is_normalised_to_lower_case(broker):
    with trio.fail_after(WAIT):
        async with broker.client() as client:
            response = await client.login("  Alice ", "password1", create=True)
            assert response["username"] == "alice"
        async with broker.client() as client:
            response = await client.login("ALICE", "password1")
            assert response["created"] is False
            assert response["username"] == "alice"
    assert db_rows(broker.config, "SELECT username FROM users") == [("alice",)]


async def test_resume_with_a_token_logs_in_as_the_same_user(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice:
            token = alice.token
            assert token
        async with broker.client() as again:
            resumed = await again.resume(token)
            assert resumed["username"] == "alice"
            assert resumed["created"] is False
            assert [u["username"] for u in await again.who()] == ["alice"]


async def test_token_is_dead_after_logout(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice:
            token = alice.token
            await alice.logout()
        async with broker.client() as again:
            with pytest.raises(RequestFailed) as refused:
                await again.resume(token)
            assert refused.value.code == "auth_failed"
    # The token's hash is gone from the store, not just from memory.
    assert db_rows(broker.config, "SELECT count(*) FROM auth_sessions") == [(0,)]


async def test_each_login_gets_a_new_token_stored_only_as_a_hash(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as one, broker.user("alice") as two:
            assert one.token != two.token
            tokens = {one.token, two.token}
    stored = {row[0] for row in db_rows(broker.config, "SELECT token_hash FROM auth_sessions")}
    assert len(stored) == 2
    assert not stored & tokens


async def test_accounts_created_at_once_get_exactly_one_admin(broker):
    roles: dict[str, str] = {}

    async def sign_up(name: str) -> None:
        async with broker.client() as client:
            roles[name] = (await client.login(name, "password1", create=True))["role"]

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(sign_up, f"user{n}")
    assert sorted(roles.values()) == ["admin"] + ["user"] * 5
    assert db_rows(broker.config, "SELECT count(*) FROM users WHERE role = 'admin'") == [(1,)]


async def test_one_name_claimed_twice_at_once_is_created_once(broker):
    outcomes: list[object] = []

    async def claim(password: str) -> None:
        async with broker.client() as client:
            try:
                outcomes.append((await client.login("alice", password, create=True))["created"])
            except RequestFailed as exc:
                outcomes.append(exc.code)

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim, "password1")
            nursery.start_soon(claim, "password2")
    # One claim made the account; the other found it taken and its password was checked.
    assert sorted(outcomes, key=str) == [True, "auth_failed"]
    assert db_rows(broker.config, "SELECT count(*) FROM users") == [(1,)]
