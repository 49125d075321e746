"""Group commit: sends that arrive while a commit is in flight are committed together next.

Each sender waits for its own outcome, which exists only once the batch holding its send has
committed, so an acknowledgement always means "on disk". Throughput grows with concurrency
instead of being capped by one fsync per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from broker.protocol import ErrorCode, RequestRefused
from broker.store import SendIntent, SendOutcome

from .runner import StoreRunner

MAX_BATCH = 2000

log = logging.getLogger("mailnet.commits")


@dataclass(eq=False)
class _Waiting:
    intent: SendIntent
    done: trio.Event = field(default_factory=trio.Event)
    outcome: SendOutcome | None = None
    error: RequestRefused | None = None


class CommitQueue:
    def __init__(
        self,
        runner: StoreRunner,
        on_committed: Callable[[Sequence[SendOutcome]], None],
        *,
        quota: int,
    ) -> None:
        self.runner = runner
        self.on_committed = on_committed
        self.quota = quota
        self._waiting: list[_Waiting] = []
        self._has_work = trio.Event()
        self.batches = 0
        self.committed = 0

    async def submit(self, intent: SendIntent) -> SendOutcome:
        waiting = _Waiting(intent)
        self._waiting.append(waiting)
        self._has_work.set()
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        assert waiting.outcome is not None
        return waiting.outcome

    async def run(self) -> None:
        """The committer task: one batch at a time, for as long as the broker runs."""
        while True:
            await self._has_work.wait()
            self._has_work = trio.Event()
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            if self._waiting:
                self._has_work.set()
            if not batch:
                continue
            try:
                outcomes = await self.runner.write(
                    self.runner.store.store_sends, [w.intent for w in batch], self.quota
                )
            except Exception as exc:
                if not isinstance(exc, RequestRefused):
                    log.exception("storing a batch of %d sends failed", len(batch))
                    exc = RequestRefused(ErrorCode.INTERNAL, "the broker could not store this")
                for waiting in batch:
                    waiting.error = exc
                    waiting.done.set()
                continue
            self.batches += 1
            self.committed += len(batch)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                waiting.outcome = outcome
                waiting.done.set()
            self.on_committed(outcomes)
