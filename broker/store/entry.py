"""The store's entry point for code outside the broker's core: open a database by URL.

`mailnet db upgrade` / `mailnet db current` (cli/serve.py), `mailnet admin backup`
(cli/backup.py) and serve's start-up (broker/server.py) reach the database only through these
functions, so the CLI never handles engines, alembic or
SQLAlchemy itself. A URL that cannot be used raises ValueError; a database that cannot be
reached raises StoreUnavailable, as every store call does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import migrate
from .backup import BackupError, BackupReport, backup_sqlite
from .database import Engines, make_engines
from .guard import StoreUnavailable
from .mailstore import MailStore

__all__ = [
    "BackupError",
    "BackupReport",
    "MailStore",
    "SchemaRevisions",
    "StoreUnavailable",
    "backup_sqlite",
    "open_store",
    "schema_revisions",
    "upgrade_schema",
]


@dataclass(frozen=True)
class SchemaRevisions:
    """A database's schema revision (None: an empty database) and the newest one there is."""

    current: str | None
    head: str | None

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def open_store(url: str) -> MailStore:
    """The store at `url`, its schema migrated to the newest revision (created if empty)."""
    store = MailStore.open(url)
    try:
        migrate.upgrade(store.engines.write)
    except BaseException:
        store.close()
        raise
    return store


def schema_revisions(url: str) -> SchemaRevisions:
    """The schema revision of the database at `url`, and the newest one."""
    with _engines(url) as engines:
        return SchemaRevisions(
            migrate.current_revision(engines.write), migrate.head_revision(engines.write)
        )


def upgrade_schema(url: str) -> tuple[str | None, str | None]:
    """Migrate the database at `url` to the newest revision: (revision before, after)."""
    with _engines(url) as engines:
        before = migrate.current_revision(engines.write)
        migrate.upgrade(engines.write)
        return before, migrate.current_revision(engines.write)


@contextmanager
def _engines(url: str) -> Iterator[Engines]:
    engines = make_engines(url)
    try:
        yield engines
    finally:
        engines.dispose()
