"""Authentication under attack: enumeration, brute force, token secrecy, TLS, and what one
user can learn or do to another."""

from __future__ import annotations

import json
import logging
import ssl
import warnings
from pathlib import Path

import bcrypt
import pytest
import trio

from broker import tls
from broker.client import RequestFailed, Trust, TrustError, connect
from broker.core.throttle import LoginRefused, LoginThrottle
from broker.protocol import encode_frame
from tests.conftest import RunningBroker, make_config, running_broker
from tests.test_security_limits import logged, raw_connection

TIMEOUT = 10


# -- enumeration -----------------------------------------------------------------------------


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every bcrypt.checkpw call the broker makes (the hashes checked against)."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


async def _raw_login_reply(broker: RunningBroker, username: str, password: str) -> bytes:
    async with raw_connection(broker) as raw:
        await raw.send_raw(
            encode_frame({"op": "login", "id": 7, "username": username, "password": password})
        )
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            data += await raw.stream.receive_some(65536)
        return data


async def test_unknown_user_and_wrong_password_are_byte_identical_and_cost_one_bcrypt_each(
    broker: RunningBroker, checkpw_calls: list[bytes]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("alice", "right-password"):
            pass
        checkpw_calls.clear()
        wrong_password = await _raw_login_reply(broker, "alice", "wrong-password")
        assert len(checkpw_calls) == 1
        unknown_user = await _raw_login_reply(broker, "nobody", "wrong-password")
        assert len(checkpw_calls) == 2
    assert wrong_password == unknown_user
    reply = json.loads(wrong_password[4:])
    assert reply["error"]["code"] == "auth_failed"
    # The unknown user was checked against a dummy hash of the same cost, not skipped.
    real_hash, dummy_hash = checkpw_calls
    assert real_hash != dummy_hash
    assert real_hash[:7] == dummy_hash[:7]  # "$2b$04$": same algorithm and cost


# -- brute force: the throttle's schedule, deterministic on trio's virtual clock ---------------


def _throttle(**overrides: float) -> LoginThrottle:
    settings = {"failures_per_hour": 100, "slow_after": 5, "max_delay": 30.0, "max_wait": 5.0}
    settings.update(overrides)
    return LoginThrottle(**settings)  # type: ignore[arg-type]


def _fail(throttle: LoginThrottle, username: str, address: str) -> float:
    attempt = throttle.admit(username, address)
    throttle.finish(attempt, ok=False, username=username, address=address)
    return attempt.delay


async def test_wrong_passwords_are_spaced_out_as_documented(autojump_clock: object) -> None:
    throttle = _throttle(max_wait=60.0)
    delays = []
    for _ in range(12):
        delay = _fail(throttle, "alice", "203.0.113.9")
        delays.append(delay)
        await trio.sleep(delay)  # the broker waits this long before checking
    # Five free tries, then 0.25 s doubling per failure, capped at login_max_delay.
    assert delays == [0, 0, 0, 0, 0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert throttle.delay_after(40) == 30.0


async def test_waits_beyond_the_inline_limit_are_refused_with_retry_after(
    autojump_clock: object,
) -> None:
    throttle = _throttle()
    for _ in range(10):
        await trio.sleep(_fail(throttle, "alice", "203.0.113.9"))
    with pytest.raises(LoginRefused) as refused:
        throttle.admit("alice", "203.0.113.9")  # would have to wait 8 s
    assert refused.value.retry_after == pytest.approx(8.0)
    await trio.sleep(8.0)
    assert throttle.admit("alice", "203.0.113.9").delay == 0


async def test_parallel_attempts_queue_behind_each_other(autojump_clock: object) -> None:
    throttle = _throttle()
    for _ in range(5):
        _fail(throttle, "alice", "203.0.113.9")
    # Three guesses at once: each waits for the previous one's slot, none goes free.
    delays = [throttle.admit("alice", "203.0.113.9").delay for _ in range(3)]
    assert delays == [0.25, 0.75, 1.75]


async def test_an_account_takes_at_most_100_failures_an_hour_from_anywhere(
    autojump_clock: object,
) -> None:
    throttle = _throttle(max_delay=0.0)  # no spacing: only the hourly cap is left
    owner = throttle.admit("alice", "192.0.2.1")  # the owner logged in from home before
    throttle.finish(owner, ok=True, username="alice", address="192.0.2.1")
    failures = 0
    refused = 0
    for i in range(1000):
        try:
            _fail(throttle, "alice", f"198.51.100.{i % 250}")
            failures += 1
        except LoginRefused as exc:
            refused += 1
            assert exc.retry_after > 0
    assert failures == 90  # the last ten are kept for the owner's known addresses
    assert refused == 910
    # The owner, from an address that logged in before, is still checked ...
    owner = throttle.admit("alice", "192.0.2.1")
    throttle.finish(owner, ok=True, username="alice", address="192.0.2.1")
    for _ in range(10):  # ... even if they mistype ten times ...
        _fail(throttle, "alice", "192.0.2.1")
    with pytest.raises(LoginRefused):  # ... but never past the hundredth failure.
        throttle.admit("alice", "192.0.2.1")
    assert throttle.failures.count("user:alice") == 100
    await trio.sleep(3600)
    assert throttle.admit("alice", "198.51.100.1").delay == 0


async def test_attempts_in_flight_count_against_the_cap(autojump_clock: object) -> None:
    throttle = _throttle(failures_per_hour=10, max_delay=0.0)
    admitted = []
    with pytest.raises(LoginRefused):
        for _ in range(100):
            admitted.append(throttle.admit("alice", "203.0.113.9"))
    assert len(admitted) == 9  # unknown addresses get 10 - 1 reserved for the owner


# -- brute force against a live broker ----------------------------------------------------------


async def test_guessing_from_elsewhere_is_capped_and_the_owner_still_logs_in(
    tmp_path: Path, checkpw_calls: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path, login_failures_per_hour=10, login_max_delay=0.0)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker:
            async with broker.user("alice", "the-real-one"):  # the owner, from 127.0.0.1
                pass
            checkpw_calls.clear()
            codes = []
            for i in range(30):  # a guesser at another address
                async with raw_connection(broker, local_address="127.0.0.2") as raw:
                    reply = await raw.request("login", username="alice", password=f"guess{i}")
                    codes.append(reply["error"]["code"])
            assert codes == ["auth_failed"] * 9 + ["rate_limited"] * 21
            assert len(checkpw_calls) == 9  # refused attempts are not even checked
            async with broker.client() as owner:  # the owner, at a known address, gets in
                await owner.login("alice", "the-real-one")
            assert len(checkpw_calls) == 10
            async with broker.client() as owner:  # and one more mistake is still checked
                with pytest.raises(RequestFailed) as refused:
                    await owner.login("alice", "a-typo")
                assert refused.value.code == "auth_failed"
            async with broker.client() as owner:  # but the hourly cap now holds for all
                with pytest.raises(RequestFailed) as refused:
                    await owner.login("alice", "the-real-one")
                assert refused.value.code == "rate_limited"
                assert refused.value.details["retry_after"] > 0
    assert logged(caplog, "login failed for 'alice'") == 10
    assert logged(caplog, "refused unchecked") == 22


# -- tokens and passwords never reach the logs ----------------------------------------------------


async def test_tokens_and_passwords_never_appear_in_logs(
    broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = ["first-password", "second-password"]
    with trio.fail_after(TIMEOUT):
        async with broker.user("root") as root:
            async with broker.client() as alice:
                secrets.append((await alice.login("alice", "first-password", create=True))["token"])
            async with broker.client() as alice:
                await alice.resume(secrets[-1])
                await alice.send_text("root", "hello")
                await alice.logout()
            async with broker.client() as alice:
                secrets.append((await alice.login("alice", "first-password"))["token"])
                secrets.append(
                    (await alice.change_password("first-password", "second-password"))["token"]
                )
                with pytest.raises(RequestFailed):
                    await alice.change_password("wrong-password", "third-password")
            async with broker.client() as alice:
                with pytest.raises(RequestFailed):
                    await alice.resume(secrets[2])
            invite = (await root.admin_invite())["invite"]
            secrets.append(invite)
            await root.admin_kick("alice")
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "alice" in text  # the log did see this flow
    for secret in secrets:
        assert secret not in text


# -- TLS against the live broker -------------------------------------------------------------------


async def test_live_broker_refuses_tls_1_1_and_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path, insecure_plaintext=False)
    old_client = tls.client_ssl_context_for_pinning()
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"ssl\.TLSVersion\.TLSv1(_1)? is deprecated", DeprecationWarning
        )
        old_client.minimum_version = ssl.TLSVersion.TLSv1
        old_client.maximum_version = ssl.TLSVersion.TLSv1_1
    old_client.set_ciphers("DEFAULT:@SECLEVEL=0")
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker:
            assert broker.info.fingerprint is not None
            tcp_stream = await trio.open_tcp_stream("127.0.0.1", broker.info.tcp_port)
            stream = trio.SSLStream(tcp_stream, old_client, server_hostname="localhost")
            with pytest.raises(trio.BrokenResourceError):
                await stream.do_handshake()
            await trio.aclose_forcefully(stream)
            known = tmp_path / "known_servers.json"
            async with connect(broker.address, trust=Trust.pinning(known)) as client:
                await client.login("alice", "password1", create=True)
                assert client.pin is not None
                assert client.pin.fingerprint == broker.info.fingerprint
    assert logged(caplog, "TLS handshake failed") == 1


async def test_pinned_fingerprint_mismatch_is_refused_before_any_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path / "broker", insecure_plaintext=False)
    impostor = tls.ensure_self_signed_certificate(tmp_path / "impostor", ["127.0.0.1"])
    wrong = tls.certificate_fingerprint(impostor.cert_path.read_bytes())
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker:
            known = tls.KnownServers(tmp_path / "known_servers.json")
            known.pin(f"127.0.0.1:{broker.info.tcp_port}", wrong)
            with pytest.raises(TrustError) as refused:
                async with connect(broker.address, trust=Trust.pinning(known.path)):
                    pytest.fail("connected to a broker with another certificate")
            assert broker.info.fingerprint in str(refused.value)
            assert wrong in str(refused.value)
            assert known.fingerprint_for(f"127.0.0.1:{broker.info.tcp_port}") == wrong
            # A client that does not accept new pins refuses an unknown broker too.
            with pytest.raises(TrustError):
                async with connect(
                    broker.address,
                    trust=Trust.pinning(tmp_path / "empty.json", accept_new=False),
                ):
                    pytest.fail("connected to an unpinned broker")
    assert logged(caplog, "login") == 0  # nothing was sent: no login was ever attempted


async def test_plaintext_on_a_network_address_needs_a_second_flag(tmp_path: Path) -> None:
    from broker.server import ConfigError

    config = make_config(tmp_path, host="0.0.0.0")
    with pytest.RaisesGroup(
        pytest.RaisesExc(ConfigError, match="plaintext"), flatten_subgroups=True
    ):
        async with running_broker(config):
            pass


# -- impersonation and cross-user access -----------------------------------------------------------


async def test_a_client_cannot_choose_the_sender(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await alice.request(
                "send", kind="text", to=["bob"], body="who am I?", sender="carol", sender_id=3
            )
            entry = await bob.next_mail()
            assert entry["sender"] == "alice"
            history = await bob.history()
            assert [h["sender"] for h in history] == ["alice"]


async def test_a_user_cannot_read_or_mark_another_users_mail(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            broker.user("alice") as alice,
            broker.user("bob") as bob,
            broker.user("eve") as eve,
        ):
            await alice.send_text("bob", "for bob only")
            seq = (await bob.next_mail())["seq"]
            assert (await eve.inbox())["entries"] == []
            assert await eve.history(with_user="bob") == []
            assert await eve.history(search="for bob") == []
            with pytest.raises(RequestFailed) as refused:
                await eve.mark_read([seq])
            assert refused.value.code == "not_found"
            # Naming another user in a request changes nothing: fields a request does not
            # have are ignored, and every read is of the caller's own mailbox.
            assert (await eve.request("inbox", user="bob", user_id=2))["entries"] == []
            assert not (await bob.inbox())["entries"][0]["read"]


async def test_a_prank_never_reveals_its_sender_to_the_recipient(broker: RunningBroker) -> None:
    with trio.fail_after(TIMEOUT):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            await alice.rickroll("bob")
            live = await bob.next_mail()
            inbox = (await bob.inbox())["entries"]
            everything = await bob.history()
            with_alice = await bob.history(with_user="alice")
            pranks = await bob.history(kind="rickroll")
            # The sender still sees what they sent.
            sent = await alice.history(kind="rickroll")
    for view in [live, *inbox, *everything, *pranks]:
        assert view["sender"] is None
        assert view["recipients"] == []
        assert "alice" not in json.dumps(view)
    assert with_alice == []  # filtering by the suspect must not confirm the guess
    assert [s["sender"] for s in sent] == ["alice"]


async def test_a_connection_is_closed_after_three_failed_logins(
    broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(TIMEOUT):
        async with raw_connection(broker) as raw:
            for guess in ("guess1", "guess2"):
                reply = await raw.request("login", username="alice", password=guess)
                assert reply["error"]["code"] == "auth_failed"
            await raw.request("resume", token="not-a-token")
            assert await raw.wait_closed() == []  # the third answer came, then the close
    assert logged(caplog, "3 failed logins") == 1


async def test_the_throttle_forgets_names_and_addresses_after_an_hour(
    autojump_clock: object,
) -> None:
    throttle = _throttle(failures_per_hour=10_000, max_delay=0.0)
    for i in range(2048):  # a spray of made-up names from many addresses
        _fail(throttle, f"user{i}", f"198.51.100.{i % 200}")
    assert len(throttle.failures._failures) > 2000
    await trio.sleep(3601)
    for _ in range(1024):
        _fail(throttle, "alice", "203.0.113.9")
    assert set(throttle.failures._failures) == {
        "user:alice",
        "ip:203.0.113.9",
        "pair:203.0.113.9|alice",
    }


async def test_a_success_of_your_own_does_not_reset_your_spacing(autojump_clock: object) -> None:
    throttle = _throttle()
    for i in range(8):  # spraying guesses at other people's accounts
        await trio.sleep(_fail(throttle, f"victim{i}", "203.0.113.9"))
    own = throttle.admit("mallory", "203.0.113.9")
    await trio.sleep(own.delay)
    throttle.finish(own, ok=True, username="mallory", address="203.0.113.9")
    assert throttle.admit("victim9", "203.0.113.9").delay > 0


async def test_many_good_logins_from_one_address_at_once_are_not_slowed(
    autojump_clock: object,
) -> None:
    """An office behind one NAT address reconnecting after a broker restart."""
    throttle = _throttle()
    attempts = [throttle.admit(f"user{i}", "203.0.113.9") for i in range(50)]
    assert [a.delay for a in attempts] == [0.0] * 50
    for i, attempt in enumerate(attempts):
        throttle.finish(attempt, ok=True, username=f"user{i}", address="203.0.113.9")
    assert throttle.admit("user50", "203.0.113.9").delay == 0.0
