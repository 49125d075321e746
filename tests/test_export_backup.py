"""`mailnet export` (jsonl, mbox) and `mailnet admin backup` of a live SQLite broker."""

from __future__ import annotations

import email.policy
import json
import mailbox
import shutil
from pathlib import Path

import pytest
import trio
from cli_helpers import User, cli_env, run_cli

from broker.config import Config
from tests.conftest import make_config, running_broker


@pytest.fixture
def broker_config(tmp_path: Path) -> Config:
    # Export pages through more than one history page: sends must not be rate limited here.
    return make_config(tmp_path / "broker", send_rate=100_000.0, send_burst=100_000)


@pytest.fixture
def alice(tmp_path: Path, broker) -> User:
    return User("alice", tmp_path / "alice-config", broker.address)


@pytest.fixture
def bob(tmp_path: Path, broker) -> User:
    return User("bob", tmp_path / "bob-config", broker.address, password="bobspassword")


async def test_export_writes_every_message_oldest_first_as_jsonl_and_as_an_mbox(
    alice: User, bob: User, tmp_path: Path
) -> None:
    await alice.login()
    await bob.login()
    await bob.ok("text", "alice", "héllo ✓ first")
    # A line starting with "From " would split a naive mbox in two.
    await bob.ok("send", "--to", "alice", "--subject", "Plan", "--body", "Hi\nFrom the start\nbye")
    await bob.ok("announce", "--subject", "Maintenance", "--body", "Down at 5")
    await bob.ok("rickroll", "alice")
    await alice.ok("send", "--to", "bob", "--subject", "Re: Plan", "--body", "Agreed")
    seq_of_text = next(
        e["seq"] for e in (await alice.ok("inbox", "--json")).json_lines() if e["kind"] == "text"
    )
    await alice.ok("read", str(seq_of_text))

    lines = (await alice.ok("export")).json_lines()
    history = (await alice.ok("history", "--json")).json_lines()
    assert lines == list(reversed(history))  # everything, oldest first, as `history --json`
    assert [item["kind"] for item in lines] == [
        "text",
        "email",
        "announcement",
        "rickroll",
        "email",
    ]

    path = tmp_path / "alice.mbox"
    result = await alice.ok("export", "--format", "mbox", "--output", str(path))
    assert "exported 5 message(s)" in result.stderr
    box = mailbox.mbox(path, create=False)
    try:
        messages = [
            email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
            for key in box.iterkeys()
        ]
    finally:
        box.close()
    assert len(messages) == 5
    assert [m["Subject"] for m in messages] == [
        "Text from bob",
        "Plan",
        "Maintenance",
        lines[3]["subject"],
        "Re: Plan",
    ]
    assert all(not m.defects for m in messages)
    assert messages[0].get_content() == "héllo ✓ first\n"
    assert "From the start" in messages[1].get_content()
    assert messages[1]["From"].addresses[0].username == "bob"
    assert messages[2]["To"] == "everyone:;"
    # A received rick-roll never reveals its sender, in an export too.
    assert messages[3]["From"].addresses[0].display_name == "Someone"
    assert "bob" not in str(messages[3]["From"])
    assert messages[4]["From"].addresses[0].username == "alice"
    assert [m["X-Mailnet-Message-Id"] for m in messages] == [
        str(item["message_id"]) for item in lines
    ]
    flags = [message.get_flags() for message in _raw(path)]
    assert "R" in flags[0] and "R" not in flags[1]  # the text was read, the email not yet


def _raw(path: Path) -> list[mailbox.mboxMessage]:
    box = mailbox.mbox(path, create=False)
    try:
        return [box[key] for key in box.iterkeys()]
    finally:
        box.close()


async def test_export_pages_through_more_than_one_history_page(
    alice: User, broker, tmp_path: Path
) -> None:
    await alice.login()
    async with broker.user("bob", "bobspassword") as bob:
        for start in range(0, 1_050, 150):
            async with trio.open_nursery() as nursery:
                for n in range(start, min(start + 150, 1_050)):
                    nursery.start_soon(bob.send_text, "alice", f"note {n}")
    path = tmp_path / "all.jsonl"
    await alice.ok("export", "--output", str(path))
    items = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(items) == 1_050
    ids = [item["message_id"] for item in items]
    assert ids == sorted(ids) and len(set(ids)) == 1_050


async def test_export_usage_errors_are_exit_2(alice: User, tmp_path: Path) -> None:
    await alice.login()
    no_file = await alice("export", "--format", "mbox")
    assert no_file.returncode == 2 and "--output" in no_file.stderr
    existing = tmp_path / "exists.mbox"
    existing.write_text("keep me")
    refused = await alice("export", "--format", "mbox", "--output", str(existing))
    assert refused.returncode == 2 and "exists" in refused.stderr
    assert existing.read_text() == "keep me"


async def test_a_backup_of_a_live_broker_restores_every_acknowledged_message(
    broker, broker_config: Config, tmp_path: Path
) -> None:
    acked_before: list[int] = []
    acked_during: list[int] = []
    backup_file = tmp_path / "backup.db"
    async with broker.user("alice") as alice, broker.user("bob", "bobspassword") as bob:
        for n in range(300):
            acked_before.append((await bob.send_text("alice", f"before {n}"))["message_id"])
        backing_up = True

        async def keep_sending() -> None:
            n = 0
            while backing_up:  # the broker commits while the copy is taken
                acked_during.append((await bob.send_text("alice", f"during {n}"))["message_id"])
                n += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_sending)
            with trio.fail_after(60):
                result = await run_cli(
                    "admin",
                    "backup",
                    str(backup_file),
                    "--db",
                    broker_config.db_url,
                    "--json",
                    env=cli_env(None, None),
                )
            backing_up = False
        assert result.returncode == 0, result
        report = json.loads(result.stdout)
        assert report["messages"] >= 300
        assert alice.username == "alice"

    # Restore: the backup file becomes a new broker's database.
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    shutil.copy(backup_file, restored_dir / "mailnet.db")
    stored: list[int] = []
    async with running_broker(make_config(restored_dir)) as restored, restored.user("alice") as me:
        before_id = None
        while True:
            page = await me.history(limit=1000, before_id=before_id)
            stored.extend(item["message_id"] for item in page)
            if len(page) < 1000:
                break
            before_id = page[-1]["message_id"]
    assert set(acked_before) <= set(stored)  # every message acknowledged before the backup
    assert set(stored) <= set(acked_before) | set(acked_during)  # and nothing else
    assert len(stored) == len(set(stored)) == report["messages"]


async def test_backup_refuses_postgresql_and_existing_files_with_exit_2(tmp_path: Path) -> None:
    env = cli_env(None, None)
    pg = await run_cli(
        "admin", "backup", str(tmp_path / "x.db"), "--db", "postgresql://h/db", env=env
    )
    assert pg.returncode == 2 and "pg_dump" in pg.stderr
    existing = tmp_path / "exists.db"
    existing.write_text("keep")
    database = tmp_path / "missing.db"
    missing = await run_cli(
        "admin", "backup", str(tmp_path / "new.db"), "--db", f"sqlite:///{database}", env=env
    )
    assert missing.returncode == 2 and "no database" in missing.stderr
    assert not database.exists()
    clash = await run_cli(
        "admin", "backup", str(existing), "--db", f"sqlite:///{existing}", env=env
    )
    assert clash.returncode == 2 and "exists" in clash.stderr
    assert existing.read_text() == "keep"
    for result in (pg, missing, clash):
        assert "Traceback" not in result.stderr
