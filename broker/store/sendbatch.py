"""One group commit, in one transaction: resolve recipients, drop retries, check quotas and
blocks, allocate each mailbox's seqs, insert messages and mailbox entries.

SQLite has one writer, holding the write lock from BEGIN IMMEDIATE: what the transaction reads
is current until it commits, so ids and seqs are assigned here, rows go in with multi-row
INSERTs and the batch's reads are plain SQL on the same connection. Other databases take the
portable SQLAlchemy/RETURNING path. MailStore.store_sends runs it (in the broker's writer
process on SQLite, see writer.py).

On PostgreSQL several nodes commit at once. Two rules keep their batches from deadlocking or
failing each other: every recipient row is locked first, in id order (FOR NO KEY UPDATE, which
does not block the foreign-key checks of other batches' inserts), and keyed messages go in
sorted by key with ON CONFLICT DO NOTHING, so a retry committed meanwhile by another node is
answered `duplicate` with the first id instead of failing the whole batch.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .admin import blocked_pairs
from .models import MailboxEntry, Message, User, utcnow
from .notify import announce_commits
from .records import SendIntent, SendOutcome, deliveries_of

users = cast(Table, User.__table__)
messages = cast(Table, Message.__table__)
mailbox = cast(Table, MailboxEntry.__table__)

T = TypeVar("T")

# A committed batch's stored intents, by index: their (user id, name, seq) entries and thread.
Stored = dict[int, tuple[list[tuple[int, str, int]], int | None]]

_CHUNK = 2000  # bound on bound parameters per statement (SQLite allows 32766)
_SQLITE_MAX_PARAMS = 30_000  # per raw multi-row statement; SQLite 3.32+ allows 32766


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


class SendBatch:
    """One group commit: resolve recipients, drop retries, allocate seqs, insert."""

    def __init__(  # type: ignore[no-untyped-def]
        self, conn, intents: Sequence[SendIntent], quota: int, *, deliveries: bool = True
    ) -> None:
        self.conn = conn
        self.intents = intents
        self.quota = quota
        self.now = utcnow()
        # Each stored intent's index -> its (user id, name, seq) entries and thread. With
        # `deliveries` false the outcomes carry no Delivery records: the writer process sends
        # these instead, and the broker builds the records once, on its side.
        self.with_deliveries = deliveries
        self.stored: Stored = {}
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
        everyone: list[_Target] | None = None
        if self.sqlite:
            recipients = self._users_by_name(names)
        elif any(i.kind == "announcement" for i in self.intents):
            everyone = self._all_users(lock=True)
            recipients = {u.username: u for u in everyone if u.username in names}
        else:
            recipients = self._lock_users_by_name(names)
        threads = self._reply_threads()
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
            if intent.in_reply_to is not None and (
                (intent.sender_id, intent.in_reply_to) not in threads
            ):
                outcomes[index] = SendOutcome(
                    error_code="not_found",
                    error_message=f"no message {intent.in_reply_to} in your history to reply to",
                )
                continue
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

            def threads_of(stored: list[tuple[int, SendIntent, list[_Target]]]) -> list[int | None]:
                return [
                    None
                    if intent.in_reply_to is None
                    else threads[(intent.sender_id, intent.in_reply_to)]
                    for _, intent, _ in stored
                ]

            intents = [intent for _, intent, _ in to_store]
            inserted = self._insert_messages(intents, threads_of(to_store))
            to_store, message_ids = self._drop_committed_elsewhere(to_store, inserted, outcomes)
            thread_of = threads_of(to_store)  # of the messages stored here (others' won)
            seqs = self._allocate_seqs([targets for _, _, targets in to_store])
            rows = []
            for (index, intent, targets), message_id, batch_seqs, thread_id in zip(
                to_store, message_ids, seqs, thread_of, strict=True
            ):
                delivered = [
                    (target.id, target.username, seq)
                    for target, seq in zip(targets, batch_seqs, strict=True)
                ]
                rows += [
                    {"user_id": user_id, "seq": seq, "message_id": message_id}
                    for user_id, _, seq in delivered
                ]
                self.stored[index] = (delivered, thread_id)
                outcomes[index] = SendOutcome(
                    message_id=message_id,
                    deliveries=deliveries_of(intent, message_id, self.now, delivered, thread_id)
                    if self.with_deliveries
                    else (),
                )
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

    def _reply_threads(self) -> dict[tuple[int, int], int]:
        """(sender id, parent id) -> the thread's first message, for each reply of the batch
        whose parent the sender can see (sent it, or has it in their mailbox). Replies are
        rare: a batch without one reads nothing."""
        wanted = {(i.sender_id, i.in_reply_to) for i in self.intents if i.in_reply_to is not None}
        if not wanted:
            return {}
        parent_ids = sorted({parent for _, parent in wanted})
        sender_ids = sorted({sender for sender, _ in wanted})
        parents = {
            row.id: (row.sender_id, row.thread_id or row.id)
            for row in self.conn.execute(
                select(messages.c.id, messages.c.sender_id, messages.c.thread_id).where(
                    messages.c.id.in_(parent_ids)
                )
            )
        }
        held = {
            (row.user_id, row.message_id)
            for row in self.conn.execute(
                select(mailbox.c.user_id, mailbox.c.message_id).where(
                    mailbox.c.message_id.in_(parent_ids), mailbox.c.user_id.in_(sender_ids)
                )
            )
        }
        threads: dict[tuple[int, int], int] = {}
        for sender_id, parent_id in wanted:
            found = parents.get(parent_id)
            if found is not None and (found[0] == sender_id or (sender_id, parent_id) in held):
                threads[(sender_id, parent_id)] = found[1]
        return threads

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
            for id_chunk in _chunks(ids):
                for row in self.conn.execute(
                    select(messages.c.id, messages.c.client_msg_id).where(
                        messages.c.sender_id == sender_id, messages.c.client_msg_id.in_(id_chunk)
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
        limit: int = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return min(_SQLITE_MAX_PARAMS, limit)

    def _raw(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """SQLite only: run one statement on the raw DBAPI connection (same transaction)."""
        cursor = self.conn.connection.driver_connection.cursor()
        try:
            rows: list[tuple[Any, ...]] = cursor.execute(sql, params).fetchall()
            return rows
        finally:
            cursor.close()

    def _insert_rows(self, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
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

    def _all_users(self, *, lock: bool = False) -> list[_Target]:
        query = select(*_TARGET_COLUMNS).order_by(users.c.id)
        if lock:
            query = query.with_for_update(key_share=True)  # FOR NO KEY UPDATE, in id order
        return [_Target(*row) for row in self.conn.execute(query)]

    def _lock_users_by_name(self, names: set[str]) -> dict[str, _Target]:
        """PostgreSQL: the named users' rows, locked in id order (every node's batches lock in
        the same order, so they queue instead of deadlocking); their seqs read under the lock."""
        ids: list[int] = []
        for chunk in _chunks(sorted(names)):
            ids += self.conn.execute(
                select(users.c.id).where(users.c.username.in_(chunk))
            ).scalars()
        found: dict[str, _Target] = {}
        for id_chunk in _chunks(sorted(set(ids))):
            query = (
                select(*_TARGET_COLUMNS)
                .where(users.c.id.in_(id_chunk))
                .order_by(users.c.id)
                .with_for_update(key_share=True)
            )
            for row in self.conn.execute(query):
                found[row.username] = _Target(*row)
        return found

    def _drop_committed_elsewhere(
        self,
        to_store: list[tuple[int, SendIntent, list[_Target]]],
        inserted: list[int | None],
        outcomes: list[SendOutcome | None],
    ) -> tuple[list[tuple[int, SendIntent, list[_Target]]], list[int]]:
        """Answer the keyed sends another node committed first (their insert did nothing) as
        duplicates of that message; the rest go on to get their seqs."""
        kept: list[tuple[int, SendIntent, list[_Target]]] = []
        ids: list[int] = []
        winners: dict[tuple[int, str], int] | None = None
        for item, message_id in zip(to_store, inserted, strict=True):
            if message_id is not None:
                kept.append(item)
                ids.append(message_id)
                continue
            if winners is None:  # read after the insert waited for the winner's commit
                winners = self._existing_ids()
            index, intent, _ = item
            key = (intent.sender_id, intent.client_msg_id or "")
            outcomes[index] = SendOutcome(message_id=winners[key], duplicate=True)
        return kept, ids

    def _insert_messages(
        self, intents: list[SendIntent], thread_of: list[int | None]
    ) -> list[int | None]:
        # Only a batch holding a reply or an acknowledged send writes the columns they need
        # (NULL or a server default otherwise).
        replies = any(t is not None for t in thread_of) or any(i.require_ack for i in intents)
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
        if replies:
            for row, intent, thread_id in zip(rows, intents, thread_of, strict=True):
                row["in_reply_to"] = intent.in_reply_to
                row["thread_id"] = thread_id
                row["require_ack"] = intent.require_ack
        if self.sqlite:
            [(first,)] = self._raw("SELECT coalesce(max(id), 0) FROM messages", ())
            ids = list(range(first + 1, first + 1 + len(rows)))
            # The timestamp goes through its column type once, not once per row.
            created_at = messages.c.created_at.type._cached_bind_processor(self.conn.dialect)
            stamp = created_at(self.now) if created_at else self.now
            columns = "id, kind, sender_id, recipients, subject, body, client_msg_id, created_at"
            values: list[tuple[Any, ...]] = [
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
            ]
            if replies:
                columns += ", in_reply_to, thread_id, require_ack"
                values = [
                    (*v, r["in_reply_to"], r["thread_id"], r["require_ack"])
                    for v, r in zip(values, rows, strict=True)
                ]
            self._insert_rows("messages", columns, values)
            return [*ids]
        if self.conn.dialect.name == "postgresql":
            return self._insert_messages_pg(intents, rows)
        result = self.conn.execute(
            insert(messages).returning(messages.c.id, sort_by_parameter_order=True), rows
        )
        return [row.id for row in result]

    def _insert_messages_pg(
        self, intents: list[SendIntent], rows: list[dict[str, Any]]
    ) -> list[int | None]:
        """The messages' ids, None for a keyed one another transaction committed first.

        Keyed rows go in sorted by key: two batches that share keys then wait on each other in
        one order only, never in a cycle."""
        ids: list[int | None] = [None] * len(rows)
        plain = [n for n, intent in enumerate(intents) if not intent.client_msg_id]
        keyed = sorted(
            (n for n, intent in enumerate(intents) if intent.client_msg_id),
            key=lambda n: (intents[n].sender_id, intents[n].client_msg_id or ""),
        )
        if plain:
            result = self.conn.execute(
                insert(messages).returning(messages.c.id, sort_by_parameter_order=True),
                [rows[n] for n in plain],
            )
            for n, row in zip(plain, result, strict=True):
                ids[n] = row.id
        if keyed:
            position = {(intents[n].sender_id, intents[n].client_msg_id): n for n in keyed}
            result = self.conn.execute(
                pg_insert(messages)
                .on_conflict_do_nothing(index_elements=["sender_id", "client_msg_id"])
                .returning(messages.c.id, messages.c.sender_id, messages.c.client_msg_id),
                [rows[n] for n in keyed],
            )
            for row in result:
                ids[position[(row.sender_id, row.client_msg_id)]] = row.id
        return ids

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
            for user_chunk in _chunks(user_ids):
                result = self.conn.execute(
                    update(users)
                    .where(users.c.id.in_(user_chunk))
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
