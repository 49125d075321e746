"""Connections that have not logged in share one bounded memory budget, on the TCP port and the
web port: many connections each holding an unfinished frame never take the broker's buffers
past it, the ones beyond it are refused with too_many_connections, and logged-in users are not
affected at all."""

from __future__ import annotations

import struct
from pathlib import Path

import httpx
import pytest
import trio

from broker import server
from broker.core import Broker
from broker.core.prelogin import PreLoginBudget, PreLoginFrames
from broker.protocol import FrameConnection, RemoteProtocolError, encode_frame
from tests.conftest import make_config, running_broker
from tests.test_security_limits import RawConnection

KIB = 1024


@pytest.fixture
def brokers(monkeypatch: pytest.MonkeyPatch) -> list[Broker]:
    """Every Broker the server makes, so a test can read its budget."""
    made: list[Broker] = []

    class Recorded(Broker):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(server, "Broker", Recorded)
    return made


# -- sans I/O -----------------------------------------------------------------------------------


def test_frames_before_login_are_small_and_charged_after_login_neither() -> None:
    budget = PreLoginBudget(40 * KIB)
    logged_in = False
    frames = PreLoginFrames(
        FrameConnection(max_frame_bytes=KIB * KIB),
        budget,
        lambda: logged_in,
        max_pre_login_frame_bytes=16 * KIB,
    )
    with pytest.raises(RemoteProtocolError) as refused:
        frames.receive_data(struct.pack(">I", 16 * KIB + 1))
    assert refused.value.code == "frame_too_large"
    assert budget.used == 0

    other = PreLoginFrames(
        FrameConnection(), budget, lambda: logged_in, max_pre_login_frame_bytes=16 * KIB
    )
    login = encode_frame({"op": "login", "padding": "p" * 15 * KIB})
    other.receive_data(login[: 10 * KIB])
    assert budget.used == 10 * KIB
    third = PreLoginFrames(
        FrameConnection(), budget, lambda: False, max_pre_login_frame_bytes=16 * KIB
    )
    third.receive_data(encode_frame({}) + bytes(20 * KIB))  # fits: 30 KiB held in all
    with pytest.raises(RemoteProtocolError) as busy:
        third.receive_data(bytes(20 * KIB))  # would take the budget past 40 KiB
    assert busy.value.code == "too_many_connections"
    assert budget.peak <= budget.total
    other.receive_data(login[10 * KIB :])
    assert other.next_frame()["op"] == "login"  # type: ignore[index]
    logged_in = True  # `other` logged in: it holds nothing and takes full-size frames
    other.receive_data(encode_frame({"op": "ping", "body": "x" * 100 * KIB}))
    assert budget.used == third.buffered
    assert other.next_frame()["op"] == "ping"  # type: ignore[index]
    other.close()
    third.close()
    assert budget.used == 0


# -- a live broker -----------------------------------------------------------------------------


async def test_many_unfinished_frames_before_login_never_exceed_the_budget(
    tmp_path: Path, brokers: list[Broker]
) -> None:
    budget_bytes = 256 * KIB
    config = make_config(
        tmp_path,
        pre_login_buffer_bytes=budget_bytes,
        max_connections_per_ip=500,
        login_timeout=30.0,
    )
    connections = 60
    with trio.fail_after(30):
        async with running_broker(config) as broker, broker.user("bob") as bob:
            async with broker.user("alice") as alice:  # logged in before the flood
                budget = brokers[0].prelogin
                refused: list[str] = []
                streams: list[trio.SocketStream] = []
                async with trio.open_nursery() as nursery:

                    async def hold_unfinished_frame() -> None:
                        stream = await trio.open_tcp_stream("127.0.0.1", broker.info.tcp_port)
                        streams.append(stream)
                        # A 16 KiB frame announced, 12 KiB of it sent, the rest never.
                        await stream.send_all(struct.pack(">I", 16 * KIB) + bytes(12 * KIB))
                        frames = await RawConnection(stream).wait_closed()
                        refused.extend(f["error"]["code"] for f in frames)

                    for _ in range(connections):
                        nursery.start_soon(hold_unfinished_frame)
                    # Every connection is either holding its bytes or was refused.
                    while budget.holders + len(refused) < connections:
                        await trio.sleep(0.01)
                    assert budget.peak <= budget_bytes
                    assert 0 < budget.holders <= budget_bytes // (4 + 12 * KIB)
                    assert len(refused) >= connections - budget_bytes // (12 * KIB)
                    assert set(refused) == {"too_many_connections"}
                    # The logged-in user is not affected, even with frames over the
                    # pre-login size.
                    body = "y" * 60_000
                    await alice.send_text("bob", body)
                    assert (await bob.next_mail())["body"] == body
                    nursery.cancel_scope.cancel()
                for stream in streams:
                    await stream.aclose()
            # Closed connections gave their share back.
            while budget.used:
                await trio.sleep(0.01)
            assert budget.peak <= budget_bytes


async def test_the_web_port_charges_logins_and_sockets_to_the_budget(
    tmp_path: Path, brokers: list[Broker]
) -> None:
    config = make_config(tmp_path, web_port=0)
    with trio.fail_after(20):
        async with (
            running_broker(config) as broker,
            httpx.AsyncClient(base_url=broker.info.web[0], timeout=10) as web,
        ):
            login = {"username": "carol", "password": "password1", "create": True}
            ok = await web.post("/api/login", json=login)
            assert ok.status_code == 200
            # A login body larger than any login needs is refused.
            big = await web.post("/api/login", json={**login, "padding": "z" * 20 * KIB})
            assert big.json()["error"]["code"] == "frame_too_large"
            # With the budget taken, the next login is told the broker is busy.
            budget = brokers[0].prelogin
            assert budget.hold("someone else", budget.total)
            busy = await web.post("/api/login", json=login)
            assert busy.status_code == 503
            assert busy.json()["error"]["code"] == "too_many_connections"
            budget.release("someone else")
            assert (await web.post("/api/login", json=login)).status_code == 200
            assert budget.used == 0
