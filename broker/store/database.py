"""Engines for the mailnet database: SQLite tuned for durability, or any SQLAlchemy URL.

SQLite gets WAL with synchronous=FULL (an acknowledged commit is on disk) and every write
transaction starts with BEGIN IMMEDIATE, so writers never deadlock upgrading a read lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError


@dataclass(frozen=True)
class Engines:
    """One engine for the single writer and one for readers (the same one outside SQLite)."""

    write: Engine
    read: Engine
    is_sqlite: bool

    def dispose(self) -> None:
        self.write.dispose()
        if self.read is not self.write:
            self.read.dispose()


def sqlite_url_for(path: Path) -> str:
    return f"sqlite:///{path}"


def _tune_sqlite(engine: Engine, *, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql(begin)


def make_engines(url: str) -> Engines:
    """Engines for a SQLAlchemy URL; ValueError (with the reason) for one that cannot be used."""
    try:
        return _make_engines(url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ValueError(f"not a usable database URL: {exc}") from None


def _make_engines(url: str) -> Engines:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ValueError("mailnet needs a SQLite file, not an in-memory database")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        write = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)
        _tune_sqlite(write, begin="BEGIN IMMEDIATE")
        read = create_engine(url, pool_size=8, max_overflow=0)
        _tune_sqlite(read, begin="BEGIN")
        return Engines(write=write, read=read, is_sqlite=True)
    engine = create_engine(url, pool_size=10, max_overflow=5, pool_pre_ping=True)
    return Engines(write=engine, read=engine, is_sqlite=False)


def named_connections(url: str, name: str) -> str:
    """The URL with its PostgreSQL connections named (application_name, shown in
    pg_stat_activity), unless it names them itself; other URLs unchanged."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # make_engines says what is wrong with it
    if parsed.get_backend_name() != "postgresql" or "application_name" in parsed.query:
        return url
    named = parsed.update_query_dict({"application_name": name[:63]})
    return named.render_as_string(hide_password=False)
