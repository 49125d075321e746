"""All reads and writes of mailnet's data. Synchronous: callers run it off the trio thread.

Every method opens its own short transaction and returns plain records. `store_sends` is the
group commit: a whole batch of sends (messages, mailbox entries and idempotency keys) commits in
one transaction, and only its outcome is what senders are acknowledged with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Row, Table, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from . import presence_rows
from .admin import AdminStoreMixin, redeem_invite
from .database import Engines, make_engines
from .ledger import (
    Delivered,
    DeliveredReceipt,
    LedgerStoreMixin,
    delivered_receipts,
    receipt_counts,
)
from .mailbox_notify import announce_delivered, announce_mailbox_change, listen_for_mailbox_changes
from .models import AuthSession, ClusterCertificate, MailboxEntry, Message, User, utcnow
from .notify import listen_for_commits
from .presence_rows import PresenceRow
from .records import (
    EntryRecord,
    HistoryQuery,
    SendIntent,
    SendOutcome,
    UserRecord,
)
from .retention import RetentionStoreMixin
from .search import apply_search
from .sendbatch import SendBatch

users = cast(Table, User.__table__)
sessions = cast(Table, AuthSession.__table__)
messages = cast(Table, Message.__table__)
mailbox = cast(Table, MailboxEntry.__table__)
certificates = cast(Table, ClusterCertificate.__table__)

T = TypeVar("T")

_FIRST_USER_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtext('mailnet first user ' || current_schema()))"
)


class UsernameTaken(Exception):
    pass


class NotFound(Exception):
    pass


def _user(row: Row[*tuple[Any, ...]]) -> UserRecord:
    return UserRecord(
        id=row.id,
        username=row.username,
        password_hash=row.password_hash,
        role=row.role,
        disabled=row.disabled,
        prank_opt_out=row.prank_opt_out,
        last_seq=row.last_seq,
        acked_seq=row.acked_seq,
    )


def _split_names(joined: str) -> tuple[str, ...]:
    return tuple(joined.split(",")) if joined else ()


_sender = users.alias("sender")

_ENTRY_COLUMNS = (
    mailbox.c.seq,
    mailbox.c.read_at,
    messages.c.id.label("message_id"),
    messages.c.kind,
    messages.c.recipients,
    messages.c.subject,
    messages.c.body,
    messages.c.created_at,
    _sender.c.username.label("sender"),
    messages.c.in_reply_to,
    messages.c.thread_id,
    messages.c.require_ack,
    mailbox.c.archived_at,
    mailbox.c.acked_at,
)


def _entry(row: Row[*tuple[Any, ...]], *, direction: str = "in") -> EntryRecord:
    return EntryRecord(
        seq=row.seq,
        message_id=row.message_id,
        kind=row.kind,
        sender=row.sender,
        recipients=_split_names(row.recipients),
        subject=row.subject,
        body=row.body,
        sent_at=row.created_at,
        read=row.read_at is not None,
        direction=direction,
        in_reply_to=row.in_reply_to,
        thread_id=row.thread_id,
        require_ack=bool(row.require_ack),
        archived=row.archived_at is not None,
        acked=row.acked_at is not None,
    )


# The backlog drain's read, on SQLite: the raw DB-API cursor and plain tuples, because
# SQLAlchemy's row processing (its DATETIME parsing above all) costs more than the query.
_ENTRIES_AFTER_SQL = (
    "SELECT b.seq, b.read_at, m.id, m.kind, m.recipients, m.subject, m.body, m.created_at,"
    " s.username, m.in_reply_to, m.thread_id, m.require_ack FROM mailbox AS b"
    " JOIN messages AS m ON m.id = b.message_id"
    " JOIN users AS s ON s.id = m.sender_id"
    " WHERE b.user_id = ? AND b.seq > ? ORDER BY b.seq LIMIT ?"
)


def _sqlite_utc(stamp: str | datetime) -> datetime:
    """A stored UTC timestamp ('2026-11-30 09:13:58.448888', as SQLAlchemy writes it) as an
    aware datetime, what UTCDateTime reads back."""
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    return datetime.fromisoformat(stamp + "+00:00")


def _raw_entries_after(conn, user_id: int, after_seq: int, limit: int) -> list[EntryRecord]:  # type: ignore[no-untyped-def]
    cursor = conn.connection.driver_connection.cursor()
    try:
        rows = cursor.execute(_ENTRIES_AFTER_SQL, (user_id, after_seq, limit)).fetchall()
    finally:
        cursor.close()
    # The messages of one group commit share a timestamp: parsed once, and one object, so a
    # view renders it once too (see core.views.iso).
    stamps: dict[object, datetime] = {}
    entries = []
    for (
        seq,
        read_at,
        message_id,
        kind,
        recipients,
        subject,
        body,
        created_at,
        sender,
        in_reply_to,
        thread_id,
        require_ack,
    ) in rows:
        sent_at = stamps.get(created_at)
        if sent_at is None:
            sent_at = stamps[created_at] = _sqlite_utc(created_at)
        entries.append(
            EntryRecord(
                seq,
                message_id,
                kind,
                sender,
                tuple(recipients.split(",")) if recipients else (),
                subject,
                body,
                sent_at,
                read_at is not None,
                "in",
                in_reply_to,
                thread_id,
                bool(require_ack),
            )
        )
    return entries


class MailStore(AdminStoreMixin, LedgerStoreMixin, RetentionStoreMixin):
    def __init__(self, engines: Engines) -> None:
        self.engines = engines

    @classmethod
    def open(cls, url: str) -> MailStore:
        return cls(make_engines(url))

    def close(self) -> None:
        self.engines.dispose()

    # -- accounts ---------------------------------------------------------------------------

    def user_by_name(self, username: str) -> UserRecord | None:
        with self.engines.read.connect() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).first()
        return None if row is None else _user(row)

    def user_by_id(self, user_id: int) -> UserRecord | None:
        with self.engines.read.connect() as conn:
            row = conn.execute(select(users).where(users.c.id == user_id)).first()
        return None if row is None else _user(row)

    def create_user(
        self,
        username: str,
        password_hash: str,
        *,
        role: str = "user",
        invite_hash: str | None = None,
    ) -> UserRecord:
        try:
            with self.engines.write.begin() as conn:
                # The first account on a new broker is its admin.
                has_users = conn.execute(select(users.c.id).limit(1)).first() is not None
                if not has_users and conn.dialect.name == "postgresql":
                    # Other nodes may be creating the first account too: one at a time, each
                    # looking again once the one before it has committed.
                    conn.execute(text(_FIRST_USER_LOCK))
                    has_users = conn.execute(select(users.c.id).limit(1)).first() is not None
                row = conn.execute(
                    insert(users)
                    .values(
                        username=username,
                        password_hash=password_hash,
                        role=role if has_users else "admin",
                        disabled=False,
                        prank_opt_out=False,
                        last_seq=0,
                        acked_seq=0,
                        created_at=utcnow(),
                    )
                    .returning(*users.c)
                ).one()
                if invite_hash is not None:  # InviteInvalid rolls the new account back
                    redeem_invite(conn, invite_hash, row.id)
        except IntegrityError:
            raise UsernameTaken(username) from None
        return _user(row)

    def set_prank_opt_out(self, user_id: int, value: bool) -> None:
        with self.engines.write.begin() as conn:
            conn.execute(update(users).where(users.c.id == user_id).values(prank_opt_out=value))

    def count_users(self) -> int:
        with self.engines.read.connect() as conn:
            return conn.execute(select(func.count()).select_from(users)).scalar_one()

    # -- login sessions (bearer tokens, stored hashed) --------------------------------------

    def create_auth_session(self, user_id: int, token_hash: str, client: str) -> None:
        now = utcnow()
        with self.engines.write.begin() as conn:
            conn.execute(
                insert(sessions).values(
                    user_id=user_id,
                    token_hash=token_hash,
                    client=client[:100],
                    created_at=now,
                    last_used_at=now,
                )
            )

    def user_for_token(self, token_hash: str) -> UserRecord | None:
        with self.engines.read.connect() as conn:
            row = conn.execute(
                select(users)
                .join(sessions, sessions.c.user_id == users.c.id)
                .where(sessions.c.token_hash == token_hash)
            ).first()
        return None if row is None else _user(row)

    def delete_auth_session(self, token_hash: str) -> bool:
        with self.engines.write.begin() as conn:
            result = conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash))
        return result.rowcount > 0

    # -- sending: the group commit ------------------------------------------------------------

    def store_sends(self, intents: Sequence[SendIntent], quota: int) -> list[SendOutcome]:
        """Store a batch of sends in one transaction; one outcome per intent, in order.

        `quota` caps the entries a mailbox may hold undelivered (stored after the last one a
        client acknowledged); a send to a full mailbox is refused, never dropped.
        """
        with self.engines.write.begin() as conn:
            return SendBatch(conn, intents, quota).commit()

    def store_sends_compact(
        self, intents: Sequence[SendIntent], quota: int
    ) -> tuple[
        datetime, list[SendOutcome], dict[int, tuple[list[tuple[int, str, int]], int | None]]
    ]:
        """store_sends for the writer process: the outcomes without their Delivery records, and
        per stored intent (by index) its (user id, name, seq) entries and thread, from which
        the broker builds the records itself (writer.py)."""
        with self.engines.write.begin() as conn:
            batch = SendBatch(conn, intents, quota, deliveries=False)
            outcomes = batch.commit()
        return batch.now, outcomes, batch.stored

    # -- reading mailboxes --------------------------------------------------------------------

    def _entries_query(self, user_id: int):  # type: ignore[no-untyped-def]
        return (
            select(*_ENTRY_COLUMNS)
            .select_from(mailbox)
            .join(messages, messages.c.id == mailbox.c.message_id)
            .join(_sender, _sender.c.id == messages.c.sender_id)
            .where(mailbox.c.user_id == user_id)
        )

    def entries_after(self, user_id: int, after_seq: int, limit: int) -> list[EntryRecord]:
        with self.engines.read.connect() as conn:
            if self.engines.is_sqlite:
                return _raw_entries_after(conn, user_id, after_seq, limit)
            query = (
                self._entries_query(user_id)
                .where(mailbox.c.seq > after_seq)
                .order_by(mailbox.c.seq)
                .limit(limit)
            )
            return [_entry(row) for row in conn.execute(query)]

    def inbox(
        self,
        user_id: int,
        *,
        unread_only: bool,
        limit: int,
        before_seq: int | None,
        archived: bool = False,
    ) -> tuple[list[EntryRecord], int]:
        """The newest entries first; archived ones only when `archived` is true."""
        query = self._entries_query(user_id).order_by(mailbox.c.seq.desc()).limit(limit)
        if not archived:
            query = query.where(mailbox.c.archived_at.is_(None))
        if unread_only:
            query = query.where(mailbox.c.read_at.is_(None))
        if before_seq is not None:
            query = query.where(mailbox.c.seq < before_seq)
        with self.engines.read.connect() as conn:
            entries = [_entry(row) for row in conn.execute(query)]
            unread = self._unread_count(conn, user_id)
        return entries, unread

    @staticmethod
    def _unread_count(conn: Connection, user_id: int) -> int:
        return conn.execute(
            select(func.count())
            .select_from(mailbox)
            .where(mailbox.c.user_id == user_id, mailbox.c.read_at.is_(None))
        ).scalar_one()

    def unread_count(self, user_id: int) -> int:
        with self.engines.read.connect() as conn:
            return self._unread_count(conn, user_id)

    def mark_read(self, user_id: int, seqs: Sequence[int]) -> int:
        """Mark the user's own entries read. Any seq not in their mailbox: NotFound, no change."""
        return len(self.set_read_state(user_id, seqs, read=True))

    def set_read_state(
        self, user_id: int, seqs: Sequence[int], *, read: bool, node_id: str = ""
    ) -> list[int]:
        """Mark the user's own entries read (or unread again); the seqs that changed. Any seq
        not in their mailbox: NotFound, no change. On PostgreSQL the change is announced to the
        other nodes at commit (`node_id`: this node, which pushes it to its own sessions)."""
        with self.engines.write.begin() as conn:
            found = conn.execute(
                select(func.count())
                .select_from(mailbox)
                .where(mailbox.c.user_id == user_id, mailbox.c.seq.in_(seqs))
            ).scalar_one()
            if found != len(seqs):
                raise NotFound("no such message in your mailbox")
            state = mailbox.c.read_at.is_(None) if read else mailbox.c.read_at.is_not(None)
            changed = sorted(
                conn.execute(
                    update(mailbox)
                    .where(mailbox.c.user_id == user_id, mailbox.c.seq.in_(seqs), state)
                    .values(read_at=utcnow() if read else None)
                    .returning(mailbox.c.seq)
                ).scalars()
            )
            if changed and node_id and self.shares_commits:
                announce_mailbox_change(
                    conn, node_id, user_id, "read" if read else "unread", changed
                )
        return changed

    def listen_for_mailbox_changes(self, on_change, should_stop, on_listening) -> None:  # type: ignore[no-untyped-def]
        """Blocking (run it in a thread): every node's mailbox changes (PostgreSQL)."""
        listen_for_mailbox_changes(
            self.engines.write, on_change, should_stop, on_listening=on_listening
        )

    def ack_through(self, acks: dict[int, int], node_id: str = "") -> Delivered:
        """Record, per user id, the highest sequence number a client has acknowledged; the
        entries it delivers are the senders' `delivered` receipts (see delivered_receipts)."""
        now = utcnow()
        receipts: list[DeliveredReceipt] = []
        with self.engines.write.begin() as conn:
            # In id order, as group commits lock users rows: nodes never deadlock on them.
            for user_id, seq in sorted(acks.items()):
                # The sender's ledger: the entries this ack moves past are delivered. One
                # indexed range (user_id, seq) per user, read before acked_seq moves.
                newly = and_(
                    mailbox.c.user_id == user_id,
                    mailbox.c.seq <= seq,
                    mailbox.c.seq
                    > select(users.c.acked_seq).where(users.c.id == user_id).scalar_subquery(),
                    mailbox.c.delivered_at.is_(None),
                )
                receipts += delivered_receipts(conn, newly)
                conn.execute(update(mailbox).where(newly).values(delivered_at=now))
                conn.execute(
                    update(users)
                    .where(users.c.id == user_id, users.c.acked_seq < seq, users.c.last_seq >= seq)
                    .values(acked_seq=seq)
                )
            if receipts and node_id and self.shares_commits:
                announce_delivered(conn, node_id, receipts)
        return Delivered(now, receipts)

    def history(self, user_id: int, query: HistoryQuery) -> list[EntryRecord]:
        """Messages the user received or sent, newest first, filtered and paged by message id."""
        mine = mailbox.alias("mine")
        stmt = (
            select(
                mine.c.seq,
                mine.c.read_at,
                messages.c.id.label("message_id"),
                messages.c.kind,
                messages.c.recipients,
                messages.c.subject,
                messages.c.body,
                messages.c.created_at,
                messages.c.sender_id,
                _sender.c.username.label("sender"),
                messages.c.in_reply_to,
                messages.c.thread_id,
                messages.c.require_ack,
                mine.c.archived_at,
                mine.c.acked_at,
            )
            .select_from(messages)
            .join(_sender, _sender.c.id == messages.c.sender_id)
            .outerjoin(mine, and_(mine.c.message_id == messages.c.id, mine.c.user_id == user_id))
            .where(or_(mine.c.id.is_not(None), messages.c.sender_id == user_id))
            .order_by(messages.c.id.desc())
            .limit(query.limit)
        )
        if query.with_user_id is not None:
            other = query.with_user_id
            theirs = mailbox.alias("theirs")
            stmt = stmt.where(
                or_(
                    # A received rick-roll never matches its sender: that would reveal who.
                    and_(
                        messages.c.sender_id == other,
                        mine.c.id.is_not(None),
                        messages.c.kind != "rickroll",
                    ),
                    and_(
                        messages.c.sender_id == user_id,
                        select(theirs.c.id)
                        .where(theirs.c.message_id == messages.c.id, theirs.c.user_id == other)
                        .exists(),
                    ),
                )
            )
        if query.thread_id is not None:
            thread = query.thread_id
            stmt = stmt.where(or_(messages.c.id == thread, messages.c.thread_id == thread))
        if query.kind is not None:
            stmt = stmt.where(messages.c.kind == query.kind)
        if query.search:
            pattern = (
                "%"
                + query.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                + "%"
            )
            stmt = stmt.where(
                or_(
                    messages.c.subject.ilike(pattern, escape="\\"),
                    messages.c.body.ilike(pattern, escape="\\"),
                )
            )
        if query.since is not None:
            stmt = stmt.where(messages.c.created_at >= query.since)
        if query.before_id is not None:
            stmt = stmt.where(messages.c.id < query.before_id)
        if query.query is not None:
            stmt = apply_search(
                stmt,
                query.query,
                user_id=user_id,
                username=query.username,
                mine=mine,
                sender=_sender,
                dialect=self.engines.read.dialect.name,
            )
        if query.offset:
            stmt = stmt.offset(query.offset)
        with self.engines.read.connect() as conn:
            entries = [
                _entry(row, direction="out" if row.sender_id == user_id else "in")
                for row in conn.execute(stmt)
            ]
            # The sender's marks: how far each sent message got, one query for the page.
            sent = [e.message_id for e in entries if e.direction == "out"]
            counts = receipt_counts(conn, sent) if sent else {}
        if not counts:
            return entries
        return [
            e._replace(receipts=counts.get(e.message_id, (0, 0, 0, 0)))
            if e.direction == "out"
            else e
            for e in entries
        ]

    @property
    def shares_commits(self) -> bool:
        """True when other broker nodes may write this database (PostgreSQL)."""
        return self.engines.write.dialect.name == "postgresql"

    def listen_for_commits(
        self,
        on_notice: Callable[[list[tuple[int, int]]], None],
        should_stop: Callable[[], bool],
        on_listening: Callable[[], None],
        on_lost: Callable[[], None] | None = None,
        on_age: Callable[[float], None] | None = None,
    ) -> None:
        """Blocking (run it in a thread): report every node's commits as (user_id, seq)."""
        listen_for_commits(
            self.engines.write,
            on_notice,
            should_stop,
            on_listening=on_listening,
            on_lost=on_lost or (lambda: None),
            on_age=on_age or (lambda seconds: None),
        )

    # Presence across nodes (PostgreSQL only): see presence_rows.
    def write_presence_rows(self, node_id, rows, gone, changes, *, whole_node, lifetime):  # type: ignore[no-untyped-def]
        with self.engines.write.begin() as conn:
            presence_rows.write_rows(
                conn, node_id, rows, gone, changes, whole_node=whole_node, lifetime=lifetime
            )

    def fresh_presence_rows(self, except_node: str) -> list[PresenceRow]:
        with self.engines.read.connect() as conn:
            return presence_rows.fresh_rows(conn, except_node=except_node)

    def listen_for_presence(self, on_changes, should_stop) -> None:  # type: ignore[no-untyped-def]
        presence_rows.listen_for_changes(self.engines.write, on_changes, should_stop)

    def shared_certificate(self, offered: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        """The cluster's TLS (certificate, key) PEMs: `offered` if no node stored a pair yet,
        else the stored one (nodes starting together agree: the first insert wins)."""
        cert_pem, key_pem = offered
        with self.engines.write.begin() as conn:
            conn.execute(
                pg_insert(certificates)
                .values(
                    id=1, cert_pem=cert_pem.decode(), key_pem=key_pem.decode(), created_at=utcnow()
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
            row = conn.execute(
                select(certificates.c.cert_pem, certificates.c.key_pem).where(
                    certificates.c.id == 1
                )
            ).one()
        return row.cert_pem.encode(), row.key_pem.encode()

    def schema_at_head(self) -> bool:
        """Whether the database's schema is the newest this code knows."""
        from .migrate import is_at_head  # the migrations need the models, not the store

        return is_at_head(self.engines.write)

    def integrity_check(self) -> str:
        with self.engines.read.connect() as conn:
            if not self.engines.is_sqlite:
                return "ok"
            return str(conn.execute(text("PRAGMA integrity_check")).scalar_one())
