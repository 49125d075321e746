"""Failed logins are counted per account AND per address (and per both together), so the
owner's correct password from an address a guesser shares (an office behind one NAT address)
gets in at once while the guesser is slowed; and a failure tells the guesser nothing about
which accounts were used from there."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker import server
from broker.client import RequestFailed
from broker.core import Broker
from broker.core.throttle import LoginRefused, LoginThrottle
from tests.conftest import make_config, running_broker
from tests.test_security_limits import raw_connection

OFFICE = "203.0.113.9"


def _throttle(**overrides: float) -> LoginThrottle:
    settings = {"failures_per_hour": 100, "slow_after": 5, "max_delay": 30.0, "max_wait": 5.0}
    settings.update(overrides)
    return LoginThrottle(**settings)  # type: ignore[arg-type]


def _fail(throttle: LoginThrottle, username: str, address: str) -> float:
    attempt = throttle.admit(username, address)
    throttle.finish(attempt, ok=False, username=username, address=address)
    return attempt.delay


def _log_in(throttle: LoginThrottle, username: str, address: str) -> float:
    attempt = throttle.admit(username, address)
    throttle.finish(attempt, ok=True, username=username, address=address)
    return attempt.delay


async def _spray(throttle: LoginThrottle, address: str, guesses: int) -> None:
    """A guesser trying made-up accounts from `address`, waiting out each delay."""
    for i in range(guesses):
        await trio.sleep(_fail(throttle, f"victim{i}", address))


async def test_the_owner_at_a_guessers_address_gets_in_at_once(autojump_clock: object) -> None:
    throttle = _throttle(max_wait=60.0)
    _log_in(throttle, "alice", OFFICE)  # alice has logged in from the office before
    await _spray(throttle, OFFICE, 10)
    # The guesser's next attempt waits (4 s and growing); alice's does not.
    assert throttle.admit("victim99", OFFICE).delay >= 4.0
    owner = throttle.admit("alice", OFFICE)
    assert owner.delay == 0.0
    throttle.finish(owner, ok=True, username="alice", address=OFFICE)
    # Another colleague who never logged in from here is treated like the guesser.
    assert throttle.admit("bob", OFFICE).delay > 0


async def test_a_wrong_password_from_the_owners_address_is_answered_like_anyone_elses(
    autojump_clock: object,
) -> None:
    throttle = _throttle(max_wait=60.0)
    _log_in(throttle, "alice", OFFICE)
    await _spray(throttle, OFFICE, 9)
    stranger = throttle.admit("bob", OFFICE)  # an account never used from the office
    throttle.finish(stranger, ok=False, username="bob", address=OFFICE)
    known = throttle.admit("alice", OFFICE)
    # Checked at once, but a failure is held back to where a stranger's would have been:
    # behind bob's slot, spaced by the address's 9 failures when bob was admitted.
    assert known.delay == 0.0
    assert known.failure_delay > 0
    assert known.delay + known.failure_delay == pytest.approx(
        stranger.delay + throttle.delay_after(9)
    )
    throttle.finish(known, ok=False, username="alice", address=OFFICE)


async def test_once_strangers_are_refused_the_owners_failures_are_refused_too(
    autojump_clock: object,
) -> None:
    throttle = _throttle()  # waits over 5 s are refused with retry_after
    _log_in(throttle, "alice", OFFICE)
    await _spray(throttle, OFFICE, 11)  # the next stranger would wait 8 s
    with pytest.raises(LoginRefused) as refused:
        throttle.admit("victim99", OFFICE)
    known = throttle.admit("alice", OFFICE)  # checked: a right password gets in ...
    assert known.delay == 0.0
    # ... and a wrong one gets the very refusal a stranger got, not auth_failed.
    assert known.failure_refusal is not None
    assert known.failure_refusal.retry_after == pytest.approx(refused.value.retry_after)


async def test_guessing_the_owners_account_from_the_owners_address_is_still_slowed(
    autojump_clock: object,
) -> None:
    throttle = _throttle(max_wait=60.0)
    _log_in(throttle, "alice", OFFICE)
    delays = []
    for _ in range(8):
        attempt = throttle.admit("alice", OFFICE)
        throttle.finish(attempt, ok=False, username="alice", address=OFFICE)
        delays.append(attempt.delay)
        await trio.sleep(attempt.delay + attempt.failure_delay)
    assert delays == [0, 0, 0, 0, 0, 0.25, 0.5, 1.0]  # the pair's own failures space it


# -- a live broker ------------------------------------------------------------------------------


@pytest.fixture
def brokers(monkeypatch: pytest.MonkeyPatch) -> list[Broker]:
    """Every Broker the server makes, so a test can reach its throttle."""
    made: list[Broker] = []

    class Recorded(Broker):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(server, "Broker", Recorded)
    return made


async def test_an_office_colleague_logs_in_while_the_guesser_beside_them_is_refused(
    tmp_path: Path, brokers: list[Broker]
) -> None:
    with trio.fail_after(20):
        async with running_broker(make_config(tmp_path)) as broker:
            async with broker.user("alice", "the-real-one"):  # from 127.0.0.1, the office
                pass
            # An hour of guessing from the same address, on the broker's own throttle.
            throttle = brokers[0].accounts.throttle
            with pytest.raises(LoginRefused):
                for i in range(100):
                    _fail(throttle, f"victim{i}", "127.0.0.1")
            async with raw_connection(broker) as guesser:
                reply = await guesser.request("login", username="victim1", password="guess")
                assert reply["error"]["code"] == "rate_limited"
            async with raw_connection(broker) as alice:
                reply = await alice.request("login", username="alice", password="a-typo")
                assert reply["error"]["code"] == "rate_limited"  # as anyone's from here
            async with broker.client() as alice_client:
                await alice_client.login("alice", "the-real-one")  # in, at once
            async with broker.client() as bob:
                with pytest.raises(RequestFailed) as refused:
                    await bob.login("bob", "password1", create=False)
                assert refused.value.code == "rate_limited"
