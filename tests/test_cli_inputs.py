"""Every CLI input is checked before it reaches the wire (exit 2, one line), and
`mailnet trust` manages certificate pins. Real CLI processes; a live broker where one is needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_helpers import Expect, Result, User, cli_env, run_cli, start_cli, stop

from broker.tls import KnownServers
from cli.inputs import parse_server_address
from cli.output import CliError
from tests.conftest import RunningBroker

NOWHERE = "127.0.0.1:1"  # nothing listens there: a command that got that far would exit 4


def one_error_line(result: Result, code: int) -> str:
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailnet: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def scripted_env(tmp_path: Path, server: str = NOWHERE) -> dict[str, str]:
    return cli_env(
        tmp_path / "config",
        server,
        MAILNET_USER="alice",
        MAILNET_PASSWORD="password1",
        MAILNET_INSECURE_PLAINTEXT="1",
    )


# -- server addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7878", ("127.0.0.1", 7878)),
        ("localhost", ("localhost", 7878)),
        ("broker.example.org:1", ("broker.example.org", 1)),
        ("[::1]:7878", ("::1", 7878)),
        ("[::1]", ("::1", 7878)),
        ("[fe80::1%eth0]:65535", ("fe80::1%eth0", 65535)),
        (" 10.0.0.2:80 ", ("10.0.0.2", 80)),
    ],
)
def test_server_addresses_that_are_accepted(text: str, expected: tuple[str, int]) -> None:
    assert parse_server_address(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1:99999", "out of range"),
        ("127.0.0.1:0", "out of range"),
        (":0", "host is missing"),
        (":7878", "host is missing"),
        ("::1:7878", "brackets"),
        ("::1", "brackets"),
        ("[::1:7878", "']' missing"),
        ("[::1]7878", "':PORT'"),
        ("[nonsense]:7878", "not an IPv6 address"),
        ("host:port", "must be a number"),
        ("host:-1", "must be a number"),
        ("bad host:7878", "not a host name"),
        ("", "host is missing"),
    ],
)
def test_server_addresses_that_are_refused(text: str, why: str) -> None:
    with pytest.raises(CliError) as refused:
        parse_server_address(text)
    assert refused.value.exit_code == 2
    assert why in refused.value.message and "[::1]:7878" in refused.value.message


@pytest.mark.parametrize("server", ["127.0.0.1:99999", ":0", "::1:7878"])
async def test_a_bad_server_address_is_exit_2_before_connecting(
    tmp_path: Path, server: str
) -> None:
    result = await run_cli("who", "--server", server, env=scripted_env(tmp_path))
    assert "invalid server address" in one_error_line(result, 2)
    from_env = await run_cli("who", env=scripted_env(tmp_path, server))
    assert "invalid server address" in one_error_line(from_env, 2)


async def test_an_ipv6_address_in_brackets_is_used(tmp_path: Path) -> None:
    result = await run_cli("who", "--server", "[::1]:1", env=scripted_env(tmp_path))
    assert "cannot reach the broker at ::1:1" in one_error_line(result, 4)


# -- sizes and encodings -----------------------------------------------------------------------


async def test_a_body_over_64000_characters_is_exit_2_not_broken_pipe(tmp_path: Path) -> None:
    for size in (64_001, 1024 * 1024 + 1):
        body = ("é" * size).encode()
        result = await run_cli("text", "bob", env=scripted_env(tmp_path), stdin=body)
        line = one_error_line(result, 2)
        assert f"has {size:,} characters; the limit is 64,000" in line
    too_long = "x" * 64_001
    result = await run_cli(
        "send", "--to", "bob", "--subject", "s", "--body", too_long, env=scripted_env(tmp_path)
    )
    assert "the limit is 64,000" in one_error_line(result, 2)


@pytest.mark.parametrize(
    ("subject", "why"),
    [("x" * 201, "the limit is 200"), ("two\nlines", "one line"), ("bell\x07", "control")],
)
async def test_a_subject_the_broker_would_refuse_is_exit_2(
    tmp_path: Path, subject: str, why: str
) -> None:
    for command in (["send", "--to", "bob"], ["announce"]):
        result = await run_cli(
            *command, "--subject", subject, "--body", "b", env=scripted_env(tmp_path)
        )
        assert why in one_error_line(result, 2)


async def test_non_utf8_input_is_exit_2(tmp_path: Path) -> None:
    env = scripted_env(tmp_path)
    body = await run_cli("text", "bob", env=env, stdin=b"caf\xe9 au lait\n")
    assert "not UTF-8 text (byte 0xe9 at offset 3)" in one_error_line(body, 2)
    password = await run_cli("login", "alice", "--password-stdin", env=env, stdin=b"\xff\xfe\n")
    assert "the password on standard input is not UTF-8" in one_error_line(password, 2)
    argument = await run_cli("text", "bob", os.fsdecode(b"caf\xe9"), env=env)
    assert "argument 3 is not valid UTF-8" in one_error_line(argument, 2)


async def test_a_body_of_exactly_64000_characters_is_sent(
    tmp_path: Path, broker: RunningBroker
) -> None:
    alice = User("alice", tmp_path / "alice", broker.address)
    await alice.login()
    await alice.ok("text", "alice", stdin=("é" * 64_000).encode())
    [entry] = (await alice.ok("inbox", "--json")).json_lines()
    assert len(entry["body"]) == 64_000


# -- the config directory ----------------------------------------------------------------------


async def test_an_unusable_config_directory_is_exit_2_before_the_account_is_made(
    tmp_path: Path, broker: RunningBroker
) -> None:
    not_a_dir = tmp_path / "config-file"
    not_a_dir.write_text("oops")
    for config_dir in (not_a_dir, not_a_dir / "mailnet"):
        alice = User("alice", config_dir, broker.address)
        result = await alice("login", "alice", "--password-stdin", stdin=b"password1\n")
        line = one_error_line(result, 2)
        assert f"the config directory {config_dir} is not usable" in line
        assert "MAILNET_CONFIG_DIR" in line
    # The account was not created: logging in without creating it fails.
    elsewhere = User("alice", tmp_path / "good-config", broker.address)
    unknown = await elsewhere(
        "login", "alice", "--password-stdin", "--no-create", stdin=b"password1\n"
    )
    one_error_line(unknown, 3)


# -- mailnet trust -----------------------------------------------------------------------------


async def test_trust_lists_and_forgets_pins_rewriting_the_file_atomically(tmp_path: Path) -> None:
    config = tmp_path / "config"
    env = cli_env(config, None)
    empty = await run_cli("trust", "list", env=env)
    assert empty.returncode == 0 and "No pinned brokers" in empty.stdout

    known = KnownServers(config / "known_servers.json")
    known.pin("127.0.0.1:7878", "SHA256:AA")
    known.pin("[::1]:7000", "SHA256:BB")
    listed = await run_cli("trust", "list", "--json", env=env)
    assert listed.json_lines() == [
        {"fingerprint": "SHA256:AA", "server": "127.0.0.1:7878"},
        {"fingerprint": "SHA256:BB", "server": "[::1]:7000"},
    ]
    table = (await run_cli("trust", "list", env=env)).stdout
    assert "SERVER" in table and "[::1]:7000      SHA256:BB" in table

    forgot = await run_cli("trust", "forget", "[::1]:7000", env=env)
    assert forgot.returncode == 0 and "Forgot" in forgot.stdout
    last = await run_cli("trust", "forget", "127.0.0.1:7878", env=env)  # the last entry
    assert last.returncode == 0
    assert json.loads(known.path.read_text()) == {}  # still valid JSON: no trailing comma
    again = await run_cli("trust", "forget", "127.0.0.1:7878", env=env)
    assert again.returncode == 0 and "nothing to forget" in again.stderr
    bad = await run_cli("trust", "forget", "::1:7000", env=env)
    one_error_line(bad, 2)

    known.path.write_text('{"a:1": "SHA256:AA",}')  # hand-edited, as the old warning said
    broken = await run_cli("trust", "list", env=env)
    assert "is not JSON" in one_error_line(broken, 2)


async def start_tls_broker(data_dir: Path, port: str) -> tuple[object, str]:
    env = cli_env(None, None)
    process = await start_cli(
        "serve", "--web-port", "-1", "--port", port, "--data-dir", str(data_dir), env=env
    )
    banner = await Expect(process.stdout).expect("Stop with Ctrl-C.", timeout=60)
    address = next(
        line.strip() for line in banner.splitlines() if line.strip().startswith("127.0.0.1:")
    )
    return process, address


async def test_a_changed_certificate_names_trust_forget_which_repins_it(tmp_path: Path) -> None:
    config = tmp_path / "config"
    first, address = await start_tls_broker(tmp_path / "data-1", "0")
    env = cli_env(config, address)
    try:
        login = await run_cli("login", "alice", "--password-stdin", env=env, stdin=b"password1\n")
        assert login.returncode == 0, login
    finally:
        assert await stop(first) == 0  # type: ignore[arg-type]
    second, _ = await start_tls_broker(tmp_path / "data-2", address.rsplit(":", 1)[1])
    try:
        refused = await run_cli("who", env=env)
        line = one_error_line(refused, 4)
        assert f"run `mailnet trust forget {address}`" in line
        forgot = await run_cli("trust", "forget", address, env=env)
        assert forgot.returncode == 0, forgot
        # The new broker pins again on first use (the account lives in the old database).
        again = await run_cli("login", "alice", "--password-stdin", env=env, stdin=b"password1\n")
        assert again.returncode == 0, again
        assert f"pinned the certificate of {address}" in again.stderr
    finally:
        assert await stop(second) == 0  # type: ignore[arg-type]
