"""Rate limits kept in memory: token buckets for sending, sliding windows for login failures."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import trio


@dataclass
class TokenBucket:
    rate: float
    burst: int
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = trio.current_time()

    def try_take(self) -> float:
        """Take one token; 0.0 on success, else the seconds until one is available."""
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class SendRateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[int, TokenBucket] = {}

    def retry_after(self, user_id: int) -> float:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(self.rate, self.burst)
        return bucket.try_take()


class FailureWindow:
    """Login failures per key (an account or an address) over the last hour."""

    WINDOW = 3600.0

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        cutoff = trio.current_time() - self.WINDOW
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def count(self, key: str) -> int:
        return len(self._recent(key))

    def record(self, key: str) -> None:
        self._failures.setdefault(key, deque()).append(trio.current_time())

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)
