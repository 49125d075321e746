"""Commit notices between broker nodes that share one PostgreSQL database (LISTEN/NOTIFY).

A send batch announces, inside its own transaction, the highest new seq of every recipient;
PostgreSQL delivers the notice at commit, to every node, including the sender's. Payloads carry
ids only (they must stay under 8,000 bytes), never message bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from sqlalchemy import Connection, Engine, text

log = logging.getLogger("mailnet.notify")

CHANNEL = "mailnet_mail"
MAX_PAYLOAD = 7000


def announce_commits(conn: Connection, last_seqs: dict[int, int]) -> None:
    """Queue NOTIFYs (sent at commit) naming each user's highest new seq, as 'uid:seq,...',
    and ending with 't:<unix ms>' (when the batch was stored, for the receiver's lag metric;
    older nodes skip it as not a pair of numbers)."""
    stamp = f"t:{round(time.time() * 1000)}"
    payload: list[str] = []
    size = len(stamp) + 1
    for user_id, seq in last_seqs.items():
        item = f"{user_id}:{seq}"
        if size + len(item) + 1 > MAX_PAYLOAD:
            payload.append(stamp)
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": ",".join(payload)})
            payload, size = [], len(stamp) + 1
        payload.append(item)
        size += len(item) + 1
    if payload:
        payload.append(stamp)
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": ",".join(payload)})


def notice_age(payload: str, now: float) -> float | None:
    """Seconds since the notice's batch was stored, if it says when ('t:<unix ms>' last)."""
    _, _, last = payload.rpartition(",")
    name, _, millis = last.partition(":")
    if name != "t" or not millis.isdigit():
        return None
    return max(0.0, now - int(millis) / 1000)


def parse_notice(payload: str) -> Iterable[tuple[int, int]]:
    for item in payload.split(","):
        user_id, _, seq = item.partition(":")
        if user_id.isdigit() and seq.isdigit():
            yield int(user_id), int(seq)


def listen_for_commits(
    engine: Engine,
    on_notice: Callable[[list[tuple[int, int]]], None],
    should_stop: Callable[[], bool],
    *,
    on_listening: Callable[[], None] = lambda: None,
    on_lost: Callable[[], None] = lambda: None,
    on_age: Callable[[float], None] = lambda seconds: None,
    poll_seconds: float = 1.0,
) -> None:
    """Blocking: call on_notice for every commit notice until should_stop(); reconnects.

    on_listening is called each time LISTEN is in force (first start and every reconnect),
    on_lost each time the listening connection fails.
    """
    import psycopg

    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not should_stop():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                on_listening()
                while not should_stop():
                    for notice in conn.notifies(timeout=poll_seconds):
                        age = notice_age(notice.payload, time.time())
                        if age is not None:
                            on_age(age)
                        on_notice(list(parse_notice(notice.payload)))
        except psycopg.Error as exc:
            log.warning("commit notices interrupted (%s); reconnecting", str(exc).strip())
            on_lost()
            time.sleep(poll_seconds)
