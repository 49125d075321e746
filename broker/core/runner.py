"""Runs store calls off the trio thread: one writer at a time, a few readers in parallel. (The
group commit's batches have a thread of their own: commits.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

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
