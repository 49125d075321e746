"""Running the `mailnet` CLI as a real subprocess (`python -m cli`) from trio tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT = 60


def cli_env(config_dir: Path | None, server: str | None, **extra: str) -> dict[str, str]:
    """The environment of a CLI process: no MAILNET_* leaks in from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILNET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["MAILNET_BCRYPT_ROUNDS"] = "4"
    # `mailnet login` with no server browses the LAN by mDNS: never on the host's network here
    # (tests/test_lan.py browses inside network namespaces of its own).
    env["MAILNET_BROWSE_SECONDS"] = "0"
    if config_dir is not None:
        env["MAILNET_CONFIG_DIR"] = str(config_dir)
    if server is not None:
        env["MAILNET_SERVER"] = server
    env.update(extra)
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


async def run_cli(*args: str, env: dict[str, str], stdin: bytes = b"") -> Result:
    with trio.fail_after(COMMAND_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "cli", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            cwd=REPO,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@dataclass
class User:
    """One person at their own computer: a config dir of their own, plaintext to `server`."""

    name: str
    config_dir: Path
    server: str
    password: str = "password1"
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return cli_env(
            self.config_dir, self.server, MAILNET_INSECURE_PLAINTEXT="1", **self.extra_env
        )

    async def __call__(self, *args: str, stdin: bytes = b"") -> Result:
        return await run_cli(*args, env=self.env, stdin=stdin)

    async def ok(self, *args: str, stdin: bytes = b"") -> Result:
        result = await self(*args, stdin=stdin)
        assert result.returncode == 0, result
        return result

    async def login(self) -> Result:
        return await self.ok("login", self.name, "--password-stdin", stdin=self.password.encode())


class Expect:
    """Reads a process's output as it comes and waits for expected text (pexpect, for trio)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.seen = ""
        self.position = 0

    async def expect(self, text: str, timeout: float = 20) -> str:
        with trio.fail_after(timeout):
            while text not in self.seen[self.position :]:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise AssertionError(f"output ended before {text!r}; got:\n{self.seen}")
                self.seen += data.decode()
        start = self.seen.index(text, self.position)
        before = self.seen[self.position : start]
        self.position = start + len(text)
        return before


async def start_cli(*args: str, env: dict[str, str]) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )


async def stop(process: trio.Process, sig: int = signal.SIGTERM) -> int:
    """Signal a process and wait for its exit code (SIGKILL if it does not stop)."""
    if process.returncode is None:
        process.send_signal(sig)
    with trio.move_on_after(COMMAND_TIMEOUT):
        return await process.wait()
    process.kill()
    await process.wait()
    raise AssertionError("the process did not stop on its signal")


async def read_to_end(stream: trio.abc.ReceiveStream) -> str:
    chunks = []
    with trio.fail_after(COMMAND_TIMEOUT):
        while data := await stream.receive_some(65536):
            chunks.append(data)
    return b"".join(chunks).decode()
