"""broker.store.entry: the one way the CLI (and serve's start-up) reaches the database."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from cli_helpers import cli_env, run_cli

from broker.store.entry import StoreUnavailable, open_store, schema_revisions, upgrade_schema

UNREACHABLE = "postgresql+psycopg://mailnet:secret@127.0.0.1:1/mailnet"  # nothing on port 1


def test_open_store_migrates_an_empty_database_to_the_newest_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    empty = schema_revisions(url)
    assert empty.current is None and empty.head and not empty.up_to_date
    store = open_store(url)
    try:
        assert store.create_user("alice", "hash").username == "alice"
    finally:
        store.close()
    assert schema_revisions(url).up_to_date


def test_upgrade_schema_says_what_it_changed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    head = schema_revisions(url).head
    assert upgrade_schema(url) == (None, head)
    assert upgrade_schema(url) == (head, head)
    with closing(sqlite3.connect(tmp_path / "m.db")) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]


def test_a_url_that_cannot_be_used_or_reached_is_a_clear_error() -> None:
    for call in (open_store, schema_revisions, upgrade_schema):
        with pytest.raises(ValueError, match="database URL"):
            call("nonsense")
        with pytest.raises(StoreUnavailable):
            call(UNREACHABLE)


async def test_db_current_with_a_url_it_cannot_use_is_exit_2_with_one_line() -> None:
    result = await run_cli("db", "current", "--db", "nonsense", env=cli_env(None, None))
    assert result.returncode == 2, result
    assert result.stderr.startswith("mailnet: error: cannot use database nonsense: ")
    assert result.stderr.count("\n") == 1
