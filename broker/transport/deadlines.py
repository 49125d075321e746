"""Read deadlines for every connection, kept by one task instead of one timer per read.

A connection must send something before its deadline (the login timeout until it logs in,
then the heartbeat timeout after each frame). Wrapping each read in `trio.move_on_at` gives
trio a new cancel scope and a new entry in its deadline heap for every frame read: at 10,000
heartbeating connections that is most of what a heartbeat costs beyond the socket calls.
Here a connection only writes down its deadline (a float) and whether it is waiting for
data; one task looks every `period` seconds (a quarter of the shortest timeout, at most one
second) and ends the connections that waited past theirs. A session therefore expires between
its deadline and one period later.
"""

from __future__ import annotations

from typing import Protocol

import trio


class Reader(Protocol):
    """A connection whose reads have a deadline."""

    deadline: float  # trio.current_time() by which it must have sent something
    waiting: bool  # parked in a read (not busy with what it read)

    def expire_soon(self) -> None:
        """End the connection for silence (starts the ending in the background)."""


class ReadDeadlines:
    def __init__(self, *timeouts: float) -> None:
        shortest = min((t for t in timeouts if t > 0), default=4.0)
        self.period = min(1.0, shortest / 4)
        self._readers: set[Reader] = set()

    def add(self, reader: Reader) -> None:
        self._readers.add(reader)

    def discard(self, reader: Reader) -> None:
        self._readers.discard(reader)

    def __len__(self) -> int:
        return len(self._readers)

    def expire_due(self, now: float) -> int:
        """End every waiting reader whose deadline has passed; how many."""
        due = [r for r in self._readers if r.waiting and r.deadline <= now]
        for reader in due:
            self._readers.discard(reader)  # once: the ending removes it again, harmlessly
            reader.expire_soon()
        return len(due)

    async def run(self) -> None:
        """Check every period, for as long as the listener runs."""
        while True:
            await trio.sleep(self.period)
            self.expire_due(trio.current_time())
