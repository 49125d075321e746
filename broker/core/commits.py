"""Group commit: sends that arrive while a commit is in flight are committed together next.

Each sender hears of its outcome only once the batch holding its send has committed, so an
acknowledgement always means "on disk". Throughput grows with concurrency
instead of being capped by one fsync per message.

A caller may hand in several sends at once (a connection's window, read in one go): they are
one group, always in one batch, and the caller hears of them through one callback, which spares
a task and an event per send.

The batches are written by a SendCommitter (broker/store/committer.py): in a worker thread, or
in a child process on SQLite; `choose_committer` picks one when the broker is assembled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from broker.config import SEND_WRITERS, Config
from broker.protocol import ErrorCode, RequestRefused
from broker.store import (
    MailStore,
    SendCommitter,
    SendIntent,
    SendOutcome,
    ThreadCommitter,
    WriterProcess,
)

from .runner import PendingWrite, StoreRunner

MAX_BATCH = 2000

log = logging.getLogger("mailnet.commits")

CommittedT = TypeVar("CommittedT")


def choose_committer(store: MailStore, config: Config) -> SendCommitter[Any]:
    """The writer of the group commit's batches that `config.send_writer` names for `store`.

    "process" (the default) commits SQLite batches in a child process; PostgreSQL, "thread", and
    systems without descriptor passing (not POSIX) commit in a worker thread of the broker.
    """
    if config.send_writer not in SEND_WRITERS:
        raise ValueError(
            f"send_writer must be one of {', '.join(SEND_WRITERS)}, not {config.send_writer!r}"
        )
    # The child gets its socket by descriptor passing: POSIX only (elsewhere, a thread).
    if store.engines.is_sqlite and config.send_writer == "process" and os.name == "posix":
        return WriterProcess(store.engines.write.url.render_as_string(hide_password=False))
    return ThreadCommitter(store)


# Told, once, what became of a group of sends: their outcomes in order, or why none of them
# could be stored. Called from the committer task: it must not block (it may queue bytes and
# wake a task), and what it raises is logged, not propagated.
GroupDone = Callable[[Sequence[SendOutcome] | RequestRefused], None]


@dataclass(eq=False)
class _Group:
    intents: Sequence[SendIntent]
    on_done: GroupDone


@dataclass(eq=False)
class _Batch(Generic[CommittedT]):
    groups: list[_Group]
    intents: list[SendIntent]
    pending: PendingWrite[CommittedT]
    started_at: float = 0.0


class CommitQueue(Generic[CommittedT]):
    def __init__(
        self,
        runner: StoreRunner,
        committer: SendCommitter[CommittedT],
        on_committed: Callable[[Sequence[SendOutcome]], None],
        *,
        quota: int,
    ) -> None:
        self.runner = runner
        self.committer = committer
        self.on_committed = on_committed
        self.quota = quota
        self._waiting: list[_Group] = []
        self._has_work = trio.Event()
        self.batches = 0
        self.committed = 0
        # Told each batch's commit time in seconds (the broker's metrics).
        self.on_commit_time: Callable[[float], None] = lambda seconds: None

    def enqueue(self, intents: Sequence[SendIntent], on_done: GroupDone) -> None:
        """Queue sends for the next batch, as one group; `on_done` hears of them once their
        batch has committed (at once, if there are none). No task waits per group: a
        transport answers from the callback."""
        if not intents:
            _tell(on_done, [])
            return
        self._waiting.append(_Group(intents, on_done))
        self._has_work.set()

    def _next_batch(self) -> list[_Group]:
        """Whole groups, oldest first, up to MAX_BATCH sends (at least one group)."""
        size = 0
        for count, group in enumerate(self._waiting):
            if count and size + len(group.intents) > MAX_BATCH:
                break
            size += len(group.intents)
        else:
            count = len(self._waiting)
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch

    async def run(self) -> None:
        """The committer task: one batch at a time, for as long as the broker runs.

        When a batch has committed, the next one (every send that arrived meanwhile) is
        handed to the writer first, and only then is the last one answered and pushed, so
        the writer commits while this thread does that work.
        """
        committing: _Batch[CommittedT] | None = None
        while True:
            if committing is None:
                if not self._waiting:
                    await self._has_work.wait()
                committing = self._start_next()
                if committing is None:
                    continue
            try:
                result = await committing.pending.wait()
            except Exception as exc:
                done, committing = committing, self._start_next()
                self._fail(done, exc)
                continue
            done, committing = committing, self._start_next()
            self._finish(done, result)

    def _start_next(self) -> _Batch[CommittedT] | None:
        """Hand the sends waiting now to the writer, as one batch (None if there are none)."""
        self._has_work = trio.Event()
        groups = self._next_batch()
        if self._waiting:
            self._has_work.set()
        if not groups:
            return None
        intents = [intent for group in groups for intent in group.intents]
        pending = self.runner.start_write(self.committer.commit, intents, self.quota)
        return _Batch(groups, intents, pending, trio.current_time())

    def _finish(self, batch: _Batch[CommittedT], result: CommittedT) -> None:
        try:
            outcomes = self.committer.outcomes(batch.intents, result)
            if len(outcomes) != len(batch.intents):  # one outcome per intent, in order
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch.intents)} sends")
        except Exception as exc:
            self._fail(batch, exc)
            return
        self.batches += 1
        self.committed += len(batch.intents)
        self.on_commit_time(trio.current_time() - batch.started_at)
        start = 0
        for group in batch.groups:
            end = start + len(group.intents)
            _tell(group.on_done, outcomes[start:end])
            start = end
        self.on_committed(outcomes)

    @property
    def waiting(self) -> int:
        """Sends waiting for the next batch."""
        return sum(len(group.intents) for group in self._waiting)

    def _fail(self, batch: _Batch[CommittedT], exc: Exception) -> None:
        if not isinstance(exc, RequestRefused):
            log.error("storing a batch of %d sends failed", len(batch.intents), exc_info=exc)
            exc = RequestRefused(ErrorCode.INTERNAL, "the broker could not store this")
        for group in batch.groups:
            _tell(group.on_done, exc)


def _tell(on_done: GroupDone, result: Sequence[SendOutcome] | RequestRefused) -> None:
    try:
        on_done(result)
    except Exception:
        log.exception("answering a group of sends failed")
