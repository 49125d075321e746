"""Sending over a live broker: email, text, announcement and rick-roll, stored before the ack."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
import trio

from broker.client import RequestFailed

WAIT = 10
RICKROLL_URL = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
ENTRY_FIELDS = {
    "thread_id",
    "in_reply_to",
    "require_ack",
    "seq",
    "message_id",
    "kind",
    "sender",
    "recipients",
    "subject",
    "body",
    "sent_at",
    "read",
    "direction",
}


def db_rows(config, sql: str, *params: object) -> list[tuple]:
    """Read the broker's SQLite file through a separate connection, as an admin would."""
    with closing(sqlite3.connect(config.data_dir / "mailnet.db")) as db:
        return db.execute(sql, params).fetchall()


def user_id(config, username: str) -> int:
    [(found,)] = db_rows(config, "SELECT id FROM users WHERE username = ?", username)
    return found


async def create_accounts(broker, *names: str) -> None:
    for name in names:
        async with broker.user(name):
            pass


async def test_email_reaches_every_recipient_with_subject_and_body(broker):
    with trio.fail_after(WAIT):
        async with (
            broker.user("alice") as alice,
            broker.user("bob") as bob,
            broker.user("carol") as carol,
        ):
            ack = await alice.send_email(["bob", "carol"], "Lunch", "At noon?")
            for recipient in (bob, carol):
                entry = await recipient.next_mail()
                assert entry["kind"] == "email"
                assert entry["message_id"] == ack["message_id"]
                assert entry["sender"] == "alice"
                assert entry["recipients"] == ["bob", "carol"]
                assert entry["subject"] == "Lunch"
                assert entry["body"] == "At noon?"
                assert entry["read"] is False
                assert entry["direction"] == "in"


async def test_text_goes_to_one_user_with_a_body_only(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await alice.send_text("bob", "ping?")
            entry = await bob.next_mail()
            assert (entry["kind"], entry["sender"], entry["body"]) == ("text", "alice", "ping?")
            assert entry["subject"] is None
            with pytest.raises(RequestFailed) as refused:
                await alice.send("text", to=["bob", "carol"], body="two at once")
            assert refused.value.code == "bad_request"


async def test_announcement_reaches_every_user_including_offline_ones_but_not_the_sender(broker):
    with trio.fail_after(WAIT):
        await create_accounts(broker, "carol")  # exists, offline when the announcement goes out
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            ack = await alice.announce("Maintenance", "Down at 6pm")
            entry = await bob.next_mail()
            assert (entry["kind"], entry["sender"], entry["subject"], entry["body"]) == (
                "announcement",
                "alice",
                "Maintenance",
                "Down at 6pm",
            )
            # The sender has no copy: the next thing in alice's mailbox is bob's reply.
            await bob.send_text("alice", "noted")
            assert (await alice.next_mail())["body"] == "noted"
        async with broker.user("carol") as carol:
            entry = await carol.next_mail()
            assert entry["message_id"] == ack["message_id"]
            assert entry["subject"] == "Maintenance"
    holders = db_rows(
        broker.config,
        "SELECT u.username FROM mailbox m JOIN users u ON u.id = m.user_id "
        "WHERE m.message_id = ? ORDER BY u.username",
        ack["message_id"],
    )
    assert holders == [("bob",), ("carol",)]


async def test_rickroll_hides_its_sender_from_the_recipient_and_keeps_it_for_admins(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            ack = await alice.rickroll("bob")
            entry = await bob.next_mail()
            assert entry["kind"] == "rickroll"
            assert entry["sender"] is None
            assert entry["recipients"] == []
            assert RICKROLL_URL in entry["body"]
            assert "alice" not in entry["subject"] + entry["body"]
            # Just data: nothing in the entry asks the client to open anything.
            assert set(entry) == ENTRY_FIELDS
            # The inbox shows it the same way.
            [listed] = (await bob.inbox())["entries"]
            assert listed["sender"] is None
            assert listed["recipients"] == []
    [(sender_id,)] = db_rows(
        broker.config, "SELECT sender_id FROM messages WHERE id = ?", ack["message_id"]
    )
    assert sender_id == user_id(broker.config, "alice")


async def test_rickroll_to_a_user_who_opted_out_is_refused_and_not_stored(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            assert (await bob.set_prefs(prank_opt_out=True))["prank_opt_out"] is True
            with pytest.raises(RequestFailed) as refused:
                await alice.rickroll("bob")
            assert refused.value.code == "prank_refused"
            assert "bob" in refused.value.message
            # Other kinds still get through, and opting back in allows pranks again.
            await alice.send_text("bob", "still friends?")
            assert (await bob.next_mail())["body"] == "still friends?"
            await bob.set_prefs(prank_opt_out=False)
            await alice.rickroll("bob")
            assert (await bob.next_mail())["kind"] == "rickroll"
    assert db_rows(broker.config, "SELECT kind FROM messages ORDER BY id") == [
        ("text",),
        ("rickroll",),
    ]


async def test_server_sets_the_sender_whatever_the_send_frame_claims(broker):
    with trio.fail_after(WAIT):
        await create_accounts(broker, "mallory")
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            ack = await alice.request(
                "send",
                kind="text",
                to=["bob"],
                body="from whom?",
                sender="mallory",
                sender_id=user_id(broker.config, "mallory"),
                **{"from": "mallory"},
            )
            entry = await bob.next_mail()
            assert entry["sender"] == "alice"
    [(sender_id,)] = db_rows(
        broker.config, "SELECT sender_id FROM messages WHERE id = ?", ack["message_id"]
    )
    assert sender_id == user_id(broker.config, "alice")


async def test_message_and_mailbox_entries_are_on_disk_when_the_ack_arrives(broker):
    with trio.fail_after(WAIT):
        await create_accounts(broker, "bob", "carol")
        async with broker.user("alice") as alice:
            ack = await alice.send_email(["bob", "carol"], "Durable", "on disk first")
            # Checked before anything else happens: the ack alone promises the commit.
            stored = db_rows(
                broker.config,
                "SELECT kind, subject, body FROM messages WHERE id = ?",
                ack["message_id"],
            )
            entries = db_rows(
                broker.config,
                "SELECT u.username, m.seq FROM mailbox m JOIN users u ON u.id = m.user_id "
                "WHERE m.message_id = ? ORDER BY u.username",
                ack["message_id"],
            )
    assert stored == [("email", "Durable", "on disk first")]
    assert entries == [("bob", 1), ("carol", 1)]


async def test_unknown_recipient_among_several_refuses_the_whole_send(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            with pytest.raises(RequestFailed) as refused:
                await alice.send_email(["bob", "nobody"], "Hi", "both of you")
            assert refused.value.code == "unknown_recipient"
            assert "nobody" in refused.value.message
            # Nothing reached bob: his next mail is the one sent after.
            await alice.send_text("bob", "just you")
            assert (await bob.next_mail())["body"] == "just you"
    assert db_rows(broker.config, "SELECT body FROM messages") == [("just you",)]
    assert db_rows(broker.config, "SELECT count(*) FROM mailbox") == [(1,)]


async def test_sending_before_login_is_refused(broker):
    with trio.fail_after(WAIT):
        await create_accounts(broker, "bob")
        async with broker.client() as anonymous:
            with pytest.raises(RequestFailed) as refused:
                await anonymous.send_text("bob", "who am I?")
            assert refused.value.code == "not_authenticated"
    assert db_rows(broker.config, "SELECT count(*) FROM messages") == [(0,)]


async def test_a_refused_send_does_not_fail_the_sends_committed_with_it(broker):
    # Sends in flight together are committed in one transaction (group commit); one refused
    # send must not take the others down with it.
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            acks: dict[int, dict] = {}
            refusals: list[RequestFailed] = []

            async def send(n: int) -> None:
                try:
                    to = ["bob", "nobody"] if n == 5 else ["bob"]
                    acks[n] = await alice.send_email(to, f"s{n}", f"b{n}")
                except RequestFailed as exc:
                    refusals.append(exc)

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(send, n)
            assert [r.code for r in refusals] == ["unknown_recipient"]
            assert sorted(acks) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
            got = [await bob.next_mail() for _ in range(9)]
            assert {e["message_id"] for e in got} == {a["message_id"] for a in acks.values()}
    assert db_rows(broker.config, "SELECT count(*) FROM messages") == [(9,)]
