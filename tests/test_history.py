"""Inbox and history over a live broker: unread/all, shared read state, filters and paging."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
import trio

from broker.client import RequestFailed

WAIT = 10


def db_execute(config, sql: str, *params: object) -> list[tuple]:
    """Run SQL on the broker's SQLite file through a separate connection."""
    with closing(sqlite3.connect(config.data_dir / "mailnet.db")) as db, db:
        return db.execute(sql, params).fetchall()


async def create_accounts(broker, *names: str) -> None:
    for name in names:
        async with broker.user(name):
            pass


def bodies(items: list[dict]) -> list[str]:
    return [item["body"] for item in items]


# -- inbox ------------------------------------------------------------------------------------


async def test_inbox_lists_all_or_unread_newest_first_and_marks_read(broker):
    with trio.fail_after(WAIT):
        await create_accounts(broker, "bob")
        async with broker.user("alice") as alice:
            for n in range(1, 4):
                await alice.send_text("bob", f"m{n}")
        async with broker.user("bob") as bob:
            everything = await bob.inbox()
            assert [e["seq"] for e in everything["entries"]] == [3, 2, 1]
            assert everything["unread"] == 3
            assert await bob.mark_read([2]) == 1
            assert await bob.mark_read([2]) == 0  # already read: nothing changes
            unread = await bob.inbox(unread_only=True)
            assert bodies(unread["entries"]) == ["m3", "m1"]
            assert unread["unread"] == 2
            states = {e["seq"]: e["read"] for e in (await bob.inbox())["entries"]}
            assert states == {1: False, 2: True, 3: False}
            page = await bob.inbox(limit=1, before_seq=3)
            assert bodies(page["entries"]) == ["m2"]


async def test_read_state_is_shared_by_the_users_sessions(broker):
    with trio.fail_after(WAIT):
        async with (
            broker.user("alice") as alice,
            broker.user("bob") as laptop,
            broker.user("bob") as phone,
        ):
            await alice.send_text("bob", "read me once")
            entry = await laptop.next_mail()
            await laptop.mark_read([entry["seq"]])
            [seen] = (await phone.inbox())["entries"]
            assert seen["read"] is True
            assert (await phone.inbox(unread_only=True))["entries"] == []
        # And it is on the server, not in a client: a later login sees it too.
        async with broker.user("bob") as later:
            assert (await later.inbox())["unread"] == 0


async def test_marking_a_seq_outside_your_mailbox_is_not_found_and_changes_nothing(broker):
    with trio.fail_after(WAIT):
        await create_accounts(broker, "bob", "carol")
        async with broker.user("alice") as alice:
            await alice.send_text("carol", "carol's only")
            for n in range(3):
                await alice.send_text("bob", f"bob's {n}")
        async with broker.user("carol") as carol:
            # bob has seqs 1..3; carol only 1. Her seq 3 is not bob's message to her.
            for seqs in ([3], [1, 3]):
                with pytest.raises(RequestFailed) as refused:
                    await carol.mark_read(seqs)
                assert refused.value.code == "not_found"
            assert (await carol.inbox())["unread"] == 1  # the [1, 3] request marked nothing
        async with broker.user("bob") as bob:
            assert (await bob.inbox())["unread"] == 3


# -- history ----------------------------------------------------------------------------------


async def test_history_with_a_user_shows_both_directions_and_nobody_else(broker):
    with trio.fail_after(WAIT):
        await create_accounts(broker, "alice", "bob", "carol", "dave")
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await alice.send_text("bob", "a->b")
            await bob.send_text("alice", "b->a")
            await alice.send_text("carol", "a->c")
            await bob.send_email(["alice", "carol"], "group", "b->a,c")
            async with broker.user("carol") as carol:
                await carol.send_text("dave", "c->d private")
                await carol.send_text("bob", "c->b private")
            with_bob = await alice.history(with_user="bob")
            assert [(i["body"], i["direction"]) for i in with_bob] == [
                ("b->a,c", "in"),
                ("b->a", "in"),
                ("a->b", "out"),
            ]
            assert with_bob[-1]["sender"] == "alice"
            assert with_bob[-1]["recipients"] == ["bob"]
            assert bodies(await alice.history(with_user="carol")) == ["a->c"]
            everything = bodies(await alice.history())
            assert everything == ["b->a,c", "a->c", "b->a", "a->b"]
            assert bodies(await bob.history(with_user="carol")) == ["c->b private", "b->a,c"]
            # dave's and carol's mail to each other shows up nowhere else, whatever the filter.
            for client in (alice, bob):
                assert "c->d private" not in bodies(await client.history(search="private"))
            assert bodies(await alice.history(search="private")) == []


async def test_history_with_an_unknown_user_is_refused(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice:
            with pytest.raises(RequestFailed) as refused:
                await alice.history(with_user="nobody")
            assert refused.value.code == "unknown_recipient"


async def test_history_filters_by_kind(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await alice.send_text("bob", "a text")
            await alice.send_email(["bob"], "An email", "an email")
            await alice.announce("News", "an announcement")
            await alice.rickroll("bob")
            for kind, expected in [
                ("text", ["a text"]),
                ("email", ["an email"]),
                ("announcement", ["an announcement"]),
            ]:
                assert bodies(await bob.history(kind=kind)) == expected
                assert bodies(await alice.history(kind=kind)) == expected
            [prank] = await bob.history(kind="rickroll")
            assert prank["sender"] is None
            assert prank["recipients"] == []
            [sent_prank] = await alice.history(kind="rickroll")
            assert (sent_prank["direction"], sent_prank["recipients"]) == ("out", ["bob"])


async def test_history_search_is_case_insensitive_and_takes_wildcards_literally(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob"):
            await alice.send_text("bob", "I am 100% SURE")
            await alice.send_text("bob", "I am 1000 sure")
            await alice.send_text("bob", "snake_case here")
            await alice.send_text("bob", "snakeXcase here")
            await alice.send_email(["bob"], "Subject Match", "nothing in the body")
            await alice.send_text("bob", r"back\slash")
            assert bodies(await alice.history(search="sure")) == [
                "I am 1000 sure",
                "I am 100% SURE",
            ]
            assert bodies(await alice.history(search="100%")) == ["I am 100% SURE"]
            assert bodies(await alice.history(search="%")) == ["I am 100% SURE"]
            assert bodies(await alice.history(search="E_C")) == ["snake_case here"]
            assert bodies(await alice.history(search="_")) == ["snake_case here"]
            assert bodies(await alice.history(search="subject match")) == ["nothing in the body"]
            assert bodies(await alice.history(search="\\")) == [r"back\slash"]
            assert await alice.history(search="absent") == []


async def test_history_since_a_date(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            old = await alice.send_text("bob", "last year")
            await alice.send_text("bob", "this year")
            # Backdate the first message in the store (the clock cannot be sent back in time),
            # keeping the stored format: "YYYY-MM-DD HH:MM:SS.ffffff", in UTC.
            [(stamp,)] = db_execute(
                broker.config, "SELECT created_at FROM messages WHERE id = ?", old["message_id"]
            )
            backdated = "2020-06-15 12:00:00.000000"
            assert len(stamp) == len(backdated)
            db_execute(
                broker.config,
                "UPDATE messages SET created_at = ? WHERE id = ?",
                backdated,
                old["message_id"],
            )
            both = ["this year", "last year"]
            assert bodies(await alice.history(since="2021-01-01")) == ["this year"]
            assert bodies(await alice.history(since="2020-06-15")) == both
            assert bodies(await alice.history(since="2020-06-16")) == ["this year"]
            # A date-time with an offset is compared in UTC: 13:30+02:00 is 11:30Z.
            assert bodies(await bob.history(since="2020-06-15T13:30:00+02:00")) == both
            assert bodies(await bob.history(since="2020-06-15T14:30:00+02:00")) == ["this year"]
            assert bodies(await bob.history(since="2020-06-15T12:00:00Z")) == both
            with pytest.raises(RequestFailed) as refused:
                await alice.history(since="last tuesday")
            assert refused.value.code == "bad_request"


async def test_history_pages_newest_first_with_before_id_and_limit(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            ids = [(await alice.send_text("bob", f"m{n}"))["message_id"] for n in range(7)]
            pages = []
            before = None
            while True:
                page = await bob.history(limit=3, before_id=before)
                if not page:
                    break
                pages.append([item["message_id"] for item in page])
                before = page[-1]["message_id"]
            assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]
            assert [i["body"] for i in await bob.history(limit=2)] == ["m6", "m5"]


async def test_announcement_appears_once_in_each_history(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await alice.announce("All hands", "meeting at 3")
            [sent] = await alice.history()
            assert (sent["direction"], sent["kind"]) == ("out", "announcement")
            [received] = await bob.history(with_user="alice")
            assert (received["direction"], received["sender"]) == ("in", "alice")
            assert bodies(await alice.history(with_user="bob")) == ["meeting at 3"]


async def test_history_with_the_prankster_does_not_reveal_an_anonymous_rickroll(broker):
    # The rick-roll's sender is hidden from its recipient; listing "history with alice" must
    # not give it away by including the prank.
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await alice.rickroll("bob")
            await alice.send_text("bob", "hello")
            assert bodies(await bob.history(with_user="alice")) == ["hello"]
            assert [i["kind"] for i in await bob.history()] == ["text", "rickroll"]
            # The prankster's own history still shows what they sent, and to whom.
            assert [i["kind"] for i in await alice.history(with_user="bob")] == [
                "text",
                "rickroll",
            ]
