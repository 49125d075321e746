"""WAL checkpoints off the commit path (broker/store/checkpoint.py): with automatic
checkpoints off, commits leave their pages in the write-ahead log; the checkpointer thread
moves them into the database file, beside the writer, and every committed row stays readable."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import text

from broker.store.checkpoint import WalCheckpointer, no_automatic_checkpoints
from broker.store.database import make_engines

ROWS = 12  # transactions of 512 KiB each: 6 MiB, past SQLite's automatic threshold (~4 MiB)


def test_commits_leave_checkpoints_to_the_checkpointer_thread(tmp_path: Path) -> None:
    db = tmp_path / "wal.db"
    engines = make_engines(f"sqlite:///{db}")
    no_automatic_checkpoints(engines.write)
    try:
        with engines.write.begin() as conn:
            conn.execute(text("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)"))
        for n in range(ROWS):
            with engines.write.begin() as conn:
                conn.execute(
                    text("INSERT INTO blobs (id, data) VALUES (:id, :data)"),
                    {"id": n, "data": os.urandom(512 * 1024)},
                )
        # Every page is still only in the log: the commits did not checkpoint.
        assert db.stat().st_size < 1024 * 1024
        assert Path(f"{db}-wal").stat().st_size > ROWS * 512 * 1024

        checkpointer = WalCheckpointer(engines.read, interval=0.02)
        checkpointer.start()
        try:
            deadline = time.monotonic() + 30
            while checkpointer.checkpoints < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            checkpointer.stop()
        assert checkpointer.checkpoints >= 1
        assert db.stat().st_size > ROWS * 512 * 1024  # the pages are in the database file
        with engines.read.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM blobs")).scalar() == ROWS
    finally:
        engines.dispose()
