"""Keeping `listen` and `shell` connected across broker restarts.

`stay_connected` runs a live session's body; when the connection is lost it says so in one
line on stderr, reconnects with capped, jittered exponential backoff, and resumes right after
the last seq the body showed, so nothing is lost and nothing is shown twice. Refusals that a
retry cannot fix (the session was revoked, the account disabled, the certificate changed) end
it with their usual exit code.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from broker.client import BrokerUnreachable, RequestFailed

from .connect import UNREACHABLE_CODES, Authenticated, ClientOptions, session_client
from .output import innermost, note


@dataclass
class Backoff:
    """Delays between reconnection attempts: doubling from `initial` up to `cap`, each one
    drawn at random from its upper half so many clients do not return in step."""

    initial: float = 0.5
    cap: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def lost_connection(exc: BaseException) -> str | None:
    """Why the connection to the broker is gone, if `exc` means that (None otherwise)."""
    exc = innermost(exc)
    if isinstance(exc, BrokerUnreachable):
        return str(exc)
    if isinstance(exc, RequestFailed) and exc.code in UNREACHABLE_CODES:
        return exc.message or exc.code
    return None


async def stay_connected(
    options: ClientOptions,
    body: Callable[[Authenticated], Awaitable[None]],
    *,
    resume_after: Callable[[], int | None],
    reconnect: bool = True,
    first: Authenticated | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Run `body` on a live session until it returns; after a lost connection, log in again
    (the saved session or MAILNET_USER/MAILNET_PASSWORD) after `resume_after()` and run it again.

    `first` is a session the caller already opened; otherwise the first one is opened here. A
    failure before any session was open, or any failure when `reconnect` is false, is raised.
    """
    backoff = backoff or Backoff()
    connected = first is not None
    server: str | None = first.server if first is not None else None
    announced = False  # the loss of the current connection was reported
    if first is not None:
        try:
            await body(first)
            return
        except BaseException as exc:
            why = lost_connection(exc)
            if why is None or not reconnect:
                raise
            note(f"mailnet: connection to {server} lost ({why}); reconnecting")
            announced = True
            await trio.sleep(backoff.next_delay())
    while True:
        try:
            async with session_client(options, live=True, resume_after=resume_after()) as auth:
                connected, announced, server = True, False, auth.server
                backoff.reset()
                await body(auth)
                return
        except BaseException as exc:
            why = lost_connection(exc)
            if why is None or not reconnect or not connected:
                raise
            if not announced:
                where = f" to {server}" if server else ""
                note(f"mailnet: connection{where} lost ({why}); reconnecting")
                announced = True
        await trio.sleep(backoff.next_delay())
