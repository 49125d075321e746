"""docs/cli.md cannot drift: every ```console block in it is run, in order, against a broker
started by its own `mailnet serve` example, and each `$ mailnet ...` line's output (stdout and
stderr, as a terminal shows them) must match what the page says.

The page's examples are written for a broker at 127.0.0.1:7878 with its web UI on 8080; the
real ports, fingerprint and paths are replaced by those before comparing. Times are compared as
placeholders (`3m ago` and `just now` alike, ISO date-times alike), runs of spaces as one, and
`...` in the page matches any text, as doctest's ELLIPSIS does. An HTML comment
`<!-- doc-test: as USER -->` switches the user (each has a config dir of their own), and
`<!-- doc-test: background as USER: COMMAND -->` starts a command that runs until the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from cli_helpers import REPO, Expect, cli_env, run_cli, stop

from broker.tls import KnownServers

DOC = REPO / "docs" / "cli.md"
DOC_ADDRESS = "127.0.0.1:7878"
DOC_WEB_PORT = "8080"
DOC_DATABASE = "sqlite:////home/me/.local/share/mailnet/mailnet.db"
DOC_CONFIG = "~/.config/mailnet"
DOC_FINGERPRINT = (
    "SHA256:0F:8D:8F:7D:52:1C:A4:B0:3E:66:91:D2:7A:08:C5:13:F4:2B:9E:61:D7:35:0A:8C:4F:E2:93:B6:"
    "1D:70:0E:49"
)

ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")
WHEN = re.compile(r"\b(\d+h\d\dm|\d+[smhd]) ago\b|\bjust now\b")
DURATION = re.compile(r"\b(\d+h\d\dm|\d+[smhd])\b")
IDLE_SECONDS = re.compile(r'"idle_seconds": [0-9.]+')
DIRECTIVE = re.compile(r"<!-- doc-test: (as (\w+)|background as (\w+): (.+?)) -->")


@dataclass
class Example:
    line: int  # where the command is in docs/cli.md, for failure messages
    user: str
    command: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Background:
    line: int
    user: str
    command: str


def parse(text: str) -> list[Example | Background]:
    """The page's console examples and background directives, in order."""
    steps: list[Example | Background] = []
    user = "nobody"
    in_console = False
    for number, line in enumerate(text.splitlines(), 1):
        if not in_console:
            if directive := DIRECTIVE.search(line):
                if directive[2]:
                    user = directive[2]
                else:
                    steps.append(Background(number, directive[3], directive[4]))
            in_console = line.strip() == "```console"
            continue
        if line.strip() == "```":
            in_console = False
        elif line.startswith("$ "):
            steps.append(Example(number, user, line[2:]))
        else:
            example = steps[-1]
            assert isinstance(example, Example), f"docs/cli.md:{number}: output before a $ line"
            example.expected.append(line)
    return steps


def normalize(text: str) -> str:
    text = ISO_TIME.sub("<TIME>", text)
    text = WHEN.sub("<WHEN>", text)
    text = DURATION.sub("<DURATION>", text)
    text = IDLE_SECONDS.sub('"idle_seconds": <SECONDS>', text)
    lines = [" ".join(line.split()) for line in text.strip("\n").splitlines()]
    return "\n".join(lines).strip()


def matches(expected: str, actual: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in normalize(expected).split("..."))
    return re.fullmatch(pattern, normalize(actual), re.DOTALL) is not None


class Page:
    """The state of the run: the broker's real address and the doc's values for them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "mailnet"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli "$@"\n')
        wrapper.chmod(0o755)
        self.replacements: dict[str, str] = {}
        self.address = ""
        self.fingerprint = ""

    def config_dir(self, user: str) -> Path:
        return self.tmp_path / "users" / user

    def env(self, user: str) -> dict[str, str]:
        config = self.config_dir(user)
        if self.fingerprint and not config.exists():  # each user trusts the broker already
            KnownServers(config / "known_servers.json").pin(self.address, self.fingerprint)
        env = cli_env(config, self.address or None, PYTHONUNBUFFERED="1", COLUMNS="100")
        env["PATH"] = f"{self.bin}{os.pathsep}{env['PATH']}"
        return env

    def command(self, text: str) -> str:
        return text.replace(DOC_ADDRESS, self.address) if self.address else text

    def as_documented(self, output: str) -> str:
        for real, documented in self.replacements.items():
            output = output.replace(real, documented)
        return re.sub(re.escape(str(self.tmp_path / "users")) + r"/\w+", DOC_CONFIG, output)

    async def start_broker(self, example: Example) -> trio.Process:
        data = self.tmp_path / "data"
        process = await trio.lowlevel.open_process(
            ["bash", "-c", f"exec {example.command} --port 0 --web-port 0 --data-dir {data}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env("operator"),
            cwd=self.work,
        )
        assert process.stdout is not None
        banner = await Expect(process.stdout).expect("Stop with Ctrl-C.", timeout=60)
        lines = [line.strip() for line in banner.splitlines()]
        self.address = next(line for line in lines if line.startswith("127.0.0.1:"))
        self.fingerprint = next(line for line in lines if "fingerprint" in line).split(": ", 1)[1]
        web = next(line for line in lines if line.startswith("Web UI: https://127.0.0.1:"))
        web_address = web.split("https://", 1)[1].rstrip("/")
        self.replacements = {
            self.fingerprint: DOC_FINGERPRINT,
            web_address: f"127.0.0.1:{DOC_WEB_PORT}",
            self.address: DOC_ADDRESS,
            f"sqlite:///{data / 'mailnet.db'}": DOC_DATABASE,
        }
        self.check(example, banner + "Stop with Ctrl-C.\n", 0)
        return process

    async def run(self, example: Example) -> None:
        with trio.fail_after(120):
            done = await trio.run_process(
                ["bash", "-c", self.command(example.command)],
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                env=self.env(example.user),
                cwd=self.work,
                check=False,
            )
        self.check(example, done.stdout.decode(), done.returncode)

    def check(self, example: Example, output: str, returncode: int) -> None:
        expected = "\n".join(example.expected)
        actual = self.as_documented(output)
        where = f"docs/cli.md:{example.line}: `$ {example.command}` as {example.user}"
        assert matches(expected, actual), (
            f"{where} printed:\n{actual}\n--- the page says:\n{expected}"
        )
        fails = "mailnet: error:" in expected
        assert (returncode != 0) == fails, f"{where} exited {returncode}:\n{actual}"


def test_the_page_has_examples_of_every_command() -> None:
    commands = {
        " ".join(step.command.split("mailnet ", 1)[1].split()[:1])
        for step in parse(DOC.read_text())
        if isinstance(step, Example) and "mailnet " in step.command
    }
    expected = {
        "serve", "db", "login", "logout", "send", "text", "announce", "rickroll", "inbox",
        "read", "who", "history", "prefs", "listen", "passwd", "block", "unblock", "blocks",
        "admin", "trust",
    }  # fmt: skip
    assert expected <= commands, expected - commands
    for name in ("shell", "bench"):  # interactive or minutes long: shown, not executed
        assert f"mailnet {name}" in DOC.read_text()


def test_the_page_documents_every_command_of_the_cli() -> None:
    from cli.main import main

    text = DOC.read_text()
    for name, command in main.commands.items():
        assert f"### {name}" in text or f", {name}" in text, f"docs/cli.md: no section for {name}"
        for sub in getattr(command, "commands", {}):
            assert f"mailnet {name} {sub}" in text, f"docs/cli.md: `mailnet {name} {sub}`"


def test_normalizing_treats_times_and_spacing_alike() -> None:
    assert matches("6*  text  alice  3m ago  hi", "6*  text  alice  just now  hi")
    assert matches(
        "Date: 2026-11-30T08:18:09.829669Z (1m ago)", "Date: 2027-01-01T00:00:00Z (5s ago)"
    )
    assert matches("SHA256:0F:...:49 (x)", "SHA256:0F:AA:BB:49 (x)")
    assert not matches("Sent text #4 to bob.", "Sent text #5 to bob.")


async def test_the_examples_in_docs_cli_md_do_what_they_say(tmp_path: Path) -> None:
    steps = parse(DOC.read_text())
    first = steps[0]
    assert isinstance(first, Example) and first.command.startswith("mailnet serve"), first
    page = Page(tmp_path)
    broker = await page.start_broker(first)
    background: list[trio.Process] = []
    try:
        for step in steps[1:]:
            if isinstance(step, Background):
                process = await trio.lowlevel.open_process(
                    ["bash", "-c", "exec " + page.command(step.command)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=page.env(step.user),
                    cwd=page.work,
                )
                background.append(process)
                assert process.stderr is not None
                await Expect(process.stderr).expect("listening as", timeout=60)
            else:
                await page.run(step)
    finally:
        for process in background:
            await stop(process)
        assert await stop(broker, signal.SIGTERM) == 0


@pytest.mark.parametrize("group", [[], ["db"], ["admin"], ["trust"]])
async def test_a_group_without_its_command_prints_its_whole_help(
    tmp_path: Path, group: list[str]
) -> None:
    env = cli_env(tmp_path, None)
    bare = await run_cli(*group, env=env)
    helped = await run_cli(*group, "--help", env=env)
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: mailnet")
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.strip() == helped.stdout.strip()  # the normal help, not one squashed line
    assert "mailnet: error" not in bare.stderr
    assert "Commands:" in bare.stderr and len(bare.stderr.splitlines()) > 8
