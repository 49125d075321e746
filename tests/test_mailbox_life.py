"""Mailbox life (issue 12): replies and threads, pinned once without sockets on the core Session
(SQLite, and PostgreSQL when MAILNET_TEST_PG_URL is set), then on the wire of each transport."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from cli_helpers import User

from broker.client import RequestFailed
from broker.config import Config
from broker.core import Broker, Session
from broker.protocol import ErrorCode, RemoteProtocolError, RequestRefused, parse_request, requests
from broker.protocol import responses as r
from broker.protocol.events import MailboxEvent, ReceiptEvent, Receipts
from tests.conftest import RunningBroker, make_config, two_nodes
from tests.test_session_layer import create_accounts, login, running_core

WAIT = 20
PG_URL = os.environ.get("MAILNET_TEST_PG_URL", "")


@pytest.fixture
async def core(store_config: Config) -> AsyncIterator[Broker]:
    async with running_core(store_config) as running:
        yield running


async def session_of(core: Broker, username: str) -> Session:
    """A logged-in session that is not live (a one-shot command's)."""
    session = Session(core, peer="127.0.0.1")
    request = login(username, live=False)
    assert isinstance(request, requests.Login)
    await session.log_in(request)
    return session


def send(**fields: Any) -> requests.Send:
    request = parse_request({"op": "send", **fields})
    assert isinstance(request, requests.Send)
    return request


async def history(session: Session, **fields: Any) -> list[dict[str, Any]]:
    answer = await session.handle(parse_request({"op": "history", **fields}))
    assert isinstance(answer, r.HistoryResult)
    return [
        {
            "id": e.message_id,
            "body": e.body,
            "thread_id": e.thread_id,
            "in_reply_to": e.in_reply_to,
        }
        for e in answer.items
    ]


# -- 1. replies and threads, in the core -----------------------------------------------------


async def test_replies_keep_the_thread_of_their_first_message(core: Broker) -> None:
    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "bob", "carol")
        alice, bob = await session_of(core, "alice"), await session_of(core, "bob")
        root = await alice.send(send(kind="email", to=["bob", "carol"], subject="Lunch", body="1"))
        first = await bob.send(
            send(
                kind="email",
                to=["alice"],
                subject="Re: Lunch",
                body="2",
                in_reply_to=root.message_id,
            )
        )
        # alice replies to bob's reply: still the thread of the first message
        second = await alice.send(
            send(kind="text", to=["bob"], body="3", in_reply_to=first.message_id)
        )
        await alice.send(send(kind="text", to=["bob"], body="elsewhere"))
        thread = await history(alice, thread=root.message_id)
        assert thread == [
            {
                "id": second.message_id,
                "body": "3",
                "thread_id": root.message_id,
                "in_reply_to": first.message_id,
            },
            {
                "id": first.message_id,
                "body": "2",
                "thread_id": root.message_id,
                "in_reply_to": root.message_id,
            },
            {"id": root.message_id, "body": "1", "thread_id": root.message_id, "in_reply_to": None},
        ]
        # bob's inbox entries carry the thread too
        inbox = await bob.handle(parse_request({"op": "inbox"}))
        assert isinstance(inbox, r.InboxResult)
        threads = {e.body: (e.thread_id, e.in_reply_to) for e in inbox.entries}
        assert threads["3"] == (root.message_id, first.message_id)
        assert threads["elsewhere"] == (inbox.entries[0].message_id, None)
        # carol sees only what reached her mailbox of that thread
        carol = await session_of(core, "carol")
        assert [m["id"] for m in await history(carol, thread=root.message_id)] == [root.message_id]


async def test_a_reply_to_a_message_outside_your_history_is_refused(core: Broker) -> None:
    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "bob", "mallory")
        alice, mallory = await session_of(core, "alice"), await session_of(core, "mallory")
        private = await alice.send(send(kind="text", to=["bob"], body="between us"))
        with pytest.raises(RequestRefused) as refused:
            await mallory.send(
                send(kind="text", to=["bob"], body="sneaky", in_reply_to=private.message_id)
            )
        assert refused.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(RequestRefused) as missing:
            await alice.send(send(kind="text", to=["bob"], body="?", in_reply_to=10_000))
        assert missing.value.code == ErrorCode.NOT_FOUND
        bob = await session_of(core, "bob")
        assert [m["body"] for m in await history(bob)] == ["between us"]


def test_announcements_and_rickrolls_cannot_be_replies() -> None:
    for fields in (
        {"kind": "announcement", "subject": "s", "body": "b"},
        {"kind": "rickroll", "to": ["bob"]},
    ):
        with pytest.raises(RemoteProtocolError) as bad:
            parse_request({"op": "send", "in_reply_to": 1, **fields})
        assert bad.value.code == ErrorCode.BAD_REQUEST
    with pytest.raises(RemoteProtocolError):
        parse_request({"op": "history", "thread": 0})


# -- 1. on the wire ----------------------------------------------------------------------------


async def test_tcp_reply_is_pushed_with_its_thread_and_history_filters_by_thread(
    broker: RunningBroker,
) -> None:
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            root = await alice.send_email(["bob"], "Plans", "first")
            assert (await bob.next_mail())["thread_id"] == root["message_id"]
            answer = await bob.send_email(
                ["alice"], "Re: Plans", "second", in_reply_to=root["message_id"]
            )
            pushed = await alice.next_mail()
            assert pushed["message_id"] == answer["message_id"]
            assert (pushed["thread_id"], pushed["in_reply_to"]) == (
                root["message_id"],
                root["message_id"],
            )
            items = await alice.history(thread=root["message_id"])
            assert [i["message_id"] for i in items] == [answer["message_id"], root["message_id"]]
            with pytest.raises(RequestFailed) as refused:
                await bob.send_text("alice", "x", in_reply_to=answer["message_id"] + 100)
            assert refused.value.code == "not_found"


async def test_http_send_takes_in_reply_to_and_history_takes_thread(web: RunningBroker) -> None:
    with trio.fail_after(WAIT):
        async with httpx.AsyncClient(base_url=web.info.web[0], timeout=WAIT) as http:
            tokens = {}
            for name in ("alice", "bob"):
                response = await http.post(
                    "/api/login",
                    json={"username": name, "password": "password1", "create": True},
                )
                tokens[name] = {"Authorization": f"Bearer {response.json()['token']}"}
            root = await http.post(
                "/api/emails",
                json={"to": ["bob"], "subject": "Hi", "body": "one"},
                headers=tokens["alice"],
            )
            root_id = root.json()["message_id"]
            reply = await http.post(
                "/api/texts",
                json={"to": "alice", "body": "two", "in_reply_to": root_id},
                headers=tokens["bob"],
            )
            assert reply.status_code == 200, reply.text
            found = await http.get(f"/api/history?thread={root_id}", headers=tokens["alice"])
            items = found.json()["items"]
            assert [(i["body"], i["thread_id"], i["in_reply_to"]) for i in items] == [
                ("two", root_id, root_id),
                ("one", root_id, None),
            ]
            refused = await http.post(
                "/api/texts",
                json={"to": "bob", "body": "x", "in_reply_to": root_id + 50},
                headers=tokens["alice"],
            )
            assert refused.status_code == 404
            assert refused.json()["error"]["code"] == "not_found"


# -- 1. the CLI --------------------------------------------------------------------------------


async def test_cli_reply_all_threads_with_one_re_and_history_shows_the_thread(
    broker: RunningBroker, tmp_path: Path
) -> None:
    alice = User("alice", tmp_path / "alice", broker.address)
    bob = User("bob", tmp_path / "bob", broker.address)
    carol = User("carol", tmp_path / "carol", broker.address)
    with trio.fail_after(120):
        for user in (alice, bob, carol):
            await user.login()
        sent = (
            await alice.ok(
                "send", "--to", "bob,carol", "--subject", "Re: Budget", "--body", "v1", "--json"
            )
        ).json_lines()[0]
        replied = (
            await bob.ok("reply", "1", "--all", "--json", stdin=b"looks good\n")
        ).json_lines()
        assert replied[0]["to"] == ["alice", "carol"]
        assert replied[0]["subject"] == "Re: Budget"  # not "Re: Re: Budget"
        assert replied[0]["thread_id"] == sent["message_id"]
        plain = await carol.ok("reply", "1", "--body", "me too")
        assert "to alice: Re: Budget" in plain.stdout
        thread = (
            await alice.ok("history", "--thread", str(sent["message_id"]), "--json")
        ).json_lines()
        assert [(i["body"], i["in_reply_to"]) for i in thread] == [
            ("me too", sent["message_id"]),
            ("looks good\n", sent["message_id"]),
            ("v1", None),
        ]
        missing = await bob("reply", "99", "--body", "x")
        assert missing.returncode == 5 and "no message #99" in missing.stderr


# -- 6. every session in step ------------------------------------------------------------------


async def mailbox_events(outlet: Any, count: int) -> list[MailboxEvent]:
    """The first `count` mailbox events the outlet got (presence events come at any time)."""
    while True:
        found = [e for e in outlet.events if isinstance(e, MailboxEvent)]
        if len(found) >= count:
            return found
        await outlet.wait_for_events(len(outlet.events) + 1)


async def test_read_and_unread_reach_every_live_session_of_the_user_only(core: Broker) -> None:
    from tests.test_session_layer import connection, text

    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "bob")
        alice = await session_of(core, "alice")
        for n in range(3):
            await alice.send(text("bob", f"m{n}"))
        async with (
            connection(core) as (laptop, laptop_out),
            connection(core) as (phone, phone_out),
            connection(core) as (watcher, watcher_out),
        ):
            await laptop.handle(login("bob"))
            await phone.handle(login("bob"))
            await watcher.handle(login("alice"))
            await laptop_out.wait_for_mail(3)
            await phone_out.wait_for_mail(3)
            marked = await laptop.handle(parse_request({"op": "mark_read", "seqs": [1, 3]}))
            assert marked == r.MarkReadResult(marked=2)
            # already read: no change, no event
            await laptop.handle(parse_request({"op": "mark_read", "seqs": [1]}))
            again = await phone.handle(parse_request({"op": "mark_unread", "seqs": [3, 2]}))
            assert again == r.MarkUnreadResult(marked=1)  # 2 was never read
            for outlet in (laptop_out, phone_out):
                events = await mailbox_events(outlet, 2)
                assert events == [
                    MailboxEvent(change="read", seqs=[1, 3]),
                    MailboxEvent(change="unread", seqs=[3]),
                ]
            assert not [e for e in watcher_out.events if isinstance(e, MailboxEvent)]
            inbox = await phone.handle(parse_request({"op": "inbox"}))
            assert isinstance(inbox, r.InboxResult)
            assert {e.seq: e.read for e in inbox.entries} == {1: True, 2: False, 3: False}


async def test_tcp_and_websocket_sessions_hear_a_read_made_over_http(web: RunningBroker) -> None:
    with trio.fail_after(WAIT):
        async with bob_on_the_web(web) as (bob_tcp, http, headers, ws):
            read = await http.post("/api/read", json={"seqs": [2]}, headers=headers)
            assert read.json() == {"marked": 1}
            event = await _next_mailbox_event(ws)
            assert event == {"event": "mailbox", "change": "read", "seqs": [2]}
            back = await http.post("/api/unread", json={"seqs": [2]}, headers=headers)
            assert back.json() == {"marked": 1}
            assert (await _next_mailbox_event(ws))["change"] == "unread"
            # Presence events (pushed once a tick) may come between: only mailbox events count.
            while (pushed := await bob_tcp.next_event())["event"] != "mailbox":
                pass
            assert pushed == {"event": "mailbox", "change": "read", "seqs": [2]}
            while (pushed := await bob_tcp.next_event())["event"] != "mailbox":
                pass
            assert pushed["change"] == "unread"


async def _next_mailbox_event(ws: Any) -> dict[str, Any]:
    from tests.test_web_api import receive_event

    return await receive_event(ws, "mailbox")


@asynccontextmanager
async def bob_on_the_web(
    web: RunningBroker,
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, dict[str, str], Any]]:
    """alice sends bob two texts, which his TCP client receives; then bob logs in over HTTP and
    opens the WebSocket: (his TCP client, the HTTP client, its auth headers, the WebSocket)."""
    from tests.test_web_api import live

    async with web.user("bob") as bob_tcp, web.user("alice") as alice:
        for word in ("one", "two"):
            await alice.send_text("bob", word)
        await bob_tcp.next_mail()
        async with httpx.AsyncClient(base_url=web.info.web[0], timeout=WAIT) as http:
            response = await http.post(
                "/api/login", json={"username": "bob", "password": "password1"}
            )
            token = response.json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with live(web, token) as ws:
                yield bob_tcp, http, headers, ws


async def test_a_read_on_one_postgresql_node_reaches_sessions_on_another(
    pg_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        async with (
            two_nodes(pg_url, tmp_path) as (a, b),
            a.user("alice") as alice,
            a.user("bob") as bob_here,
            b.user("bob") as bob_there,
        ):
            await alice.send_text("bob", "hello")
            await bob_there.next_mail()
            await bob_here.next_mail()
            assert await bob_here.mark_read([1]) == 1
            while (pushed := await bob_there.next_event())["event"] != "mailbox":
                pass
            assert pushed == {"event": "mailbox", "change": "read", "seqs": [1]}
            while (mine := await bob_here.next_event())["event"] != "mailbox":
                pass
            assert mine == pushed
            # pushed once on its own node, not again when its own notice comes back
            await bob_here.mark_unread([1])
            while (mine := await bob_here.next_event())["event"] != "mailbox":
                pass  # presence events may come between
            assert mine["change"] == "unread"  # not the read again


# -- 3. acknowledged announcements and 2. the sender's ledger -----------------------------------


def receipts_of(outlet: Any) -> list[tuple[int, str, str]]:
    return [
        (e.message_id, e.username, e.state) for e in outlet.events if isinstance(e, ReceiptEvent)
    ]


async def wait_for_receipts(outlet: Any, count: int) -> list[tuple[int, str, str]]:
    while len(receipts_of(outlet)) < count:
        await outlet.wait_for_events(len(outlet.events) + 1)
    return receipts_of(outlet)


async def test_an_announcement_that_requires_ack_shows_who_acknowledged_live(
    core: Broker,
) -> None:
    from tests.test_session_layer import connection

    with trio.fail_after(WAIT):
        await create_accounts(core, "root", "alice", "bob", "carol")
        async with (
            connection(core) as (alice, alice_out),
            connection(core) as (bob, bob_out),
        ):
            await alice.handle(login("alice"))
            await bob.handle(login("bob"))
            sent = await alice.send(
                send(kind="announcement", subject="Fire drill", body="at 3", require_ack=True)
            )
            [entry] = await bob_out.wait_for_mail(1)
            assert entry["require_ack"] is True
            status = await alice.handle(
                parse_request({"op": "message_status", "message_id": sent.message_id})
            )
            assert isinstance(status, r.MessageStatusResult)
            assert (status.total, status.acked, status.require_ack) == (3, 0, True)
            done = await bob.handle(
                parse_request({"op": "acknowledge", "message_id": sent.message_id})
            )
            assert isinstance(done, r.AcknowledgeResult) and done.changed
            again = await bob.handle(
                parse_request({"op": "acknowledge", "message_id": sent.message_id})
            )
            assert isinstance(again, r.AcknowledgeResult) and not again.changed
            assert await wait_for_receipts(alice_out, 1) == [(sent.message_id, "bob", "acked")]
            assert await mailbox_events(bob_out, 1) == [MailboxEvent(change="acked", seqs=[1])]
            status = await alice.handle(
                parse_request({"op": "message_status", "message_id": sent.message_id})
            )
            assert isinstance(status, r.MessageStatusResult)
            assert status.acked == 1
            assert {line.username: line.state for line in status.recipients}["bob"] == "acked"
            waiting = [line.username for line in status.recipients if line.state != "acked"]
            assert waiting == ["carol", "root"]
            # an admin may look too; another recipient may not
            admin = await session_of(core, "root")
            seen = await admin.handle(
                parse_request({"op": "message_status", "message_id": sent.message_id})
            )
            assert isinstance(seen, r.MessageStatusResult) and seen.acked == 1
            carol = await session_of(core, "carol")
            with pytest.raises(RequestRefused) as refused:
                await carol.handle(
                    parse_request({"op": "message_status", "message_id": sent.message_id})
                )
            assert refused.value.code == ErrorCode.NOT_FOUND
            plain = await alice.send(send(kind="text", to=["carol"], body="no ack asked"))
            with pytest.raises(RequestRefused) as not_asked:
                await carol.handle(
                    parse_request({"op": "acknowledge", "message_id": plain.message_id})
                )
            assert not_asked.value.code == ErrorCode.BAD_REQUEST


async def test_the_ledger_goes_queued_delivered_read_and_honours_no_read_receipts(
    core: Broker,
) -> None:
    from tests.test_session_layer import connection

    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "bob", "carol", "dave")
        dave = await session_of(core, "dave")
        prefs = await dave.handle(parse_request({"op": "set_prefs", "read_receipts": False}))
        assert prefs == r.PrefsResult(prank_opt_out=False, read_receipts=False)
        async with connection(core) as (alice, alice_out):
            await alice.handle(login("alice"))
            sent = await alice.send(
                send(kind="email", to=["bob", "carol", "dave"], subject="Agenda", body="...")
            )

            async def states() -> dict[str, str]:
                status = await alice.handle(
                    parse_request({"op": "message_status", "message_id": sent.message_id})
                )
                assert isinstance(status, r.MessageStatusResult)
                return {line.username: line.state for line in status.recipients}

            assert await states() == {"bob": "queued", "carol": "queued", "dave": "queued"}
            # bob's client gets it and acknowledges its seq: delivered, once the ack is written,
            # and alice's live session is told so then
            async with connection(core) as (bob, bob_out):
                await bob.handle(login("bob"))
                await bob_out.wait_for_mail(1)
                await bob.handle(parse_request({"op": "ack", "seq": 1}))
                await core.flush_acks()
            assert (await states())["bob"] == "delivered"
            assert await wait_for_receipts(alice_out, 1) == [(sent.message_id, "bob", "delivered")]
            carol = await session_of(core, "carol")
            await carol.handle(parse_request({"op": "mark_read", "seqs": [1]}))
            assert (await wait_for_receipts(alice_out, 2))[1] == (sent.message_id, "carol", "read")
            await dave.handle(parse_request({"op": "mark_read", "seqs": [1]}))
            assert await states() == {"bob": "delivered", "carol": "read", "dave": "delivered"}
            status = await alice.handle(
                parse_request({"op": "message_status", "message_id": sent.message_id})
            )
            assert isinstance(status, r.MessageStatusResult)
            dave_line = next(line for line in status.recipients if line.username == "dave")
            assert dave_line.read_at is None and dave_line.delivered_at is not None
            assert (status.delivered, status.read) == (3, 1)
            assert receipts_of(alice_out) == [  # none of dave
                (sent.message_id, "bob", "delivered"),
                (sent.message_id, "carol", "read"),
            ]


async def test_tcp_acknowledge_pushes_a_receipt_and_status_counts_it(
    broker: RunningBroker,
) -> None:
    with trio.fail_after(WAIT):
        async with broker.user("root"):
            pass
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            sent = await alice.announce("Drill", "at 3", require_ack=True)
            entry = await bob.next_mail()
            assert entry["require_ack"] is True
            done = await bob.acknowledge(sent["message_id"])
            assert done["changed"] is True
            while (receipt := await alice.next_event())["event"] != "receipt":
                pass
            assert (receipt["message_id"], receipt["username"], receipt["state"]) == (
                sent["message_id"],
                "bob",
                "acked",
            )
            status = await alice.message_status(sent["message_id"])
            assert (status["total"], status["acked"]) == (2, 1)
            with pytest.raises(RequestFailed) as refused:
                await bob.message_status(sent["message_id"])
            assert refused.value.code == "not_found"


async def test_http_acknowledge_and_status_and_read_receipts_pref(web: RunningBroker) -> None:
    with trio.fail_after(WAIT):
        async with httpx.AsyncClient(base_url=web.info.web[0], timeout=WAIT) as http:
            auth = {}
            for name in ("alice", "bob"):
                response = await http.post(
                    "/api/login", json={"username": name, "password": "password1", "create": True}
                )
                auth[name] = {"Authorization": f"Bearer {response.json()['token']}"}
            prefs = await http.put("/api/prefs", json={"read_receipts": False}, headers=auth["bob"])
            assert prefs.json() == {"prank_opt_out": False, "read_receipts": False}
            sent = await http.post(
                "/api/announcements",
                json={"subject": "Sign", "body": "the form", "require_ack": True},
                headers=auth["alice"],
            )
            message_id = sent.json()["message_id"]
            await http.post("/api/read", json={"seqs": [1]}, headers=auth["bob"])
            status = await http.get(f"/api/status?message_id={message_id}", headers=auth["alice"])
            [line] = status.json()["recipients"]
            assert (line["username"], line["state"], line["read_at"]) == ("bob", "delivered", None)
            acked = await http.post(
                "/api/acknowledge", json={"message_id": message_id}, headers=auth["bob"]
            )
            assert acked.json()["changed"] is True
            status = await http.get(f"/api/status?message_id={message_id}", headers=auth["alice"])
            assert status.json()["acked"] == 1
            hidden = await http.get(f"/api/status?message_id={message_id}", headers=auth["bob"])
            assert hidden.status_code == 404


async def test_cli_announce_require_ack_then_ack_and_status(
    broker: RunningBroker, tmp_path: Path
) -> None:
    root = User("root", tmp_path / "root", broker.address)
    alice = User("alice", tmp_path / "alice", broker.address)
    bob = User("bob", tmp_path / "bob", broker.address)
    with trio.fail_after(120):
        for user in (root, alice, bob):
            await user.login()
        sent = (
            await alice.ok(
                "announce", "--require-ack", "--subject", "Drill", "--body", "at 3", "--json"
            )
        ).json_lines()[0]
        message_id = str(sent["message_id"])
        before = await alice.ok("status", message_id)
        assert "0 of 2 acknowledged; not yet: bob, root" in before.stdout
        assert "Acknowledged #" in (await bob.ok("ack", message_id)).stdout
        after = await alice.ok("status", message_id)
        assert "1 of 2 acknowledged; not yet: root" in after.stdout
        assert "bob: acknowledged" in after.stdout
        sent_list = await alice.ok("history", "--kind", "announcement")
        assert "STATUS" in sent_list.stdout and "1/2 acked" in sent_list.stdout
        ledger = (await root.ok("status", message_id, "--json")).json_lines()[0]
        assert ledger["acked"] == 1
        refused = await bob("status", message_id)
        assert refused.returncode == 5
        prefs = await bob.ok("prefs", "--no-read-receipts", "--json")
        assert prefs.json_lines()[0]["read_receipts"] is False


# -- 5. deletion, archiving and retention -------------------------------------------------------


async def test_delete_and_archive_touch_only_the_users_copy_and_reach_their_sessions(
    core: Broker,
) -> None:
    from tests.test_session_layer import connection, text

    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "bob", "carol")
        alice = await session_of(core, "alice")
        await alice.send(send(kind="email", to=["bob", "carol"], subject="s", body="shared"))
        await alice.send(text("bob", "two"))
        await alice.send(text("bob", "three"))
        async with connection(core) as (bob, bob_out):
            await bob.handle(login("bob"))
            await bob_out.wait_for_mail(3)
            deleted = await bob.handle(parse_request({"op": "delete", "seqs": [1]}))
            assert deleted == r.DeleteResult(deleted=1)
            archived = await bob.handle(parse_request({"op": "archive", "seqs": [2, 3]}))
            assert archived == r.ArchiveResult(archived=2)
            assert await mailbox_events(bob_out, 2) == [
                MailboxEvent(change="deleted", seqs=[1]),
                MailboxEvent(change="archived", seqs=[2, 3]),
            ]
            with pytest.raises(RequestRefused) as gone:
                await bob.handle(parse_request({"op": "delete", "seqs": [1]}))
            assert gone.value.code == ErrorCode.NOT_FOUND
            inbox = await bob.handle(parse_request({"op": "inbox"}))
            assert isinstance(inbox, r.InboxResult) and inbox.entries == []
            everything = await bob.handle(parse_request({"op": "inbox", "archived": True}))
            assert isinstance(everything, r.InboxResult)
            assert [e.seq for e in everything.entries] == [3, 2]
        carol = await session_of(core, "carol")
        kept = await carol.handle(parse_request({"op": "inbox"}))
        assert isinstance(kept, r.InboxResult) and [e.body for e in kept.entries] == ["shared"]
        assert [m["body"] for m in await history(alice)] == ["three", "two", "shared"]


async def test_the_retention_sweep_removes_only_old_acknowledged_entries_of_the_kind(
    core: Broker,
) -> None:
    from sqlalchemy import update

    from broker.store.models import Message
    from tests.test_session_layer import connection, text

    with trio.fail_after(WAIT):
        await create_accounts(core, "root", "alice", "bob")
        alice, bob = await session_of(core, "alice"), await session_of(core, "bob")
        with pytest.raises(RequestRefused) as forbidden:
            await alice.handle(
                parse_request({"op": "admin_retention", "kind": "announcement", "days": 30})
            )
        assert forbidden.value.code == ErrorCode.FORBIDDEN
        root = await session_of(core, "root")
        rules = await root.handle(
            parse_request({"op": "admin_retention", "kind": "announcement", "days": 30})
        )
        assert rules == r.AdminRetentionResult(rules={"announcement": 30})
        old = await alice.send(send(kind="announcement", subject="old", body="expired"))
        await alice.send(send(kind="announcement", subject="new", body="fresh"))
        await alice.send(text("bob", "a text, no rule"))
        store = core.runner.store
        with store.engines.write.begin() as conn:  # every message is 40 days old but one
            conn.execute(
                update(Message.__table__)
                .where(Message.__table__.c.subject != "new")
                .values(created_at=datetime.now(UTC) - timedelta(days=40))
            )
        # no client of anyone's has acknowledged anything: nothing is removed
        assert await core.retention.sweep() == 0
        async with connection(core) as (live, live_out):
            await live.handle(login("bob"))
            await live_out.wait_for_mail(3)
            await live.handle(parse_request({"op": "ack", "seq": 3}))
            await core.flush_acks()
            # bob's old announcement goes; the new one and the old text (no rule) stay; root's
            # old announcement stays too: no client of root's ever received it
            assert await core.retention.sweep() == 1
            assert await mailbox_events(live_out, 1) == [MailboxEvent(change="deleted", seqs=[1])]
        assert core.retention.swept_total == {"announcement": 1}
        left = await bob.handle(parse_request({"op": "inbox"}))
        assert isinstance(left, r.InboxResult)
        assert [e.body for e in left.entries] == ["a text, no rule", "fresh"]
        roots = await root.handle(parse_request({"op": "inbox"}))
        assert isinstance(roots, r.InboxResult)
        assert old.message_id in [e.message_id for e in roots.entries]
        forever = await root.handle(
            parse_request({"op": "admin_retention", "kind": "announcement"})
        )
        assert forever == r.AdminRetentionResult(rules={})


async def test_deleting_does_not_make_room_in_a_full_mailbox(tmp_path: Path) -> None:
    """Quotas stay loud: a full mailbox refuses until its owner's client takes the mail."""
    from tests.test_session_layer import text

    with trio.fail_after(WAIT):
        async with running_core(make_config(tmp_path, mailbox_quota=2)) as core:
            await create_accounts(core, "alice", "bob")
            alice, bob = await session_of(core, "alice"), await session_of(core, "bob")
            await alice.send(text("bob", "1"))
            await alice.send(text("bob", "2"))
            await bob.handle(parse_request({"op": "delete", "seqs": [1, 2]}))
            with pytest.raises(RequestRefused) as full:
                await alice.send(text("bob", "3"))
            assert full.value.code == ErrorCode.QUOTA_EXCEEDED


async def test_cli_delete_archive_inbox_archived_and_admin_retention(
    broker: RunningBroker, tmp_path: Path
) -> None:
    root = User("root", tmp_path / "root", broker.address)
    alice = User("alice", tmp_path / "alice", broker.address)
    with trio.fail_after(120):
        for user in (root, alice):
            await user.login()
        for word in ("one", "two", "three"):
            await root.ok("text", "alice", word)
        assert "Deleted 1." in (await alice.ok("delete", "1")).stdout
        assert "Archived 1." in (await alice.ok("archive", "2")).stdout
        shown = (await alice.ok("inbox", "--json")).json_lines()
        assert [e["body"] for e in shown] == ["three"]
        everything = (await alice.ok("inbox", "--archived", "--json")).json_lines()
        assert [e["body"] for e in everything] == ["three", "two"]
        assert (await alice("delete", "1")).returncode == 5
        set_rule = await root.ok("admin", "retention", "--kind", "announcement", "--days", "30")
        assert "announcement: kept 30 days" in set_rule.stdout
        rules = (await root.ok("admin", "retention", "--json")).json_lines()[0]
        assert rules == {"rules": {"announcement": 30}}
        assert (await alice("admin", "retention", "--kind", "text", "--days", "1")).returncode == 5
        assert (await root("admin", "retention", "--kind", "text")).returncode == 2


async def test_delete_and_archive_over_http_reach_the_websocket_and_tcp(
    web: RunningBroker,
) -> None:
    with trio.fail_after(WAIT):
        async with bob_on_the_web(web) as (bob_tcp, http, headers, ws):
            gone = await http.post("/api/delete", json={"seqs": [1]}, headers=headers)
            assert gone.json() == {"deleted": 1}
            assert await _next_mailbox_event(ws) == {
                "event": "mailbox",
                "change": "deleted",
                "seqs": [1],
            }
            put = await http.post("/api/archive", json={"seqs": [2]}, headers=headers)
            assert put.json() == {"archived": 1}
            assert (await _next_mailbox_event(ws))["change"] == "archived"
            inbox = await http.get("/api/inbox", headers=headers)
            assert inbox.json()["entries"] == []
            archived = await http.get("/api/inbox?archived=true", headers=headers)
            assert [e["seq"] for e in archived.json()["entries"]] == [2]
            changes = []
            while len(changes) < 2:
                event = await bob_tcp.next_event()
                if event["event"] == "mailbox":
                    changes.append(event["change"])
            assert changes == ["deleted", "archived"]


async def test_history_marks_what_the_user_sent_with_the_ledger_counts(core: Broker) -> None:
    from tests.test_session_layer import connection

    with trio.fail_after(WAIT):
        await create_accounts(core, "alice", "bob", "carol")
        alice = await session_of(core, "alice")
        await alice.send(send(kind="email", to=["bob", "carol"], subject="s", body="to both"))
        async with connection(core) as (bob, bob_out):
            await bob.handle(login("bob"))
            await bob_out.wait_for_mail(1)
            await bob.handle(parse_request({"op": "ack", "seq": 1}))
            await core.flush_acks()
        carol = await session_of(core, "carol")
        await carol.handle(parse_request({"op": "mark_read", "seqs": [1]}))
        answer = await alice.handle(parse_request({"op": "history"}))
        assert isinstance(answer, r.HistoryResult)
        [item] = answer.items
        assert item.receipts == Receipts(total=2, delivered=2, read=1, acked=0)
        received = await carol.handle(parse_request({"op": "history"}))
        assert isinstance(received, r.HistoryResult)
        assert received.items[0].receipts is msgspec.UNSET  # only the sender sees the marks


async def test_a_receipt_reaches_the_sender_on_another_postgresql_node(
    pg_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        async with (
            two_nodes(pg_url, tmp_path) as (a, b),
            a.user("alice") as alice,
            b.user("bob") as bob,
        ):
            sent = await alice.announce("Sign", "the form", require_ack=True)
            await bob.next_mail()
            await bob.mark_read([1])
            await bob.acknowledge(sent["message_id"])
            states = []
            while len(states) < 2:
                event = await alice.next_event()
                if event["event"] == "receipt":
                    assert (event["message_id"], event["username"]) == (sent["message_id"], "bob")
                    states.append(event["state"])
            assert states == ["read", "acked"]
