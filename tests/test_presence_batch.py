"""Presence that scales: changes pushed once a tick, one shared event per session.

Over a live broker: every session learns every change (batched clients from `presence_batch`
events, older clients from today's one event per change, in order), and `who` stays exact.
Without sockets: a storm of logins makes one push per session per tick, not one per login, and
each shared event is encoded once however many sessions it goes to.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from broker.core.presence import LiveSession, Presence, PresenceTick, encode_events, event_of
from broker.protocol import NEED_DATA, FrameConnection, wire
from broker.protocol.events import Event

WAIT = 20


class RawClient:
    """A bare protocol client that records every pushed presence event it reads."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.frames = FrameConnection()
        self.presence: list[dict[str, Any]] = []
        self.ids = 0
        self.answer: dict[str, Any] = {}
        self.known: set[str] = set()  # who was online when it logged in (as `who` would say)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(self.frames.send(frame))

    async def receive(self) -> dict[str, Any]:
        while True:
            frame = self.frames.next_frame()
            if frame is not NEED_DATA:
                assert isinstance(frame, dict)
                if frame.get("event") in ("presence", "presence_batch"):
                    self.presence.append(frame)
                return frame
            data = await self.stream.receive_some(65536)
            assert data, "the broker closed the connection"
            self.frames.receive_data(data)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.ids += 1
        rid = self.ids
        await self.send({"op": op, "id": rid, **fields})
        while True:
            frame = await self.receive()
            if frame.get("re") == rid:
                assert frame["ok"] is True, frame
                return frame

    async def log_out(self) -> None:
        """Log out and wait for the broker to close the connection (the session is gone)."""
        await self.request("logout")
        while await self.stream.receive_some(65536):
            pass

    def view(self) -> set[str]:
        """Who this client believes is online: who was at its login, then the presence events
        it was pushed."""
        state = dict.fromkeys(self.known, True)
        for event in self.presence:
            if event["event"] == "presence":
                state[event["username"]] = event["online"]
            else:
                state.update(dict.fromkeys(event["online"], True))
                state.update(dict.fromkeys(event["offline"], False))
        return {name for name, online in state.items() if online}

    async def ping_until(self, done: Any) -> None:
        """Read (pinging now and then) until done() is true."""
        while not done():
            with trio.move_on_after(0.2):
                await self.request("ping")
                await self.receive()


class Clients:
    """Opens raw clients on the broker and closes them all at the end."""

    def __init__(self, broker: Any) -> None:
        self.port = broker.info.tcp_port
        self.streams: list[trio.SocketStream] = []

    async def open(self) -> RawClient:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.streams.append(stream)
        return RawClient(stream)

    async def login(self, name: str, **login: Any) -> RawClient:
        client = await self.open()
        client.answer = await client.request(
            "login", username=name, password="password1", create=True, **login
        )
        return client

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for stream in self.streams:
            await trio.aclose_forcefully(stream)


async def test_a_client_asks_for_presence_batch_events_at_login_or_resume(broker):
    with trio.fail_after(WAIT):
        async with Clients(broker) as clients:
            old = await clients.login("bob")
            assert "presence_batch" not in old.answer
            batched = await clients.login("alice", presence_batch=True)
            assert batched.answer["presence_batch"] is True
            await batched.ping_until(lambda: bool(batched.presence))
            assert batched.presence[0]["event"] == "presence_batch"
            assert "alice" in batched.presence[0]["online"]
            await old.ping_until(lambda: len(old.presence) >= 2)
            assert old.presence == [
                {"event": "presence", "username": "bob", "online": True},
                {"event": "presence", "username": "alice", "online": True},
            ]
            again = await clients.open()
            answer = await again.request("resume", token=old.answer["token"], presence_batch=True)
            assert answer["presence_batch"] is True


async def test_every_session_learns_every_change_and_who_stays_exact(broker):
    """Thirty users come online, ten leave, batched and older clients mixed: each session's
    view built from its events equals `who`."""
    with trio.fail_after(WAIT):
        async with Clients(broker) as clients:
            online: dict[str, RawClient] = {}
            for i in range(30):
                name = f"user{i:02d}"
                known = set(online)
                online[name] = await clients.login(name, presence_batch=i % 2 == 0)
                online[name].known = known
            for i in range(10):
                await online.pop(f"user{i * 3:02d}").log_out()
            who = await next(iter(online.values())).request("who")
            expected = {u["username"] for u in who["users"]}
            assert expected == set(online)
            for client in online.values():
                await client.ping_until(lambda c=client: c.view() == expected)
                assert client.view() == expected


async def test_old_clients_get_one_presence_event_per_change_in_order(broker):
    """A client that does not ask for batches is told each change as before, in order, only
    from its own login on; a user who came and went within one tick is told as both."""
    with trio.fail_after(WAIT):
        async with Clients(broker) as clients:
            early = await clients.login("early")
            watcher = await clients.login("watcher")
            blip = await clients.login("blip")
            await blip.log_out()
            late = await clients.login("late", presence_batch=True)
            changes = [("watcher", True), ("blip", True), ("blip", False), ("late", True)]
            expected = [
                {"event": "presence", "username": name, "online": online}
                for name, online in changes
            ]
            await watcher.ping_until(lambda: len(watcher.presence) >= len(expected))
            assert watcher.presence == expected
            await early.ping_until(lambda: len(early.presence) >= len(expected) + 1)
            assert early.presence == [
                {"event": "presence", "username": "early", "online": True},
                *expected,
            ]
            await late.ping_until(lambda: "late" in late.view())
            assert all(event["event"] == "presence_batch" for event in late.presence)


def session(user_id: int, *, batched: bool) -> LiveSession:
    return LiveSession(user_id, f"u{user_id}", "test", cursor=0, presence_batch=batched)


async def test_a_login_storm_makes_one_push_per_session_per_tick_not_per_login():
    """A thousand users come online within one tick: each session is handed one tick (one
    wake-up, one write), and a batched session one event, not a thousand."""
    presence = Presence()
    sessions = [session(i, batched=i % 2 == 0) for i in range(1000)]
    for s in sessions:
        presence.add(s)
    presence.push_changes()
    everyone = {f"u{i}" for i in range(1000)}
    for s in sessions:
        assert len(s._ticks) == 1
        events = [msgspec.to_builtins(event_of(e)) for e in s.take_events()]
        if s.presence_batch:
            assert len(events) == 1
            assert set(events[0]["online"]) == everyone
        else:  # today's events, from its own login on
            assert [e["username"] for e in events] == [f"u{i}" for i in range(s.user_id, 1000)]
    presence.push_changes()  # nothing new: nobody is woken
    assert all(not s._ticks for s in sessions)


async def test_a_shared_presence_event_is_encoded_once_for_every_session():
    presence = Presence()
    sessions = [session(i, batched=True) for i in range(500)]
    for s in sessions:
        presence.add(s)
    presence.push_changes()
    calls = 0
    frames = FrameConnection()

    def encode(event: Event) -> bytes:
        nonlocal calls
        calls += 1
        return frames.send_payload(wire.event_payload(event))

    sent = {encode_events(s.take_events(), encode) for s in sessions}
    assert calls == 1
    assert len(sent) == 1


async def test_a_batch_names_each_changed_user_once_with_their_state_at_the_tick_end():
    tick = PresenceTick.of(0, [("a", True), ("b", True), ("a", False), ("c", False), ("c", True)])
    assert msgspec.to_builtins(tick.batch.event) == {
        "event": "presence_batch",
        "online": ["b", "c"],
        "offline": ["a"],
    }
    told = [msgspec.to_builtins(event_of(e)) for e in tick.events_for(batched=False, since=2)]
    assert [(e["username"], e["online"]) for e in told] == [
        ("a", False),
        ("c", False),
        ("c", True),
    ]


async def test_the_tick_grows_with_the_sessions_online_within_bounds():
    presence = Presence()
    assert presence.tick_seconds() == 0.05
    for i in range(2000):
        presence.add(session(i, batched=True))
    assert presence.tick_seconds() == 2.0
    for i in range(2000, 40_000):
        presence.add(session(i, batched=True))
    assert presence.tick_seconds() == 10.0


def count_tasks() -> int:
    """Every task in this trio run (the test's and the in-process broker's)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def test_an_idle_live_connection_keeps_two_tasks_in_the_broker(broker):
    """Idle cost: a live connection that only heartbeats has its reader and its feed, no task
    waiting for its end (started only if it ends) and no flusher (started by its first send)."""
    with trio.fail_after(WAIT):
        async with Clients(broker) as clients:
            first = await clients.login("idle0", presence_batch=True)
            await first.request("ping")
            before = count_tasks()
            idle = [await clients.login(f"idle{i}", presence_batch=True) for i in range(1, 11)]
            for client in idle:
                await client.request("ping")
            assert count_tasks() - before == 2 * len(idle)
            # A send starts the sender's flusher; a kick still closes the kicked connection.
            sender = idle[0]
            answer = await sender.request("send", kind="text", to=["idle1"], body="hi")
            assert answer["ok"] is True
            admin = first  # the first account on the broker is its admin
            await admin.request("admin_kick", username="idle3")
            while True:
                frame = await idle[2].receive()
                if frame.get("error"):
                    assert frame["error"]["code"] == "session_ended"
                    break
