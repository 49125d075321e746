"""A live session's feed: its backlog, then its live mail and events, pushed in seq order to the
transport. A store that is unavailable for a while delays the feed; it never drops the session."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from broker.protocol import ErrorCode, RequestRefused

from .presence import FetchAfter, LiveSession, PushedEvent
from .views import mail_event

log = logging.getLogger("mailnet.session")

# A feed whose store read is refused as `unavailable` (a database blip) waits and reads again
# from the same cursor, doubling the wait up to the maximum: nothing is lost or sent twice.
FEED_RETRY_FIRST = 0.1
FEED_RETRY_MAX = 5.0

Message = dict[str, Any]  # a response's fields or an event, as the wire shows it
Push = Callable[[list[Message], list[PushedEvent]], Awaitable[None]]


async def deliver_feed(live: LiveSession, fetch_after: FetchAfter, push: Push) -> bool:
    """Push the session's backlog, then its live mail (`mail` events) and other events, until
    cancelled. Returns True if the feed failed for another reason than an unavailable store
    (logged): the session must end. A failed push (the peer left) raises."""
    wait = FEED_RETRY_FIRST
    while True:
        try:
            entries, events = await live.next_items(fetch_after)
        except RequestRefused as exc:
            if exc.code != ErrorCode.UNAVAILABLE:
                log.error("feed of session %d of %r refused: %s", live.id, live.username, exc)
                return True
            log.warning(
                "feed of session %d of %r waits %.1fs for the store: %s",
                live.id,
                live.username,
                wait,
                exc.message,
            )
            await trio.sleep(wait)
            wait = min(wait * 2, FEED_RETRY_MAX)
            continue
        except Exception:
            log.exception("feed of session %d of %r failed", live.id, live.username)
            return True
        wait = FEED_RETRY_FIRST
        await push([mail_event(e) for e in entries], events)
