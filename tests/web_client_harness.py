"""Helpers for the web client's browser tests: a broker that can be stopped and started again
on the same port (an outage), and Chromium launched the way tests/test_web_browser.py does.

Playwright's sync API runs in a worker thread; it calls back into trio with
`trio.from_thread.run` for the broker's part (stop, start, a terminal user's send).
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from test_web_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, browser_env

from broker.client import Client, Trust, connect
from broker.config import Config
from broker.server import ServerInfo, serve

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class RestartableBroker:
    """A broker in the test's nursery that the browser thread can stop and start again."""

    config: Config
    nursery: trio.Nursery
    token: trio.lowlevel.TrioToken
    info: ServerInfo | None = None
    _scope: trio.CancelScope | None = None
    _stopped: trio.Event | None = None

    @property
    def url(self) -> str:
        assert self.info is not None
        return self.info.web[0]

    async def start(self) -> None:
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def run(task_status: trio.TaskStatus[ServerInfo]) -> None:
            try:
                with scope:
                    await serve(self.config, task_status=task_status)
            finally:
                stopped.set()

        self._scope, self._stopped = scope, stopped
        self.info = await self.nursery.start(partial(run))

    async def stop(self) -> None:
        assert self._scope is not None and self._stopped is not None
        self._scope.cancel()
        await self._stopped.wait()

    @asynccontextmanager
    async def user(self, name: str, password: str = "password1") -> Any:
        assert self.info is not None
        async with connect(f"127.0.0.1:{self.info.tcp_port}", trust=Trust.plaintext()) as client:
            await client.login(name, password, create=True)
            yield client

    # -- called from the browser's thread ------------------------------------------------------

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return trio.from_thread.run(fn, trio_token=self.token)

    def as_user(self, name: str, action: Callable[[Client], Awaitable[T]]) -> T:
        async def run() -> T:
            with trio.fail_after(30):
                async with self.user(name) as client:
                    return await action(client)

        return self.call(run)


@asynccontextmanager
async def restartable_broker(config: Config) -> Any:
    async with trio.open_nursery() as nursery:
        running = RestartableBroker(config, nursery, trio.lowlevel.current_trio_token())
        await running.start()
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


@contextmanager
def chromium(home: Path) -> Iterator[Any]:
    """Debian's Chromium, headless, writing only under `home` and a short temp dir."""
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory(prefix="mailnet-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            env=browser_env(home, Path(tmp)),
        )
        expect.set_options(timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, problems: list[str], **context_options: Any) -> Any:
    """A page in a fresh context that records page errors and console errors in `problems`."""
    options: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}, **context_options}
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return page
