"""A raw-socket fuzz harness: hundreds of connections throw random, truncated, lying and
malformed frames (before and after logging in) at a live broker, while real clients keep
sending and receiving. Seeded, bounded in count and time; prints how many inputs it tried."""

from __future__ import annotations

import json
import logging
import random
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.protocol import encode_frame
from broker.store import MailStore
from tests.conftest import RunningBroker, make_config, running_broker

SEED = 20261130
CONNECTIONS = 300
CONCURRENCY = 25
FUZZ_ADDRESS = "127.0.0.2"  # the fuzzer's own address: its failed logins slow only itself

OPS = [
    "login", "resume", "logout", "ping", "send", "ack", "inbox", "mark_read", "who", "history",
    "set_prefs", "change_password", "block", "unblock", "list_blocks", "admin_users",
    "admin_set_disabled", "admin_kick", "admin_sessions", "admin_audit", "admin_invite",
]  # fmt: skip
FIELDS = [
    "id", "username", "password", "create", "kind", "to", "subject", "body", "seq", "seqs",
    "limit", "token", "with", "since", "search", "unread_only", "before_seq", "before_id",
    "prank_opt_out", "old_password", "new_password", "disabled", "invite", "client",
    "resume_after", "client_msg_id", "sender",
]  # fmt: skip
NAMES = ["alice", "bob", "root", "fuzzer", "nobody", "ALICE ", "", "a" * 40, "../etc"]


class Fuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.inputs = 0
        self.strategies: Counter[str] = Counter()

    def text(self) -> str:
        rng = self.rng
        pool = [
            "",
            " ",
            "\x00",
            "\ud800",  # a lone surrogate: valid in JSON text, not encodable as UTF-8
            "\n\r\t",
            "é漢字🙂",
            "%_\\",
            "'; DROP TABLE users; --",
            "x" * rng.choice([1, 200, 201, 5000, 70_000]),
        ]
        return "".join(rng.choice(pool) for _ in range(rng.randint(1, 3)))

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        choice = rng.randrange(10)
        if choice == 0:
            return None
        if choice == 1:
            return rng.choice([True, False])
        if choice == 2:
            return rng.choice([0, 1, -1, 2**31, 2**53, 2**63, -(2**70), 7])
        if choice == 3:
            return rng.choice([0.5, -1e308, 1e308])
        if choice == 4:
            return rng.choice(NAMES)
        if choice == 5 and depth < 3:
            return [self.value(depth + 1) for _ in range(rng.randint(0, 4))]
        if choice == 6 and depth < 3:
            return {self.text()[:10]: self.value(depth + 1) for _ in range(rng.randint(0, 3))}
        if choice == 7:
            return rng.choice(["email", "text", "announcement", "rickroll", "2026-01-01"])
        return self.text()

    def request(self) -> dict[str, Any]:
        rng = self.rng
        frame: dict[str, Any] = {"op": rng.choice(OPS) if rng.random() < 0.9 else self.text()}
        for name in rng.sample(FIELDS, rng.randint(0, 6)):
            frame[name] = self.value()
        return frame

    def encoded(self, obj: Any) -> bytes:
        # ensure_ascii keeps lone surrogates as \\ud800 escapes, which the broker must survive.
        payload = json.dumps(obj, ensure_ascii=True).encode("ascii")
        return struct.pack(">I", len(payload)) + payload

    def chunks(self) -> tuple[bool, list[bytes]]:
        """(log in first?, the byte strings to send, one write each)."""
        rng = self.rng
        strategy = rng.choice(
            ["random_bytes", "requests", "truncated", "lying_header", "bad_payload", "batched"]
        )
        self.strategies[strategy] += 1
        log_in = rng.random() < 0.4
        if strategy == "random_bytes":
            return log_in, [rng.randbytes(rng.randint(0, 4096)) for _ in range(rng.randint(1, 3))]
        if strategy == "requests":
            return log_in, [self.encoded(self.request()) for _ in range(rng.randint(1, 8))]
        if strategy == "truncated":
            frame = self.encoded(self.request())
            return log_in, [frame[: rng.randint(0, len(frame) - 1)]]
        if strategy == "lying_header":
            payload = json.dumps(self.request()).encode()
            claimed = rng.choice([0, 1, len(payload) + 10, 2**20 + 1, 2**32 - 1])
            return log_in, [struct.pack(">I", claimed) + payload]
        if strategy == "bad_payload":
            payload = rng.choice(
                [
                    b"[" * 50_000,
                    b'{"op": "login", "username": "alice"' + b" " * 100,
                    b"\xff\xfe\xfd",
                    b"null",
                    b"[1, 2, 3]",
                    b'"a string"',
                    b'{"op": "send", "kind": "text", "to": ["bob"], "body": "\\udc00"}',
                    b"{" + b'"a":1,' * 10_000 + b'"op":"ping"}',
                ]
            )
            return log_in, [struct.pack(">I", len(payload)) + payload]
        frames = b"".join(self.encoded(self.request()) for _ in range(rng.randint(2, 30)))
        return log_in, [frames]


async def fuzz_one(broker: RunningBroker, fuzzer: Fuzzer, replies: Counter[str]) -> None:
    log_in, chunks = fuzzer.chunks()
    linger = fuzzer.rng.choice([0.0, 0.05, 0.3])
    try:
        stream = await trio.open_tcp_stream(
            "127.0.0.1", broker.info.tcp_port, local_address=FUZZ_ADDRESS
        )
    except OSError:
        replies["connect_failed"] += 1
        return
    async with stream:
        try:
            if log_in:
                login = {"op": "login", "id": 0, "username": "fuzzer", "password": "password1"}
                await stream.send_all(encode_frame(login))
            for chunk in chunks:
                fuzzer.inputs += 1
                await stream.send_all(chunk)
            with trio.move_on_after(linger):
                while data := await stream.receive_some(65536):
                    for code in ("bad_frame", "bad_request", "unknown_op", "frame_too_large"):
                        replies[code] += data.count(code.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            replies["closed_by_broker"] += 1


async def probe(broker: RunningBroker, alice, bob, n: int) -> None:  # type: ignore[no-untyped-def]
    """The broker still delivers between real users, and still accepts new logins."""
    body = f"probe {n}"
    await alice.send_text("bob", body)
    while (await bob.next_mail())["body"] != body:
        pass  # the fuzzer may have mailed bob too
    async with broker.client() as carol:
        await carol.login("carol", "password1", create=True)
        await carol.ping()


async def test_random_and_broken_frames_never_stop_the_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(
        tmp_path,
        login_timeout=5.0,
        login_max_delay=0.05,
        login_failures_per_hour=100_000,
        max_connections_per_ip=CONCURRENCY * 2,
    )
    fuzzer = Fuzzer(random.Random(SEED))
    replies: Counter[str] = Counter()
    with trio.fail_after(120):
        async with running_broker(config) as broker:
            async with broker.user("root"), broker.user("fuzzer"):
                pass  # root is the admin; the fuzzer is not
            async with broker.user("alice") as alice, broker.user("bob") as bob:
                for batch in range(CONNECTIONS // CONCURRENCY):
                    async with trio.open_nursery() as nursery:
                        for _ in range(CONCURRENCY):
                            nursery.start_soon(fuzz_one, broker, fuzzer, replies)
                    await probe(broker, alice, bob, batch)
            store = MailStore.open(broker.info.db_url)
            try:
                integrity = store.integrity_check()
            finally:
                store.close()
    print(
        f"\nfuzz: {fuzzer.inputs} inputs over {CONNECTIONS} connections, seed {SEED}; "
        f"strategies {dict(fuzzer.strategies)}; replies {dict(replies)}"
    )
    assert sum(fuzzer.strategies.values()) == CONNECTIONS
    assert fuzzer.inputs >= CONNECTIONS
    assert replies["connect_failed"] == 0
    assert replies["bad_frame"] and replies["bad_request"] and replies["unknown_op"]
    assert replies["frame_too_large"]
    assert integrity == "ok"
    broken = [r for r in caplog.records if r.name.startswith("mailnet") and r.levelno >= 40]
    assert broken == [], [r.getMessage() for r in broken]


async def test_garbage_at_the_tls_layer_never_stops_the_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Random bytes instead of a ClientHello, a ClientHello cut short, and garbage after a good
    handshake: each ends in a closed connection and a log line, and real clients carry on."""
    import ssl

    from broker.client import Trust, connect

    caplog.set_level(logging.INFO)
    rng = random.Random(SEED + 1)
    config = make_config(tmp_path, insecure_plaintext=False, login_timeout=5.0)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tried = Counter[str]()
    with trio.fail_after(60):
        async with running_broker(config) as broker:
            port = broker.info.tcp_port

            async def attack(kind: str, noise: bytes) -> None:
                tried[kind] += 1
                stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
                try:
                    if kind == "random":  # another protocol, then noise
                        await stream.send_all(b"GET / HTTP/1.1\r\n" + noise)
                    elif kind == "bad_record":  # a handshake record longer than TLS allows
                        await stream.send_all(b"\x16\x03\x01\xff\xff" + noise)
                    else:  # a good handshake, then bytes that are not TLS records
                        stream = trio.SSLStream(stream, context, server_hostname="localhost")
                        await stream.do_handshake()
                        await stream.transport_stream.send_all(noise)
                    while await stream.receive_some(4096):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    await trio.aclose_forcefully(stream)

            for _ in range(3):
                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        kind = rng.choice(["random", "bad_record", "after"])
                        nursery.start_soon(attack, kind, rng.randbytes(rng.randint(1, 2048)))
                known = tmp_path / "known_servers.json"
                async with connect(broker.address, trust=Trust.pinning(known)) as client:
                    await client.login("alice", "password1", create=True)
                    await client.send_text("alice", "still here")
                    assert (await client.next_mail())["body"] == "still here"
    print(f"\ntls fuzz: {sum(tried.values())} connections, seed {SEED + 1}: {dict(tried)}")
    assert sum(tried.values()) == 60
    assert logged_lines(caplog, "TLS handshake failed") == tried["random"] + tried["bad_record"]
    broken = [r for r in caplog.records if r.name.startswith("mailnet") and r.levelno >= 40]
    assert broken == [], [r.getMessage() for r in broken]


def logged_lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name.startswith("mailnet"))
