"""`mailnet serve --lan`, `mailnet servers` and `mailnet login` with no server, for real: two
network namespaces joined by a veth pair with link-local addresses, the broker (and a spoofer)
advertising by mDNS in one, the client browsing and logging in from the other.

Needs root (to make namespaces); skipped with the reason otherwise. mDNS stays inside the
namespaces: nothing here browses or advertises on the host's own interfaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_helpers import COMMAND_TIMEOUT, REPO, Expect, Result, cli_env, stop

BROKER_IP = "169.254.77.1"
CLIENT_IP = "169.254.77.2"
PORT = 7878
WEB_PORT = 8443
BROWSE = "3"
SPOOFED_FINGERPRINT = "SHA256:" + ":".join(["AB"] * 32)


@dataclass(frozen=True)
class Lan:
    broker_ns: str
    client_ns: str

    def command(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Namespaces mnA<pid>/mnB<pid> joined by a veth pair 169.254.77.1 <-> 169.254.77.2."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = str(os.getpid())
    a, b = f"mnA{tag}", f"mnB{tag}"
    veth_a, veth_b = f"mva{tag}"[:15], f"mvb{tag}"[:15]
    made: list[str] = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        for ns, dev, address in ((a, veth_a, BROKER_IP), (b, veth_b, CLIENT_IP)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
    except (OSError, subprocess.CalledProcessError) as exc:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        detail = getattr(exc, "stderr", "") or exc
        pytest.skip(f"cannot make network namespaces joined by a veth pair: {detail}")
    try:
        yield Lan(a, b)
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and the pair
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def env_for(config_dir: Path | None, **extra: str) -> dict[str, str]:
    env = cli_env(config_dir, None, MAILNET_BROWSE_SECONDS=BROWSE, **extra)
    return env


async def run_in(lan: Lan, ns: str, *args: str, env: dict[str, str], stdin: bytes = b"") -> Result:
    with trio.fail_after(COMMAND_TIMEOUT):
        done = await trio.run_process(
            lan.command(ns, sys.executable, "-m", "cli", *args),
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            cwd=REPO,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@asynccontextmanager
async def broker_in(lan: Lan, data_dir: Path, *args: str) -> AsyncIterator[dict[str, Any]]:
    """`mailnet serve --json ...` in the broker's namespace; yields its startup summary."""
    process = await trio.lowlevel.open_process(
        lan.command(
            lan.broker_ns,
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--json",
            "--data-dir",
            str(data_dir),
            *args,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=cli_env(None, None),
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        line = await Expect(process.stdout).expect("\n", timeout=60)
        yield json.loads(line)
    finally:
        assert await stop(process) == 0


@asynccontextmanager
async def spoofer_in(lan: Lan, name: str, fingerprint: str) -> AsyncIterator[None]:
    """Another process advertising `name` at the broker's address with `fingerprint`."""
    process = await trio.lowlevel.open_process(
        lan.command(
            lan.broker_ns,
            sys.executable,
            str(REPO / "tests" / "lan_advertiser.py"),
            name,
            fingerprint,
            BROKER_IP,
            str(PORT),
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        await Expect(process.stdout).expect("advertising", timeout=30)
        yield
    finally:
        assert process.stdin is not None
        await process.stdin.aclose()
        with trio.fail_after(COMMAND_TIMEOUT):
            await process.wait()


def known_servers(config_dir: Path) -> dict[str, str]:
    path = config_dir / "known_servers.json"
    return json.loads(path.read_text()) if path.exists() else {}


async def test_login_with_no_server_finds_the_lan_broker_and_pins_its_certificate(
    lan: Lan, tmp_path: Path
) -> None:
    config = tmp_path / "alice"
    with trio.fail_after(180):
        async with broker_in(
            lan,
            tmp_path / "data",
            "--lan",
            "--lan-name",
            "classroom",
            "--port",
            str(PORT),
            "--web-port",
            str(WEB_PORT),
        ) as started:
            fingerprint = started["fingerprint"]
            assert started["lan"]["name"] == "classroom"
            assert started["lan"]["addresses"] == [f"{BROKER_IP}:{PORT}"]
            assert started["lan"]["web"] == [f"https://{BROKER_IP}:{WEB_PORT}/"]

            listed = await run_in(lan, lan.client_ns, "servers", "--json", env=env_for(config))
            assert listed.returncode == 0, listed
            [found] = listed.json_lines()
            assert found["name"] == "classroom"
            assert found["server"] == f"{BROKER_IP}:{PORT}"
            assert found["fingerprint"] == fingerprint and found["verified"] is True
            assert found["web_port"] == WEB_PORT

            login = await run_in(
                lan,
                lan.client_ns,
                "login",
                "alice",
                "--password-stdin",
                env=env_for(config),
                stdin=b"password1\n",
            )
            assert login.returncode == 0, login
            assert login.stdout.startswith(f"Logged in as alice on {BROKER_IP}:{PORT}")
            assert f"'classroom' at {BROKER_IP}:{PORT}, certificate {fingerprint}" in login.stderr
            assert known_servers(config) == {f"{BROKER_IP}:{PORT}": fingerprint}

            # Later commands use the saved session: no browsing, the pinned certificate.
            who = await run_in(lan, lan.client_ns, "who", "--json", env=env_for(config))
            assert who.returncode == 0, who
            assert "looking for brokers" not in who.stderr


async def test_the_web_invite_gives_the_lan_address_and_its_qr_code(
    lan: Lan, tmp_path: Path
) -> None:
    script = f"""
import json, ssl, httpx
base = "https://{BROKER_IP}:{WEB_PORT}"
with httpx.Client(base_url=base, verify=False, timeout=20) as web:
    token = web.post("/api/login", json={{"username": "alice", "password": "password1",
                                         "create": True}}).json()["token"]
    anonymous = web.get("/api/invite").status_code
    invite = web.get("/api/invite", headers={{"Authorization": "Bearer " + token}}).json()
print(json.dumps({{"anonymous": anonymous, **invite}}))
"""
    with trio.fail_after(180):
        async with broker_in(
            lan,
            tmp_path / "data",
            "--lan",
            "--lan-name",
            "classroom",
            "--port",
            str(PORT),
            "--web-port",
            str(WEB_PORT),
        ) as started:
            with trio.fail_after(COMMAND_TIMEOUT):
                done = await trio.run_process(
                    lan.command(lan.client_ns, sys.executable, "-c", script),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    cwd=REPO,
                )
            assert done.returncode == 0, done.stderr.decode()
            invite = json.loads(done.stdout)
    assert invite["anonymous"] == 401
    assert invite["url"] == f"https://{BROKER_IP}:{WEB_PORT}/"
    assert invite["name"] == "classroom"
    assert invite["fingerprint"] == started["fingerprint"]
    assert invite["svg"].startswith("<svg") and invite["url"] in invite["svg"]


async def test_a_spoofed_advertisement_is_refused_with_a_warning(lan: Lan, tmp_path: Path) -> None:
    """A broker that is not advertising, and someone advertising it under a fingerprint that is
    not its certificate's: the client refuses to send it a password and pins nothing."""
    config = tmp_path / "alice"
    with trio.fail_after(180):
        async with (
            broker_in(
                lan,
                tmp_path / "data",
                "--host",
                BROKER_IP,
                "--port",
                str(PORT),
                "--web-port",
                "-1",
            ) as started,
            spoofer_in(lan, "classroom", SPOOFED_FINGERPRINT),
        ):
            listed = await run_in(lan, lan.client_ns, "servers", "--json", env=env_for(config))
            assert listed.returncode == 0, listed
            [found] = listed.json_lines()
            assert found["fingerprint"] == SPOOFED_FINGERPRINT
            assert found["presented_fingerprint"] == started["fingerprint"]
            assert found["verified"] is False

            login = await run_in(
                lan,
                lan.client_ns,
                "login",
                "alice",
                "--password-stdin",
                env=env_for(config),
                stdin=b"password1\n",
            )
    assert login.returncode == 4, login
    assert "WARNING: refusing the broker advertised as 'classroom'" in login.stderr
    assert f"advertises certificate {SPOOFED_FINGERPRINT}" in login.stderr
    assert "no trustworthy broker" in login.stderr
    assert known_servers(config) == {}


async def test_a_spoofed_twin_is_refused_and_the_genuine_broker_used(
    lan: Lan, tmp_path: Path
) -> None:
    config = tmp_path / "alice"
    with trio.fail_after(180):
        async with (
            broker_in(
                lan,
                tmp_path / "data",
                "--lan",
                "--lan-name",
                "classroom",
                "--port",
                str(PORT),
                "--web-port",
                "-1",
            ) as started,
            spoofer_in(lan, "classroom", SPOOFED_FINGERPRINT),
        ):
            login = await run_in(
                lan,
                lan.client_ns,
                "login",
                "alice",
                "--password-stdin",
                env=env_for(config),
                stdin=b"password1\n",
            )
    assert login.returncode == 0, login
    assert "WARNING: refusing the broker advertised as 'classroom'" in login.stderr
    assert known_servers(config) == {f"{BROKER_IP}:{PORT}": started["fingerprint"]}


async def test_several_brokers_make_a_script_choose_with_server(lan: Lan, tmp_path: Path) -> None:
    config = tmp_path / "alice"
    with trio.fail_after(180):
        async with (
            broker_in(
                lan,
                tmp_path / "one",
                "--lan",
                "--lan-name",
                "room-1",
                "--port",
                str(PORT),
                "--web-port",
                "-1",
            ),
            broker_in(
                lan,
                tmp_path / "two",
                "--lan",
                "--lan-name",
                "room-2",
                "--port",
                str(PORT + 1),
                "--web-port",
                "-1",
            ),
        ):
            login = await run_in(
                lan,
                lan.client_ns,
                "login",
                "alice",
                "--password-stdin",
                "--json",
                env=env_for(config),
                stdin=b"password1\n",
            )
    assert login.returncode == 2, login
    assert sorted(item["name"] for item in login.json_lines()) == ["room-1", "room-2"]
    assert "2 brokers found on this network: choose one with --server" in login.stderr
    assert known_servers(config) == {}


async def test_several_brokers_give_a_numbered_choice_at_a_terminal(
    lan: Lan, tmp_path: Path
) -> None:
    import pexpect

    config = tmp_path / "alice"

    def converse() -> tuple[int, str]:
        child = pexpect.spawn(
            "ip",
            ["netns", "exec", lan.client_ns, sys.executable, "-m", "cli", "login", "alice"],
            env=env_for(config),
            cwd=str(REPO),
            encoding="utf-8",
            timeout=40,
        )
        child.expect(r"Which one \[1-2\]: ")
        menu = child.before
        child.sendline("2")
        child.expect("Password: ")
        child.sendline("password1")
        child.expect(r"Create account 'alice'\? \[y/N\]: ")
        child.sendline("y")
        child.expect("New password: ")
        child.sendline("password1")
        child.expect("Repeat the new password: ")
        child.sendline("password1")
        child.expect(pexpect.EOF)
        child.close()
        return child.exitstatus, menu + child.before

    with trio.fail_after(180):
        async with (
            broker_in(
                lan,
                tmp_path / "one",
                "--lan",
                "--lan-name",
                "room-1",
                "--port",
                str(PORT),
                "--web-port",
                "-1",
            ),
            broker_in(
                lan,
                tmp_path / "two",
                "--lan",
                "--lan-name",
                "room-2",
                "--port",
                str(PORT + 1),
                "--web-port",
                "-1",
            ) as second,
        ):
            status, said = await trio.to_thread.run_sync(converse)
    assert status == 0, said
    assert f"1) room-1  {BROKER_IP}:{PORT}" in said
    assert f"2) room-2  {BROKER_IP}:{PORT + 1}" in said
    assert f"Logged in as alice on {BROKER_IP}:{PORT + 1}" in said
    assert known_servers(config) == {f"{BROKER_IP}:{PORT + 1}": second["fingerprint"]}
