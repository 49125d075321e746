"""Limits shared by every node on one PostgreSQL database: the login throttle's ledger and
token buckets, each read and written in one short transaction with the database's clock.

Why PostgreSQL: the nodes of a cluster already share it (and nothing else), its row locks make
"count, decide, record" one atomic step across nodes, and a limit then holds for the cluster as
a whole however many nodes run. Keys are locked in sorted order, so two nodes never deadlock.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from sqlalchemy import Connection, Table, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .database import Engines
from .models import LoginAttemptRow, LoginKey, LoginKnownAddress, RateBucket

T = TypeVar("T")

WINDOW = 3600.0  # seconds a failure counts for (the throttle's hour)
KNOWN_ADDRESSES_PER_ACCOUNT = 20
CLEANUP_EVERY = 256  # settled attempts between deletions of expired rows (per process)

keys_table = cast(Table, LoginKey.__table__)
attempts = cast(Table, LoginAttemptRow.__table__)
known_table = cast(Table, LoginKnownAddress.__table__)
buckets = cast(Table, RateBucket.__table__)

_settled = itertools.count(1)


def _database_now(conn: Connection) -> float:
    return float(conn.execute(select(func.extract("epoch", func.clock_timestamp()))).scalar_one())


class SqlLoginLedger:
    """The login throttle's ledger (broker.core.throttle.LoginLedger) in PostgreSQL rows, for
    the length of one transaction. With `lock`, the keys' rows are locked first."""

    def __init__(self, conn: Connection, keys: Sequence[str], *, lock: bool) -> None:
        self.conn = conn
        ordered = sorted(set(keys))
        self._slots: dict[str, float | None] = {}
        if lock:
            conn.execute(
                pg_insert(keys_table)
                .values([{"key": key, "next_slot": None} for key in ordered])
                .on_conflict_do_nothing()
            )
            rows = conn.execute(
                select(keys_table.c.key, keys_table.c.next_slot)
                .where(keys_table.c.key.in_(ordered))
                .order_by(keys_table.c.key)
                .with_for_update()
            )
            self._slots = {row.key: row.next_slot for row in rows}
        # Read after the locks: a transaction that waited for another node's must not judge
        # that node's next slot by a clock read before the wait (it would look in the future).
        self._now = _database_now(conn)
        self._failures: dict[str, list[float]] = {key: [] for key in ordered}
        self._in_flight: Counter[str] = Counter()
        rows = conn.execute(
            select(attempts.c.key, attempts.c.at, attempts.c.failed)
            .where(attempts.c.key.in_(ordered), attempts.c.at > self._now - WINDOW)
            .order_by(attempts.c.at)
        )
        for row in rows:
            if row.failed:
                self._failures[row.key].append(row.at)
            else:
                self._in_flight[row.key] += 1

    def now(self) -> float:
        return self._now

    def failure_times(self, key: str) -> Sequence[float]:
        return self._failures.get(key, [])

    def in_flight(self, key: str) -> int:
        return self._in_flight[key]

    def next_slot(self, key: str) -> float | None:
        return self._slots.get(key)

    def set_next_slot(self, key: str, when: float) -> None:
        self._slots[key] = when
        self.conn.execute(update(keys_table).where(keys_table.c.key == key).values(next_slot=when))

    def is_known(self, username: str, network: str) -> bool:
        found = self.conn.execute(
            select(known_table.c.seen).where(
                known_table.c.username == username, known_table.c.network == network
            )
        ).first()
        return found is not None

    def start_attempt(self, keys: Sequence[str]) -> None:
        self.conn.execute(
            attempts.insert(), [{"key": key, "at": self._now, "failed": False} for key in keys]
        )
        for key in keys:
            self._in_flight[key] += 1

    def end_attempt(self, keys: Sequence[str], *, failed: bool) -> None:
        for key in keys:
            oldest = (
                select(attempts.c.id)
                .where(attempts.c.key == key, attempts.c.failed.is_(False))
                .order_by(attempts.c.at)
                .limit(1)
                .scalar_subquery()
            )
            self.conn.execute(delete(attempts).where(attempts.c.id == oldest))
        if failed:
            self.conn.execute(
                attempts.insert(), [{"key": key, "at": self._now, "failed": True} for key in keys]
            )
        if next(_settled) % CLEANUP_EVERY == 0:
            cutoff = self._now - WINDOW
            self.conn.execute(delete(attempts).where(attempts.c.at <= cutoff))
            self.conn.execute(
                delete(keys_table).where(
                    (keys_table.c.next_slot.is_(None)) | (keys_table.c.next_slot <= cutoff)
                )
            )

    def remember(self, username: str, network: str) -> None:
        statement = pg_insert(known_table).values(
            username=username, network=network, seen=self._now
        )
        self.conn.execute(
            statement.on_conflict_do_update(
                index_elements=[known_table.c.username, known_table.c.network],
                set_={"seen": statement.excluded.seen},
            )
        )
        keep = (
            select(known_table.c.network)
            .where(known_table.c.username == username)
            .order_by(known_table.c.seen.desc())
            .limit(KNOWN_ADDRESSES_PER_ACCOUNT)
        )
        self.conn.execute(
            delete(known_table).where(
                known_table.c.username == username, known_table.c.network.not_in(keep)
            )
        )


def with_login_ledger(
    engines: Engines, keys: Sequence[str], lock: bool, fn: Callable[[SqlLoginLedger], T]
) -> T:
    """Run fn on the ledger of `keys` in one transaction (committed unless fn raises)."""
    with engines.write.begin() as conn:
        return fn(SqlLoginLedger(conn, keys, lock=lock))


def take_tokens(
    engines: Engines, key: str, wanted: int, rate: float, burst: int
) -> tuple[int, float]:
    """Take up to `wanted` whole tokens from a shared token bucket (full when new).

    Returns how many were taken and, if none, the seconds until one is available. The bucket is
    refilled at `rate` a second by the database's clock, up to `burst`; the row's lock makes
    the refill and the take one step for every node at once.
    """
    with engines.write.begin() as conn:
        now = _database_now(conn)
        statement = pg_insert(buckets).values(key=key, tokens=float(burst), stamp=now)
        refilled = func.least(
            float(burst),
            buckets.c.tokens
            + func.greatest(0.0, statement.excluded.stamp - buckets.c.stamp) * rate,
        )
        tokens = conn.execute(
            statement.on_conflict_do_update(
                index_elements=[buckets.c.key],
                set_={
                    "tokens": refilled,
                    "stamp": func.greatest(buckets.c.stamp, statement.excluded.stamp),
                },
            ).returning(buckets.c.tokens)
        ).scalar_one()
        taken = max(0, min(wanted, int(tokens)))
        if taken:
            conn.execute(
                update(buckets).where(buckets.c.key == key).values(tokens=buckets.c.tokens - taken)
            )
            return taken, 0.0
        return 0, (1.0 - tokens) / rate
