"""The web client as a person uses it (issue 13), in Debian's Chromium driven by Playwright:
logout, outages, tabs, keyboard, notifications, replies, the offline shell and outbox, /docs.

Each test runs a real broker on 127.0.0.1 (restartable on the same port for outages) and the
browser in a worker thread; Playwright's own timeouts bound every wait in that thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config
from test_web_browser import CHROMIUM, sign_in
from test_web_screens import axe_problems
from web_client_harness import RestartableBroker, chromium, free_port, new_page, restartable_broker

from broker.client import Client

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]


async def run_in_browser(
    tmp_path: Path, scenario: Callable[[RestartableBroker, Any, list[str]], None]
) -> None:
    """Start a broker with its web UI on a fixed port, run `scenario` against it in Chromium."""
    pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    config = make_config(tmp_path / "broker", web_port=free_port())
    problems: list[str] = []
    async with restartable_broker(config) as running:

        def in_thread() -> None:
            with chromium(tmp_path / "browser-home") as browser:
                scenario(running, browser, problems)

        with trio.fail_after(180):
            await trio.to_thread.run_sync(in_thread)
    expected = ("Failed to load resource", "ERR_CONNECTION_REFUSED", "WebSocket")
    unexpected = [p for p in problems if not any(e in p for e in expected)]
    assert unexpected == [], unexpected


def send_email(
    running: RestartableBroker, sender: str, to: list[str], subject: str, body: str
) -> None:
    async def action(client: Client) -> None:
        await client.send_email(to, subject, body)

    running.as_user(sender, action)


def inbox_of(running: RestartableBroker, name: str) -> list[dict[str, Any]]:
    async def action(client: Client) -> list[dict[str, Any]]:
        return await client.history()

    return running.as_user(name, action)


# -- logout ------------------------------------------------------------------------------------


def wait_until(page: Any, expression: str, timeout: float = 20.0) -> None:
    """Poll `expression` in the page until it is true. (Playwright's wait_for_function polls
    with eval inside the page, which the app's Content-Security-Policy forbids: it fails
    whenever the condition is not already true at the first look.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still not true after {timeout}s: {expression}"
        page.wait_for_timeout(50)


async def test_logging_out_shows_the_sign_in_screen_without_an_error(tmp_path: Path) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        page = new_page(browser, problems)
        for attempt in range(3):  # the old defect was a race: try it more than once
            sign_in(page, running.url, f"user{attempt}")
            page.click("#logout")
            expect(page.locator("#login-view")).to_be_visible()
            # The server closes the live connection of a revoked token; let that arrive.
            page.wait_for_timeout(800)
            expect(page.locator("#login-error")).to_be_hidden()

    await run_in_browser(tmp_path, scenario)


# -- outage ------------------------------------------------------------------------------------


async def test_an_outage_is_shown_and_retry_now_reconnects_at_once(tmp_path: Path) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        alice = new_page(browser, problems)
        bob = new_page(browser, problems)
        sign_in(bob, running.url, "bob")
        sign_in(alice, running.url, "alice")
        alice.click("[data-nav=who]")
        expect(alice.locator("#who-list .who-user")).to_have_count(2)
        expect(alice.locator("#conn-label")).to_have_text("Online")

        running.call(running.stop)
        banner = alice.locator("#offline-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("Offline")
        expect(alice.locator("#conn-label")).to_have_text("Offline")
        expect(alice.locator("#who-stale")).to_be_visible()
        expect(alice.locator("#who-list")).to_have_class("who-list stale")
        assert axe_problems(alice, "who, offline") == []

        # An error shown during the outage (the broker answering 503 here) ...
        alice.route(
            "**/api/emails",
            lambda route: route.fulfill(
                status=503,
                content_type="application/json",
                body=json.dumps({"error": {"code": "unavailable", "message": "try later"}}),
            ),
        )
        alice.click("[data-nav=compose]")
        alice.fill("#compose-to", "bob")
        alice.fill("#compose-subject", "During the outage")
        alice.fill("#compose-body", "hello")
        alice.click("#compose-send")
        expect(alice.locator("#compose-status")).to_have_attribute("data-state", "error")
        alice.unroute("**/api/emails")

        running.call(running.start)
        started = time.monotonic()
        alice.click("#conn-retry")  # ... no waiting for the next backoff tick
        expect(alice.locator("#conn-status")).to_have_attribute("data-state", "online")
        print(f"\nreconnected {time.monotonic() - started:.2f} s after the broker was back")
        expect(banner).to_be_hidden()
        expect(alice.locator("#compose-status")).to_be_hidden()  # ... is gone once back
        alice.click("[data-nav=who]")
        expect(alice.locator("#who-stale")).to_be_hidden()

        # Without a click: the capped backoff finds the broker soon after it is back.
        running.call(running.stop)
        expect(banner).to_be_visible()
        alice.wait_for_timeout(4000)  # let the backoff reach its cap
        running.call(running.start)
        started = time.monotonic()
        expect(alice.locator("#conn-status")).to_have_attribute("data-state", "online")
        print(f"reconnected by itself {time.monotonic() - started:.2f} s after the broker was back")

    await run_in_browser(tmp_path, scenario)


async def test_a_reload_during_an_outage_shows_the_app_and_an_offline_send_goes_out_once(
    tmp_path: Path,
) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        page = new_page(browser, problems)
        posted: list[dict[str, Any]] = []
        page.on(
            "request",
            lambda req: (
                posted.append(json.loads(req.post_data or "{}"))
                if req.method == "POST" and req.url.endswith("/api/texts")
                else None
            ),
        )
        inbox_of(running, "bob")  # bob exists
        sign_in(page, running.url, "alice")
        wait_until(page, "navigator.serviceWorker.controller !== null")

        running.call(running.stop)
        expect(page.locator("#offline-banner")).to_be_visible()
        page.click("[data-nav=compose]")
        page.select_option("#compose-kind", "text")
        page.fill("#compose-to", "bob")
        page.fill("#compose-body", "Written while the broker was away")
        page.click("#compose-send")
        expect(page.locator("#compose-status")).to_contain_text("kept")

        page.reload()  # the service worker's shell, not the browser's error page
        expect(page.locator("#app-view")).to_be_visible()
        expect(page.locator("#me")).to_have_text("alice")
        expect(page.locator("#offline-banner")).to_be_visible()
        expect(page.locator("#outbox-count")).to_contain_text("1 waiting")

        running.call(running.start)
        expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")
        expect(page.locator("#offline-banner")).to_be_hidden()
        expect(page.locator("#outbox-count")).to_have_text("")
        texts = [t for t in inbox_of(running, "bob") if t["kind"] == "text"]
        assert [t["body"] for t in texts] == ["Written while the broker was away"]
        assert posted and all(p.get("client_msg_id") for p in posted)
        assert len({p["client_msg_id"] for p in posted}) == 1

    await run_in_browser(tmp_path, scenario)


# -- tabs and devices --------------------------------------------------------------------------


async def test_read_state_reaches_the_other_tabs_and_a_server_mailbox_event_is_applied(
    tmp_path: Path,
) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        context = browser.new_context(viewport={"width": 1280, "height": 800})
        first, second = context.new_page(), context.new_page()
        sockets: list[Any] = []

        def keep_socket(ws: Any) -> None:  # pass-through, so that the test can push an event
            ws.connect_to_server()
            sockets.append(ws)

        second.route_web_socket("**/api/ws", keep_socket)
        for page in (first, second):
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            sign_in(page, running.url, "bob")
        send_email(running, "alice", ["bob"], "One", "first")
        send_email(running, "alice", ["bob"], "Two", "second")
        for page in (first, second):
            expect(page.locator("#inbox-list .entry.unread")).to_have_count(2)
            expect(page.locator("#unread-count")).to_have_text("2")

        first.locator("#inbox-list .entry", has_text="One").click()
        expect(first.locator("#unread-count")).to_have_text("1")
        expect(second.locator("#unread-count")).to_have_text("1")  # no reload
        expect(second.locator("#inbox-list .entry.unread")).to_have_count(1)

        seq = int(second.locator("#inbox-list .entry", has_text="Two").get_attribute("data-seq"))
        sockets[-1].send(json.dumps({"event": "mailbox", "change": "read", "seqs": [seq]}))
        expect(second.locator("#unread-count")).to_have_text("0")
        sockets[-1].send(json.dumps({"event": "mailbox", "change": "deleted", "seqs": [seq]}))
        expect(second.locator("#inbox-list .entry")).to_have_count(1)

    await run_in_browser(tmp_path, scenario)


# -- keyboard ----------------------------------------------------------------------------------


def press_tab_until(page: Any, selector: str, limit: int = 40) -> None:
    for _ in range(limit):
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


async def test_read_reply_and_send_with_the_keyboard_alone(tmp_path: Path) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        inbox_of(running, "bob")
        inbox_of(running, "carol")
        send_email(running, "alice", ["bob", "carol"], "Plans", "Lunch at noon?\n\n")
        announce = running.as_user("carol", lambda c: c.announce("Fire drill", "At three."))
        assert announce
        page = new_page(browser, problems)
        page.goto(running.url)
        page.locator("#login-username").focus()
        page.keyboard.type("bob")
        page.keyboard.press("Tab")
        page.keyboard.type("password1")
        page.keyboard.press("Enter")
        expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")

        # Focus lands on the inbox after signing in; arrows move along it.
        first = page.locator("#inbox-list .entry").first
        expect(first).to_be_focused()
        expect(first).to_have_attribute("data-kind", "announcement")
        ring = first.evaluate("e => getComputedStyle(e).outlineStyle")
        assert ring != "none", "announcement rows show a focus ring"
        page.keyboard.press("ArrowDown")
        email = page.locator("#inbox-list .entry[data-kind=email]")
        expect(email).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#inbox-reader .reader-subject")).to_be_focused()
        expect(page.locator("#inbox-reader")).to_contain_text("Lunch at noon?")
        page.keyboard.press("Escape")
        expect(email).to_be_focused()
        page.keyboard.press("ArrowUp")
        expect(first).to_be_focused()
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")

        press_tab_until(page, "#reader-reply-all")
        page.keyboard.press("Enter")
        expect(page.locator("#compose-chips .chip")).to_have_count(2)  # alice and carol
        body = page.locator("#compose-body")
        expect(body).to_be_focused()
        assert body.evaluate("e => e.selectionStart") == 0  # the caret at the top
        assert body.evaluate("e => e.scrollTop") == 0
        quoted = body.input_value()
        assert quoted.rstrip().endswith("> Lunch at noon?"), quoted  # no stray ">" line
        page.keyboard.type("Noon works.")
        press_tab_until(page, "#compose-send")
        page.keyboard.press("Enter")
        expect(page.locator("#compose-status")).to_contain_text("sent")
        for name in ("alice", "carol"):
            got = [m for m in inbox_of(running, name) if m.get("subject") == "Re: Plans"]
            assert len(got) == 1 and got[0]["body"].startswith("Noon works.")

    await run_in_browser(tmp_path, scenario)


# -- notifications -----------------------------------------------------------------------------

FAKE_NOTIFICATIONS = """
window.__shown = [];
window.__hidden = false;
Object.defineProperty(document, 'hidden', { get: () => window.__hidden });
window.Notification = class {
  constructor(title, options) { window.__shown.push({ title, body: options && options.body }); }
  close() {}
  static get permission() { return 'granted'; }
  static requestPermission() { return Promise.resolve('granted'); }
};
"""


async def test_notices_are_short_grouped_clear_of_the_reader_and_system_ones_when_hidden(
    tmp_path: Path,
) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        page = new_page(browser, problems)
        page.add_init_script(FAKE_NOTIFICATIONS)
        sign_in(page, running.url, "bob")
        send_email(running, "alice", ["bob"], "Opening", "hello")
        page.locator("#inbox-list .entry").first.click()
        long_subject = "A very long subject " * 10
        send_email(running, "alice", ["bob"], long_subject, "body")
        toast = page.locator("#toasts .toast").last
        expect(toast).to_contain_text("…")
        assert len(toast.inner_text()) < 100
        heading = page.locator("#inbox-reader .reader-subject").bounding_box()
        box = toast.bounding_box()
        below = box["y"] > heading["y"] + heading["height"]
        assert below or box["x"] > heading["x"] + heading["width"], "the notice covers the heading"

        for i in range(4):
            send_email(running, "alice", ["bob"], f"Burst {i}", "x")
        expect(page.locator("#inbox-list .entry")).to_have_count(6)
        expect(page.locator("#toasts .toast[data-group]")).to_contain_text("new messages")
        assert page.locator("#toasts .toast:not(.leaving)").count() <= 3
        assert page.evaluate("window.__shown.length") == 0  # visible tab: no system notices

        page.evaluate("window.__hidden = true")
        send_email(running, "alice", ["bob"], "While away", "x")
        wait_until(page, "window.__shown.length === 1")
        shown = page.evaluate("window.__shown[0]")
        assert shown == {"title": "Email from alice", "body": "While away"}

    await run_in_browser(tmp_path, scenario)


# -- replies and recipients --------------------------------------------------------------------


async def test_unknown_recipients_are_named_at_their_field_and_texting_them_stays_disabled(
    tmp_path: Path,
) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        page = new_page(browser, problems)
        inbox_of(running, "bob")
        sign_in(page, running.url, "alice")
        page.click("[data-nav=compose]")
        to = page.locator("#compose-to")
        to.fill("bob")
        to.press("Enter")
        to.fill("nobody")
        to.press(",")
        expect(page.locator("#compose-chips .chip")).to_have_count(2)
        page.fill("#compose-subject", "Hi")
        page.fill("#compose-body", "Hello")
        page.click("#compose-send")
        error = page.locator("#compose-to-error")
        expect(error).to_have_text("There is no user called “nobody”. Check the spelling.")
        expect(to).to_have_attribute("aria-invalid", "true")
        assert "compose-to-error" in (to.get_attribute("aria-describedby") or "")
        page.click("#compose-chips .chip[data-name=nobody] .chip-remove")
        page.click("#compose-send")
        expect(page.locator("#compose-status")).to_contain_text("sent")
        expect(error).to_be_hidden()

        page.click("[data-nav=texts]")
        page.fill("#conv-user", "nobody")
        page.click("#conv-open")
        expect(page.locator("#conv-status")).to_contain_text("There is no user called “nobody”")
        expect(page.locator("#conv-body")).to_be_disabled()
        expect(page.locator("#conv-send")).to_be_disabled()
        page.fill("#conv-user", "bob")
        page.click("#conv-open")
        expect(page.locator("#conv-body")).to_be_enabled()

    await run_in_browser(tmp_path, scenario)


# -- installable app and API reference ---------------------------------------------------------


async def test_the_app_is_installable_and_docs_renders_the_openapi_document(tmp_path: Path) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        page = new_page(browser, problems)
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        manifest = page.request.get(running.url + "manifest.webmanifest").json()
        assert manifest["start_url"] == "/" and manifest["display"] == "standalone"
        page.goto(running.url)
        wait_until(page, "!!(navigator.serviceWorker && navigator.serviceWorker.ready)")
        page.goto(running.url + "docs")
        expect(page.locator("#apidocs-ops .op h3", has_text="/api/emails")).to_have_count(1)
        expect(page.locator("#schema-SendResult")).to_be_visible()
        foreign = [u for u in requests if not u.startswith(running.url.rstrip("/"))]
        assert foreign == []

    await run_in_browser(tmp_path, scenario)
