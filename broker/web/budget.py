"""The web port's share of the pre-login memory budget (broker.core.prelogin).

A login body is read only while the budget can hold the largest one allowed
(`max_pre_login_frame_bytes`), and a WebSocket holds that much of it from its opening until it
has authenticated (the server may buffer one message that large meanwhile; the socket never
takes larger ones). Past the budget, logins are answered 503 `too_many_connections` and new
sockets are closed with 1013 (try again later).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.requests import Request

from broker.config import Config
from broker.core.prelogin import BUSY_MESSAGE, PreLoginBudget
from broker.protocol import ErrorCode

from .inputs import InputError, read_json_object


def pre_login_cap(config: Config) -> int:
    return min(config.max_pre_login_frame_bytes, config.max_frame_bytes)


async def read_login_body(
    request: Request, budget: PreLoginBudget, config: Config
) -> dict[str, Any]:
    """The body of POST /api/login, read within the pre-login limits."""
    with reserved(budget, pre_login_cap(config)) as admitted:
        if not admitted:
            raise InputError(ErrorCode.TOO_MANY_CONNECTIONS, BUSY_MESSAGE)
        return await read_json_object(
            request, max_bytes=pre_login_cap(config), timeout=config.login_timeout
        )


@contextmanager
def reserved(budget: PreLoginBudget, size: int) -> Iterator[bool]:
    """Hold `size` bytes of the budget for the block; yields whether they could be held."""
    owner = object()
    admitted = budget.hold(owner, size)
    try:
        yield admitted
    finally:
        budget.release(owner)
