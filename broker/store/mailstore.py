"""All reads and writes of mailnet's data. Synchronous: callers run it off the trio thread.

Every method opens its own short transaction and returns plain records. `store_sends` is the
group commit: a whole batch of sends (messages, mailbox entries and idempotency keys) commits in
one transaction, and only its outcome is what senders are acknowledged with.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Row, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from . import presence_rows
from .admin import AdminStoreMixin, blocked_pairs, redeem_invite
from .database import Engines, make_engines
from .models import AuthSession, MailboxEntry, Message, User, utcnow
from .notify import announce_commits, listen_for_commits
from .presence_rows import PresenceRow
from .records import (
    Delivery,
    EntryRecord,
    HistoryQuery,
    SendIntent,
    SendOutcome,
    UserRecord,
)

users = User.__table__
sessions = AuthSession.__table__
messages = Message.__table__
mailbox = MailboxEntry.__table__

_CHUNK = 2000  # bound on bound parameters per statement (SQLite allows 32766)
_SQLITE_MAX_PARAMS = 30_000  # per raw multi-row statement; SQLite 3.32+ allows 32766


class UsernameTaken(Exception):
    pass


class NotFound(Exception):
    pass


class StoreUnavailable(Exception):
    """The database cannot be reached or written (down, locked too long, disk error)."""


def call_guarded(fn, /, *args):  # type: ignore[no-untyped-def]
    """Call a store method, turning database outages into StoreUnavailable."""
    try:
        return fn(*args)
    except (OperationalError, InterfaceError) as exc:
        raise StoreUnavailable(str(exc.orig or exc).splitlines()[0]) from exc


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _user(row: Row) -> UserRecord:
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
_TARGET_COLUMNS = (
    users.c.id,
    users.c.username,
    users.c.prank_opt_out,
    users.c.last_seq,
    users.c.acked_seq,
)


@dataclass(slots=True)
class _Target:
    """A recipient as a group commit needs it (a Row's attribute lookups cost ~10x more)."""

    id: int
    username: str
    prank_opt_out: bool
    last_seq: int
    acked_seq: int


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
)


def _entry(row: Row, *, direction: str = "in") -> EntryRecord:
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
    )


# The backlog drain's read, on SQLite: the raw DB-API cursor and plain tuples, because
# SQLAlchemy's row processing (its DATETIME parsing above all) costs more than the query.
_ENTRIES_AFTER_SQL = (
    "SELECT b.seq, b.read_at, m.id, m.kind, m.recipients, m.subject, m.body, m.created_at,"
    " s.username FROM mailbox AS b"
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
    for seq, read_at, message_id, kind, recipients, subject, body, created_at, sender in rows:
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
            )
        )
    return entries


class MailStore(AdminStoreMixin):
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
            return _SendBatch(conn, intents, quota).commit()

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
        self, user_id: int, *, unread_only: bool, limit: int, before_seq: int | None
    ) -> tuple[list[EntryRecord], int]:
        query = self._entries_query(user_id).order_by(mailbox.c.seq.desc()).limit(limit)
        if unread_only:
            query = query.where(mailbox.c.read_at.is_(None))
        if before_seq is not None:
            query = query.where(mailbox.c.seq < before_seq)
        with self.engines.read.connect() as conn:
            entries = [_entry(row) for row in conn.execute(query)]
            unread = self._unread_count(conn, user_id)
        return entries, unread

    @staticmethod
    def _unread_count(conn, user_id: int) -> int:  # type: ignore[no-untyped-def]
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
        with self.engines.write.begin() as conn:
            found = conn.execute(
                select(func.count())
                .select_from(mailbox)
                .where(mailbox.c.user_id == user_id, mailbox.c.seq.in_(seqs))
            ).scalar_one()
            if found != len(seqs):
                raise NotFound("no such message in your mailbox")
            result = conn.execute(
                update(mailbox)
                .where(
                    mailbox.c.user_id == user_id,
                    mailbox.c.seq.in_(seqs),
                    mailbox.c.read_at.is_(None),
                )
                .values(read_at=utcnow())
            )
        return result.rowcount

    def ack_through(self, acks: dict[int, int]) -> None:
        """Record, per user id, the highest sequence number a client has acknowledged."""
        with self.engines.write.begin() as conn:
            for user_id, seq in acks.items():
                conn.execute(
                    update(users)
                    .where(users.c.id == user_id, users.c.acked_seq < seq, users.c.last_seq >= seq)
                    .values(acked_seq=seq)
                )

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
        with self.engines.read.connect() as conn:
            return [
                _entry(row, direction="out" if row.sender_id == user_id else "in")
                for row in conn.execute(stmt)
            ]

    @property
    def shares_commits(self) -> bool:
        """True when other broker nodes may write this database (PostgreSQL)."""
        return self.engines.write.dialect.name == "postgresql"

    def listen_for_commits(self, on_notice, should_stop, on_listening) -> None:  # type: ignore[no-untyped-def]
        """Blocking (run it in a thread): report every node's commits as (user_id, seq)."""
        listen_for_commits(self.engines.write, on_notice, should_stop, on_listening=on_listening)

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

    def integrity_check(self) -> str:
        with self.engines.read.connect() as conn:
            if not self.engines.is_sqlite:
                return "ok"
            return conn.execute(text("PRAGMA integrity_check")).scalar_one()


class _SendBatch:
    """One group commit: resolve recipients, drop retries, allocate seqs, insert."""

    def __init__(self, conn, intents: Sequence[SendIntent], quota: int) -> None:  # type: ignore[no-untyped-def]
        self.conn = conn
        self.intents = intents
        self.quota = quota
        self.now = utcnow()
        # SQLite has one writer, holding the write lock from BEGIN IMMEDIATE: what this
        # transaction reads is current until it commits, so ids and seqs can be assigned here
        # and rows inserted with plain executemany (no RETURNING round trips, no per-row
        # SQLAlchemy work), and the batch's reads are plain SQL on the same connection.
        # Other databases take the portable SQLAlchemy/RETURNING path.
        self.sqlite = conn.dialect.name == "sqlite"
        self.blocked = (
            self._blocked_pairs_sqlite({i.sender_id for i in intents})
            if self.sqlite
            else blocked_pairs(conn, (i.sender_id for i in intents))
        )

    def commit(self) -> list[SendOutcome]:
        outcomes: list[SendOutcome | None] = [None] * len(self.intents)
        existing = self._existing_ids()
        names = {name for i in self.intents for name in i.recipients}
        recipients = self._users_by_name(names)
        everyone: list[_Target] | None = None
        to_store: list[tuple[int, SendIntent, list[_Target]]] = []
        first_of_key: dict[tuple[int, str], int] = {}
        added: dict[int, int] = defaultdict(int)  # entries this batch gives each mailbox
        for index, intent in enumerate(self.intents):
            key = (intent.sender_id, intent.client_msg_id) if intent.client_msg_id else None
            if key is not None and key in existing:
                outcomes[index] = SendOutcome(message_id=existing[key], duplicate=True)
                continue
            if key is not None and key in first_of_key:
                continue  # resolved after insert, to the first copy's id
            if intent.kind == "announcement":
                if everyone is None:
                    everyone = self._all_users()
                targets = [u for u in everyone if u.id != intent.sender_id]
            else:
                missing = [n for n in intent.recipients if n not in recipients]
                if missing:
                    outcomes[index] = SendOutcome(
                        error_code="unknown_recipient",
                        error_message="no such user: " + ", ".join(missing),
                    )
                    continue
                # A recipient who blocks the sender silently gets nothing; the sender is
                # acknowledged as usual and never told.
                targets = [
                    recipients[n]
                    for n in intent.recipients
                    if (recipients[n].id, intent.sender_id) not in self.blocked
                ]
                if intent.kind == "rickroll" and targets and targets[0].prank_opt_out:
                    outcomes[index] = SendOutcome(
                        error_code="prank_refused",
                        error_message=f"{targets[0].username} has opted out of rick-rolls",
                    )
                    continue
            full = [
                t.username for t in targets if t.last_seq + added[t.id] - t.acked_seq >= self.quota
            ]
            if full:
                outcomes[index] = SendOutcome(
                    error_code="quota_exceeded",
                    error_message="mailbox full, not delivered to: " + ", ".join(full[:20]),
                )
                continue
            if key is not None:
                first_of_key[key] = index
            for target in targets:
                added[target.id] += 1
            to_store.append((index, intent, targets))
        if to_store:
            message_ids = self._insert_messages([intent for _, intent, _ in to_store])
            seqs = self._allocate_seqs([targets for _, _, targets in to_store])
            rows = []
            for (index, intent, targets), message_id, batch_seqs in zip(
                to_store, message_ids, seqs, strict=True
            ):
                deliveries = []
                for target, seq in zip(targets, batch_seqs, strict=True):
                    rows.append({"user_id": target.id, "seq": seq, "message_id": message_id})
                    entry = EntryRecord(
                        seq=seq,
                        message_id=message_id,
                        kind=intent.kind,
                        sender=intent.sender,
                        recipients=intent.recipients,
                        subject=intent.subject,
                        body=intent.body,
                        sent_at=self.now,
                        read=False,
                        direction="in",
                    )
                    deliveries.append(Delivery(target.id, target.username, entry))
                outcomes[index] = SendOutcome(message_id=message_id, deliveries=tuple(deliveries))
            if rows and self.sqlite:
                self._insert_rows(
                    "mailbox",
                    "user_id, seq, message_id",
                    [(r["user_id"], r["seq"], r["message_id"]) for r in rows],
                )
            elif rows:
                self.conn.execute(insert(mailbox), rows)
                if self.conn.dialect.name == "postgresql":  # other nodes learn at commit
                    announce_commits(self.conn, {r["user_id"]: r["seq"] for r in rows})
        for index, intent in enumerate(self.intents):
            if outcomes[index] is None:  # an in-batch retry of an earlier intent
                key = (intent.sender_id, intent.client_msg_id or "")
                first = outcomes[first_of_key[key]]
                assert first is not None
                outcomes[index] = SendOutcome(message_id=first.message_id, duplicate=True)
        return [o for o in outcomes if o is not None]

    def _existing_ids(self) -> dict[tuple[int, str], int]:
        if self.sqlite:
            # One statement for the whole batch: the keys as a VALUES list driving indexed
            # lookups (CROSS JOIN keeps that order), not one query per sender.
            keys = list({(i.sender_id, i.client_msg_id) for i in self.intents if i.client_msg_id})
            found: dict[tuple[int, str], int] = {}
            for chunk in _chunks(keys, self._max_params() // 2):
                sql = (
                    "SELECT m.id, v.column1, v.column2 FROM (VALUES "
                    + ",".join(["(?, ?)"] * len(chunk))
                    + ") AS v CROSS JOIN messages AS m"
                    " ON m.sender_id = v.column1 AND m.client_msg_id = v.column2"
                )
                params = [value for key in chunk for value in key]
                for message_id, sender_id, client_msg_id in self._raw(sql, params):
                    found[(sender_id, client_msg_id)] = message_id
            return found
        keyed: dict[int, list[str]] = defaultdict(list)
        for intent in self.intents:
            if intent.client_msg_id:
                keyed[intent.sender_id].append(intent.client_msg_id)
        found = {}
        for sender_id, ids in keyed.items():
            for chunk in _chunks(ids):
                for row in self.conn.execute(
                    select(messages.c.id, messages.c.client_msg_id).where(
                        messages.c.sender_id == sender_id, messages.c.client_msg_id.in_(chunk)
                    )
                ):
                    found[(sender_id, row.client_msg_id)] = row.id
        return found

    def _blocked_pairs_sqlite(self, sender_ids: set[int]) -> set[tuple[int, int]]:
        """admin.blocked_pairs in plain SQL: (blocker_id, blocked_id) against these senders."""
        pairs: set[tuple[int, int]] = set()
        for chunk in _chunks(sorted(sender_ids), self._max_params()):
            sql = (
                "SELECT blocker_id, blocked_id FROM blocks WHERE blocked_id IN ("
                + ",".join(["?"] * len(chunk))
                + ")"
            )
            pairs.update((blocker, blocked) for blocker, blocked in self._raw(sql, chunk))
        return pairs

    def _max_params(self) -> int:
        raw = self.conn.connection.driver_connection
        return min(_SQLITE_MAX_PARAMS, raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))

    def _raw(self, sql: str, params: Sequence[object]) -> list[tuple]:
        """SQLite only: run one statement on the raw DBAPI connection (same transaction)."""
        cursor = self.conn.connection.driver_connection.cursor()
        try:
            return cursor.execute(sql, params).fetchall()
        finally:
            cursor.close()

    def _insert_rows(self, table: str, columns: str, rows: list[tuple]) -> None:
        """SQLite only: multi-row INSERTs. Each statement is one step of the SQLite engine
        (one release of the GIL), where executemany would step, and hand the GIL over to the
        event loop's thread, once per row."""
        width = len(rows[0])
        marks = "(" + ", ".join(["?"] * width) + ")"
        for chunk in _chunks(rows, self._max_params() // width):
            sql = f"INSERT INTO {table} ({columns}) VALUES " + ",".join([marks] * len(chunk))
            self._raw(sql, [value for row in chunk for value in row])

    def _users_by_name(self, names: set[str]) -> dict[str, _Target]:
        found: dict[str, _Target] = {}
        if self.sqlite:  # plain SQL: SQLAlchemy's expanding IN costs ~1 ms a batch
            for chunk in _chunks(sorted(names), self._max_params()):
                sql = (
                    "SELECT id, username, prank_opt_out, last_seq, acked_seq FROM users"
                    " WHERE username IN (" + ",".join(["?"] * len(chunk)) + ")"
                )
                for row in self._raw(sql, chunk):
                    target = _Target(row[0], row[1], bool(row[2]), row[3], row[4])
                    found[target.username] = target
            return found
        for chunk in _chunks(sorted(names)):
            for row in self.conn.execute(
                select(*_TARGET_COLUMNS).where(users.c.username.in_(chunk))
            ):
                found[row.username] = _Target(*row)
        return found

    def _all_users(self) -> list[_Target]:
        query = select(*_TARGET_COLUMNS).order_by(users.c.id)
        return [_Target(*row) for row in self.conn.execute(query)]

    def _insert_messages(self, intents: list[SendIntent]) -> list[int]:
        rows = [
            {
                "kind": i.kind,
                "sender_id": i.sender_id,
                "recipients": ",".join(i.recipients),
                "subject": i.subject,
                "body": i.body,
                "client_msg_id": i.client_msg_id,
                "created_at": self.now,
            }
            for i in intents
        ]
        if self.sqlite:
            [(first,)] = self._raw("SELECT coalesce(max(id), 0) FROM messages", ())
            ids = list(range(first + 1, first + 1 + len(rows)))
            # The timestamp goes through its column type once, not once per row.
            created_at = messages.c.created_at.type._cached_bind_processor(self.conn.dialect)
            stamp = created_at(self.now) if created_at else self.now
            self._insert_rows(
                "messages",
                "id, kind, sender_id, recipients, subject, body, client_msg_id, created_at",
                [
                    (
                        message_id,
                        r["kind"],
                        r["sender_id"],
                        r["recipients"],
                        r["subject"],
                        r["body"],
                        r["client_msg_id"],
                        stamp,
                    )
                    for r, message_id in zip(rows, ids, strict=True)
                ],
            )
            return ids
        result = self.conn.execute(
            insert(messages).returning(messages.c.id, sort_by_parameter_order=True), rows
        )
        return [row.id for row in result]

    def _allocate_seqs(self, targets_per_message: list[list[_Target]]) -> list[list[int]]:
        """Reserve per-user sequence numbers for every entry of the batch, in batch order."""
        counts: dict[int, int] = defaultdict(int)
        for targets in targets_per_message:
            for target in targets:
                counts[target.id] += 1
        next_seq: dict[int, int] = {}
        if self.sqlite and counts:  # no targets at all: a text to a blocker, a lone announcer
            # The rows were read in this transaction, under the write lock: last_seq is current.
            for targets in targets_per_message:
                for target in targets:
                    next_seq.setdefault(target.id, target.last_seq + 1)
            new_last = [(uid, next_seq[uid] + count - 1) for uid, count in counts.items()]
            if sqlite3.sqlite_version_info >= (3, 33):  # UPDATE ... FROM
                # One statement per chunk, not one per user.
                for chunk in _chunks(new_last, self._max_params() // 2):
                    self._raw(
                        "UPDATE users SET last_seq = v.column2 FROM (VALUES "
                        + ",".join(["(?, ?)"] * len(chunk))
                        + ") AS v WHERE users.id = v.column1",
                        [value for pair in chunk for value in pair],
                    )
            else:
                cursor = self.conn.connection.driver_connection.cursor()
                try:
                    cursor.executemany(
                        "UPDATE users SET last_seq = ? WHERE id = ?",
                        [(last, uid) for uid, last in new_last],
                    )
                finally:
                    cursor.close()
        by_count: dict[int, list[int]] = defaultdict(list)
        for user_id, count in counts.items():
            if not self.sqlite:
                by_count[count].append(user_id)
        for count, user_ids in by_count.items():
            for chunk in _chunks(user_ids):
                result = self.conn.execute(
                    update(users)
                    .where(users.c.id.in_(chunk))
                    .values(last_seq=users.c.last_seq + count)
                    .returning(users.c.id, users.c.last_seq)
                )
                for row in result:
                    next_seq[row.id] = row.last_seq - count + 1
        allocated = []
        for targets in targets_per_message:
            seqs = []
            for target in targets:
                seqs.append(next_seq[target.id])
                next_seq[target.id] += 1
            allocated.append(seqs)
        return allocated
