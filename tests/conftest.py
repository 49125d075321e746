"""Shared pytest setup: report a trio test's single failure as itself, not as a group."""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    # pytest-trio runs each test inside a nursery, which wraps every failure in a one-item
    # ExceptionGroup, and so does each client connection's nursery the failure passes through;
    # unwrapping them keeps the report pointing at the real assertion.
    try:
        return (yield)
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        only_failure = group.exceptions[0]
        while isinstance(only_failure, BaseExceptionGroup) and len(only_failure.exceptions) == 1:
            only_failure = only_failure.exceptions[0]
    # Raised outside the except block so the group does not become the failure's context.
    raise only_failure


# -- a live broker on 127.0.0.1 with a real SQLite file -----------------------------------------

import dataclasses  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import trio  # noqa: E402

from broker.client import Client, Trust, connect  # noqa: E402
from broker.config import Config  # noqa: E402
from broker.server import ServerInfo, serve  # noqa: E402


def make_config(data_dir: Path, **overrides: object) -> Config:
    """A broker config for tests: loopback, port 0, plaintext, fast bcrypt, no web UI.

    Group commits run in a thread here (a child process costs each test's broker a Python
    start-up); the default, a writer process, is tested in test_writer_process.py and by every
    broker started as a subprocess (the kill -9 chaos tests, the CLI's `mailnet serve`)."""
    base = Config(
        host="127.0.0.1",
        port=0,
        web_port=-1,
        data_dir=data_dir,
        insecure_plaintext=True,
        bcrypt_rounds=4,
        send_writer="thread",
    )
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass
class RunningBroker:
    info: ServerInfo
    config: Config
    cancel_scope: trio.CancelScope

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.info.tcp_port}"

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        async with connect(self.address, trust=Trust.plaintext()) as client:
            yield client

    @asynccontextmanager
    async def user(self, name: str, password: str = "password1") -> AsyncIterator[Client]:
        """A connected client logged in as `name` (account created if new)."""
        async with self.client() as client:
            await client.login(name, password, create=True)
            yield client

    def stop(self) -> None:
        self.cancel_scope.cancel()


@asynccontextmanager
async def running_broker(config: Config) -> AsyncIterator[RunningBroker]:
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[ServerInfo]) -> None:
            with scope:
                await serve(config, task_status=task_status)

        info = await nursery.start(partial(run))
        try:
            yield RunningBroker(info, config, scope)
        finally:
            scope.cancel()


@pytest.fixture
def broker_config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def broker(broker_config: Config) -> AsyncIterator[RunningBroker]:
    async with running_broker(broker_config) as running:
        yield running


# -- a fresh PostgreSQL schema --------------------------------------------------------------------

import os  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import sqlalchemy as sa  # noqa: E402

PG_URL = os.environ.get("MAILNET_TEST_PG_URL", "")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose connections use a fresh schema of their own, dropped afterwards
    (skipped with the reason when MAILNET_TEST_PG_URL is not set)."""
    if not PG_URL:
        pytest.skip("MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)")
    schema = "mailnet_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(f"MAILNET_TEST_PG_URL is set but PostgreSQL is unreachable: {exc}")
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """A broker config on a SQLite file, then on a fresh PostgreSQL schema (skipped without
    MAILNET_TEST_PG_URL): a test that takes it runs on both stores."""
    if request.param == "sqlite":
        return make_config(tmp_path)
    return make_config(tmp_path, db=request.getfixturevalue("pg_url"))


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[RunningBroker]:
    """A broker with its web server on (HTTP API, WebSocket, web UI) on a free port."""
    async with running_broker(make_config(tmp_path, web_port=0)) as running:
        yield running


@asynccontextmanager
async def two_nodes(
    pg_url: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningBroker, RunningBroker]]:
    """Two broker nodes sharing one PostgreSQL schema (a cluster), each with its own data
    directory."""
    async with (
        running_broker(make_config(tmp_path / "a", db=pg_url)) as a,
        running_broker(make_config(tmp_path / "b", db=pg_url)) as b,
    ):
        yield a, b
