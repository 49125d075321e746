"""The web UI's "Invite someone" dialog in a real browser (Debian's Chromium via Playwright):
it shows the LAN address and its QR code, under the page's content security policy."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config, running_broker
from test_web_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, browser_env, sign_in

import broker.web.invite

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]

# A TEST-NET-1 address (RFC 5737): shown and encoded, never contacted.
LAN_URL = "https://192.0.2.20:8080/"


def open_invite(url: str, home: Path) -> dict[str, Any]:
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
            page = browser.new_context().new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type == "error" else None,
            )
            sign_in(page, url, "alice")
            page.click("#invite-open")
            dialog = page.locator("#invite-dialog")
            expect(dialog).to_be_visible()
            expect(page.locator("#invite-url")).to_have_text(LAN_URL)
            image = page.locator("#invite-qr")
            expect(image).to_be_visible()
            loaded_width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
            message = page.locator("#invite-message").inner_text()
            page.click("#invite-close")
            expect(dialog).to_be_hidden()
        finally:
            browser.close()
    return {"problems": problems, "width": loaded_width, "message": message}


async def test_invite_someone_shows_the_lan_address_and_its_qr_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    # The broker listens on loopback here; the address it would share on a LAN is stood in for.
    monkeypatch.setattr(broker.web.invite, "invite_url", lambda *args: LAN_URL)
    config = make_config(tmp_path / "broker", web_port=0)
    async with running_broker(config) as running:
        with trio.fail_after(120):
            seen = await trio.to_thread.run_sync(
                open_invite, running.info.web[0], tmp_path / "browser-home"
            )
    assert seen["problems"] == []
    assert seen["width"] > 0  # the SVG data URL loaded under the CSP (img-src 'self' data:)
    assert LAN_URL in seen["message"]
