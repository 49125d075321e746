"""`listen` and `shell` survive broker restarts: a real `mailnet serve` process is stopped and
started again on the same port while the clients run, and they go on after the last message
they showed, nothing lost and nothing repeated."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cli_helpers import Expect, User, cli_env, read_to_end, start_cli, stop

from cli.reconnect import Backoff


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """`mailnet serve` on a fixed loopback port, which can be stopped and started again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.process: trio.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = ["serve", "--port", str(self.port), "--web-port", "-1", "--insecure-plaintext"]
        self.process = await start_cli(
            *args, "--data-dir", str(self.data_dir), env=cli_env(None, None)
        )
        await Expect(self.process.stdout).expect("Stop with Ctrl-C.", timeout=60)

    async def stop(self) -> None:
        assert self.process is not None
        assert await stop(self.process) == 0
        self.process = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Broker]:
    broker = Broker(tmp_path / "data")
    await broker.start()
    try:
        yield broker
    finally:
        if broker.process is not None:
            await broker.stop()


async def lines_of(out: Expect, count: int) -> list[dict]:
    return [json.loads(await out.expect("\n", timeout=60)) for _ in range(count)]


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(initial=1, cap=8)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1


@pytest.mark.parametrize("credentials", ["saved session", "environment"])
async def test_listen_reconnects_after_restarts_and_resumes_after_the_last_seq_shown(
    tmp_path: Path, credentials: str
) -> None:
    async with running(tmp_path) as broker:
        alice = User("alice", tmp_path / "alice", broker.address)
        bob = User("bob", tmp_path / "bob", broker.address)
        await alice.login()
        await bob.login()
        if credentials == "environment":
            (bob.config_dir / "session.json").unlink()
            bob.extra_env = {"MAILNET_USER": "bob", "MAILNET_PASSWORD": bob.password}
        listen = await start_cli("listen", "--json", env=bob.env)
        try:
            err = Expect(listen.stderr)
            out = Expect(listen.stdout)
            await err.expect("listening as bob")
            await alice.ok("text", "bob", "one")
            assert [e["body"] for e in await lines_of(out, 1)] == ["one"]

            await broker.restart()
            await alice.ok("text", "bob", "two")
            await alice.ok("text", "bob", "three")
            assert [e["body"] for e in await lines_of(out, 2)] == ["two", "three"]

            await broker.restart()
            await alice.ok("text", "bob", "four")
            assert [e["body"] for e in await lines_of(out, 1)] == ["four"]
        finally:
            assert await stop(listen) == 0
        stdout = out.seen + await read_to_end(listen.stdout)
        stderr = err.seen + await read_to_end(listen.stderr)
    seqs = [json.loads(line)["seq"] for line in stdout.splitlines()]
    assert seqs == [1, 2, 3, 4]  # each once, in order
    reconnects = [line for line in stderr.splitlines() if "reconnecting" in line]
    assert len(reconnects) == 2, stderr
    assert all(
        line.startswith(f"mailnet: connection to {broker.address} lost (") for line in reconnects
    )
    assert "Traceback" not in stderr


async def test_listen_no_reconnect_exits_4_and_says_why(tmp_path: Path) -> None:
    async with running(tmp_path) as broker:
        bob = User("bob", tmp_path / "bob", broker.address)
        await bob.login()
        listen = await start_cli("listen", "--no-reconnect", env=bob.env)
        try:
            await Expect(listen.stderr).expect("listening as bob")
            await broker.stop()
            with trio.fail_after(60):
                code = await listen.wait()
        finally:
            await stop(listen)
        stderr = await read_to_end(listen.stderr)
    assert code == 4, stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith("mailnet: error: ")
    assert not line.rstrip().endswith(":"), line
    assert "reconnecting" not in line


async def test_shell_reconnects_after_a_restart_and_announces_new_mail(tmp_path: Path) -> None:
    async with running(tmp_path) as broker:
        alice = User("alice", tmp_path / "alice", broker.address)
        bob = User("bob", tmp_path / "bob", broker.address)
        await alice.login()
        await bob.login()
        await alice.ok("text", "bob", "before")
        shell = await start_cli("shell", env=bob.env)
        try:
            out = Expect(shell.stdout)
            err = Expect(shell.stderr)
            await out.expect("New text from alice: before", timeout=60)
            await out.expect("Choose: ")
            await broker.restart()
            await err.expect("reconnecting", timeout=60)
            await out.expect("Reconnected to", timeout=60)
            await alice.ok("text", "bob", "after")
            await out.expect("New text from alice: after", timeout=60)
            assert shell.stdin is not None
            await shell.stdin.send_all(b"2\nalice\nback again\n")
            await out.expect("Sent text")
            await shell.stdin.send_all(b"0\n")
            await out.expect("Bye!")
            with trio.fail_after(30):
                assert await shell.wait() == 0
        finally:
            await stop(shell)
        stdout = out.seen + await read_to_end(shell.stdout)
        assert "back again" in (await alice.ok("inbox")).stdout
    assert stdout.count("New text from alice: before") == 1  # not announced again
