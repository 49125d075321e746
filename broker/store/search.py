"""The search language's conditions on a history query, and full-text ranking.

Words and phrases go to the full-text index made by migration 0004 (FTS5 with bm25 on SQLite,
a GIN tsvector index with ts_rank_cd on PostgreSQL); the operators become plain conditions. The
index is kept by the database in the transaction that stores each message.
"""

from __future__ import annotations

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    false,
    func,
    literal,
    literal_column,
    or_,
    true,
)
from sqlalchemy.sql import column, table
from sqlalchemy.sql.expression import FromClause

from broker.protocol.search import SearchQuery

from .models import Message, User

messages = Message.__table__
users = User.__table__

# The expression PostgreSQL's GIN index is built on (migration 0004): a query must repeat it
# verbatim, with no bound parameters, for the planner to use the index.
PG_DOCUMENT: ColumnElement[object] = literal_column(
    "to_tsvector('simple'::regconfig, coalesce(messages.subject, '') || ' ' || messages.body)"
)
FTS5_INDEX = table("message_search", column("rowid"))
FTS5_NAME: ColumnElement[object] = literal_column("message_search")
# bm25 weights: a word in the subject counts twice as much as one in the body; `people` none.
SUBJECT_WEIGHT, BODY_WEIGHT, PEOPLE_WEIGHT = 2.0, 1.0, 0.0


EVERYONE_TOKEN = "0everyone0"  # migration 0004: the people token of an announcement


def people_token(username: str) -> str:
    """A user name as one token of the index's `people` column (migration 0004 makes the same)."""
    return username.replace(".", "q").replace("_", "q").replace("-", "q")


def fts5_expression(query: SearchQuery, username: str) -> str:
    """The FTS5 MATCH string: the user's part of the index, AND every word and phrase, each
    quoted (so no text of a user is ever an FTS5 operator), in the subject or body."""
    mine = f'people : ("{people_token(username)}" OR "{EVERYONE_TOKEN}")'
    terms = [f'"{word}"' for word in query.words]
    terms += ['"' + " ".join(phrase) + '"' for phrase in query.phrases]
    return " AND ".join([mine, *[f"{{subject body}} : {term}" for term in terms]])


def _pg_tsquery(query: SearchQuery) -> ColumnElement[object]:
    parts = [func.plainto_tsquery(literal_column("'simple'::regconfig"), w) for w in query.words]
    parts += [
        func.phraseto_tsquery(literal_column("'simple'::regconfig"), " ".join(phrase))
        for phrase in query.phrases
    ]
    combined: ColumnElement[object] = parts[0]
    for part in parts[1:]:
        combined = combined.op("&&")(part)
    return combined


def _named(names: tuple[str, ...], recipients: ColumnElement[str]) -> ColumnElement[bool]:
    """Any of these names among the comma-separated recipients as addressed."""
    padded = literal(",") + recipients + literal(",")
    return or_(*[padded.contains(f",{name},", autoescape=True) for name in names])


def apply_search(
    stmt: Select[tuple[object, ...]],
    query: SearchQuery,
    *,
    user_id: int,
    username: str,
    mine: FromClause,
    sender: FromClause,
    dialect: str,
) -> Select[tuple[object, ...]]:
    """The history statement narrowed by the query; with words or phrases, ordered by rank."""
    received = mine.c.id.is_not(None)
    sent = messages.c.sender_id == user_id
    # A received rick-roll never matches its sender's name: that would reveal who sent it.
    sender_visible = or_(messages.c.kind != "rickroll", sent)
    if query.senders:
        stmt = stmt.where(sender.c.username.in_(query.senders), sender_visible)
    if query.recipients:
        stmt = stmt.where(_named(query.recipients, messages.c.recipients))
    if query.correspondents:
        stmt = stmt.where(
            or_(
                and_(received, sender.c.username.in_(query.correspondents), sender_visible),
                and_(sent, _named(query.correspondents, messages.c.recipients)),
            )
        )
    if query.kinds:
        stmt = stmt.where(messages.c.kind.in_(query.kinds))
    if query.unread is True:
        stmt = stmt.where(received, mine.c.read_at.is_(None))
    elif query.unread is False:
        stmt = stmt.where(received, mine.c.read_at.is_not(None))
    if query.before is not None:
        stmt = stmt.where(messages.c.created_at < query.before)
    if query.after is not None:
        stmt = stmt.where(messages.c.created_at >= query.after)
    if not query.has_text:
        return stmt
    if dialect == "sqlite":
        # The index drives the query (its MATCH is the cheapest way in) and ranks the rows.
        stmt = stmt.join(FTS5_INDEX, FTS5_INDEX.c.rowid == messages.c.id).where(
            FTS5_NAME.op("MATCH")(fts5_expression(query, username))
        )
        # bm25 is lower for better matches; ties (and equal texts) newest first.
        rank = func.bm25(FTS5_NAME, SUBJECT_WEIGHT, BODY_WEIGHT, PEOPLE_WEIGHT)
        return stmt.order_by(None).order_by(rank, messages.c.id.desc())
    if dialect == "postgresql":
        tsquery = _pg_tsquery(query)
        stmt = stmt.where(PG_DOCUMENT.op("@@")(tsquery))
        rank = func.ts_rank_cd(PG_DOCUMENT, tsquery)
        return stmt.order_by(None).order_by(rank.desc(), messages.c.id.desc())
    # Another database: every word and phrase as a substring (no index, no ranking).
    texts = [" ".join(phrase) for phrase in query.phrases] + list(query.words)
    document = func.lower(func.coalesce(messages.c.subject, "") + " " + messages.c.body)
    condition = and_(true(), *[document.contains(t, autoescape=True) for t in texts])
    return stmt.where(condition if texts else false())
