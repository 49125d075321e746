"""Following a PostgreSQL LISTEN channel (broker/store/notify.py) from a worker thread, each
notice handed to trio; started once LISTEN is in force."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

log = logging.getLogger("mailnet.listening")

LISTEN_WAIT = 10.0  # seconds start-up waits for LISTEN before going on without it


class ThreadListener:
    """What a blocking listen loop gets from trio: `call(fn, *args)` runs fn in trio (and stops
    the loop once trio's run has finished), `should_stop`, and `listening`, to set (from trio)
    once LISTEN is in force."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.listening = trio.Event()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            trio.from_thread.run_sync(fn, *args)
        except trio.RunFinishedError:
            self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()


async def follow_in_thread(
    listen: Callable[[ThreadListener], None],
    *,
    what: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `listen` (blocking) in a worker thread until cancelled. Reports itself started once
    LISTEN is in force, so nothing committed after the broker says it is up is missed (or after
    LISTEN_WAIT, with a warning naming `what`, if the database is slow)."""
    listener = ThreadListener()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(trio.to_thread.run_sync, listen, listener, abandon_on_cancel=True)
            )
            with trio.move_on_after(LISTEN_WAIT):
                await listener.listening.wait()
            if not listener.listening.is_set():
                log.warning("not yet listening for %s", what)
            task_status.started()
    finally:
        listener.stop()
