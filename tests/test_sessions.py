"""Who is online, over a live broker: live sessions, crashed clients, heartbeat expiry.

Tests that need time to pass use pytest-trio's `autojump_clock`, which also drives the
in-process broker's timers. Under it, virtual time races ahead whenever every task waits on a
worker thread (bcrypt, SQLite), possibly by many seconds at once. So these tests never assume how
much virtual time a step takes: each waits for the event it expects (a presence event, the
broker closing a socket), and the `fail_after` guards are generous in virtual time (a hang
still jumps straight to them, so they fail fast in real time).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from broker.client import BrokerUnreachable, RequestFailed
from broker.protocol import NEED_DATA, FrameConnection

WAIT = 10
VIRTUAL_WAIT = 24 * 3600  # virtual seconds; see the module docstring


class RawClient:
    """A bare protocol client: it sends only what the test tells it to (no heartbeats)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.frames = FrameConnection()
        self.token: str | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(self.frames.send(frame))

    async def receive(self) -> dict[str, Any] | None:
        """The next frame, or None once the broker has closed the connection."""
        while True:
            frame = self.frames.next_frame()
            if frame is not NEED_DATA:
                assert isinstance(frame, dict)
                return frame
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.frames.receive_data(data)

    async def receive_reply(self) -> dict[str, Any] | None:
        """The next frame that is not a pushed event (presence, mail), or None when closed."""
        while True:
            frame = await self.receive()
            if frame is None or "event" not in frame:
                return frame

    async def response(self, rid: int) -> dict[str, Any]:
        while True:
            frame = await self.receive()
            assert frame is not None, "the broker closed the connection"
            if frame.get("re") == rid:
                return frame


@asynccontextmanager
async def silent_session(broker, name: str) -> AsyncIterator[RawClient]:
    """A client logged in as `name` that then never sends a heartbeat."""
    stream = await trio.open_tcp_stream("127.0.0.1", broker.info.tcp_port)
    try:
        raw = RawClient(stream)
        await raw.send(
            {"op": "login", "id": 1, "username": name, "password": "password1", "create": True}
        )
        response = await raw.response(1)
        assert response["ok"] is True
        raw.token = response["token"]
        yield raw
    finally:
        await trio.aclose_forcefully(stream)


async def wait_presence(client, username: str, *, online: bool) -> None:
    """Wait for the broker's presence event saying `username` came online / went offline."""
    wanted = {"event": "presence", "username": username, "online": online}
    while True:
        event = await client.next_event()
        if all(event.get(key) == value for key, value in wanted.items()):
            return


def online(users: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {u["username"]: u for u in users}


# -- who --------------------------------------------------------------------------------------


async def test_who_lists_users_with_a_live_session_and_their_session_count(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as laptop, broker.user("bob") as bob:
            async with broker.user("alice") as phone:
                users = online(await bob.who())
                assert set(users) == {"alice", "bob"}
                assert users["alice"]["sessions"] == 2
                assert users["bob"]["sessions"] == 1
                await phone.logout()
            # One of alice's sessions is left: she is still online, with one session.
            users = online(await bob.who())
            assert users["alice"]["sessions"] == 1
            await laptop.logout()
            await wait_presence(bob, "alice", online=False)
            assert list(online(await bob.who())) == ["bob"]


async def test_who_shows_since_and_idle_time(broker):
    before = datetime.now(UTC)
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob"):
            users = online(await alice.who())
    after = datetime.now(UTC)
    for user in users.values():
        since = datetime.fromisoformat(user["since"].replace("Z", "+00:00"))
        assert before - timedelta(seconds=1) <= since <= after
        assert user["idle_seconds"] >= 0
    # Asking is activity: the asker's own idle time is zero at the moment of asking.
    assert users["alice"]["idle_seconds"] == 0


async def test_idle_time_grows_while_a_user_does_nothing(broker, autojump_clock):
    with trio.fail_after(VIRTUAL_WAIT):
        async with broker.user("bob") as bob, silent_session(broker, "alice") as alice:
            await trio.sleep(5)  # virtual: the heartbeat timeout is 30 s
            users = online(await bob.who())
            assert users["alice"]["idle_seconds"] >= 5
            # Any request is activity and resets it.
            await alice.send({"op": "who", "id": 2})
            mine = online((await alice.response(2))["users"])
            assert mine["alice"]["idle_seconds"] == 0


async def test_who_needs_a_login(broker):
    with trio.fail_after(WAIT):
        async with broker.client() as anonymous:
            with pytest.raises(RequestFailed) as refused:
                await anonymous.who()
            assert refused.value.code == "not_authenticated"


# -- sessions that end without a logout -------------------------------------------------------


async def test_crashed_client_disappears_from_who(broker):
    with trio.fail_after(WAIT):
        async with broker.user("bob") as bob:
            stream = await trio.open_tcp_stream("127.0.0.1", broker.info.tcp_port)
            raw = RawClient(stream)
            await raw.send(
                {"op": "login", "id": 1, "username": "alice", "password": "secret1", "create": True}
            )
            assert (await raw.response(1))["ok"] is True
            assert "alice" in online(await bob.who())
            await trio.aclose_forcefully(stream)  # no logout: the process died
            await wait_presence(bob, "alice", online=False)
            assert list(online(await bob.who())) == ["bob"]
            # Nothing is locked: alice logs in again at once.
            async with broker.client() as alice:
                await alice.login("alice", "secret1")
                assert "alice" in online(await bob.who())


async def test_silent_client_is_expired_by_the_heartbeat_timeout(broker, autojump_clock):
    timeout = broker.config.heartbeat_timeout
    with trio.fail_after(VIRTUAL_WAIT):
        async with broker.user("bob") as bob:
            async with silent_session(broker, "alice") as alice:
                started = trio.current_time()
                # The broker says why it closes the connection, then closes it.
                closing = await alice.receive_reply()
                assert closing is not None
                assert closing["ok"] is False
                assert closing["error"]["code"] == "timeout"
                assert await alice.receive_reply() is None
                assert trio.current_time() - started >= timeout  # virtual time
            await wait_presence(bob, "alice", online=False)
            assert list(online(await bob.who())) == ["bob"]
            # bob, whose library sends heartbeats, outlived alice's timeout and is still here.
            assert not bob.closed


async def test_expired_user_can_log_in_again_at_once(broker, autojump_clock):
    with trio.fail_after(VIRTUAL_WAIT):
        async with broker.user("bob") as bob:
            async with silent_session(broker, "alice") as alice:
                while await alice.receive() is not None:
                    pass  # until the broker expires and closes the session
            await wait_presence(bob, "alice", online=False)
            async with broker.client() as again:
                response = await again.login("alice", "password1")
                assert response["created"] is False
                await wait_presence(bob, "alice", online=True)
                assert online(await bob.who())["alice"]["sessions"] == 1
                # And the new session works: mail reaches it.
                await bob.send_text("alice", "welcome back")
                assert (await again.next_mail())["body"] == "welcome back"
            # Expiry ended the connection, not the login: its saved token still resumes.
            async with broker.client() as resumed:
                assert (await resumed.resume(alice.token))["username"] == "alice"


async def test_client_with_heartbeats_stays_online_past_the_timeout(broker, autojump_clock):
    timeout = broker.config.heartbeat_timeout
    with trio.fail_after(VIRTUAL_WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await trio.sleep(5 * timeout)  # virtual; neither client sends anything itself
            assert not alice.closed and not bob.closed
            assert set(online(await bob.who())) == {"alice", "bob"}
            await alice.send_text("bob", "still here")
            assert (await bob.next_mail())["body"] == "still here"


async def test_library_reports_a_session_the_broker_expired(broker, autojump_clock):
    # A client whose heartbeats stopped (here: never started) learns why it was dropped.
    with trio.fail_after(VIRTUAL_WAIT):
        async with broker.client() as alice:
            # Log in with a raw request: the library starts heartbeats only from login().
            await alice.request("login", username="alice", password="password1", create=True)
            with pytest.raises(BrokerUnreachable) as dropped:
                await alice.next_mail()
            assert "heartbeat" in str(dropped.value)


async def test_a_quiet_session_is_not_online_and_is_pushed_nothing(broker):
    """One-shot commands (`mailnet text ...`) log in with live=False."""
    with trio.fail_after(10):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await bob.send_text("alice", "queued for alice's live clients")
            async with broker.client() as quiet:
                await quiet.login("alice", "password1", live=False)
                assert [u["username"] for u in await bob.who()] == ["alice", "bob"]
                assert [u["sessions"] for u in await bob.who()] == [1, 1]
                await bob.send_text("alice", "second")
                assert [e["body"] for e in (await quiet.inbox())["entries"]] == [
                    "second",
                    "queued for alice's live clients",
                ]
                await quiet.send_text("bob", "from a one-shot command")
                assert (await bob.next_mail())["body"] == "from a one-shot command"
                assert quiet.pending_mail() == []
            # The quiet session came and went without a presence event for bob ...
            async with broker.client() as carol:
                await carol.login("carol", "password1", create=True)
            seen = []
            while not seen or seen[-1] != ("carol", True):
                event = await bob.next_event()
                seen.append((event["username"], event["online"]))
            assert [name for name, _ in seen if name == "alice"] == []
            # ... while alice's live session got both texts pushed, in order.
            assert [(await alice.next_mail())["body"] for _ in range(2)] == [
                "queued for alice's live clients",
                "second",
            ]
