"""Limits that hold for a cluster: two broker nodes on one fresh PostgreSQL schema count failed
logins and spend each user's send rate together, so N nodes do not mean N times the limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker.client import RequestFailed
from broker.protocol import encode_frame
from tests.conftest import PG_URL, make_config, running_broker
from tests.test_security_limits import raw_connection

pytestmark = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)

TIMEOUT = 30


async def test_failed_logins_are_capped_across_both_nodes_together(
    pg_url: str, tmp_path: Path
) -> None:
    # 10 failures an hour per account, one kept for the owner's known addresses; no spacing.
    limits = {"login_failures_per_hour": 10, "login_max_delay": 0.0, "db": pg_url}
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(make_config(tmp_path / "a", **limits)) as a,
            running_broker(make_config(tmp_path / "b", **limits)) as b,
        ):
            async with a.user("alice", "the-real-one"):  # the owner, from 127.0.0.1
                pass
            codes = []
            for i in range(16):  # a guesser elsewhere, alternating between the nodes
                node = (a, b)[i % 2]
                async with raw_connection(node, local_address="127.0.0.2") as raw:
                    reply = await raw.request("login", username="alice", password=f"guess{i}")
                    codes.append((i % 2, reply["error"]["code"]))
            # Nine for the cluster, not nine per node.
            assert [code for _, code in codes] == ["auth_failed"] * 9 + ["rate_limited"] * 7
            assert {node for node, code in codes if code == "rate_limited"} == {0, 1}
            # The owner's known address (remembered by node a) still gets in through node b.
            async with b.client() as owner:
                await owner.login("alice", "the-real-one")


async def test_login_spacing_holds_across_both_nodes(pg_url: str, tmp_path: Path) -> None:
    # Spaced from the first failure on: parallel guesses on one account queue behind each
    # other's slots, 0, 0.25, 0.75, 1.75, 3.75, 7.75 s ... and waits over 5 s are refused.
    # Per node, four guesses each would all be served (the fourth at 1.75 s); together, the
    # queue reaches past 5 s, whatever the order the two nodes take them in.
    limits = {"login_slow_after": 1, "db": pg_url}
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(make_config(tmp_path / "a", **limits)) as a,
            running_broker(make_config(tmp_path / "b", **limits)) as b,
        ):
            async with a.user("alice", "the-real-one"):
                pass
            codes: list[str] = []

            async def guess(i: int) -> None:
                async with raw_connection((a, b)[i % 2], local_address="127.0.0.2") as raw:
                    reply = await raw.request("login", username="alice", password=f"guess{i}")
                    codes.append(reply["error"]["code"])

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(guess, i)
            assert "rate_limited" in codes
            assert set(codes) == {"auth_failed", "rate_limited"}


async def test_a_users_send_rate_is_shared_by_both_nodes(pg_url: str, tmp_path: Path) -> None:
    # A burst of 4 and practically no refill: four sends in all, whichever node takes them.
    limits = {"send_rate": 0.01, "send_burst": 4, "db": pg_url}
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(make_config(tmp_path / "a", **limits)) as a,
            running_broker(make_config(tmp_path / "b", **limits)) as b,
            a.user("bob"),
            a.user("alice") as alice_a,
            b.user("alice") as alice_b,
        ):
            outcomes = []
            for i in range(8):
                client = (alice_a, alice_b)[i % 2]
                try:
                    await client.send_text("bob", f"message {i}")
                    outcomes.append("sent")
                except RequestFailed as exc:
                    outcomes.append(exc.code)
                    assert exc.details["retry_after"] > 0
            assert outcomes == ["sent"] * 4 + ["rate_limited"] * 4


async def test_sends_of_one_connection_keep_their_order_while_waiting_for_leases(
    pg_url: str, tmp_path: Path
) -> None:
    # A lease is a fifth of a second's worth (20 tokens): 300 pipelined sends need many.
    limits = {"send_rate": 100.0, "send_burst": 2000, "db": pg_url}
    with trio.fail_after(TIMEOUT):
        async with running_broker(make_config(tmp_path / "a", **limits)) as a:
            async with a.user("bob"):
                pass
            async with raw_connection(a) as raw:
                login = {"username": "alice", "password": "password1", "create": True}
                assert (await raw.request("login", **login))["ok"] is True
                frames = b"".join(
                    encode_frame(
                        {"op": "send", "id": i, "kind": "text", "to": ["bob"], "body": str(i)}
                    )
                    for i in range(1, 301)
                )
                await raw.send_raw(frames)
                answers: dict[int, int] = {}
                while len(answers) < 300:
                    frame = await raw.receive()
                    if "re" in frame:
                        assert frame["ok"] is True, frame
                        answers[frame["re"]] = frame["message_id"]
            ids = [answers[i] for i in range(1, 301)]
            assert ids == sorted(ids)  # stored in the order they were sent


def test_a_login_ledger_reads_the_clock_after_waiting_for_its_lock(pg_url: str) -> None:
    """Two nodes decide logins on one key: the second waits for the first's lock, then must see
    the slot the first set as passed, not in its future (a correct login refused, seen under
    chaos with --login-max-delay 0)."""
    import threading
    import time

    from broker.store import make_engines, migrate
    from broker.store.limits import with_login_ledger

    engines = make_engines(pg_url)
    try:
        migrate.upgrade(engines.write)
        key = "account:bob"
        locked = threading.Event()

        def first(ledger):  # type: ignore[no-untyped-def]
            ledger.set_next_slot(key, ledger.now() + 0.5)
            locked.set()
            time.sleep(1.5)  # holds the row lock past the slot it set

        holder = threading.Thread(target=with_login_ledger, args=(engines, [key], True, first))
        holder.start()
        assert locked.wait(10)
        now, slot = with_login_ledger(
            engines, [key], True, lambda ledger: (ledger.now(), ledger.next_slot(key))
        )
        holder.join(10)
        assert slot is not None and now >= slot
    finally:
        engines.dispose()
