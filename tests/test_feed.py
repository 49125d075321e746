"""The per-session feed (LiveSession.next_items) without sockets: ordering and wake-ups."""

from __future__ import annotations

from datetime import UTC, datetime

import trio

from broker.core.presence import LiveSession
from broker.store import EntryRecord


def entry(seq: int) -> EntryRecord:
    return EntryRecord(
        seq=seq,
        message_id=seq,
        kind="text",
        sender="alice",
        recipients=("bob",),
        subject=None,
        body=f"text {seq}",
        sent_at=datetime.now(UTC),
        read=False,
        direction="in",
    )


async def test_a_commit_notice_during_a_store_read_is_not_lost():
    """Another node commits while this session's read is in flight and misses it: the notice
    that arrives meanwhile must cause one more read (it once left the session waiting forever)."""
    session = LiveSession(user_id=1, username="bob", client="test", cursor=0)
    store: list[EntryRecord] = []
    reads = 0

    async def fetch_after(user_id: int, after: int, limit: int) -> list[EntryRecord]:
        nonlocal reads
        reads += 1
        snapshot = [e for e in store if e.seq is not None and e.seq > after][:limit]
        if reads == 1:  # the commit lands, and its notice arrives, while this read runs
            store.append(entry(1))
            session.notice_commit(1)
        await trio.sleep(0)
        return snapshot

    with trio.fail_after(5):
        entries, _ = await session.next_items(fetch_after)
    assert [e.seq for e in entries] == [1]
    assert reads == 2


async def test_live_offers_arrive_in_order_after_the_backlog():
    session = LiveSession(user_id=1, username="bob", client="test", cursor=0)
    backlog = [entry(1), entry(2)]

    async def fetch_after(user_id: int, after: int, limit: int) -> list[EntryRecord]:
        await trio.sleep(0)
        return [e for e in backlog if e.seq is not None and e.seq > after][:limit]

    with trio.fail_after(5):
        first, _ = await session.next_items(fetch_after)
        session.offer(entry(2))  # a duplicate of the backlog: dropped
        session.offer(entry(3))
        second, _ = await session.next_items(fetch_after)
    assert [e.seq for e in first] == [1, 2]
    assert [e.seq for e in second] == [3]
