"""Runs store calls off the trio thread: one writer at a time, a few readers in parallel, and
the group committer's batches (start_write), which it keeps one at a time itself."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar

import outcome
import trio

from broker.protocol import ErrorCode, RequestRefused
from broker.store import MailStore, StoreUnavailable, call_guarded

T = TypeVar("T")


class StoreRunner:
    def __init__(self, store: MailStore, *, readers: int = 4) -> None:
        self.store = store
        self._writer = trio.CapacityLimiter(1)
        self._readers = trio.CapacityLimiter(readers)

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        return await self._run(fn, args, self._writer)

    def start_write(self, fn: Callable[..., T], *args: object) -> PendingWrite[T]:
        """Start a write in a worker thread now, without yielding first; wait on the result.

        The group committer hands its next batch over at once, instead of after every task
        its last batch woke (hundreds of answers and pushes) has had its turn, and finishes
        that last batch while the next one commits. It keeps them one at a time itself.
        """
        pending: PendingWrite[T] = PendingWrite()
        token = trio.lowlevel.current_trio_token()
        trio.lowlevel.start_thread_soon(
            partial(call_guarded, fn, *args),
            lambda result: token.run_sync_soon(pending.resolve, result),
        )
        return pending

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        return await self._run(fn, args, self._readers)

    @staticmethod
    async def _run(
        fn: Callable[..., T], args: tuple[object, ...], limiter: trio.CapacityLimiter
    ) -> T:
        try:
            # Never abandoned: a commit that started finishes even if its caller is cancelled.
            return await trio.to_thread.run_sync(call_guarded, fn, *args, limiter=limiter)
        except StoreUnavailable as exc:
            raise RequestRefused(
                ErrorCode.UNAVAILABLE, "the message store is unavailable; try again shortly"
            ) from exc


class PendingWrite(Generic[T]):
    """A write started by StoreRunner.start_write."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self._result: outcome.Outcome[T] | None = None

    def resolve(self, result: outcome.Outcome[T]) -> None:
        self._result = result
        self.done.set()

    async def wait(self) -> T:
        """The write's result, once it is done; never abandoned: if the caller is cancelled,
        it still waits for a commit that started to end (as StoreRunner.write does)."""
        with trio.CancelScope(shield=True):
            await self.done.wait()
        assert self._result is not None
        try:
            return self._result.unwrap()
        except StoreUnavailable as exc:
            raise RequestRefused(
                ErrorCode.UNAVAILABLE, "the message store is unavailable; try again shortly"
            ) from exc
