"""Login throttling and send rates that hold for a whole cluster (nodes sharing PostgreSQL).

On SQLite one process serves everything and keeps its limits in memory (broker.core.throttle).
When nodes share a PostgreSQL database, the login throttle decides each attempt inside a
transaction on rows every node sees (broker.store.limits), and each user's send rate is one
token bucket row: a node leases a few tokens at a time (about a fifth of a second's worth) and
spends them locally, so the database is asked once per lease, not once per send, and a user's
sends through all nodes together never exceed the rate (unused leased tokens lapse).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import trio

from broker.protocol import RequestRefused
from broker.store.limits import SqlLoginLedger, take_tokens, with_login_ledger

from .runner import StoreRunner
from .throttle import LoginAttempt, LoginThrottle, client_network

LEASE_SECONDS = 0.2  # a lease holds about this many seconds of a user's sustained rate


class SharedLoginLedger:
    """Runs the throttle's decisions in PostgreSQL transactions (one per attempt, per end)."""

    def __init__(self, runner: StoreRunner, throttle: LoginThrottle) -> None:
        self.runner = runner
        self.throttle = throttle

    async def admit(self, username: str, address: str) -> LoginAttempt:
        keys = self.throttle.keys_for(username, address)

        def decide(ledger: SqlLoginLedger) -> LoginAttempt:
            return self.throttle.decide(ledger, username, address)

        return await self.runner.read(
            with_login_ledger, self.runner.store.engines, keys, True, decide
        )

    async def finish(
        self, attempt: LoginAttempt, *, ok: bool | None, username: str, address: str
    ) -> None:
        def settle(ledger: SqlLoginLedger) -> None:
            self.throttle.settle(ledger, attempt, ok=ok, username=username, address=address)

        await self.runner.read(
            with_login_ledger, self.runner.store.engines, attempt.keys, False, settle
        )

    async def remember_address(self, username: str, address: str) -> None:
        def remember(ledger: SqlLoginLedger) -> None:
            ledger.remember(username, client_network(address))

        await self.runner.read(with_login_ledger, self.runner.store.engines, (), False, remember)


class SharedSendRate:
    """SendRateLimiter's interface on a token bucket per user shared by every node."""

    def __init__(self, runner: StoreRunner, rate: float, burst: int) -> None:
        self.runner = runner
        self.rate = rate
        self.burst = burst
        self.lease_size = max(1, min(burst, math.ceil(rate * LEASE_SECONDS)))
        self._tokens: dict[int, int] = {}
        self._empty_until: dict[int, float] = {}
        self._pending: Counter[int] = Counter()
        self._locks: dict[int, trio.Lock] = {}

    def holds(self, user_id: int, count: int) -> bool:
        """Whether `count` sends can be decided now, without asking the database."""
        if user_id in self._pending:
            return False  # sends queued behind a lease go first, in order
        if self._tokens.get(user_id, 0) >= count:
            return True
        return self._empty_until.get(user_id, -math.inf) > trio.current_time()

    def retry_after(self, user_id: int, now: float | None = None) -> float:
        """Spend a leased token: 0.0, or the seconds until the bucket has one again."""
        tokens = self._tokens.get(user_id, 0)
        if tokens > 0:
            if tokens == 1:
                del self._tokens[user_id]
            else:
                self._tokens[user_id] = tokens - 1
            return 0.0
        if now is None:
            now = trio.current_time()
        return max(self._empty_until.get(user_id, now + 1.0 / self.rate) - now, 1e-3)

    async def lease_then(
        self,
        user_id: int,
        count: int,
        then: Callable[[], None],
        failed: Callable[[RequestRefused], None],
    ) -> None:
        """Lease tokens for `count` sends (or learn the bucket is empty), then call `then`.
        Callers queue on the user's lock in arrival order, so one connection's sends keep
        their order; `failed` gets the refusal if the database cannot be asked."""
        self._pending[user_id] += 1
        lock = self._locks.setdefault(user_id, trio.Lock())
        try:
            async with lock:
                try:
                    await self._lease(user_id, count)
                except RequestRefused as exc:
                    failed(exc)
                else:
                    then()
        finally:
            self._pending[user_id] -= 1
            if not self._pending[user_id]:
                del self._pending[user_id]
                self._locks.pop(user_id, None)

    async def _lease(self, user_id: int, count: int) -> None:
        have = self._tokens.get(user_id, 0)
        if have >= count or self._empty_until.get(user_id, -math.inf) > trio.current_time():
            return
        wanted = min(self.burst, max(count - have, self.lease_size))
        taken, wait = await self.runner.read(
            take_tokens, self.runner.store.engines, f"send:{user_id}", wanted, self.rate, self.burst
        )
        if taken:
            self._tokens[user_id] = have + taken
            self._empty_until.pop(user_id, None)
        else:
            self._empty_until[user_id] = trio.current_time() + wait

    def forget(self, user_ids: Sequence[int]) -> None:
        for user_id in user_ids:
            self._tokens.pop(user_id, None)
            self._empty_until.pop(user_id, None)
