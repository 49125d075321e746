"""Rate limits kept in memory: token buckets for sending, spaced and capped login attempts.

Login attempts are slowed, never locked out for good: after a few recent failures on an account
or from an address, its next attempts are spaced out (0.25 s, doubling, up to a maximum), and an
account takes at most `failures_per_hour` failures in any hour. Addresses its owner has logged in
from before keep a small reserve of that budget, so an attack from elsewhere does not shut the
owner out.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

BASE_DELAY = 0.25  # seconds between attempts once slowing starts; doubles per further failure
KNOWN_ADDRESSES_PER_ACCOUNT = 20


def client_network(address: str) -> str:
    """The unit limits count by: an IPv4 address, or an IPv6 address's /64 (one subscriber
    usually holds a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class TokenBucket:
    rate: float
    burst: int
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = trio.current_time()

    def try_take(self, now: float | None = None) -> float:
        """Take one token; 0.0 on success, else the seconds until one is available."""
        if now is None:
            now = trio.current_time()
        if now > self.stamp:  # a `now` read just before the bucket was made takes no refill
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

    def retry_after(self, user_id: int, now: float | None = None) -> float:
        """Take a send's token; 0.0, or the seconds until the user may send again. `now`
        (trio.current_time()) may be read once for a group of sends."""
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(self.rate, self.burst)
        return bucket.try_take(now)


class FailureWindow:
    """Login failures per key (an account or an address) over the last hour."""

    WINDOW = 3600.0

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._records = 0

    def _recent(self, key: str) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        cutoff = trio.current_time() - self.WINDOW
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def count(self, key: str) -> int:
        return len(self._recent(key))

    def times(self, key: str) -> Sequence[float]:
        return self._recent(key)

    def record(self, key: str) -> None:
        self._failures.setdefault(key, deque()).append(trio.current_time())
        self._records += 1
        if self._records % 1024 == 0:  # forget keys with nothing left in the window
            for stale in list(self._failures):
                self._recent(stale)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class LoginLedger(Protocol):
    """What the login throttle remembers, read and written in one atomic step per call of
    LoginThrottle.decide/settle: this process's memory (MemoryLedger), or rows in PostgreSQL
    shared by every node (broker.store.limits.SqlLoginLedger). Times are the ledger's clock."""

    def now(self) -> float: ...
    def failure_times(self, key: str) -> Sequence[float]:
        """Recorded failures on `key` within the last hour, oldest first."""
        ...

    def in_flight(self, key: str) -> int: ...
    def next_slot(self, key: str) -> float | None: ...
    def set_next_slot(self, key: str, when: float) -> None: ...
    def is_known(self, username: str, network: str) -> bool: ...
    def start_attempt(self, keys: Sequence[str]) -> None: ...
    def end_attempt(self, keys: Sequence[str], *, failed: bool) -> None: ...
    def remember(self, username: str, network: str) -> None: ...


class MemoryLedger:
    """The ledger of one broker process (SQLite, or a single node)."""

    def __init__(self) -> None:
        self.failures = FailureWindow()
        self._in_flight: Counter[str] = Counter()
        self._next_slot: dict[str, float] = {}
        self._known: dict[str, OrderedDict[str, None]] = {}

    def now(self) -> float:
        return trio.current_time()

    def failure_times(self, key: str) -> Sequence[float]:
        return self.failures.times(key)

    def in_flight(self, key: str) -> int:
        return self._in_flight[key]

    def next_slot(self, key: str) -> float | None:
        return self._next_slot.get(key)

    def set_next_slot(self, key: str, when: float) -> None:
        self._next_slot[key] = when

    def is_known(self, username: str, network: str) -> bool:
        return network in self._known.get(username, ())

    def start_attempt(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._in_flight[key] += 1

    def end_attempt(self, keys: Sequence[str], *, failed: bool) -> None:
        for key in keys:
            if self._in_flight[key] > 0:
                self._in_flight[key] -= 1
                if not self._in_flight[key]:
                    del self._in_flight[key]
            if failed:
                self.failures.record(key)
        self._forget_idle_slots()

    def remember(self, username: str, network: str) -> None:
        known = self._known.setdefault(username, OrderedDict())
        known[network] = None
        known.move_to_end(network)
        while len(known) > KNOWN_ADDRESSES_PER_ACCOUNT:
            known.popitem(last=False)

    def _forget_idle_slots(self) -> None:
        if len(self._next_slot) < 10_000:
            return
        now = trio.current_time()
        for key in [k for k, slot in self._next_slot.items() if slot <= now]:
            del self._next_slot[key]


class LoginRefused(Exception):
    """Too many recent failures: the attempt is not checked at all. Retry after `retry_after`."""

    def __init__(self, retry_after: float, reason: str) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.reason = reason


@dataclass(frozen=True)
class LoginAttempt:
    """An admitted attempt: wait `delay` seconds, check the password, then call `finish`.

    If the password is wrong, the answer waits `failure_delay` more seconds, or is the refusal
    `failure_refusal`: what an attempt from an address the owner never used would have met
    (see LoginThrottle), so a failure looks the same whether or not the owner was here before.
    """

    account_key: str
    address_key: str
    delay: float
    pair_key: str = ""
    failure_delay: float = 0.0
    failure_refusal: LoginRefused | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.account_key, self.address_key, self.pair_key)


def pair_key(username: str, network: str) -> str:
    return f"pair:{network}|{username}"


class LoginThrottle:
    """Decides whether a login attempt is checked now, later (a delay), or not at all.

    Failures are counted per account, per address (an IPv4 address or an IPv6 /64), and per
    account and address together. Every attempt counts as a failure against its account while
    it is in flight, so parallel attempts cannot overshoot the hourly cap. Delays space
    attempts on one key apart (a later attempt waits for the earlier one's slot), so parallel
    connections do not multiply an attacker's rate. An address is slowed by its recorded
    failures only, so many people behind one NAT address logging in at once are not taken for
    a guesser.

    From an address the account's owner has logged in from before, only that account's own
    failures from there space the attempts out: a guesser spraying other accounts from the
    same office address (or guessing this account from elsewhere) does not hold the owner's
    correct password back. A wrong password from there is answered no sooner, and no
    differently, than from any other address, so the difference tells a guesser nothing.
    """

    def __init__(
        self,
        *,
        failures_per_hour: int,
        slow_after: int,
        max_delay: float,
        max_wait: float,
        ledger: LoginLedger | None = None,
    ) -> None:
        self.failures_per_hour = failures_per_hour
        self.slow_after = slow_after
        self.max_delay = max_delay
        self.max_wait = max_wait  # longer waits are refused with retry_after instead
        # Failures left for the owner's known addresses once unknown ones have used the rest.
        self.known_reserve = max(1, failures_per_hour // 10)
        self.memory = MemoryLedger()
        self.ledger: LoginLedger = self.memory if ledger is None else ledger

    @property
    def failures(self) -> FailureWindow:
        """The failures this process recorded (its memory ledger's)."""
        return self.memory.failures

    def delay_after(self, failures: int) -> float:
        """The spacing between attempts on a key with this many recent failures."""
        if failures < self.slow_after:
            return 0.0
        return min(self.max_delay, BASE_DELAY * 2.0 ** min(failures - self.slow_after, 30))

    def is_known(self, username: str, address: str) -> bool:
        return self.ledger.is_known(username, client_network(address))

    def remember_address(self, username: str, address: str) -> None:
        """The account's owner was here (logged in, or created the account)."""
        self.ledger.remember(username, client_network(address))

    def admit(self, username: str, address: str) -> LoginAttempt:
        return self.decide(self.ledger, username, address)

    def finish(
        self, attempt: LoginAttempt, *, ok: bool | None, username: str, address: str
    ) -> None:
        """Record an attempt's outcome: True/False, or None if the password was not checked."""
        self.settle(self.ledger, attempt, ok=ok, username=username, address=address)

    def keys_for(self, username: str, address: str) -> tuple[str, str, str]:
        network = client_network(address)
        return "user:" + username, "ip:" + network, pair_key(username, network)

    def decide(self, ledger: LoginLedger, username: str, address: str) -> LoginAttempt:
        """admit() against any ledger (called inside its transaction for a shared one)."""
        account_key, address_key, pair = self.keys_for(username, address)
        known = ledger.is_known(username, client_network(address))
        now = ledger.now()
        recorded = len(ledger.failure_times(account_key))
        account_failures = recorded + ledger.in_flight(account_key)
        budget = self.failures_per_hour if known else self.failures_per_hour - self.known_reserve
        if account_failures >= budget:
            retry = self._seconds_until_below(ledger.failure_times(account_key), budget, now)
            raise LoginRefused(
                max(1.0, retry), "too many failed logins for this account; try again later"
            )
        # Where an unknown address's attempt would start: after the address's and the
        # account's slots. A known address's starts after its own pair's slot only; its
        # failures are then held back to the unknown start, so they look alike.
        stranger_start = now
        for key in (address_key, account_key):
            stranger_start = max(stranger_start, ledger.next_slot(key) or now)
        stranger_delay = stranger_start - now
        if known:
            start = max(now, ledger.next_slot(pair) or now)
            delay = start - now
            if delay > self.max_wait:
                raise LoginRefused(delay, "too many failed logins; slow down")
        else:
            start, delay = stranger_start, stranger_delay
            if delay > self.max_wait:
                raise LoginRefused(delay, "too many failed logins; slow down")
        keys = (account_key, address_key, pair)
        ledger.start_attempt(keys)
        # An account's spacing counts its attempts in flight as failures already; an address's
        # counts recorded failures only: fifty people behind one NAT address logging in at once
        # after a restart are not fifty failures. The pair's is the account's, from here.
        for key, begins in ((account_key, stranger_start), (address_key, stranger_start)):
            failures = len(ledger.failure_times(key))
            if key == account_key:
                failures += ledger.in_flight(key)
            ledger.set_next_slot(key, begins + self.delay_after(failures))
        pair_failures = len(ledger.failure_times(pair)) + ledger.in_flight(pair)
        ledger.set_next_slot(pair, start + self.delay_after(pair_failures))
        failure_delay, failure_refusal = 0.0, None
        if known:
            if stranger_delay > self.max_wait:
                failure_refusal = LoginRefused(stranger_delay, "too many failed logins; slow down")
            else:
                failure_delay = max(0.0, stranger_delay - delay)
        return LoginAttempt(
            account_key,
            address_key,
            delay,
            pair_key=pair,
            failure_delay=failure_delay,
            failure_refusal=failure_refusal,
        )

    def settle(
        self,
        ledger: LoginLedger,
        attempt: LoginAttempt,
        *,
        ok: bool | None,
        username: str,
        address: str,
    ) -> None:
        """finish() against any ledger."""
        ledger.end_attempt(attempt.keys, failed=ok is False)
        if ok:
            # A success frees nothing: a guesser could log in to an account of their own
            # between guesses at others to wipe their address's spacing.
            ledger.remember(username, client_network(address))

    @staticmethod
    def _seconds_until_below(times: Sequence[float], limit: int, now: float) -> float:
        """How long until fewer than `limit` recorded failures are left in the window."""
        if len(times) < limit:
            return 0.0
        oldest_to_expire = times[len(times) - limit]
        return max(0.0, oldest_to_expire + FailureWindow.WINDOW - now)


class ConnectionLimits:
    """Counts open connections, in total and per address."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.by_ip: Counter[str] = Counter()
        self.open = 0

    def admit(self, ip: str) -> str | None:
        ip = client_network(ip)
        if self.open >= self.total:
            return "the broker has too many connections; try again later"
        if self.by_ip[ip] >= self.per_ip:
            return "too many connections from your address"
        self.by_ip[ip] += 1
        self.open += 1
        return None

    def release(self, ip: str) -> None:
        ip = client_network(ip)
        self.open -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]
