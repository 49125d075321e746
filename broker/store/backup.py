"""A consistent copy of a live SQLite database, through SQLite's online backup API.

The copy is taken in one step, inside one read transaction: in WAL mode that is a snapshot of
every commit made before it began, taken while the broker keeps committing (writers are not
blocked). The file appears under its final name only once it is complete, checked and on disk.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from .database import make_engines, sqlite_url_for
from .mailstore import call_guarded


class BackupError(Exception):
    """The backup cannot be taken: the reason is for the person who asked."""


@dataclass(frozen=True)
class BackupReport:
    path: Path
    size_bytes: int
    messages: int
    revision: str | None


def backup_sqlite(url: str, destination: Path) -> BackupReport:
    """Copy the SQLite database at `url` to `destination` (which must not exist)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise BackupError(
            "`mailnet admin backup` copies a SQLite database; back up PostgreSQL with pg_dump "
            "(docs/operations.md)"
        )
    source = Path(parsed.database or "")
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if destination.exists():
        raise BackupError(f"{destination} exists: choose a new file")
    if destination.resolve() == source.resolve():
        raise BackupError("the backup must go to another file than the database")
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent
    )
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        _copy(url, temporary)
        report = _check(temporary, destination)
        os.replace(temporary, destination)
        _fsync_directory(destination.parent)
    finally:
        temporary.unlink(missing_ok=True)
    return report


def _copy(url: str, temporary: Path) -> None:
    engines = make_engines(url)
    target = create_engine(sqlite_url_for(temporary), poolclass=NullPool)
    try:
        source = call_guarded(engines.read.raw_connection)  # type: ignore[no-untyped-call]
        copy = target.raw_connection()
        try:
            source_db, copy_db = source.driver_connection, copy.driver_connection
            assert isinstance(source_db, sqlite3.Connection)
            assert isinstance(copy_db, sqlite3.Connection)
            # pages=-1 (the default): the whole database in one step, one snapshot.
            source_db.backup(copy_db)
        finally:
            copy.close()
            source.close()
    finally:
        target.dispose()
        engines.dispose()


def _check(copy: Path, destination: Path) -> BackupReport:
    """Check the copy (integrity, schema revision, messages) and put it on disk."""
    engine = create_engine(sqlite_url_for(copy), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            verdict = conn.execute(text("PRAGMA integrity_check")).scalar()
            if verdict != "ok":
                raise BackupError(f"the copy failed SQLite's integrity check: {verdict}")
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            messages = conn.execute(text("SELECT count(*) FROM messages")).scalar() or 0
    finally:
        engine.dispose()
    with copy.open("rb+") as stream:
        os.fsync(stream.fileno())
    return BackupReport(destination, copy.stat().st_size, int(messages), revision)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
