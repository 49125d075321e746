"""Shared pytest setup: report a trio test's single failure as itself, not as a group."""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    # pytest-trio runs each test inside a nursery, which wraps every failure in a one-item
    # ExceptionGroup; unwrapping it keeps the report pointing at the real assertion.
    try:
        return (yield)
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        only_failure = group.exceptions[0]
    # Raised outside the except block so the group does not become the failure's context.
    raise only_failure
