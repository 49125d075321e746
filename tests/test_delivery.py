"""Delivery over a live broker: live pushes to every session, offline queues that survive a
restart, exactly once per acknowledged point, and retried sends stored once."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from functools import partial

import pytest
import trio
from conftest import make_config, running_broker

from broker.client import Trust, connect
from broker.core import Broker, LiveSession
from broker.protocol import NEED_DATA, FrameConnection, requests
from broker.server import open_store

WAIT = 10


def db_rows(config, sql: str, *params: object) -> list[tuple]:
    """Read the broker's SQLite file through a separate connection, as an admin would."""
    with closing(sqlite3.connect(config.data_dir / "mailnet.db")) as db:
        return db.execute(sql, params).fetchall()


async def create_accounts(broker, *names: str) -> None:
    for name in names:
        async with broker.user(name):
            pass


# -- live notifications ---------------------------------------------------------------------


async def test_online_recipient_gets_mail_pushed_without_asking(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            ack = await alice.send_email(["bob"], "Now", "pushed")
            entry = await bob.next_mail()
            assert entry["message_id"] == ack["message_id"]
            assert entry["seq"] == 1


async def test_two_sessions_of_one_user_both_receive_a_text(broker):
    with trio.fail_after(WAIT):
        async with (
            broker.user("alice") as alice,
            broker.user("bob") as laptop,
            broker.user("bob") as phone,
        ):
            ack = await alice.send_text("bob", "on both?")
            for session in (laptop, phone):
                entry = await session.next_mail()
                assert (entry["message_id"], entry["body"]) == (ack["message_id"], "on both?")


async def test_senders_other_session_does_not_get_their_own_text(broker):
    with trio.fail_after(WAIT):
        async with (
            broker.user("alice") as desk,
            broker.user("alice") as phone,
            broker.user("bob") as bob,
        ):
            await desk.send_text("bob", "from my desk")
            assert (await bob.next_mail())["body"] == "from my desk"
            await bob.send_text("alice", "got it")
            # Mail arrives in seq order, so had alice's own text been in her mailbox it would
            # come first; bob's reply is the first thing either of her sessions sees.
            for session in (phone, desk):
                entry = await session.next_mail()
                assert (entry["seq"], entry["body"]) == (1, "got it")


# -- offline delivery -----------------------------------------------------------------------


async def test_offline_recipient_gets_queued_mail_after_a_broker_restart(tmp_path):
    config = make_config(tmp_path)
    sent = []
    with trio.fail_after(WAIT):
        async with running_broker(config) as first:
            await create_accounts(first, "bob")
            async with first.user("alice") as alice:
                sent.append((await alice.send_text("bob", "one"))["message_id"])
                sent.append((await alice.send_email(["bob"], "two", "second"))["message_id"])
                sent.append((await alice.announce("three", "third"))["message_id"])
                sent.append((await alice.send_text("bob", "four"))["message_id"])
                sent.append((await alice.rickroll("bob"))["message_id"])
        # The same data directory, a new broker (and a new port).
        async with running_broker(config) as second:
            async with second.user("bob") as bob:
                got = [await bob.next_mail() for _ in sent]
                assert [e["message_id"] for e in got] == sent
                assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]
                assert [e["kind"] for e in got] == [
                    "text",
                    "email",
                    "announcement",
                    "text",
                    "rickroll",
                ]
                # Exactly once: the next entry is one sent now, not a repeat.
                async with second.user("alice") as alice:
                    await alice.send_text("bob", "six")
                after = await bob.next_mail()
                assert (after["seq"], after["body"]) == (6, "six")
                assert bob.duplicates_dropped == 0
                await bob.logout()  # acknowledges everything through seq 6
            async with second.user("bob") as again:
                async with second.user("alice") as alice:
                    await alice.send_text("bob", "seven")
                # Nothing acknowledged comes back: the first entry is the new one.
                entry = await again.next_mail()
                assert (entry["seq"], entry["body"]) == (7, "seven")


async def test_a_new_login_gets_nothing_the_last_client_acknowledged_across_a_restart(tmp_path):
    config = make_config(tmp_path)
    with trio.fail_after(WAIT):
        # bob's client goes away without a logout; stopping the broker writes his ack.
        async with (
            running_broker(config) as first,
            first.user("bob") as bob,
            first.user("alice") as alice,
        ):
            for n in range(3):
                await alice.send_text("bob", f"m{n}")
            assert [(await bob.next_mail())["seq"] for _ in range(3)] == [1, 2, 3]
            await bob.flush_ack()
            await bob.ping()  # the ack frame is handled before the ping is answered
        async with (
            running_broker(config) as second,
            second.user("bob") as bob,
            second.user("alice") as alice,
        ):
            await alice.send_text("bob", "m3")
            entry = await bob.next_mail()
            assert (entry["seq"], entry["body"]) == (4, "m3")


async def test_second_session_starts_after_what_a_live_session_acknowledged(broker):
    # The ack is still in the broker's memory (written within a second): a session that
    # starts now must not be handed it again.
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as first:
            await alice.send_text("bob", "once")
            assert (await first.next_mail())["seq"] == 1
            await first.flush_ack()
            await first.ping()
            async with broker.user("bob") as second:
                await alice.send_text("bob", "twice")
                entry = await second.next_mail()
                assert (entry["seq"], entry["body"]) == (2, "twice")


async def test_acks_of_a_live_session_are_written_in_the_background(broker, autojump_clock):
    # Without a logout or a stop, the broker writes acks on its own within about a second.
    # Virtual time (autojump) races ahead while SQLite threads run, so this waits for the
    # stored value to change rather than for a fixed time.
    def stored_ack() -> int:
        [(acked,)] = db_rows(broker.config, "SELECT acked_seq FROM users WHERE username = 'bob'")
        return acked

    with trio.fail_after(3600):  # virtual seconds, generous for the races described above
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            for n in range(3):
                await alice.send_text("bob", f"m{n}")
            assert [(await bob.next_mail())["seq"] for _ in range(3)] == [1, 2, 3]
            await bob.flush_ack()
            while stored_ack() != 3:
                await trio.sleep(1)


async def test_resume_after_n_delivers_exactly_the_entries_after_n(broker):
    with trio.fail_after(WAIT):
        await create_accounts(broker, "bob")
        async with broker.user("alice") as alice:
            for n in range(1, 6):
                await alice.send_text("bob", f"m{n}")
        async with broker.client() as bob:
            response = await bob.login("bob", "password1", resume_after=3)
            assert response["resume_after"] == 3
            assert response["last_seq"] == 5
            got = [await bob.next_mail() for _ in range(2)]
            assert [(e["seq"], e["body"]) for e in got] == [(4, "m4"), (5, "m5")]
        async with broker.client() as bob:
            token = (await bob.login("bob", "password1", resume_after=0))["token"]
            assert [(await bob.next_mail())["seq"] for _ in range(5)] == [1, 2, 3, 4, 5]
        async with broker.client() as bob:
            await bob.resume(token, resume_after=4)
            assert (await bob.next_mail())["seq"] == 5


async def test_backlog_larger_than_a_page_arrives_in_order_while_new_mail_keeps_coming(tmp_path):
    # The feed reads the backlog from the store a page (1,000) at a time while live entries
    # queue up behind it: every seq must come out once, in order.
    config = make_config(tmp_path, send_burst=10_000, send_rate=10_000.0)
    backlog, live = 2_100, 300
    with trio.fail_after(60):
        async with running_broker(config) as broker:
            await create_accounts(broker, "bob")
            async with broker.user("alice") as alice:

                async def send_range(start: int, stop: int) -> None:
                    async with trio.open_nursery() as nursery:
                        for n in range(start, stop):
                            nursery.start_soon(alice.send_text, "bob", f"m{n}")

                await send_range(0, backlog)
                async with broker.user("bob") as bob, trio.open_nursery() as nursery:
                    nursery.start_soon(send_range, backlog, backlog + live)
                    seqs = [(await bob.next_mail())["seq"] for _ in range(backlog + live)]
                    assert seqs == list(range(1, backlog + live + 1))
                    assert bob.duplicates_dropped == 0


# -- retried sends ----------------------------------------------------------------------------


async def test_retried_send_with_the_same_client_id_is_stored_once(broker):
    with trio.fail_after(WAIT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            first = await alice.send_text("bob", "only once", client_msg_id="c-1")
            again = await alice.send_text("bob", "only once", client_msg_id="c-1")
            assert first["duplicate"] is False
            assert again["duplicate"] is True
            assert again["message_id"] == first["message_id"]
            # Sent many times at once (one group commit): still one message.
            replies = []

            async def retry() -> None:
                replies.append(await alice.send_text("bob", "burst", client_msg_id="c-2"))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(retry)
            assert len({r["message_id"] for r in replies}) == 1
            assert sum(not r["duplicate"] for r in replies) == 1
            assert [(await bob.next_mail())["body"] for _ in range(2)] == ["only once", "burst"]
    assert db_rows(broker.config, "SELECT client_msg_id FROM messages ORDER BY id") == [
        ("c-1",),
        ("c-2",),
    ]
    assert db_rows(broker.config, "SELECT count(*) FROM mailbox") == [(2,)]


async def test_retried_send_is_recognised_across_a_reconnect_and_a_restart(tmp_path):
    config = make_config(tmp_path)
    with trio.fail_after(WAIT):
        async with running_broker(config) as first:
            await create_accounts(first, "bob")
            async with first.user("alice") as alice:
                original = await alice.send_email(["bob"], "S", "B", client_msg_id="retry-me")
            async with first.user("alice") as alice:
                reconnected = await alice.send_email(["bob"], "S", "B", client_msg_id="retry-me")
        async with running_broker(config) as second, second.user("alice") as alice:
            restarted = await alice.send_email(["bob"], "S", "B", client_msg_id="retry-me")
            # The id is per sender: another user may use the same one.
            async with second.user("bob") as bob:
                own = await bob.send_text("alice", "mine", client_msg_id="retry-me")
    assert (reconnected["duplicate"], restarted["duplicate"]) == (True, True)
    assert original["message_id"] == reconnected["message_id"] == restarted["message_id"]
    assert own["duplicate"] is False
    assert own["message_id"] != original["message_id"]
    assert db_rows(config, "SELECT count(*) FROM messages") == [(2,)]
    assert db_rows(config, "SELECT count(*) FROM mailbox") == [(2,)]


# -- acknowledgements, at the core ------------------------------------------------------------


async def test_flushing_acks_waits_for_a_flush_already_in_flight(tmp_path):
    # Logout flushes the user's acks before answering. If the background flusher had
    # already taken them and was still writing, logout found nothing to do and answered
    # at once, so a login right after could read the old acked_seq and get mail again.
    config = make_config(tmp_path)
    store = await trio.to_thread.run_sync(open_store, config)
    try:
        broker = Broker(store, config)
        with trio.fail_after(WAIT):
            user = (await broker.login("bob", "password1", create=True, client="", peer="t")).user
            author = (await broker.login("al", "password1", create=True, client="", peer="t")).user
            async with trio.open_nursery() as nursery:
                nursery.start_soon(broker.commits.run)
                await broker.send(author, requests.Send("text", ("bob",), None, "hi", None))
                nursery.cancel_scope.cancel()
            broker.ack(LiveSession(user.id, user.username, "", cursor=1), 1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(broker.flush_acks)  # the background flusher, mid-write
                await trio.sleep(0)  # let it take the pending acks
                await broker.flush_acks()  # what logout does
                # Checked before any other checkpoint: the ack must be on disk already.
                assert db_rows(config, "SELECT acked_seq FROM users WHERE username = 'bob'") == [
                    (1,)
                ]
    finally:
        store.close()


# -- acknowledgements, in the client library ----------------------------------------------


async def test_client_acks_mail_that_arrived_in_the_same_read_as_its_login_response():
    # A backlog pushed right behind the login response can be routed (last_seq raised) before
    # login() resumes. The library then took those seqs as already acknowledged and never
    # acked them, so the next login got them all again. A stand-in broker on loopback sends
    # the response and three entries in one write, then reads what the client acks.
    frames = FrameConnection()
    acked: list[int] = []
    done = trio.Event()

    def mail(seq: int) -> dict:
        entry = {"seq": seq, "message_id": seq, "kind": "text", "sender": "alice"}
        entry |= {"recipients": ["bob"], "subject": None, "body": f"m{seq}"}
        entry |= {"sent_at": "2026-01-01T00:00:00.000000Z", "read": False, "direction": "in"}
        return {"event": "mail", "entry": entry}

    async def stand_in(stream: trio.SocketStream) -> None:
        incoming = FrameConnection()
        while not done.is_set():
            data = await stream.receive_some(65536)
            if not data:
                return
            incoming.receive_data(data)
            while (frame := incoming.next_frame()) is not NEED_DATA:
                assert isinstance(frame, dict)
                if frame["op"] == "login":
                    response = {"re": frame["id"], "ok": True, "username": "bob", "role": "user"}
                    response |= {"token": "t", "created": False, "last_seq": 3}
                    response |= {"resume_after": 0, "heartbeat_interval": 3600.0}
                    burst = [response, mail(1), mail(2), mail(3)]
                    await stream.send_all(b"".join(frames.send(f) for f in burst))
                elif frame["op"] == "ack":
                    acked.append(frame["seq"])
                elif frame["op"] == "ping":
                    await stream.send_all(frames.send({"re": frame["id"], "ok": True}))

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(partial(trio.serve_tcp, stand_in, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            async with connect(f"127.0.0.1:{port}", trust=Trust.plaintext()) as bob:
                await bob.login("bob", "password1")
                assert [(await bob.next_mail())["seq"] for _ in range(3)] == [1, 2, 3]
                await bob.flush_ack()
                await bob.ping()  # the stand-in reads frames in order: the ack came first
                done.set()
            nursery.cancel_scope.cancel()
    assert acked == [3]


async def test_an_exception_in_a_connect_block_reaches_the_caller_unwrapped(broker) -> None:
    from broker.client import RequestFailed

    with trio.fail_after(10):
        with pytest.raises(RequestFailed) as refused:
            async with broker.user("alice") as alice:
                await alice.send_text("nobody-here", "hello?")
    assert refused.value.code == "unknown_recipient"


async def test_client_sockets_give_up_on_a_broker_that_stops_acknowledging(broker) -> None:
    import socket

    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        pytest.skip("TCP_USER_TIMEOUT is Linux-only")
    with trio.fail_after(10):
        async with broker.user("alice") as alice:
            timeout = alice._stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
    assert timeout == 60_000
