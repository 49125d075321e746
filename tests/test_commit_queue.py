"""The group commit's queue and its committing thread (broker/core/commits.py), with a writer
the test controls: batches are whole groups in order, the thread takes what waits the moment
a commit returns, a failed commit refuses its groups only, and stopping answers the batch in
flight and refuses the rest."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import trio

from broker.core.commits import CommitQueue
from broker.protocol import ErrorCode, RequestRefused
from broker.store import SendIntent, SendOutcome, StoreUnavailable

WAIT = 10


class GatedWriter:
    """A SendCommitter whose commits block until the test opens the gate, one per batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.fail_next: Exception | None = None
        self.next_id = 0

    def start(self) -> None:
        pass

    def commit(self, intents: Sequence[SendIntent], quota: int) -> list[SendOutcome]:
        self.batches.append([i.body for i in intents])
        self.started.release()
        assert self.gate.acquire(timeout=WAIT)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        outcomes = []
        for _ in intents:
            self.next_id += 1
            outcomes.append(SendOutcome(message_id=self.next_id))
        return outcomes

    def outcomes(
        self, intents: Sequence[SendIntent], committed: list[SendOutcome]
    ) -> list[SendOutcome]:
        return committed

    def close(self) -> None:
        pass


def intent(body: str) -> SendIntent:
    return SendIntent(1, "al", "text", ("bob",), None, body, None)


async def wait_started(writer: GatedWriter) -> None:
    """Until the writer is inside a commit (it runs on the committing thread)."""
    assert await trio.to_thread.run_sync(writer.started.acquire, True, WAIT)


async def test_groups_are_committed_whole_in_order_and_answered_once() -> None:
    writer = GatedWriter()
    delivered: list[Sequence[SendOutcome]] = []
    queue: CommitQueue[list[SendOutcome]] = CommitQueue(writer, delivered.append, quota=100)
    answers: dict[str, Sequence[SendOutcome] | RequestRefused] = {}

    def answer(name: str):  # type: ignore[no-untyped-def]
        return lambda result: answers.__setitem__(name, result)

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            queue.enqueue([intent("a1")], answer("a"))
            await wait_started(writer)  # batch 1 = [a1] is committing
            # While it commits, two groups arrive: they go together, whole, in order.
            queue.enqueue([intent("b1"), intent("b2")], answer("b"))
            queue.enqueue([intent("c1")], answer("c"))
            assert queue.waiting == 3
            writer.gate.release()  # batch 1 commits; the thread takes b and c at once
            await wait_started(writer)
            assert writer.batches == [["a1"], ["b1", "b2", "c1"]]
            writer.fail_next = StoreUnavailable("the disk went away")
            writer.gate.release()  # batch 2 fails: its groups are refused, nothing else
            while "c" not in answers:
                await trio.sleep(0.01)
            queue.enqueue([intent("d1")], answer("d"))
            await wait_started(writer)
            writer.gate.release()
            while "d" not in answers:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    a, b, c, d = answers["a"], answers["b"], answers["c"], answers["d"]
    assert [o.message_id for o in a] == [1]  # type: ignore[union-attr]
    for refused in (b, c):
        assert isinstance(refused, RequestRefused)
        assert refused.code == ErrorCode.UNAVAILABLE
    assert [o.message_id for o in d] == [2]  # type: ignore[union-attr]
    assert [[o.message_id for o in batch] for batch in delivered] == [[1], [2]]
    assert queue.batches == 2 and queue.committed == 2


async def test_stopping_answers_the_batch_in_flight_and_refuses_what_waits() -> None:
    writer = GatedWriter()
    queue: CommitQueue[list[SendOutcome]] = CommitQueue(writer, lambda outcomes: None, quota=100)
    answers: dict[str, Sequence[SendOutcome] | RequestRefused] = {}
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            queue.enqueue([intent("x")], lambda r: answers.__setitem__("x", r))
            await wait_started(writer)
            queue.enqueue([intent("y")], lambda r: answers.__setitem__("y", r))
            # The broker stops while x commits; x's commit returns a little later (the
            # nursery, cancelled, can no longer await: a timer thread opens the gate).
            threading.Timer(0.1, writer.gate.release).start()
            nursery.cancel_scope.cancel()
    x, y = answers["x"], answers["y"]
    assert [o.message_id for o in x] == [1]  # type: ignore[union-attr]  # committed: said so
    assert isinstance(y, RequestRefused) and y.code == ErrorCode.UNAVAILABLE
    assert writer.batches == [["x"]]  # y never reached the writer
