"""Presence across broker nodes that share one database (PostgreSQL).

This node writes a row per online user (as users come and go, and all of them again every
`presence_refresh` seconds), announces who came online or went offline, and turns the other
nodes' announcements into presence events for its own sessions. `who` merges the other nodes'
fresh rows with the local sessions. A node that dies stops refreshing: three of its refresh
intervals later its rows expire (they are ignored, then deleted) and its users go offline.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime
from functools import partial

import trio

from broker.protocol import RequestRefused
from broker.store import PresenceChange, PresenceRow, StoreUnavailable, call_guarded

from .presence import OnlineUser, Presence
from .runner import StoreRunner

log = logging.getLogger("mailnet.cluster")

STALE_REFRESHES = 3  # a node's rows count for this many refresh intervals
MAX_SKIPPED_RECONCILES = 3


def node_id_for(node_name: str) -> str:
    """A node's id in the presence rows: its name (cut to fit) and a part unique to this run."""
    return f"{node_name[:23]}-{uuid.uuid4().hex[:8]}"


def node_name_of(node_id: str) -> str:
    """The node name inside a node id (an older node's id is all hex: itself)."""
    name, dash, _ = node_id.rpartition("-")
    return name if dash else node_id


class SharedPresence:
    def __init__(
        self, runner: StoreRunner, presence: Presence, *, refresh: float, node_name: str = ""
    ) -> None:
        self.runner = runner
        self.presence = presence
        self.node_id = node_id_for(node_name) if node_name else uuid.uuid4().hex
        self.refresh = refresh
        self.lifetime = STALE_REFRESHES * refresh  # how long other nodes trust a row written
        self._dirty: dict[int, str] = {}  # users whose row must be rewritten
        self._changes: list[PresenceChange] = []  # to announce with that write
        self._written: dict[int, str] = {}  # users with a row in the store
        self._wakeup = trio.Event()
        self._notices = 0  # notices received: a full read older than one must not undo it
        self._skipped_reconciles = 0
        presence.on_change = self._local_change

    def _local_change(self, user_id: int, username: str, online: bool | None) -> None:
        self._dirty[user_id] = username
        if online is not None:
            self._changes.append(PresenceChange(self.node_id, user_id, username, online))
        self._wakeup.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_other_nodes)
            try:
                await self._write_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._clear()

    # -- this node's rows -----------------------------------------------------------------------

    def _rows(self, user_ids: set[int]) -> tuple[list[PresenceRow], list[int]]:
        now, wall = trio.current_time(), datetime.now(UTC)
        rows, gone = [], []
        for user_id in sorted(user_ids):
            sessions = self.presence.sessions_of(user_id)
            if not sessions:
                gone.append(user_id)
                continue
            first = min(sessions, key=lambda s: s.since)
            idle = max(0.0, now - max(s.last_active for s in sessions))
            rows.append(
                PresenceRow(
                    node_id=self.node_id,
                    user_id=user_id,
                    username=first.username,
                    since=first.since,
                    last_active=datetime.fromtimestamp(wall.timestamp() - idle, UTC),
                    sessions=len(sessions),
                )
            )
        return rows, gone

    async def _write_forever(self) -> None:
        next_full = trio.current_time()
        while True:
            with trio.move_on_after(max(0.0, next_full - trio.current_time())):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            full = trio.current_time() >= next_full
            dirty, changes = self._dirty, self._changes
            self._dirty, self._changes = {}, []
            users = set(dirty)
            if full:
                users |= set(self._written) | set(self.presence.online_users())
            rows, gone = self._rows(users)
            try:
                await self._store(rows, gone, changes, whole_node=full)
            except StoreUnavailable as exc:
                log.warning("presence not written (%s); retrying", exc)
                self._dirty = {**dirty, **self._dirty}
                self._changes = changes + self._changes
                await trio.sleep(min(1.0, self.refresh))
                continue
            except Exception:
                log.exception("presence not written; the next refresh rewrites it")
                await trio.sleep(min(1.0, self.refresh))
                continue
            if full:
                self._written = {}
            for row in rows:
                self._written[row.user_id] = row.username
            for user_id in gone:
                self._written.pop(user_id, None)
            if full:
                next_full = trio.current_time() + self.refresh
                await self._reconcile()

    async def _store(
        self,
        rows: list[PresenceRow],
        gone: list[int],
        changes: list[PresenceChange],
        *,
        whole_node: bool,
    ) -> None:
        write = partial(
            self.runner.store.write_presence_rows,
            whole_node=whole_node,
            lifetime=self.lifetime,
        )
        # Its own thread, not the writer's: presence must not queue behind group commits.
        await trio.to_thread.run_sync(call_guarded, write, self.node_id, rows, gone, changes)

    async def _clear(self) -> None:
        """On shutdown: delete this node's rows and announce its users offline."""
        leaving = {**self._written, **self.presence.online_users()}
        changes = [PresenceChange(self.node_id, uid, name, False) for uid, name in leaving.items()]
        try:
            await self._store([], [], changes, whole_node=True)
        except Exception as exc:  # the rows go stale and are ignored anyway
            log.warning("presence rows not cleared on shutdown (%s)", exc)

    # -- the other nodes ------------------------------------------------------------------------

    async def _follow_other_nodes(self) -> None:
        stop = threading.Event()

        def on_changes(changes: list[PresenceChange]) -> None:
            try:
                trio.from_thread.run_sync(self._notice_changes, changes)
            except trio.RunFinishedError:
                stop.set()

        try:
            await trio.to_thread.run_sync(
                self.runner.store.listen_for_presence,
                on_changes,
                stop.is_set,
                abandon_on_cancel=True,
            )
        finally:
            stop.set()

    def _notice_changes(self, changes: list[PresenceChange]) -> None:
        self._notices += 1
        for change in changes:
            if change.node_id == self.node_id:
                continue
            if change.online:
                self.presence.online_elsewhere(change.node_id, change.user_id, change.username)
            else:
                self.presence.offline_elsewhere(change.node_id, change.user_id, change.username)

    async def fresh_rows(self) -> list[PresenceRow]:
        """The other nodes' unexpired rows: their users online (RequestRefused if unreadable)."""
        return await self.runner.read(self.runner.store.fresh_presence_rows, self.node_id)

    async def _reconcile(self) -> None:
        """Match the view of other nodes to their fresh rows: notices missed, nodes that died."""
        seen = self._notices
        try:
            rows = await self.fresh_rows()
        except RequestRefused:
            return
        if seen != self._notices and self._skipped_reconciles < MAX_SKIPPED_RECONCILES:
            self._skipped_reconciles += 1  # a notice may be newer than these rows: next time
            return
        self._skipped_reconciles = 0
        self.presence.set_elsewhere({(r.user_id, r.node_id): r.username for r in rows})

    async def who(self, local: list[OnlineUser]) -> list[OnlineUser]:
        """The local users merged with every other node's (sessions summed, earliest since,
        least idle); only the local ones if the store cannot be read."""
        try:
            rows = await self.fresh_rows()
        except RequestRefused:
            return local
        wall = datetime.now(UTC)
        merged = {u.username: u for u in local}
        for row in rows:
            idle = max(0.0, (wall - row.last_active).total_seconds())
            known = merged.get(row.username)
            if known is None:
                merged[row.username] = OnlineUser(row.username, row.since, idle, row.sessions)
            else:
                merged[row.username] = OnlineUser(
                    row.username,
                    min(known.since, row.since),
                    min(known.idle_seconds, idle),
                    known.sessions + row.sessions,
                )
        return sorted(merged.values(), key=lambda u: u.username)
