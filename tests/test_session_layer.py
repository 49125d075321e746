"""The core Session driven directly, without sockets (as h11 tests its state machine): a real
Broker on a real SQLite file, and a recording Outlet in place of a transport.

What a session does is pinned here once for every transport; tests/test_sessions.py,
test_web_api.py and the others pin what each transport makes of it on the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import broker.core.feed as feed_module
from broker.config import Config
from broker.core import Broker, Message, Session
from broker.core.presence import PushedEvent, event_of
from broker.protocol import ErrorCode, RemoteProtocolError, RequestRefused, parse_request, requests
from broker.protocol import responses as r
from broker.protocol.events import Event, PresenceEvent
from broker.server import open_store
from broker.store import EntryRecord
from tests.conftest import make_config

PASSWORD = "password1"


class RecordingOutlet:
    """A transport that keeps what the session sends it, and closes its 'connection' (the
    nursery the session runs in) when the session ends, as a real transport does."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.mail: list[Message] = []
        self.events: list[Event] = []
        self.ended: tuple[ErrorCode, str] | None = None
        self.closed = trio.Event()
        self._changed = trio.Event()

    async def push(self, mail: list[Message], events: list[PushedEvent]) -> None:
        self.mail.extend(mail)
        self.events.extend(event_of(e) for e in events)  # shared presence ticks unwrapped
        self._changed.set()
        self._changed = trio.Event()

    async def end(self, code: ErrorCode, message: str) -> None:
        self.ended = (code, message)
        self.closed.set()
        self.nursery.cancel_scope.cancel()

    async def wait_for_events(self, count: int) -> list[Event]:
        while len(self.events) < count:
            await self._changed.wait()
        return self.events

    async def wait_for_mail(self, count: int) -> list[Message]:
        while len(self.mail) < count:
            await self._changed.wait()
        return [m["entry"] for m in self.mail]


@asynccontextmanager
async def running_core(config: Config) -> AsyncIterator[Broker]:
    store = await trio.to_thread.run_sync(open_store, config)
    try:
        core = Broker(store, config)
        async with trio.open_nursery() as nursery:
            await nursery.start(core.run)
            yield core
            nursery.cancel_scope.cancel()
    finally:
        store.close()


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_core(make_config(tmp_path)) as running:
        yield running


@asynccontextmanager
async def connection(core: Broker) -> AsyncIterator[tuple[Session, RecordingOutlet]]:
    """A session as a live transport holds one: an outlet and a nursery for its feed."""
    async with trio.open_nursery() as nursery:
        outlet = RecordingOutlet(nursery)
        yield Session(core, peer="127.0.0.1", outlet=outlet, nursery=nursery), outlet
        nursery.cancel_scope.cancel()


def login(username: str, password: str = PASSWORD, **fields: Any) -> requests.Request:
    return parse_request(
        {"op": "login", "username": username, "password": password, "create": True, **fields}
    )


def text(to: str, body: str) -> requests.Send:
    send = parse_request({"op": "send", "kind": "text", "to": [to], "body": body})
    assert isinstance(send, requests.Send)
    return send


async def create_accounts(core: Broker, *usernames: str) -> None:
    for username in usernames:
        request = login(username)
        assert isinstance(request, requests.Login)
        await Session(core, peer="127.0.0.1").log_in(request)


async def test_backlog_then_live_mail_reach_the_outlet_in_order(core: Broker) -> None:
    with trio.fail_after(10):
        await create_accounts(core, "alice", "bob")
        async with connection(core) as (alice, _):
            await alice.handle(login("alice"))
            await alice.send(text("bob", "while you were away"))
            async with connection(core) as (bob, outlet):
                answer = await bob.handle(login("bob"))
                assert isinstance(answer, r.LoginResult) and answer.resume_after == 0
                assert [e["body"] for e in await outlet.wait_for_mail(1)] == ["while you were away"]
                await alice.send(text("bob", "live"))
                entries = await outlet.wait_for_mail(2)
                assert [e["body"] for e in entries] == ["while you were away", "live"]
                assert [e["seq"] for e in entries] == [1, 2]
                assert outlet.ended is None


async def test_presence_changes_are_pushed_to_other_online_users(core: Broker) -> None:
    with trio.fail_after(10):
        await create_accounts(core, "alice", "bob")
        async with connection(core) as (bob, outlet):
            await bob.handle(login("bob"))
            async with connection(core) as (alice, _):
                await alice.handle(login("alice"))
                await outlet.wait_for_events(2)
            assert await outlet.wait_for_events(3) == [
                PresenceEvent(username="bob", online=True),  # every online session hears it
                PresenceEvent(username="alice", online=True),
                PresenceEvent(username="alice", online=False),
            ]


async def test_a_quiet_login_is_not_online_and_is_fed_nothing(core: Broker) -> None:
    with trio.fail_after(10):
        await create_accounts(core, "alice", "bob")
        async with connection(core) as (alice, _), connection(core) as (bob, outlet):
            await alice.handle(login("alice"))
            await bob.handle(login("bob", live=False))
            assert [u.username for u in await core.who()] == ["alice"]
            await alice.send(text("bob", "not pushed"))
            await bob.handle(requests.Ping())
            assert outlet.mail == [] and outlet.events == []


async def test_a_second_login_on_one_session_is_refused(core: Broker) -> None:
    with trio.fail_after(10):
        async with connection(core) as (session, _):
            await session.handle(login("alice"))
            with pytest.raises(RequestRefused) as refused:
                await session.handle(login("alice"))
            assert refused.value.code == ErrorCode.ALREADY_AUTHENTICATED


async def test_every_operation_but_ping_and_login_needs_a_login(core: Broker) -> None:
    with trio.fail_after(10):
        async with connection(core) as (session, _):
            assert await session.handle(requests.Ping()) == r.PingResult()
            for request in (
                requests.Who(),
                requests.Inbox(),
                requests.Ack(seq=1),
                requests.Logout(),
                requests.ListBlocks(),
                requests.AdminUsers(),
            ):
                with pytest.raises(RequestRefused) as refused:
                    await session.handle(request)
                assert refused.value.code == ErrorCode.NOT_AUTHENTICATED
            with pytest.raises(RequestRefused) as refused:
                session.start_sends([text("bob", "hi")], lambda results: None)
            assert refused.value.code == ErrorCode.NOT_AUTHENTICATED


async def test_third_failed_login_marks_the_connection_for_closing(core: Broker) -> None:
    with trio.fail_after(10):
        await create_accounts(core, "alice")
        async with connection(core) as (session, _):
            for _attempt in range(3):
                assert not session.closing
                with pytest.raises(RequestRefused) as refused:
                    await session.handle(login("alice", "wrong password", create=False))
                assert refused.value.code == ErrorCode.AUTH_FAILED
            assert session.closing
            assert session.user is None


async def test_logout_answers_bye_and_marks_the_connection_for_closing(core: Broker) -> None:
    with trio.fail_after(10):
        async with connection(core) as (session, _):
            answer = await session.handle(login("alice"))
            assert isinstance(answer, r.LoginResult)
            assert await session.handle(requests.Logout()) == r.LogoutResult()
            assert session.closing
            with pytest.raises(RequestRefused):  # the token is dead
                await core.user_for_token(answer.token)


async def test_login_deadline_is_fixed_and_heartbeat_deadline_moves(core: Broker) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            outlet = RecordingOutlet(nursery)
            session = Session(core, peer="127.0.0.1", outlet=outlet, nursery=nursery, started_at=5)
            assert session.read_deadline() == 5 + core.config.login_timeout
            await session.handle(login("alice"))
            before = trio.current_time()
            assert session.read_deadline() >= before + core.config.heartbeat_timeout
            nursery.cancel_scope.cancel()


async def test_expiry_before_login_says_the_login_took_too_long(core: Broker) -> None:
    with trio.fail_after(10):
        async with connection(core) as (session, outlet):
            await session.expire()
        assert outlet.ended == (ErrorCode.TIMEOUT, "login took too long")
        assert session.closing


async def test_expiry_after_login_ends_the_session_and_leaves_who(core: Broker) -> None:
    with trio.fail_after(10):
        async with connection(core) as (watcher, _):
            await watcher.handle(login("watcher"))
            async with connection(core) as (session, outlet):
                await session.handle(login("alice"))
                assert "alice" in {u.username for u in await core.who()}
                await session.expire()
            assert outlet.ended == (ErrorCode.TIMEOUT, "no heartbeat: session expired")
            assert "alice" not in {u.username for u in await core.who()}


async def test_password_change_ends_the_users_other_sessions(core: Broker) -> None:
    with trio.fail_after(10):
        async with connection(core) as (first, first_outlet):
            await first.handle(login("alice"))
            async with connection(core) as (second, second_outlet):
                await second.handle(login("alice"))
                answer = await second.handle(
                    requests.ChangePassword(old_password=PASSWORD, new_password="password2")
                )
                assert isinstance(answer, r.ChangePasswordResult) and answer.sessions_ended == 1
                await first_outlet.closed.wait()
                assert second_outlet.ended is None
                assert second.token == answer.token
        assert first_outlet.ended == (
            ErrorCode.SESSION_ENDED,
            "your password was changed; log in again",
        )


async def test_store_unavailable_during_a_feed_fetch_keeps_the_session(
    core: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug of issue 9: the refusal escaped the feed and dropped the connection silently.
    The feed now waits and reads again from the same cursor: the mail arrives, once."""
    monkeypatch.setattr(feed_module, "FEED_RETRY_FIRST", 0.01)
    real_fetch = core.fetch_after
    failures = 2
    calls = 0

    async def flaky_fetch(user_id: int, after_seq: int, limit: int) -> list[EntryRecord]:
        nonlocal failures, calls
        calls += 1
        if failures:
            failures -= 1
            raise RequestRefused(ErrorCode.UNAVAILABLE, "the message store is unavailable")
        return list(await real_fetch(user_id, after_seq, limit))

    with trio.fail_after(10):
        await create_accounts(core, "alice", "bob")
        async with connection(core) as (alice, _):
            await alice.handle(login("alice"))
            await alice.send(text("bob", "one"))
            await alice.send(text("bob", "two"))
            monkeypatch.setattr(core, "fetch_after", flaky_fetch)
            async with connection(core) as (bob, outlet):
                await bob.handle(login("bob"))
                entries = await outlet.wait_for_mail(2)
                assert [e["body"] for e in entries] == ["one", "two"]
                assert outlet.ended is None
                assert not bob.closing
                assert calls >= 3  # two refused reads, then the one that worked
                assert await bob.handle(requests.Ping()) == r.PingResult()


async def test_any_other_feed_failure_ends_the_session_with_an_internal_error(
    core: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_fetch(user_id: int, after_seq: int, limit: int) -> list[EntryRecord]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(core, "fetch_after", broken_fetch)
    with trio.fail_after(10):
        async with connection(core) as (session, outlet):
            await session.handle(login("alice"))
            await outlet.closed.wait()
        assert outlet.ended == (ErrorCode.INTERNAL, "internal error; it was logged")


async def test_a_session_without_a_transport_feed_only_hands_out_a_token(core: Broker) -> None:
    """An HTTP login: authenticated, not online, nothing to feed."""
    with trio.fail_after(10):
        session = Session(core, peer="127.0.0.1", fit_pages=False)
        request = login("alice")
        assert isinstance(request, requests.Login)
        result = await session.log_in(request)
        assert (result.user.username, result.created) == ("alice", True)
        assert session.live is None
        assert await core.who() == []
        caller = Session.of_caller(core, await core.user_for_token(result.token), None, peer="?")
        assert await caller.handle(requests.Inbox()) == r.InboxResult(entries=[], unread=0)


async def test_an_unknown_request_is_refused_as_unsupported(core: Broker) -> None:
    with trio.fail_after(10):
        await create_accounts(core, "alice")
        session = Session(core, peer="127.0.0.1")
        await session.log_in(requests.Login(username="alice", password=PASSWORD))
        with pytest.raises(RemoteProtocolError) as refused:
            await session.handle(object())  # type: ignore[arg-type]
        assert refused.value.code == ErrorCode.UNKNOWN_OP


async def test_every_refusal_is_counted_by_its_code_whatever_the_transport(core: Broker) -> None:
    """The metrics' errors by code are the session's: an HTTP request's refusal counts as a TCP
    one does (a session without an outlet is what the web API uses)."""
    with trio.fail_after(10):
        await create_accounts(core, "alice")
        session = Session(core, peer="127.0.0.1")  # no outlet: an HTTP request's session
        with pytest.raises(RequestRefused):
            await session.handle(requests.Inbox())  # not logged in

        def counted(code: str) -> float:
            value = core.metrics.registry.get_sample_value("mailnet_errors_total", {"code": code})
            return value or 0.0

        assert counted("not_authenticated") == 1
