"""Group commit: sends that arrive while a commit is in flight are committed together next.

Each sender hears of its outcome only once the batch holding its send has committed, so an
acknowledgement always means "on disk". Throughput grows with concurrency
instead of being capped by one fsync per message.

A caller may hand in several sends at once (a connection's window, read in one go): they are
one group, always in one batch, and the caller hears of them through one callback, which spares
a task and an event per send.

The batches are written by a SendCommitter (broker/store/committer.py), called from the queue's
own committing thread: in that thread, or in a child process on SQLite; `choose_committer`
picks one when the broker is assembled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import outcome
import trio

from broker.config import SEND_WRITERS, Config
from broker.protocol import ErrorCode, RequestRefused
from broker.store import (
    MailStore,
    SendCommitter,
    SendIntent,
    SendOutcome,
    StoreUnavailable,
    ThreadCommitter,
    WriterProcess,
    call_guarded,
)

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


class CommitQueue(Generic[CommittedT]):
    """The group commit, run by one committing thread that pulls its own batches.

    The loop only queues groups (enqueue) and hears of committed batches (a callback through
    the trio token). The thread takes every group waiting the moment its last commit returns
    and hands them to the writer at once: the writer never waits for the event loop to get
    round to starting its next batch (under load that wait was as long as a commit), and the
    loop answers and pushes the last batch while the writer commits the next.
    """

    def __init__(
        self,
        committer: SendCommitter[CommittedT],
        on_committed: Callable[[Sequence[SendOutcome]], None],
        *,
        quota: int,
    ) -> None:
        self.committer = committer
        self.on_committed = on_committed
        self.quota = quota
        self._cond = threading.Condition()
        self._waiting: list[_Group] = []  # guarded by _cond
        self._stopping = False
        self._thread: threading.Thread | None = None
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
        with self._cond:
            self._waiting.append(_Group(intents, on_done))
            self._cond.notify()

    def _next_batch(self) -> list[_Group]:
        """Whole groups, oldest first, up to MAX_BATCH sends (at least one group). Holds _cond."""
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
        """Run the committing thread for as long as this task runs. When it is cancelled, the
        batch being committed finishes and is answered before it returns; sends still
        waiting are refused (the broker is stopping)."""
        token = trio.lowlevel.current_trio_token()
        with self._cond:
            self._stopping = False
        thread = threading.Thread(
            target=self._commit_forever, args=(token,), name="mailnet-commits", daemon=True
        )
        self._thread = thread
        thread.start()
        try:
            await trio.sleep_forever()
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
                await trio.lowlevel.checkpoint()  # the last batch's answers run first
            with self._cond:
                left, self._waiting = self._waiting, []
            stopping = RequestRefused(ErrorCode.UNAVAILABLE, "the broker is stopping")
            for group in left:
                _tell(group.on_done, stopping)

    def _commit_forever(self, token: trio.lowlevel.TrioToken) -> None:
        """The committing thread: take what is waiting, commit it, hand the result to the
        loop, and at once take what is waiting again."""
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                groups = self._next_batch()
            intents = [intent for group in groups for intent in group.intents]
            started = time.perf_counter()
            result = outcome.capture(call_guarded, self.committer.commit, intents, self.quota)
            took = time.perf_counter() - started
            try:
                token.run_sync_soon(self._committed, groups, intents, result, took)
            except trio.RunFinishedError:  # the loop is gone: nobody is left to answer
                return

    def _committed(
        self,
        groups: list[_Group],
        intents: list[SendIntent],
        result: outcome.Outcome[CommittedT],
        took: float,
    ) -> None:
        """On the loop: answer a committed batch's groups and push its mail. Never raises
        (it runs as a trio callback)."""
        try:
            committed = result.unwrap()
            outcomes = self.committer.outcomes(intents, committed)
            if len(outcomes) != len(intents):  # one outcome per intent, in order
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(intents)} sends")
        except Exception as exc:
            self._fail(groups, intents, exc)
            return
        self.batches += 1
        self.committed += len(intents)
        try:
            self.on_commit_time(took)
        except Exception:
            log.exception("recording a commit time failed")
        start = 0
        for group in groups:
            end = start + len(group.intents)
            _tell(group.on_done, outcomes[start:end])
            start = end
        try:
            self.on_committed(outcomes)
        except Exception:
            log.exception("delivering a committed batch failed")

    @property
    def waiting(self) -> int:
        """Sends waiting for the next batch."""
        with self._cond:
            return sum(len(group.intents) for group in self._waiting)

    def _fail(self, groups: list[_Group], intents: list[SendIntent], exc: Exception) -> None:
        if isinstance(exc, StoreUnavailable):
            exc = RequestRefused(
                ErrorCode.UNAVAILABLE, "the message store is unavailable; try again shortly"
            )
        elif not isinstance(exc, RequestRefused):
            log.error("storing a batch of %d sends failed", len(intents), exc_info=exc)
            exc = RequestRefused(ErrorCode.INTERNAL, "the broker could not store this")
        for group in groups:
            _tell(group.on_done, exc)


def _tell(on_done: GroupDone, result: Sequence[SendOutcome] | RequestRefused) -> None:
    try:
        on_done(result)
    except Exception:
        log.exception("answering a group of sends failed")
