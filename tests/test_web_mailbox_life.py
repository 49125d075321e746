"""Mail's life after arrival in the web client (issue 12), in Debian's Chromium: a thread read
as one conversation and answered in it, the sender's delivery marks changing live, the
Acknowledge button and the announcer's "N of M acknowledged", archive and unarchive.

Each test runs a real broker (tests/test_web_client.py's run_in_browser); other users act
through the TCP client, or in browser contexts of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_web_browser import CHROMIUM, sign_in
from test_web_client import run_in_browser, wait_until
from test_web_screens import axe_problems
from web_client_harness import RestartableBroker, new_page

from broker.client import Client

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]


def create_accounts(running: RestartableBroker, *names: str) -> None:
    for name in names:

        async def nothing(client: Client) -> None:
            pass

        running.as_user(name, nothing)


# -- threads -----------------------------------------------------------------------------------


async def test_a_thread_of_three_reads_as_one_conversation_and_the_reply_stays_in_it(
    tmp_path: Path,
) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        create_accounts(running, "alice", "bob")

        async def first(client: Client) -> dict[str, Any]:
            return await client.send_email(["bob"], "Plans", "Saturday?")

        root = running.as_user("alice", first)

        async def second(client: Client) -> dict[str, Any]:
            return await client.send_email(
                ["alice"], "Re: Plans", "Saturday works.", in_reply_to=root["message_id"]
            )

        middle = running.as_user("bob", second)

        async def third(client: Client) -> dict[str, Any]:
            return await client.send_email(
                ["bob"], "Re: Plans", "Then 10 at the station.", in_reply_to=middle["message_id"]
            )

        last = running.as_user("alice", third)

        page = new_page(browser, problems)
        sign_in(page, running.url, "bob")
        expect(page.locator("#inbox-list .entry")).to_have_count(2)
        page.locator("#inbox-list .entry", has_text="Then 10").click()
        thread = page.locator("#inbox-reader .thread .thread-msg")
        expect(thread).to_have_count(3)
        expect(thread.locator(".thread-body")).to_have_text(
            ["Saturday?", "Saturday works.", "Then 10 at the station."]
        )
        expect(thread.locator(".thread-sender")).to_have_text(["alice", "You", "alice"])
        expect(thread.nth(2)).to_have_class("thread-msg current")
        expect(thread.nth(2)).to_have_attribute("aria-current", "true")
        assert axe_problems(page, "inbox, a thread") == []

        page.click("#reader-reply")
        expect(page.locator("#compose-reply")).to_be_visible()
        expect(page.locator("#compose-subject")).to_have_value("Re: Plans")
        page.locator("#compose-body").press("Control+Home")
        page.locator("#compose-body").press_sequentially("See you there.")
        page.click("#compose-send")
        expect(page.locator("#compose-status")).to_have_attribute("data-state", "ok")

        async def the_thread(client: Client) -> list[dict[str, Any]]:
            return await client.history(thread=root["message_id"])

        items = running.as_user("alice", the_thread)
        assert len(items) == 4
        assert items[0]["body"].splitlines()[0] == "See you there."
        assert items[0]["in_reply_to"] == last["message_id"]
        assert {item["thread_id"] for item in items} == {root["message_id"]}

        # the sender's own copy in Sent opens as the same conversation
        page.click("[data-nav=sent]")
        page.locator("#sent-list .entry", has_text="Saturday works").click()
        expect(page.locator("#sent-reader .thread .thread-msg")).to_have_count(4)
        expect(page.locator("#sent-reader .thread-msg.current .thread-body")).to_have_text(
            "Saturday works."
        )

    await run_in_browser(tmp_path, scenario)


# -- the sender's marks ------------------------------------------------------------------------


async def test_the_senders_marks_go_sent_delivered_read_live(tmp_path: Path) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        create_accounts(running, "bob")
        alice = new_page(browser, problems)
        sign_in(alice, running.url, "alice")
        alice.click("[data-nav=compose]")
        alice.fill("#compose-to", "bob")
        alice.fill("#compose-subject", "Agenda")
        alice.fill("#compose-body", "Items for Monday")
        alice.click("#compose-send")
        expect(alice.locator("#compose-status")).to_have_attribute("data-state", "ok")
        alice.click("[data-nav=sent]")
        row = alice.locator("#sent-list .entry", has_text="Agenda")
        expect(row.locator(".marks-text")).to_have_text("Sent")
        row.click()
        bob_line = alice.locator("#sent-reader .ledger-line[data-username=bob]")
        expect(bob_line).to_have_attribute("data-state", "queued")
        expect(alice.locator("#sent-reader .ledger-head")).to_have_text(
            "Delivered to 0 of 1, read by 0"
        )

        async def take_it(client: Client) -> None:  # bob's terminal client gets it, acks it
            await client.next_mail()
            await client.flush_ack()

        running.as_user("bob", take_it)
        expect(bob_line).to_have_attribute("data-state", "delivered")  # pushed, no reload
        expect(bob_line.locator(".marks-text")).to_have_text("Delivered")
        expect(row.locator(".marks-text")).to_have_text("Delivered")

        bob = new_page(browser, problems)  # bob reads it in a browser of his own
        sign_in(bob, running.url, "bob")
        bob.locator("#inbox-list .entry", has_text="Agenda").click()
        expect(bob_line).to_have_attribute("data-state", "read")
        expect(bob_line.locator(".marks-text")).to_have_text("Read")
        expect(row.locator(".marks-text")).to_have_text("Read")
        expect(row.locator(".marks")).to_have_class("marks marks-read")
        expect(alice.locator("#sent-reader .ledger-head")).to_have_text(
            "Delivered to 1 of 1, read by 1"
        )
        assert axe_problems(alice, "sent, a ledger") == []

    await run_in_browser(tmp_path, scenario)


# -- acknowledged announcements ----------------------------------------------------------------


async def test_acknowledge_buttons_move_the_announcers_count_live(tmp_path: Path) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        create_accounts(running, "root", "carol")  # root: the first account, an admin
        alice = new_page(browser, problems)
        bob = new_page(browser, problems)
        bob_tab = new_page(browser, problems)  # bob on another device: told by the broker
        sign_in(alice, running.url, "alice")
        for page in (bob, bob_tab):
            sign_in(page, running.url, "bob")

        alice.click("[data-nav=compose]")
        alice.select_option("#compose-kind", "announcement")
        alice.fill("#compose-subject", "Fire drill")
        alice.fill("#compose-body", "Thursday at 3")
        alice.check("#compose-require-ack")
        alice.click("#compose-send")
        expect(alice.locator("#compose-status")).to_have_attribute("data-state", "ok")
        alice.click("[data-nav=sent]")
        alice.locator("#sent-list .entry", has_text="Fire drill").click()
        head = alice.locator("#sent-reader .ledger-head")
        expect(head).to_have_text("0 of 3 acknowledged; not yet: bob, carol, root")

        for page in (bob, bob_tab):
            page.locator("#inbox-list .entry", has_text="Fire drill").click()
        expect(bob.locator("#reader-ack")).to_have_text("Acknowledge")
        bob.click("#reader-ack")
        for page in (bob, bob_tab):  # every tab of bob's shows it done
            expect(page.locator("#reader-ack")).to_have_text("Acknowledged")
            expect(page.locator("#reader-ack")).to_be_disabled()
        expect(head).to_have_text("1 of 3 acknowledged; not yet: carol, root")
        assert axe_problems(bob, "inbox, acknowledged") == []

        async def carol_acks(client: Client) -> None:
            [entry] = (await client.inbox())["entries"]
            await client.acknowledge(entry["message_id"])

        running.as_user("carol", carol_acks)
        expect(head).to_have_text("2 of 3 acknowledged; not yet: root")
        row = alice.locator("#sent-list .entry", has_text="Fire drill")
        expect(row.locator(".marks-text")).to_have_text("2 of 3 acknowledged")

        admin = new_page(browser, problems)  # an admin sees the count on their copy
        sign_in(admin, running.url, "root")
        admin.locator("#inbox-list .entry", has_text="Fire drill").click()
        expect(admin.locator("#inbox-reader .ledger-head")).to_have_text(
            "2 of 3 acknowledged; not yet: root"
        )
        admin.click("#reader-ack")
        expect(admin.locator("#inbox-reader .ledger-head")).to_have_text("3 of 3 acknowledged")
        expect(head).to_have_text("3 of 3 acknowledged")

    await run_in_browser(tmp_path, scenario)


# -- archive and unarchive ---------------------------------------------------------------------


async def test_archive_and_unarchive_reach_the_users_other_browser(tmp_path: Path) -> None:
    def scenario(running: RestartableBroker, browser: Any, problems: list[str]) -> None:
        from playwright.sync_api import expect

        create_accounts(running, "bob")

        async def two_texts(client: Client) -> None:
            await client.send_text("bob", "keep this")
            await client.send_text("bob", "and this")

        running.as_user("alice", two_texts)
        first = new_page(browser, problems)
        second = new_page(browser, problems)  # another device: the broker tells it
        for page in (first, second):
            sign_in(page, running.url, "bob")
            expect(page.locator("#inbox-list .entry")).to_have_count(2)

        first.locator("#inbox-list .entry", has_text="keep this").click()
        first.click("#reader-archive")
        for page in (first, second):
            expect(page.locator("#inbox-list .entry")).to_have_count(1)

        first.click("#inbox-archived")
        expect(first.locator("#inbox-archived")).to_have_attribute("aria-pressed", "true")
        archived = first.locator("#inbox-list .entry", has_text="keep this")
        expect(archived.locator(".tag-archived")).to_have_text("Archived")
        archived.click()
        first.click("#reader-unarchive")
        expect(archived.locator(".tag-archived")).to_have_count(0)
        expect(first.locator("#reader-archive")).to_be_visible()
        expect(second.locator("#inbox-list .entry")).to_have_count(2)  # back, without a reload

        async def inbox(client: Client) -> list[str]:
            return [e["body"] for e in (await client.inbox())["entries"]]

        assert running.as_user("bob", inbox) == ["and this", "keep this"]
        wait_until(second, "!document.querySelector('#inbox-list .tag-archived')")

    await run_in_browser(tmp_path, scenario)
