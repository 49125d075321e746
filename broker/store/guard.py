"""Database outages as one exception: StoreUnavailable, raised by call_guarded."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database cannot be reached or written (down, locked too long, disk error)."""


def call_guarded(fn: Callable[..., T], /, *args: object) -> T:
    """Call a store method, turning database outages into StoreUnavailable."""
    try:
        return fn(*args)
    except (OperationalError, InterfaceError) as exc:
        raise StoreUnavailable(str(exc.orig or exc).splitlines()[0]) from exc
