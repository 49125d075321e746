"""The shared send rate's bookkeeping on one node, with the database replaced by a bucket in
memory that answers when the test says: leases keep a user's sends in order, tokens are spent
locally, and an empty bucket is not asked again until it has refilled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from broker.core.cluster_limits import SharedSendRate
from broker.protocol import ErrorCode, RequestRefused


class SlowBucket:
    """Stands in for StoreRunner: take_tokens answers from `tokens`, once `open` is set."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.calls = 0
        self.open = trio.Event()
        self.store = type("Store", (), {"engines": None})()
        self.fail = False

    async def read(
        self, fn: Callable[..., Any], engines: object, key: str, wanted: int, *_: Any
    ) -> Any:
        self.calls += 1
        await self.open.wait()
        if self.fail:
            raise RequestRefused(ErrorCode.UNAVAILABLE, "the message store is unavailable")
        taken = min(wanted, self.tokens)
        self.tokens -= taken
        return (taken, 0.0) if taken else (0, 30.0)


def make(bucket: SlowBucket, rate: float = 50.0, burst: int = 200) -> SharedSendRate:
    return SharedSendRate(bucket, rate, burst)  # type: ignore[arg-type]


async def test_a_batch_that_could_go_at_once_waits_behind_an_earlier_lease() -> None:
    bucket = SlowBucket(tokens=100)
    rate = make(bucket)
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        # First batch: nothing leased yet, so it waits for the database.
        assert not rate.holds(1, 3)
        nursery.start_soon(rate.lease_then, 1, 3, lambda: order.append("first"), order.append)
        await trio.testing.wait_all_tasks_blocked()
        # Tokens are there locally (left from an earlier lease), but the first batch is ahead.
        rate._tokens[1] = 5
        assert not rate.holds(1, 1)
        nursery.start_soon(rate.lease_then, 1, 1, lambda: order.append("second"), order.append)
        await trio.testing.wait_all_tasks_blocked()
        bucket.open.set()
    assert order == ["first", "second"]
    assert bucket.calls == 1  # the second batch needed no lease of its own
    assert rate.holds(1, 1)  # nothing pending any more: decided locally again


async def test_leased_tokens_are_spent_locally_then_an_empty_bucket_refuses_without_asking(
    autojump_clock: object,
) -> None:
    bucket = SlowBucket(tokens=12)
    bucket.open.set()
    rate = make(bucket, rate=50.0, burst=200)  # leases of 10 (a fifth of a second's worth)
    await rate.lease_then(7, 1, lambda: None, lambda refusal: None)
    assert bucket.calls == 1 and rate.holds(7, 10)
    assert [rate.retry_after(7) for _ in range(10)] == [0.0] * 10
    await rate.lease_then(7, 5, lambda: None, lambda refusal: None)
    assert [rate.retry_after(7) for _ in range(2)] == [0.0] * 2  # the last 2 of the bucket
    await rate.lease_then(7, 1, lambda: None, lambda refusal: None)  # the bucket is empty
    assert bucket.calls == 3
    assert rate.holds(7, 1)  # decided locally: refused until the bucket refills
    assert rate.retry_after(7) > 0
    await rate.lease_then(7, 1, lambda: None, lambda refusal: None)
    assert bucket.calls == 3  # not asked again while it cannot have refilled


async def test_a_database_outage_answers_the_waiting_sends() -> None:
    bucket = SlowBucket(tokens=10)
    bucket.fail = True
    bucket.open.set()
    rate = make(bucket)
    refusals: list[RequestRefused] = []
    await rate.lease_then(3, 2, lambda: None, refusals.append)
    assert [r.code for r in refusals] == ["unavailable"]
    assert not rate._pending
