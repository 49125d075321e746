"""Who is online: the live sessions of each user on this broker, and what each still needs.

A LiveSession's feed holds entries committed for its user that it has not sent yet. The
session's transport drains it with `next_items`: first the backlog after the session's resume
point (read from the store), then live entries, fetching from the store again whenever it sees a
gap (another node committed, or the in-memory queue overflowed). Entries leave in seq order,
each once per session.

Presence changes are not pushed one by one (that is N x N work when N users log in at once):
they are gathered for one tick and handed to every live session as one shared PresenceTick,
whose events are encoded once for all sessions. The tick grows with the number of live
sessions, so the fan-out costs about the same per second however many users are online.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from broker.protocol.events import Event, PresenceBatchEvent, PresenceEvent
from broker.store import EntryRecord

MAX_QUEUED = 10_000  # live entries held per session before it falls back to the store
PAGE = 1000

# The tick: presence changes wait at most this long to be pushed, and at least MIN_TICK; in
# between, one live session per 1/FANOUT_PER_S seconds (a tick's fan-out is one wake-up and one
# write per session: this caps it at ~FANOUT_PER_S per second whatever the number online).
MIN_TICK = 0.05
MAX_TICK = 10.0
FANOUT_PER_S = 1000.0

_session_ids = itertools.count(1)

FetchAfter = Callable[[int, int, int], Awaitable[list[EntryRecord]]]


class SharedEvent:
    """An event pushed to many sessions: encoded by the first TCP connection that sends it, and
    those bytes reused for the others (see encode_events)."""

    __slots__ = ("event", "frame")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.frame: bytes | None = None


# What a session's feed hands its transport besides mail: an event of its own, or a shared one.
PushedEvent = Event | SharedEvent


def event_of(pushed: PushedEvent) -> Event:
    return pushed.event if isinstance(pushed, SharedEvent) else pushed


def encode_events(events: list[PushedEvent], encode: Callable[[Event], bytes]) -> bytes:
    """The frames of `events`, reusing a SharedEvent's bytes once encoded. One transport's
    encoder (the TCP framing) uses the cache: any other must encode for itself."""
    out = []
    for pushed in events:
        if isinstance(pushed, SharedEvent):
            frame = pushed.frame
            if frame is None:
                frame = pushed.frame = encode(pushed.event)
            out.append(frame)
        else:
            out.append(encode(pushed))
    return b"".join(out)


@dataclass(frozen=True, eq=False)
class PresenceTick:
    """The presence changes of one tick, in order, for every live session.

    `first` numbers the first change (changes are numbered across ticks), so a session that
    came online during the tick is told only the changes from its own login on, as before.
    """

    first: int
    changes: tuple[SharedEvent, ...]  # a PresenceEvent each
    batch: SharedEvent  # a PresenceBatchEvent: who came online and who went, at the tick's end

    @classmethod
    def of(cls, first: int, changes: list[tuple[str, bool]]) -> PresenceTick:
        final: dict[str, bool] = {}
        for username, online in changes:
            final[username] = online
        return cls(
            first=first,
            changes=tuple(
                SharedEvent(PresenceEvent(username=username, online=online))
                for username, online in changes
            ),
            batch=SharedEvent(
                PresenceBatchEvent(
                    online=[name for name, online in final.items() if online],
                    offline=[name for name, online in final.items() if not online],
                )
            ),
        )

    def events_for(self, *, batched: bool, since: int) -> list[PushedEvent]:
        """What a session that counts changes from `since` on is told of this tick."""
        if batched:
            return [self.batch]
        return list(self.changes[max(0, since - self.first) :])


@dataclass(eq=False)
class LiveSession:
    user_id: int
    username: str
    client: str
    cursor: int  # highest seq already handed to the transport
    id: int = field(default_factory=lambda: next(_session_ids))
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_active: float = field(default_factory=trio.current_time)
    _queued: deque[EntryRecord] = field(default_factory=deque)
    # Lists, not deques: drained whole, and an empty deque costs ~600 bytes a session.
    _events: list[PushedEvent] = field(default_factory=list)
    _must_fetch: bool = True  # the backlog, first
    _wakeup: trio.Event = field(default_factory=trio.Event)
    # The client asked for presence changes as one presence_batch event per tick.
    presence_batch: bool = False
    presence_since: int = 0  # the number of the first presence change this session is told
    _ticks: list[PresenceTick] = field(default_factory=list)
    address: str = ""  # the client's IP address, for admins
    token_hash: str = ""  # the login it runs under ("" while it changes, or for none)
    # Set when the session must end now (kicked, disabled, password changed); every transport
    # waits on it and closes the connection, telling the client `end_reason`.
    ended: trio.Event = field(default_factory=trio.Event)
    end_reason: str = ""
    _on_end: list[Callable[[], object]] = field(default_factory=list)

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            callbacks, self._on_end = self._on_end, []
            for callback in callbacks:
                callback()

    def forget_end_callbacks(self) -> None:
        self._on_end = []

    def call_on_end(self, callback: Callable[[], object]) -> None:
        """Call `callback` (it must not block) when the session is ended: a transport starts
        its closing task then, instead of keeping a task waiting on `ended` per session."""
        if self.ended.is_set():
            callback()
        else:
            self._on_end.append(callback)

    def touch(self) -> None:
        self.last_active = trio.current_time()

    def offer(self, entry: EntryRecord) -> None:
        if len(self._queued) >= MAX_QUEUED:
            self._queued.clear()
            self._must_fetch = True
        else:
            self._queued.append(entry)
        self._wakeup.set()

    def notice_commit(self, seq: int) -> None:
        """Another node (or this one) committed this user's entries through seq."""
        if seq > self.cursor and not (self._queued and (self._queued[-1].seq or 0) >= seq):
            self._must_fetch = True
            self._wakeup.set()

    def catch_up(self) -> None:
        """Read the store again: commit notices may have been missed (LISTEN was down)."""
        self._must_fetch = True
        self._wakeup.set()

    def offer_event(self, event: Event) -> None:
        if len(self._events) < MAX_QUEUED:
            self._events.append(event)
            self._wakeup.set()

    def offer_presence(self, tick: PresenceTick) -> None:
        if len(self._ticks) < MAX_QUEUED:
            self._ticks.append(tick)
            self._wakeup.set()

    def take_events(self) -> list[PushedEvent]:
        events, self._events = self._events, []
        if self._ticks:
            ticks, self._ticks = self._ticks, []
            for tick in ticks:
                events += tick.events_for(batched=self.presence_batch, since=self.presence_since)
        return events

    async def next_items(
        self, fetch_after: FetchAfter
    ) -> tuple[list[EntryRecord], list[PushedEvent]]:
        """Wait for entries after the cursor (in order) and/or events; advances the cursor."""
        while True:
            queued = self._queued
            while queued and queued[0].seq is not None and queued[0].seq <= self.cursor:
                queued.popleft()
            if self._must_fetch or (queued and queued[0].seq != self.cursor + 1):
                # Cleared before the read, not after: a commit notice that arrives while the
                # read is in flight (and that the read may not see) must trigger another one.
                self._must_fetch = False
                try:
                    entries = await fetch_after(self.user_id, self.cursor, PAGE)
                except BaseException:
                    self._must_fetch = True  # nothing was handed out: the next call reads again
                    raise
                if len(entries) == PAGE:
                    self._must_fetch = True
                if entries:
                    self.cursor = entries[-1].seq or self.cursor
                    return entries, self.take_events()
                if queued and queued[0].seq != self.cursor + 1:
                    # The gap is not visible in the store yet: drop the stragglers; the next
                    # offer or commit notice for this user fetches them from the store.
                    queued.clear()
            ready: list[EntryRecord] = []
            while queued and queued[0].seq == self.cursor + 1:
                entry = queued.popleft()
                ready.append(entry)
                self.cursor += 1
            events = self.take_events()
            if ready or events:
                return ready, events
            self._wakeup = trio.Event()
            if self._queued or self._events or self._ticks or self._must_fetch:
                continue
            await self._wakeup.wait()


@dataclass(frozen=True)
class OnlineUser:
    username: str
    since: datetime
    idle_seconds: float
    sessions: int


class Presence:
    """Live sessions by user. A quiet session (a one-shot command: send, then leave) is known
    here, so kicks and revocations reach it, but it is not online: it is not in `who`, causes
    no presence events, and is pushed no mail."""

    def __init__(self) -> None:
        self._by_user: dict[int, set[LiveSession]] = {}
        self._quiet: dict[int, set[LiveSession]] = {}
        # Several nodes on one database: users online on other nodes (user id -> node ids and
        # name), so a user online on two nodes is one presence change, not two.
        self._elsewhere: dict[int, set[str]] = {}
        self._names_elsewhere: dict[int, str] = {}
        # Told (user id, name, True/False when they came online/went offline here, else None)
        # whenever a user's live sessions here change; only set when nodes share a database.
        self.on_change: Callable[[int, str, bool | None], None] | None = None
        # Presence changes not pushed yet (announce_forever pushes them once a tick), and the
        # number the first of them has.
        self._pending: list[tuple[str, bool]] = []
        self._pending_first = 0
        self._changes_waiting = trio.Event()
        self._live_sessions = 0

    def add(self, session: LiveSession, *, quiet: bool = False) -> None:
        if quiet:
            self._quiet.setdefault(session.user_id, set()).add(session)
            return
        first = session.user_id not in self._by_user
        self._by_user.setdefault(session.user_id, set()).add(session)
        self._live_sessions += 1
        # Told every change from now on (its own coming online included), none from before.
        session.presence_since = self._pending_first + len(self._pending)
        if first and session.user_id not in self._elsewhere:
            self._announce(session.username, online=True)
        if self.on_change is not None:
            self.on_change(session.user_id, session.username, True if first else None)

    def remove(self, session: LiveSession) -> None:
        session.forget_end_callbacks()  # its transport is closing: nothing to call any more
        quiet = self._quiet.get(session.user_id)
        if quiet is not None and session in quiet:
            quiet.discard(session)
            if not quiet:
                del self._quiet[session.user_id]
            return
        live = self._by_user.get(session.user_id)
        if live is None or session not in live:
            return
        live.discard(session)
        self._live_sessions -= 1
        last = not live
        if last:
            del self._by_user[session.user_id]
            if session.user_id not in self._elsewhere:
                self._announce(session.username, online=False)
        if self.on_change is not None:
            self.on_change(session.user_id, session.username, False if last else None)

    def online_elsewhere(self, node_id: str, user_id: int, username: str) -> None:
        """Another node says the user came online there."""
        nodes = self._elsewhere.setdefault(user_id, set())
        if not nodes and user_id not in self._by_user:
            self._announce(username, online=True)
        nodes.add(node_id)
        self._names_elsewhere[user_id] = username

    def offline_elsewhere(self, node_id: str, user_id: int, username: str) -> None:
        """Another node says the user went offline there (or that node is gone)."""
        nodes = self._elsewhere.get(user_id)
        if nodes is None or node_id not in nodes:
            return
        nodes.discard(node_id)
        if not nodes:
            del self._elsewhere[user_id]
            del self._names_elsewhere[user_id]
            if user_id not in self._by_user:
                self._announce(username, online=False)

    def set_elsewhere(self, online: dict[tuple[int, str], str]) -> None:
        """Replace the view of other nodes ((user id, node id) -> name, read from the store),
        announcing what changed: catches notices missed, and nodes that died."""
        for (user_id, node_id), username in online.items():
            self.online_elsewhere(node_id, user_id, username)
        for user_id, nodes in list(self._elsewhere.items()):
            for node_id in list(nodes):
                if (user_id, node_id) not in online:
                    self.offline_elsewhere(node_id, user_id, self._names_elsewhere[user_id])

    def _announce(self, username: str, *, online: bool) -> None:
        self._pending.append((username, online))
        self._changes_waiting.set()

    def tick_seconds(self) -> float:
        """How long changes gather before they are pushed: longer with more sessions online."""
        return min(MAX_TICK, max(MIN_TICK, self._live_sessions / FANOUT_PER_S))

    async def announce_forever(self) -> None:
        """Push the presence changes to every live session, once a tick, while there are any."""
        while True:
            await self._changes_waiting.wait()
            await trio.sleep(self.tick_seconds())
            self._changes_waiting = trio.Event()
            self.push_changes()

    def push_changes(self) -> None:
        """Hand the changes gathered so far to every live session as one shared tick."""
        if not self._pending:
            return
        tick = PresenceTick.of(self._pending_first, self._pending)
        self._pending_first += len(self._pending)
        self._pending = []
        for sessions in self._by_user.values():
            for session in sessions:
                session.offer_presence(tick)

    def touch_user(self, user_id: int) -> None:
        """The user did something (an HTTP request): reset their idle time in `who`."""
        for session in self._by_user.get(user_id, ()):
            session.touch()

    def sessions_of(self, user_id: int) -> set[LiveSession]:
        return self._by_user.get(user_id, set())

    def all_sessions(self) -> list[LiveSession]:
        """Every session, quiet ones included."""
        return [
            s
            for by_user in (self._by_user, self._quiet)
            for group in by_user.values()
            for s in group
        ]

    def end_sessions_of(self, user_id: int, reason: str, *, keep: LiveSession | None = None) -> int:
        """End the user's sessions, quiet ones included (all but `keep`); how many were ended."""
        mine = self.sessions_of(user_id) | self._quiet.get(user_id, set())
        ending = [s for s in mine if s is not keep]
        for session in ending:
            session.end(reason)
        return len(ending)

    def online_users(self) -> dict[int, str]:
        """Every user online here: id -> name."""
        return {uid: next(iter(group)).username for uid, group in self._by_user.items()}

    def is_online(self, user_id: int) -> bool:
        return user_id in self._by_user

    def who(self) -> list[OnlineUser]:
        now = trio.current_time()
        online = []
        for sessions in self._by_user.values():
            first = min(sessions, key=lambda s: s.since)
            online.append(
                OnlineUser(
                    username=first.username,
                    since=first.since,
                    idle_seconds=max(0.0, now - max(s.last_active for s in sessions)),
                    sessions=len(sessions),
                )
            )
        return sorted(online, key=lambda u: u.username)
