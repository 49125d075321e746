"""Accounts and sessions against a live broker: password change, admin role and operations,
registration policies, blocking. Every test runs over real loopback sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker.client import BrokerUnreachable, RequestFailed
from broker.config import Config
from tests.conftest import RunningBroker, make_config, running_broker
from tests.test_migrations import requires_pg

TIMEOUT = 10


async def _closed_by_broker(client) -> dict:  # type: ignore[no-untyped-def]
    """Wait until the broker closes the connection; the unsolicited error frame it sent."""
    with trio.fail_after(TIMEOUT):
        while not client.closed:
            await trio.sleep(0.01)
    return client.errors[-1]["error"]


async def _wait_offline(client, username: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the broker has noticed that `username` has no live session left."""
    with trio.fail_after(TIMEOUT):
        while username in [u["username"] for u in await client.who()]:
            await trio.sleep(0.01)


# -- change_password -------------------------------------------------------------------------


async def test_password_change_ends_other_sessions_and_old_tokens(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("alice", "old-password") as first:
            old_token = first.token
            async with broker.client() as second:
                await second.login("alice", "old-password")
                changed = await second.change_password("old-password", "new-password")
                assert changed["sessions_ended"] == 1
                error = await _closed_by_broker(first)
                assert error["code"] == "session_ended"
                # The connection that asked stays logged in, with a fresh token.
                assert await second.who()
                new_token = second.token
                assert new_token not in (None, old_token)
        async with broker.client() as client:
            with pytest.raises(RequestFailed) as refused:
                await client.resume(old_token)
            assert refused.value.code == "auth_failed"
        async with broker.client() as client:
            with pytest.raises(RequestFailed) as refused:
                await client.login("alice", "old-password")
            assert refused.value.code == "auth_failed"
        async with broker.client() as client:
            await client.login("alice", "new-password")
        async with broker.client() as client:
            await client.resume(new_token)


async def test_password_change_needs_the_old_password(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("alice", "old-password") as alice:
            with pytest.raises(RequestFailed) as refused:
                await alice.change_password("not-the-password", "new-password")
            assert refused.value.code == "auth_failed"
            with pytest.raises(RequestFailed) as refused:
                await alice.change_password("old-password", "short")
            assert refused.value.code == "bad_request"
        async with broker.client() as client:
            await client.login("alice", "old-password")


async def test_logout_kills_the_token(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("alice") as alice:
            token = alice.token
            await alice.logout()
        async with broker.client() as client:
            with pytest.raises(RequestFailed) as refused:
                await client.resume(token)
            assert refused.value.code == "auth_failed"


async def test_every_login_gets_a_new_token_of_256_bits(broker: RunningBroker) -> None:
    tokens = set()
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            async with broker.user("alice") as alice:
                tokens.add(alice.token)
    assert len(tokens) == 3
    assert all(len(t) >= 43 for t in tokens)  # 32 random bytes, base64url


# -- the admin role ----------------------------------------------------------------------------


async def test_first_account_is_admin_and_others_are_not(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.client() as first:
            assert (await first.login("root", "password1", create=True))["role"] == "admin"
        async with broker.client() as second:
            assert (await second.login("bob", "password1", create=True))["role"] == "user"


@pytest.mark.parametrize(
    ("op", "fields"),
    [
        ("admin_users", {}),
        ("admin_set_disabled", {"username": "root", "disabled": True}),
        ("admin_kick", {"username": "root"}),
        ("admin_sessions", {}),
        ("admin_audit", {}),
        ("admin_invite", {}),
    ],
)
async def test_admin_ops_refuse_non_admins(broker: RunningBroker, op: str, fields: dict) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("root"), broker.user("mallory") as mallory:
            with pytest.raises(RequestFailed) as refused:
                await mallory.request(op, **fields)
            assert refused.value.code == "forbidden"
        async with broker.client() as anonymous:
            with pytest.raises(RequestFailed) as refused:
                await anonymous.request(op, **fields)
            assert refused.value.code == "not_authenticated"


async def test_admin_lists_users_and_live_sessions(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("root") as root, broker.user("bob"):
            async with broker.user("carol"):
                pass
            await _wait_offline(root, "carol")
            users = {u["username"]: u for u in await root.admin_users()}
            assert set(users) == {"root", "bob", "carol"}
            assert users["root"]["role"] == "admin" and users["bob"]["role"] == "user"
            assert users["bob"]["online"] and not users["carol"]["online"]
            assert not users["bob"]["disabled"]
            assert users["bob"]["created"].endswith("Z")
            sessions = await root.admin_sessions()
            assert sorted(s["username"] for s in sessions) == ["bob", "root"]
            for session in sessions:
                assert session["address"] == "127.0.0.1"
                assert session["client"] == "mailnet-python"
                assert session["idle_seconds"] >= 0
                assert session["since"].endswith("Z")


async def test_disabled_account_is_kicked_and_cannot_log_in_or_resume(
    broker: RunningBroker,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("root") as root, broker.user("bob") as bob:
            token = bob.token
            result = await root.admin_set_disabled("bob", True)
            assert result["sessions_ended"] == 1
            assert (await _closed_by_broker(bob))["code"] == "session_ended"
            assert {u["username"]: u for u in await root.admin_users()}["bob"]["disabled"]
            with pytest.raises(RequestFailed) as refused:
                await root.admin_set_disabled("root", True)
            assert refused.value.code == "bad_request"
        async with broker.client() as client:
            with pytest.raises(RequestFailed) as refused:
                await client.login("bob", "password1")
            assert refused.value.code == "account_disabled"
        async with broker.client() as client:
            with pytest.raises(RequestFailed) as refused:
                await client.resume(token)
            assert refused.value.code == "auth_failed"  # disabling revoked every token
        async with broker.user("root") as root:
            await root.admin_set_disabled("bob", False)
        async with broker.client() as client:
            await client.login("bob", "password1")


async def test_kick_closes_live_sessions_and_revokes_tokens(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("root") as root:
            async with broker.user("bob") as bob1, broker.user("bob") as bob2:
                token = bob1.token
                result = await root.admin_kick("bob")
                assert result["sessions_ended"] == 2 and result["tokens_revoked"] == 2
                for bob in (bob1, bob2):
                    error = await _closed_by_broker(bob)
                    assert error["code"] == "session_ended"
                    with pytest.raises(BrokerUnreachable):
                        await bob.who()
            await _wait_offline(root, "bob")
            assert [u["username"] for u in await root.admin_sessions()] == ["root"]
            with pytest.raises(RequestFailed) as refused:
                await root.admin_kick("nobody")
            assert refused.value.code == "not_found"
        async with broker.client() as client:
            with pytest.raises(RequestFailed):
                await client.resume(token)
        async with broker.client() as client:  # a kick is not a ban
            await client.login("bob", "password1")


async def test_audit_shows_prank_senders_and_admin_actions(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("root") as root, broker.user("bob") as bob:
            async with broker.user("carol") as carol:
                await carol.rickroll("bob")
                entry = await bob.next_mail()
                assert entry["sender"] is None  # the recipient never sees who
            await root.admin_kick("carol")
            await root.admin_set_disabled("carol", True)
            audit = await root.admin_audit()
    assert [(p["sender"], p["recipient"]) for p in audit["rickrolls"]] == [("carol", "bob")]
    actions = [(a["admin"], a["action"], a["target"]) for a in audit["actions"]]
    assert actions == [("root", "disable", "carol"), ("root", "kick", "carol")]


# -- registration policies ---------------------------------------------------------------------


async def test_closed_registration_refuses_new_accounts_but_not_the_first_local_admin(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, registration="closed")
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker:
            async with broker.client() as client:
                # The first account of a closed broker may be made from its own machine.
                assert (await client.login("root", "password1", create=True))["role"] == "admin"
            async with broker.client() as client:
                with pytest.raises(RequestFailed) as refused:
                    await client.login("bob", "password1", create=True)
                assert refused.value.code == "registration_closed"
            async with broker.client() as client:  # existing accounts still log in
                await client.login("root", "password1", create=True)


async def test_invite_registration_takes_one_use_codes_from_an_admin(tmp_path: Path) -> None:
    config = make_config(tmp_path, registration="invite")
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker:
            async with broker.user("root") as root:
                invite = (await root.admin_invite())["invite"]
                assert len(invite) >= 22  # 128 random bits
                audit = await root.admin_audit()
                assert invite not in str(audit)
            async with broker.client() as client:
                with pytest.raises(RequestFailed) as refused:
                    await client.login("bob", "password1", create=True)
                assert refused.value.code == "registration_closed"
                assert "invite" in refused.value.message
            async with broker.client() as client:
                with pytest.raises(RequestFailed) as refused:
                    await client.login("bob", "password1", create=True, invite="made-up-code")
                assert refused.value.code == "registration_closed"
            async with broker.client() as client:
                result = await client.login("bob", "password1", create=True, invite=invite)
                assert result["created"] and result["role"] == "user"
            async with broker.client() as client:  # used once only
                with pytest.raises(RequestFailed) as refused:
                    await client.login("carol", "password1", create=True, invite=invite)
                assert refused.value.code == "registration_closed"


def test_unknown_registration_policy_is_refused(tmp_path: Path) -> None:
    from broker.core.accounts import Accounts

    with pytest.raises(ValueError, match="registration"):
        Accounts(None, Config(registration="sometimes", data_dir=tmp_path))  # type: ignore[arg-type]


# -- blocking ------------------------------------------------------------------------------------


async def test_blocked_sender_is_acked_but_nothing_reaches_the_blocker(
    broker: RunningBroker,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            broker.user("alice") as alice,
            broker.user("mallory") as mallory,
            broker.user("bob") as bob,
        ):
            assert (await alice.block("mallory"))["changed"]
            assert not (await alice.block("mallory"))["changed"]
            assert [b["username"] for b in await alice.list_blocks()] == ["mallory"]
            text = await mallory.send_text("alice", "hello?")
            assert text["ok"] and text["message_id"]
            await mallory.send_email(["alice", "bob"], "hi both", "body")
            await mallory.rickroll("alice")
            await mallory.announce("news", "announcements reach everyone")
            # bob is not blocking: he gets the email and the announcement.
            assert (await bob.next_mail())["subject"] == "hi both"
            assert (await bob.next_mail())["kind"] == "announcement"
            # alice gets only the announcement, and then a message from someone else.
            await bob.send_text("alice", "from bob")
            assert (await alice.next_mail())["kind"] == "announcement"
            assert (await alice.next_mail())["body"] == "from bob"
            inbox = await alice.inbox()
            assert [e["kind"] for e in inbox["entries"]] == ["text", "announcement"]
            # The sender's own history looks like any other send.
            sent = await mallory.history(kind="text")
            assert [s["body"] for s in sent] == ["hello?"]
            with pytest.raises(RequestFailed) as refused:
                await alice.block("alice")
            assert refused.value.code == "bad_request"
            with pytest.raises(RequestFailed) as refused:
                await alice.block("nobody")
            assert refused.value.code == "not_found"
            assert (await alice.unblock("mallory"))["changed"]
            await mallory.send_text("alice", "again")
            assert (await alice.next_mail())["body"] == "again"
            assert await alice.list_blocks() == []


async def test_prank_opt_out_still_refuses_pranks(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await alice.set_prefs(prank_opt_out=True)
            with pytest.raises(RequestFailed) as refused:
                await bob.rickroll("alice")
            assert refused.value.code == "prank_refused"


# -- the same store features on PostgreSQL -----------------------------------------------------


@requires_pg
async def test_blocks_admin_and_invites_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    config = make_config(tmp_path, db=pg_url, registration="invite")
    with trio.fail_after(30):
        async with running_broker(config) as broker:
            async with broker.user("root") as root:
                invites = [(await root.admin_invite())["invite"] for _ in range(2)]
            for name, invite in zip(("alice", "bob"), invites, strict=True):
                async with broker.client() as client:
                    await client.login(name, "password1", create=True, invite=invite)
            async with (
                broker.user("root") as root,
                broker.user("alice") as alice,
                broker.user("bob") as bob,
            ):
                await alice.block("bob")
                await bob.send_text("alice", "blocked")
                await bob.rickroll("alice")
                await root.send_text("alice", "not blocked")
                assert (await alice.next_mail())["body"] == "not blocked"
                assert await alice.history(with_user="bob") == []
                audit = await root.admin_audit()
                assert [(p["sender"], p["recipient"]) for p in audit["rickrolls"]] == [
                    ("bob", "alice")
                ]
                await root.admin_set_disabled("bob", True)
                assert (await _closed_by_broker(bob))["code"] == "session_ended"
                await alice.change_password("password1", "password2")
                users = {u["username"]: u for u in await root.admin_users()}
                assert users["bob"]["disabled"] and not users["alice"]["disabled"]


@requires_pg
async def test_kick_and_password_change_reach_sessions_on_another_node(
    pg_url: str,
    tmp_path: Path,
) -> None:
    node_a = make_config(tmp_path / "a", db=pg_url, revoked_session_check=0.1)
    node_b = make_config(tmp_path / "b", db=pg_url, revoked_session_check=0.1)
    with trio.fail_after(30):
        async with running_broker(node_a) as a, running_broker(node_b) as b:
            async with a.user("root") as root, b.user("bob") as bob_on_b:
                await root.admin_kick("bob")
                assert (await _closed_by_broker(bob_on_b))["code"] == "session_ended"
            async with (
                a.user("alice") as alice_on_a,
                b.user("alice") as alice_on_b,
            ):
                await alice_on_a.change_password("password1", "password2")
                assert (await _closed_by_broker(alice_on_b))["code"] == "session_ended"
                # The session that changed the password stays, through later sweeps too.
                await trio.sleep(0.5)
                assert not alice_on_a.closed
                await alice_on_a.who()
