"""Who is online on every broker node that shares one PostgreSQL database.

Each node keeps one row per online user in `node_presence` and refreshes its rows every few
seconds, each time pushing their expiry forward; expired rows belong to a node that died and are
ignored (and deleted by whichever node refreshes next); expiry uses the database's clock only.
Users coming online or going offline on a node are announced on a NOTIFY channel, with ids and
user names only (under 8,000 bytes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, text

from .models import NodePresence

log = logging.getLogger("mailnet.notify")

# One channel per schema: NOTIFY reaches the whole database, and two mailnet deployments (or test
# runs) in two schemas of one database must not hear each other's users (ids overlap).
CHANNEL_SQL = "'mailnet_presence_' || md5(current_schema())"
MAX_PAYLOAD = 7000

rows_table = cast(Table, NodePresence.__table__)


@dataclass(frozen=True)
class PresenceRow:
    """One user online on one node: written by that node, read by the others."""

    node_id: str
    user_id: int
    username: str
    since: datetime
    last_active: datetime
    sessions: int


@dataclass(frozen=True)
class PresenceChange:
    """A user came online (or went offline) on a node, as announced to the other nodes."""

    node_id: str
    user_id: int
    username: str
    online: bool


def write_rows(
    conn: Connection,
    node_id: str,
    rows: Sequence[PresenceRow],
    gone: Sequence[int],
    changes: Sequence[PresenceChange],
    *,
    whole_node: bool,
    lifetime: float,
) -> None:
    """Replace this node's rows for the given users (all of its rows if whole_node), expiring
    `lifetime` seconds from now; delete expired rows; announce the changes (sent at commit)."""
    if whole_node:
        conn.execute(delete(rows_table).where(rows_table.c.node_id == node_id))
    else:
        ids = [r.user_id for r in rows] + list(gone)
        for start in range(0, len(ids), 2000):
            conn.execute(
                delete(rows_table).where(
                    rows_table.c.node_id == node_id,
                    rows_table.c.user_id.in_(ids[start : start + 2000]),
                )
            )
    if rows:
        conn.execute(
            insert(rows_table).values(expires_at=func.now() + timedelta(seconds=lifetime)),
            [
                {
                    "node_id": node_id,
                    "user_id": r.user_id,
                    "username": r.username,
                    "since": r.since,
                    "last_active": r.last_active,
                    "sessions": r.sessions,
                }
                for r in rows
            ],
        )
    if whole_node:
        conn.execute(delete(rows_table).where(rows_table.c.expires_at < func.now()))
    announce_changes(conn, changes)


def fresh_rows(conn: Connection, *, except_node: str) -> list[PresenceRow]:
    """The unexpired rows of every other node."""
    stmt = select(rows_table).where(
        rows_table.c.node_id != except_node, rows_table.c.expires_at >= func.now()
    )
    return [
        PresenceRow(
            node_id=row.node_id,
            user_id=row.user_id,
            username=row.username,
            since=row.since,
            last_active=row.last_active,
            sessions=row.sessions,
        )
        for row in conn.execute(stmt)
    ]


def announce_changes(conn: Connection, changes: Sequence[PresenceChange]) -> None:
    """Queue NOTIFYs, as JSON: {"node": id, "on": [[uid, name], ...], "off": [...]}, chunked."""
    by_node: dict[str, list[PresenceChange]] = {}
    for change in changes:
        by_node.setdefault(change.node_id, []).append(change)
    for node_id, node_changes in by_node.items():
        chunk: dict[str, list[list[object]]] = {"on": [], "off": []}
        size = 0
        for change in node_changes:
            item = [change.user_id, change.username]
            item_size = len(json.dumps(item)) + 1
            if size + item_size > MAX_PAYLOAD:
                _notify(conn, node_id, chunk)
                chunk, size = {"on": [], "off": []}, 0
            chunk["on" if change.online else "off"].append(item)
            size += item_size
        if size:
            _notify(conn, node_id, chunk)


def _notify(conn: Connection, node_id: str, chunk: dict[str, list[list[object]]]) -> None:
    payload = json.dumps({"node": node_id, **chunk}, separators=(",", ":"))
    conn.execute(text(f"SELECT pg_notify({CHANNEL_SQL}, :p)"), {"p": payload})


def parse_changes(payload: str) -> list[PresenceChange]:
    try:
        data = json.loads(payload)
        node_id = str(data["node"])
        return [
            PresenceChange(node_id, int(uid), str(name), online)
            for key, online in (("on", True), ("off", False))
            for uid, name in data.get(key, [])
        ]
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed presence notice")
        return []


def listen_for_changes(
    engine: Engine,
    on_changes: Callable[[list[PresenceChange]], None],
    should_stop: Callable[[], bool],
    *,
    poll_seconds: float = 1.0,
) -> None:
    """Blocking: call on_changes for every presence notice until should_stop(); reconnects."""
    import psycopg
    from psycopg import sql

    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not should_stop():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                channel = conn.execute(f"SELECT {CHANNEL_SQL}").fetchone()
                assert channel is not None
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel[0])))
                while not should_stop():
                    for notice in conn.notifies(timeout=poll_seconds):
                        changes = parse_changes(notice.payload)
                        if changes:
                            on_changes(changes)
        except psycopg.Error as exc:
            log.warning("presence notices interrupted (%s); reconnecting", str(exc).strip())
            time.sleep(poll_seconds)
