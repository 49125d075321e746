"""Issue 12's server gaps: the `delivered` receipt pushed when a recipient's client takes the
mail, the `archived` flag on entries, and `unarchive` (core on SQLite and PostgreSQL, then the
TCP client, the HTTP API and its WebSocket, the CLI, and two PostgreSQL nodes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from cli_helpers import User

from broker.config import Config
from broker.core import Broker
from broker.protocol import ErrorCode, RequestRefused, parse_request
from broker.protocol import responses as r
from broker.protocol.events import MailboxEvent
from tests.conftest import RunningBroker, two_nodes
from tests.test_mailbox_life import mailbox_events, receipts_of, send, session_of, wait_for_receipts
from tests.test_session_layer import connection, create_accounts, login, running_core, text

WAIT = 20


@pytest.fixture
async def core(store_config: Config) -> AsyncIterator[Broker]:
    async with running_core(store_config) as running:
        yield running


# -- delivered receipts --------------------------------------------------------------------------


async def test_the_sender_is_told_delivered_when_the_recipients_client_acknowledges(
    core: Broker,
) -> None:
    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "bob", "carol")
        async with connection(core) as (alice, alice_out):
            await alice.handle(login("alice"))
            first = await alice.send(send(kind="email", to=["bob"], subject="s", body="one"))
            second = await alice.send(send(kind="email", to=["bob"], subject="s", body="two"))
            await alice.send(send(kind="email", to=["alice"], subject="s", body="to myself"))
            async with connection(core) as (bob, bob_out):
                await bob.handle(login("bob"))
                await bob_out.wait_for_mail(2)
                await core.flush_acks()
                assert receipts_of(alice_out) == []  # pushed to bob's client, not taken yet
                await bob.handle(parse_request({"op": "ack", "seq": 2}))
                await core.flush_acks()
                assert await wait_for_receipts(alice_out, 2) == [
                    (first.message_id, "bob", "delivered"),
                    (second.message_id, "bob", "delivered"),
                ]
            # alice's own copy of what she sent herself: acknowledging it tells nobody
            await alice.handle(parse_request({"op": "ack", "seq": 1}))
            # carol read it before her client acknowledged it: alice heard `read` already,
            # and never hears `delivered` after it
            third = await alice.send(send(kind="email", to=["carol"], subject="s", body="3"))
            async with connection(core) as (carol, carol_out):
                await carol.handle(login("carol"))
                await carol_out.wait_for_mail(1)
                await carol.handle(parse_request({"op": "mark_read", "seqs": [1]}))
                assert (await wait_for_receipts(alice_out, 3))[2] == (
                    third.message_id,
                    "carol",
                    "read",
                )
                await carol.handle(parse_request({"op": "ack", "seq": 1}))
                await core.flush_acks()
            status = await alice.handle(
                parse_request({"op": "message_status", "message_id": third.message_id})
            )
            assert isinstance(status, r.MessageStatusResult)
            assert status.recipients[0].delivered_at is not None
            assert [state for *_, state in receipts_of(alice_out)] == [
                "delivered",
                "delivered",
                "read",
            ]


async def test_a_recipient_without_read_receipts_still_shows_delivered_after_reading(
    core: Broker,
) -> None:
    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "dave")
        dave_prefs = await session_of(core, "dave")
        await dave_prefs.handle(parse_request({"op": "set_prefs", "read_receipts": False}))
        async with connection(core) as (alice, alice_out), connection(core) as (dave, dave_out):
            await alice.handle(login("alice"))
            await dave.handle(login("dave"))
            sent = await alice.send(text("dave", "hi"))
            await dave_out.wait_for_mail(1)
            await dave.handle(parse_request({"op": "mark_read", "seqs": [1]}))
            await dave.handle(parse_request({"op": "ack", "seq": 1}))
            await core.flush_acks()
            assert await wait_for_receipts(alice_out, 1) == [(sent.message_id, "dave", "delivered")]


async def test_delivered_reaches_the_sender_on_another_postgresql_node(
    pg_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        async with (
            two_nodes(pg_url, tmp_path) as (a, b),
            a.user("alice") as alice,
            b.user("bob") as bob,
        ):
            sent = await alice.send_text("bob", "across nodes")
            await bob.next_mail()
            await bob.flush_ack()  # node b writes it within a second, and tells node a
            while (event := await alice.next_event())["event"] != "receipt":
                pass
            assert (event["message_id"], event["username"], event["state"]) == (
                sent["message_id"],
                "bob",
                "delivered",
            )


# -- the archived flag and unarchive -----------------------------------------------------------


async def test_archived_entries_say_so_and_unarchive_brings_them_back_to_every_session(
    core: Broker,
) -> None:
    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "bob")
        alice = await session_of(core, "alice")
        for word in ("one", "two", "three"):
            await alice.send(text("bob", word))
        async with connection(core) as (bob, bob_out), connection(core) as (tab, tab_out):
            await bob.handle(login("bob"))
            await tab.handle(login("bob"))
            assert await bob.handle(parse_request({"op": "archive", "seqs": [1, 2]})) == (
                r.ArchiveResult(archived=2)
            )
            everything = await bob.handle(parse_request({"op": "inbox", "archived": True}))
            assert isinstance(everything, r.InboxResult)
            # true on the archived ones; absent (UNSET) on the others, as on the wire
            assert [(e.seq, e.archived) for e in everything.entries] == [
                (3, msgspec.UNSET),
                (2, True),
                (1, True),
            ]
            history = await bob.handle(parse_request({"op": "history"}))
            assert isinstance(history, r.HistoryResult)
            assert [e.archived for e in history.items] == [msgspec.UNSET, True, True]
            back = await bob.handle(parse_request({"op": "unarchive", "seqs": [2, 3]}))
            assert back == r.UnarchiveResult(unarchived=1)  # 3 was never archived
            for outlet in (bob_out, tab_out):
                assert await mailbox_events(outlet, 2) == [
                    MailboxEvent(change="archived", seqs=[1, 2]),
                    MailboxEvent(change="unarchived", seqs=[2]),
                ]
            inbox = await bob.handle(parse_request({"op": "inbox"}))
            assert isinstance(inbox, r.InboxResult)
            assert [e.seq for e in inbox.entries] == [3, 2]
            with pytest.raises(RequestRefused) as foreign:
                await bob.handle(parse_request({"op": "unarchive", "seqs": [1, 99]}))
            assert foreign.value.code == ErrorCode.NOT_FOUND
            still = await bob.handle(parse_request({"op": "inbox"}))
            assert isinstance(still, r.InboxResult) and len(still.entries) == 2  # nothing changed


async def test_unarchive_on_one_postgresql_node_reaches_the_users_session_on_another(
    pg_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        async with (
            two_nodes(pg_url, tmp_path) as (a, b),
            a.user("alice") as alice,
            a.user("bob") as bob_a,
            b.user("bob") as bob_b,
        ):
            await alice.send_text("bob", "keep me")
            await bob_a.next_mail()
            assert await bob_a.archive([1]) == 1
            assert await bob_a.unarchive([1]) == 1
            changes = []
            while len(changes) < 2:
                event = await bob_b.next_event()
                if event["event"] == "mailbox":
                    changes.append((event["change"], event["seqs"]))
            assert changes == [("archived", [1]), ("unarchived", [1])]


async def test_unarchive_over_http_reaches_the_websocket_and_the_inbox_flags_archived(
    web: RunningBroker,
) -> None:
    from tests.test_mailbox_life import _next_mailbox_event, bob_on_the_web

    with trio.fail_after(WAIT):
        async with bob_on_the_web(web) as (_, http, headers, ws):
            put = await http.post("/api/archive", json={"seqs": [1]}, headers=headers)
            assert put.json() == {"archived": 1}
            assert (await _next_mailbox_event(ws))["change"] == "archived"
            listed = await http.get("/api/inbox?archived=true", headers=headers)
            flags = [(e["seq"], e.get("archived")) for e in listed.json()["entries"]]
            assert flags == [(2, None), (1, True)]
            back = await http.post("/api/unarchive", json={"seqs": [1]}, headers=headers)
            assert back.json() == {"unarchived": 1}
            assert await _next_mailbox_event(ws) == {
                "event": "mailbox",
                "change": "unarchived",
                "seqs": [1],
            }
            bad = await http.post("/api/unarchive", json={"seqs": [7]}, headers=headers)
            assert bad.status_code == 404
            inbox = await http.get("/api/inbox", headers=headers)
            assert [e["seq"] for e in inbox.json()["entries"]] == [2, 1]


async def test_cli_unarchive_and_inbox_archived_marks_archived_mail(
    broker: RunningBroker, tmp_path: Path
) -> None:
    root = User("root", tmp_path / "root", broker.address)
    alice = User("alice", tmp_path / "alice", broker.address)
    with trio.fail_after(120):
        for user in (root, alice):
            await user.login()
        for word in ("one", "two"):
            await root.ok("text", "alice", word)
        assert "Archived 1." in (await alice.ok("archive", "1")).stdout
        listed = (await alice.ok("inbox", "--archived", "--json")).json_lines()
        assert [(e["seq"], e.get("archived", False)) for e in listed] == [(2, False), (1, True)]
        shown = await alice.ok("inbox", "--archived")
        assert "(archived)" in shown.stdout
        assert "Unarchived 1." in (await alice.ok("unarchive", "1")).stdout
        again = (await alice.ok("unarchive", "1", "--json")).json_lines()[0]
        assert again == {"unarchived": 0, "seqs": [1]}
        assert [e["body"] for e in (await alice.ok("inbox", "--json")).json_lines()] == [
            "two",
            "one",
        ]
        assert (await alice("unarchive", "9")).returncode == 5


async def test_acknowledged_entries_say_so_in_inbox_and_history(core: Broker) -> None:
    with trio.fail_after(WAIT):
        await create_accounts(core, "root", "alice", "bob")
        alice, bob = await session_of(core, "alice"), await session_of(core, "bob")
        drill = await alice.send(send(kind="announcement", subject="D", body="b", require_ack=True))
        await alice.send(send(kind="announcement", subject="E", body="c", require_ack=True))
        await bob.handle(parse_request({"op": "acknowledge", "message_id": drill.message_id}))
        inbox = await bob.handle(parse_request({"op": "inbox"}))
        assert isinstance(inbox, r.InboxResult)
        assert [(e.subject, e.acked) for e in inbox.entries] == [("E", msgspec.UNSET), ("D", True)]
        history = await bob.handle(parse_request({"op": "history"}))
        assert isinstance(history, r.HistoryResult)
        assert [e.acked for e in history.items] == [msgspec.UNSET, True]


async def test_api_me_tells_whether_read_receipts_are_on(web: RunningBroker) -> None:
    with trio.fail_after(WAIT):
        async with httpx.AsyncClient(base_url=web.info.web[0], timeout=WAIT) as http:
            login = await http.post(
                "/api/login", json={"username": "bob", "password": "password1", "create": True}
            )
            headers = {"Authorization": f"Bearer {login.json()['token']}"}
            assert (await http.get("/api/me", headers=headers)).json()["read_receipts"] is True
            await http.put("/api/prefs", json={"read_receipts": False}, headers=headers)
            assert (await http.get("/api/me", headers=headers)).json()["read_receipts"] is False
