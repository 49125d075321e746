"""The group commit's writer interface, and the writer that commits in a worker thread.

A `SendCommitter` stores one batch of sends in one transaction. It is split in two so the
broker can overlap them: `commit` blocks (a worker thread runs it) and returns what the commit
alone knows; `outcomes` turns that into one SendOutcome per intent on the broker's own thread,
while the next batch commits. `ThreadCommitter` (here) commits with this process's MailStore;
`WriterProcess` (writer.py) commits in a child process. The core picks one per store and config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from .mailstore import MailStore
from .records import SendIntent, SendOutcome

CommittedT = TypeVar("CommittedT")


class SendCommitter(Protocol[CommittedT]):
    """Commits batches of sends; every method but `outcomes` blocks (call it off the loop)."""

    def start(self) -> None:
        """Get ready to commit (a child process starts here); an error if it cannot."""

    def commit(self, intents: Sequence[SendIntent], quota: int) -> CommittedT:
        """Store the batch in one transaction; what only the commit knows, once committed."""

    def outcomes(self, intents: Sequence[SendIntent], committed: CommittedT) -> list[SendOutcome]:
        """The batch's outcomes, one per intent in order (pure Python, does not block)."""

    def close(self) -> None:
        """Stop, once the batch in flight (if any) has been answered."""


class ThreadCommitter:
    """`MailStore.store_sends` in the calling worker thread: the outcomes come straight back."""

    def __init__(self, store: MailStore) -> None:
        self.store = store

    def start(self) -> None:
        pass

    def commit(self, intents: Sequence[SendIntent], quota: int) -> list[SendOutcome]:
        return self.store.store_sends(intents, quota)

    def outcomes(
        self, intents: Sequence[SendIntent], committed: list[SendOutcome]
    ) -> list[SendOutcome]:
        return committed

    def close(self) -> None:
        pass
