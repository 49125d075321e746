"""The web UI end to end in a real browser: Debian's Chromium driven by Playwright.

The broker runs in this trio test; Playwright's sync API runs in a worker thread (it has its own
event loop) and calls back into trio for the terminal user's part. Never `playwright install`:
the system browser at /usr/bin/chromium is used. The inbox screenshots land in artifacts/ at
the repository root; MAILNET_UPDATE_SCREENSHOT=1 also refreshes docs/screenshots/inbox.png.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import RunningBroker, make_config, running_broker

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
README_SCREENSHOT = REPO / "docs" / "screenshots" / "inbox.png"
TIMEOUT_MS = 15_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_env(home: Path, tmp: Path) -> dict[str, str]:
    """The browser writes its profile, caches and temp files under the test's own directories.

    `tmp` must be a short path: Chromium puts a Unix socket in it, and socket paths are
    limited to about 100 bytes (pytest's tmp_path is too deep).
    """
    dirs = {name: home / name for name in ("config", "cache", "data")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(dirs["config"]),
        "XDG_CACHE_HOME": str(dirs["cache"]),
        "XDG_DATA_HOME": str(dirs["data"]),
        "TMPDIR": str(tmp),
    }


def sign_in(page: Any, url: str, name: str, password: str = "password1") -> None:
    """Create the account from the sign-in screen and wait for the live connection."""
    from playwright.sync_api import expect

    page.goto(url)
    page.fill("#login-username", name)
    page.fill("#login-password", password)
    page.check("#login-create")
    page.fill("#login-password2", password)
    page.click("#login-submit")
    expect(page.locator("#me")).to_have_text(name)
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")


def compose(page: Any, kind: str, to: str, body: str, subject: str | None = None) -> None:
    from playwright.sync_api import expect

    page.click("[data-nav=compose]")
    page.select_option("#compose-kind", kind)
    page.fill("#compose-to", to)
    if subject is not None:
        page.fill("#compose-subject", subject)
    page.fill("#compose-body", body)
    page.click("#compose-send")
    expect(page.locator("#compose-status")).to_contain_text("sent")


def run_scenario(url: str, home: Path, send_from_terminal: Callable[[], None]) -> list[Path]:
    """Two browser users and a terminal user; returns the screenshots taken."""
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mailnet-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            env=browser_env(home, Path(tmp)),
        )
        try:
            alice_context = browser.new_context(viewport={"width": 1280, "height": 800})
            bob_context = browser.new_context(viewport={"width": 1280, "height": 800})
            for context in (alice_context, bob_context):
                context.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            alice = alice_context.new_page()
            bob = bob_context.new_page()
            for page in (alice, bob):
                page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
                page.on(
                    "console",
                    lambda msg: (
                        problems.append(f"console: {msg.text}") if msg.type == "error" else None
                    ),
                )

            sign_in(alice, url, "alice")
            sign_in(bob, url, "bob")
            bob.click("[data-nav=inbox]")
            navigations: list[str] = []
            bob.on("framenavigated", lambda frame: navigations.append(frame.url))

            alice.click("[data-nav=compose]")  # the page asks for what the API requires
            alice.select_option("#compose-kind", "email")
            alice.fill("#compose-to", "bob")
            alice.fill("#compose-body", "no subject yet")
            alice.click("#compose-send")
            expect(alice.locator("#compose-subject-error")).to_have_text("Add a subject.")

            compose(alice, "email", "bob", "Shall we meet at noon?", subject="Lunch plans")
            email = bob.locator("#inbox-list .entry[data-kind=email]")
            expect(email).to_have_count(1)
            expect(email.locator(".entry-sender")).to_have_text("alice")
            expect(email.locator(".entry-subject")).to_have_text("Lunch plans")

            compose(alice, "text", "bob", "On my way!")
            text = bob.locator("#inbox-list .entry[data-kind=text]")
            expect(text).to_have_count(1)
            expect(text.locator(".entry-body")).to_contain_text("On my way!")

            send_from_terminal()
            from_terminal = bob.locator("#inbox-list .entry[data-kind=text]").filter(
                has_text="Sent from the terminal"
            )
            expect(from_terminal).to_have_count(1)
            expect(from_terminal.locator(".entry-sender")).to_have_text("carol")
            expect(bob.locator("#unread-count")).to_have_text("3")
            assert navigations == [], f"bob's page reloaded: {navigations}"

            bob.click("[data-nav=who]")
            expect(bob.locator("#who-list .who-user")).to_have_count(2)
            bob.click("[data-nav=inbox]")
            expect(bob.locator("#inbox-list .entry")).to_have_count(3)
            ARTIFACTS.mkdir(exist_ok=True)
            desktop = ARTIFACTS / "inbox.png"  # with the notifications of what just arrived
            bob.screenshot(path=str(desktop))

            bob.locator("#inbox-list .entry[data-kind=email]").click()  # read it: marks it read
            expect(bob.locator("#inbox-reader")).to_contain_text("Shall we meet at noon?")
            expect(bob.locator("#unread-count")).to_have_text("2")
            expect(alice.locator("#unread-count")).to_have_text("0")
            bob.set_viewport_size({"width": 390, "height": 844})  # a phone
            expect(bob.locator("#inbox-list .entry")).to_have_count(3)
            phone = ARTIFACTS / "inbox-phone.png"
            bob.screenshot(path=str(phone))
        finally:
            browser.close()
    assert problems == [], problems
    return [desktop, phone]


async def test_two_browser_users_and_a_terminal_user_exchange_mail_live(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    config = make_config(tmp_path / "broker", web_port=0)
    async with running_broker(config) as broker:
        url = broker.info.web[0]

        async def terminal_user_sends_a_text(broker: RunningBroker) -> None:
            with trio.fail_after(10):
                async with broker.user("carol") as carol:
                    await carol.send_text("bob", "Sent from the terminal")

        def send_from_terminal() -> None:
            trio.from_thread.run(terminal_user_sends_a_text, broker)

        # A worker thread cannot be cancelled: Playwright's own timeouts bound every wait in it.
        screenshots = await trio.to_thread.run_sync(
            run_scenario, url, tmp_path / "browser-home", send_from_terminal
        )
    for shot in screenshots:
        assert shot.stat().st_size > 10_000
    if os.environ.get("MAILNET_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshots[0], README_SCREENSHOT)
