"""Alembic environment: targets broker.store.models, takes an engine from the caller if given."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from broker.store.database import make_engines
from broker.store.models import Base

config = context.config
target_metadata = Base.metadata

# Full-text search objects made by migration 0004 that SQLAlchemy does not model (an FTS5 table
# and its shadow tables on SQLite, an expression index on PostgreSQL): not drift.
SEARCH_OBJECTS = ("message_search", "ix_messages_search")


def _include_name(name, type_, parent_names):  # type: ignore[no-untyped-def]
    return not (name or "").startswith(SEARCH_OBJECTS)


def _engine():  # type: ignore[no-untyped-def]
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url in alembic.ini or use `mailnet db upgrade --db URL`")
    return make_engines(url).write if url.startswith("sqlite") else create_engine(url)


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            transactional_ddl=True,
            compare_type=True,
            include_name=_include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
        if connection.in_transaction():
            connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported")
run_migrations_online()
