"""full-text search over subjects and bodies

Revision ID: 0004
Revises: 0003

SQLite: a contentless FTS5 index (the text stays only in `messages`) kept by triggers, so a
message is indexed in the transaction that stores it. PostgreSQL: a GIN index over the
message's tsvector (the 'simple' configuration: no stemming, any language). Neither is in the
models (SQLAlchemy does not model them); migrations/env.py keeps alembic's drift check away from
them (SEARCH_OBJECTS).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Who may find a message, as index tokens: its sender and the recipients as addressed, or
# EVERYONE for an announcement. A search ANDs the searching user's token (or EVERYONE) with its
# words, so it reads only that user's part of the index however common a word is; the mailbox
# is still checked for each result. User names keep one token each ('.', '_', '-' -> 'q':
# unicode61 would split them); a collision only widens the candidates the check then filters.
# broker/store/search.py must make the same tokens.
EVERYONE = "0everyone0"


def _people(row: str) -> str:
    names = (
        f"(SELECT username FROM users WHERE id = {row}.sender_id) || ' ' || "
        f"CASE WHEN {row}.kind = 'announcement' THEN '{EVERYONE}' "
        f"ELSE replace({row}.recipients, ',', ' ') END"
    )
    return f"replace(replace(replace({names}, '.', 'q'), '_', 'q'), '-', 'q')"


# Contentless: the text stays only in `messages`. The tokenizer folds case and diacritics
# ("Café" matches "cafe"); bm25 reads only the index.
SQLITE_UPGRADE = [
    """CREATE VIRTUAL TABLE message_search USING fts5(
        subject, body, people, content='', tokenize='unicode61 remove_diacritics 2')""",
    f"""CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN
        INSERT INTO message_search(rowid, subject, body, people)
        VALUES (new.id, new.subject, new.body, {_people("new")});
    END""",
    f"""CREATE TRIGGER message_search_delete AFTER DELETE ON messages BEGIN
        INSERT INTO message_search(message_search, rowid, subject, body, people)
        VALUES ('delete', old.id, old.subject, old.body, {_people("old")});
    END""",
    f"""CREATE TRIGGER message_search_update AFTER UPDATE OF subject, body ON messages BEGIN
        INSERT INTO message_search(message_search, rowid, subject, body, people)
        VALUES ('delete', old.id, old.subject, old.body, {_people("old")});
        INSERT INTO message_search(rowid, subject, body, people)
        VALUES (new.id, new.subject, new.body, {_people("new")});
    END""",
    f"""INSERT INTO message_search(rowid, subject, body, people)
        SELECT messages.id, messages.subject, messages.body, {_people("messages")}
        FROM messages""",
]
SQLITE_DOWNGRADE = [
    "DROP TRIGGER message_search_update",
    "DROP TRIGGER message_search_delete",
    "DROP TRIGGER message_search_insert",
    "DROP TABLE message_search",
]
# Must stay the expression broker/store/search.py queries, or the index is not used.
POSTGRESQL_UPGRADE = [
    """CREATE INDEX ix_messages_search ON messages USING gin (
        to_tsvector('simple'::regconfig, coalesce(subject, '') || ' ' || body))""",
]
POSTGRESQL_DOWNGRADE = ["DROP INDEX ix_messages_search"]


def _run(statements: dict[str, list[str]]) -> None:
    dialect = op.get_bind().dialect.name
    for statement in statements.get(dialect, []):
        op.execute(statement)


def upgrade() -> None:
    _run({"sqlite": SQLITE_UPGRADE, "postgresql": POSTGRESQL_UPGRADE})


def downgrade() -> None:
    _run({"sqlite": SQLITE_DOWNGRADE, "postgresql": POSTGRESQL_DOWNGRADE})
