"""SQLite WAL checkpoints off the commit path.

By default SQLite checkpoints inside the commit that takes the write-ahead log past 1,000
pages: that commit copies ~4 MB into the database file and fsyncs it before it returns, so
every few hundred group commits one takes 10-35 ms instead of 1-2 ms, and every send in it
(and behind it) waits: the tail of send latency. The group commit's writer turns automatic
checkpoints off on its connection and runs a `WalCheckpointer` beside it: a thread that runs
PASSIVE checkpoints on a connection of its own (a checkpoint never blocks a writer, and
PASSIVE never waits for readers). Durability is unchanged: a commit is durable once its WAL
frames are fsynced (synchronous=FULL); checkpoints only move committed pages into the main file.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine, event

log = logging.getLogger("mailnet.store.checkpoint")

INTERVAL = 0.2  # seconds between checkpoints: ~1,000-2,000 WAL frames at full speed


def no_automatic_checkpoints(engine: Engine) -> None:
    """Connections of `engine` made from now on leave checkpoints to a WalCheckpointer."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()


class WalCheckpointer:
    """A thread running PASSIVE checkpoints every INTERVAL seconds until stopped."""

    def __init__(self, engine: Engine, interval: float = INTERVAL) -> None:
        self.engine = engine
        self.interval = interval
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="mailnet-wal-checkpoints", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        # The DBAPI connection SQLAlchemy's pool hands out, used outside any transaction
        # (a checkpoint cannot run inside one).
        raw = self.engine.raw_connection()
        sqlite = raw.driver_connection
        assert sqlite is not None
        try:
            while not self._stop.wait(self.interval):
                try:
                    sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except Exception as exc:  # busy, I/O: the next one tries again
                    log.warning("WAL checkpoint failed: %s", exc)
            # A last one on the way out leaves a short log for the next start.
            try:
                sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception as exc:
                log.warning("WAL checkpoint failed: %s", exc)
        finally:
            raw.close()
