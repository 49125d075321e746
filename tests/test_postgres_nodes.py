"""Several broker nodes sharing one PostgreSQL database: mail sent through one node reaches
users connected to another, live and offline, exactly once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from sqlalchemy import create_engine, text

from tests.conftest import make_config, running_broker

PG_URL = os.environ.get("MAILNET_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)


async def test_text_sent_on_one_node_is_pushed_live_on_another(pg_url: str, tmp_path: Path):
    with trio.fail_after(30):
        node_a = make_config(tmp_path / "a", db=pg_url)
        node_b = make_config(tmp_path / "b", db=pg_url)
        async with (
            running_broker(node_a) as a,
            running_broker(node_b) as b,
            a.user("alice") as alice,
            b.user("bob") as bob,
        ):
            sent = await alice.send_text("bob", "across nodes")
            entry = await bob.next_mail()
            assert entry["message_id"] == sent["message_id"]
            assert (entry["sender"], entry["body"], entry["seq"]) == (
                "alice",
                "across nodes",
                1,
            )
            await alice.send_email(["bob"], "second", "still live")
            entry = await bob.next_mail()
            assert (entry["subject"], entry["seq"]) == ("second", 2)
            assert bob.duplicates_dropped == 0


async def test_offline_mail_and_retries_are_shared_by_all_nodes(pg_url: str, tmp_path: Path):
    with trio.fail_after(30):
        node_a = make_config(tmp_path / "a", db=pg_url)
        node_b = make_config(tmp_path / "b", db=pg_url)
        async with running_broker(node_a) as a, running_broker(node_b) as b:
            async with b.user("carol"):
                pass  # carol exists, and is offline from now on
            async with a.user("alice") as alice_a, b.user("alice") as alice_b:
                first = await alice_a.send_text("carol", "one", client_msg_id="retry-1")
                again = await alice_b.send_text("carol", "one", client_msg_id="retry-1")
                assert again["message_id"] == first["message_id"]
                assert again["duplicate"] is True
                await alice_b.send_text("carol", "two")
            async with b.client() as carol:
                await carol.login("carol", "password1")
                got = [await carol.next_mail(), await carol.next_mail()]
                assert [e["body"] for e in got] == ["one", "two"]
                assert [e["seq"] for e in got] == [1, 2]
                inbox = await carol.inbox()
                assert len(inbox["entries"]) == 2


async def wait_who(client, wanted) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Ask `who` until wanted(users by name) holds (other nodes' rows are written promptly,
    not instantly); the caller's fail_after bounds the wait."""
    while True:
        users = {u["username"]: u for u in await client.who()}
        if wanted(users):
            return users
        await trio.sleep(0.05)


def sessions(users: dict[str, dict], name: str) -> int:  # type: ignore[type-arg]
    return users[name]["sessions"] if name in users else 0


async def wait_presence(client, username: str, *, online: bool) -> None:  # type: ignore[no-untyped-def]
    while True:
        event = await client.next_event()
        if event == {"event": "presence", "username": username, "online": online}:
            return


async def next_presence(client, username: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether the next presence event about `username` says online."""
    while True:
        event = await client.next_event()
        if event.get("event") == "presence" and event.get("username") == username:
            return event["online"]


async def test_who_lists_the_users_of_every_node(pg_url: str, tmp_path: Path):
    with trio.fail_after(30):
        node_a = make_config(tmp_path / "a", db=pg_url, presence_refresh=1.0)
        node_b = make_config(tmp_path / "b", db=pg_url, presence_refresh=1.0)
        async with (
            running_broker(node_a) as a,
            running_broker(node_b) as b,
            a.user("alice") as alice,
        ):
            async with b.user("bob"):
                users = await wait_who(alice, lambda u: "bob" in u)
                assert users["bob"]["sessions"] == 1
                assert users["alice"]["sessions"] == 1
                assert set(users["bob"]) == {"username", "since", "idle_seconds", "sessions"}
                async with a.user("bob") as bob_on_a:
                    await wait_who(alice, lambda u: sessions(u, "bob") == 2)
                    users = await wait_who(bob_on_a, lambda u: sessions(u, "bob") == 2)
                    assert sorted(users) == ["alice", "bob"]
                await wait_who(alice, lambda u: sessions(u, "bob") == 1)
            await wait_who(alice, lambda u: "bob" not in u)
            assert list(await wait_who(alice, lambda u: True)) == ["alice"]


async def test_presence_events_cross_nodes_once_per_change(pg_url: str, tmp_path: Path):
    with trio.fail_after(30):
        node_a = make_config(tmp_path / "a", db=pg_url, presence_refresh=1.0)
        node_b = make_config(tmp_path / "b", db=pg_url, presence_refresh=1.0)
        async with (
            running_broker(node_a) as a,
            running_broker(node_b) as b,
            a.user("alice") as alice,
        ):
            # Each change of bob's presence anywhere is one event on node A: his sessions on a
            # second node, here or there, change nothing.
            async with b.user("bob"):
                assert await next_presence(alice, "bob") is True
                async with a.user("bob"):
                    await wait_who(alice, lambda u: sessions(u, "bob") == 2)
                await wait_who(alice, lambda u: sessions(u, "bob") == 1)
            assert await next_presence(alice, "bob") is False
            async with a.user("bob"):
                assert await next_presence(alice, "bob") is True
                async with b.user("bob"):
                    await wait_who(alice, lambda u: sessions(u, "bob") == 2)
                await wait_who(alice, lambda u: sessions(u, "bob") == 1)
            assert await next_presence(alice, "bob") is False


async def test_a_node_that_stops_refreshing_is_taken_for_offline(pg_url: str, tmp_path: Path):
    with trio.fail_after(30):
        node_a = make_config(tmp_path / "a", db=pg_url, presence_refresh=0.2)
        async with running_broker(node_a) as a:
            async with a.user("ghost"):
                pass
            async with a.user("alice") as alice:
                await wait_who(alice, lambda u: "ghost" not in u)  # node A saw ghost leave
                engine = create_engine(pg_url)
                try:
                    # A node that wrote its row and then died: it never refreshes it again.
                    with engine.begin() as conn:
                        conn.execute(
                            text(
                                "INSERT INTO node_presence (node_id, user_id, username, since,"
                                " last_active, sessions, expires_at) SELECT 'deadnode', id,"
                                " username, now(), now(), 1, now() + interval '3 seconds'"
                                " FROM users WHERE username = 'ghost'"
                            )
                        )
                    users = await wait_who(alice, lambda u: "ghost" in u)
                    assert users["ghost"]["sessions"] == 1
                    await wait_presence(alice, "ghost", online=True)
                    # Nothing refreshes the row: it expires, and ghost is offline everywhere.
                    await wait_presence(alice, "ghost", online=False)
                    await wait_who(alice, lambda u: "ghost" not in u)
                    while True:  # and node A deletes the stale row
                        with engine.connect() as conn:
                            left = conn.execute(
                                text(
                                    "SELECT count(*) FROM node_presence WHERE node_id = 'deadnode'"
                                )
                            ).scalar_one()
                        if left == 0:
                            break
                        await trio.sleep(0.05)
                finally:
                    engine.dispose()


async def test_a_node_shut_down_takes_its_users_offline_at_once(pg_url: str, tmp_path: Path):
    with trio.fail_after(30):
        # Rows that would stay fresh for minutes: only B's own cleanup removes them in time.
        node_a = make_config(tmp_path / "a", db=pg_url, presence_refresh=60.0)
        node_b = make_config(tmp_path / "b", db=pg_url, presence_refresh=60.0)
        async with (
            running_broker(node_a) as a,
            a.user("alice") as alice,
            running_broker(node_b) as b,
            b.user("bob"),
        ):
            await wait_presence(alice, "bob", online=True)
            b.stop()  # graceful: node B ends bob's session and deletes its rows
            await wait_presence(alice, "bob", online=False)
            await wait_who(alice, lambda u: "bob" not in u)
