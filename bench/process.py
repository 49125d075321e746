"""A broker in a child process on a fixed port, so it can be SIGKILLed and restarted in place."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from broker.config import Config


def known_settings(settings: dict[str, object]) -> dict[str, object]:
    """The settings this version's Config has (limits come and go as the broker evolves)."""
    known = {f.name for f in dataclasses.fields(Config)}
    return {name: value for name, value in settings.items() if name in known}


def proc_stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ..., utime at [11],
    stime at [12]); OSError if the process is gone or there is no /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def child_pids(parent: int, command_holds: bytes = b"") -> list[int]:
    """The living children of a process whose command line holds `command_holds` (a broker's
    writer process: b"broker.store.writer"), from /proc; none where there is no /proc."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if proc_stat(entry.name)[1] == str(parent) and (
                command_holds in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


WRITER_COMMAND = b"broker.store.writer"

# The checkout this harness runs from: bench/ is not installed, so its child processes
# (`python -m bench.runbroker`, `python -m bench.load`, ...) find it through PYTHONPATH.
CHECKOUT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a `python -m bench.*` child, with the checkout importable."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    """A port that was free a moment ago (bound to 0, then released) on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerProcess:
    """`python -m bench.runbroker` in a subprocess; start, kill -9, terminate, restart.

    The methods block (they wait for the child): call them through `trio.to_thread.run_sync`
    from async code.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        settings: dict[str, object] | None = None,
        log_level: str = "WARNING",
        stderr: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.log_level = log_level
        self.stderr = stderr
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mailnet.db"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's stderr (every run of it), for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "bench.runbroker",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--log-level",
            self.log_level,
        ]
        for name, value in self.settings.items():
            cmd += ["--set", f"{name}={value}"]
        return cmd

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None, "already running"
        env = child_env(PYTHONUNBUFFERED="1")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the handle
            self.proc = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=log if self.stderr is None else self.stderr,
                text=True,
                env=env,
            )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            code = self.proc.wait(timeout)
            self.proc = None
            raise RuntimeError(
                f"the broker exited with code {code} before listening:\n{self.log_tail()}"
            )
        info = json.loads(line)
        assert info["port"] == self.port, info
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no flush, no cleanup; whatever was not committed is gone."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reap()
        self.kills += 1

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM: the graceful stop. Returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._reap()
        return code

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def restart(self) -> None:
        self.start()

    def __enter__(self) -> BrokerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.kill()
