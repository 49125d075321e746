"""Accounts and logins: bcrypt off the trio thread, bearer tokens stored hashed, throttling.

Unknown users and wrong passwords take the same path (a bcrypt check against a dummy hash)
and give the same error, so a login failure tells nothing about whether the account exists.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

import bcrypt
import trio

from broker.config import Config
from broker.protocol import ErrorCode, RequestRefused, check_password
from broker.protocol.requests import MAX_PASSWORD_BYTES
from broker.store import UsernameTaken, UserRecord

from .runner import StoreRunner
from .throttle import FailureWindow

log = logging.getLogger("mailnet.accounts")

AUTH_FAILED_MESSAGE = "unknown user or wrong password"
SLOW_AFTER_FAILURES = 5  # failures in the last hour before each attempt is delayed
MAX_DELAY = 30.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits


@dataclass(frozen=True)
class LoginResult:
    user: UserRecord
    token: str
    created: bool


class Accounts:
    def __init__(self, runner: StoreRunner, config: Config) -> None:
        self.runner = runner
        self.config = config
        self._bcrypt_limiter = trio.CapacityLimiter(2)
        self._dummy_hash: bytes | None = None
        self.failures = FailureWindow()

    async def prepare(self) -> None:
        """Hash the dummy password now, so the first unknown-user login takes no longer."""
        if self._dummy_hash is None:
            self._dummy_hash = (await self._hash("not a real password")).encode("ascii")

    async def _hash(self, password: str) -> str:
        rounds = self.config.bcrypt_rounds
        hashed = await trio.to_thread.run_sync(
            lambda: bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)),
            limiter=self._bcrypt_limiter,
        )
        return hashed.decode("ascii")

    async def _verify(self, password: str, hashed: str | None) -> bool:
        if hashed is None:
            await self.prepare()
            assert self._dummy_hash is not None
            target = self._dummy_hash
        else:
            target = hashed.encode("ascii")
        ok = await trio.to_thread.run_sync(
            bcrypt.checkpw, password.encode("utf-8"), target, limiter=self._bcrypt_limiter
        )
        return ok and hashed is not None

    async def _slow_down(self, username: str, peer: str) -> None:
        """Delay attempts on an account or from an address with many recent failures."""
        account_failures = self.failures.count("user:" + username)
        if account_failures >= self.config.login_failures_per_hour:
            raise RequestRefused(
                ErrorCode.RATE_LIMITED,
                "too many failed logins for this account; try again later",
                retry_after=60,
            )
        worst = max(account_failures, self.failures.count("ip:" + peer))
        if worst >= SLOW_AFTER_FAILURES:
            await trio.sleep(min(MAX_DELAY, 0.25 * 2 ** (worst - SLOW_AFTER_FAILURES)))

    def _record_failure(self, username: str, peer: str) -> None:
        self.failures.record("user:" + username)
        self.failures.record("ip:" + peer)
        log.warning("login failed for %r from %s", username, peer)

    async def check_password(self, username: str, password: str, *, peer: str) -> UserRecord:
        if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            # bcrypt ignores bytes past 72: refuse rather than let a longer password that
            # merely starts with the right one log in. Says nothing about the account.
            raise RequestRefused(
                ErrorCode.BAD_REQUEST, f"password must be at most {MAX_PASSWORD_BYTES} bytes"
            )
        await self._slow_down(username, peer)
        user = await self.runner.read(self.runner.store.user_by_name, username)
        if not await self._verify(password, None if user is None else user.password_hash):
            self._record_failure(username, peer)
            raise RequestRefused(ErrorCode.AUTH_FAILED, AUTH_FAILED_MESSAGE)
        assert user is not None
        if user.disabled:
            raise RequestRefused(ErrorCode.ACCOUNT_DISABLED, "this account is disabled")
        self.failures.clear("user:" + username)
        return user

    async def login(
        self, username: str, password: str, *, create: bool, client: str, peer: str
    ) -> LoginResult:
        created = False
        user = await self.runner.read(self.runner.store.user_by_name, username)
        if user is None and create:
            if self.config.registration != "open":
                raise RequestRefused(
                    ErrorCode.REGISTRATION_CLOSED, "this broker does not accept new accounts"
                )
            check_password(password)
            try:
                user = await self.runner.write(
                    self.runner.store.create_user, username, await self._hash(password)
                )
                created = True
                log.info("account %r created from %s", username, peer)
            except UsernameTaken:
                user = None  # created meanwhile by someone else: check the password below
        if not created:
            user = await self.check_password(username, password, peer=peer)
        assert user is not None
        token = await self.start_session(user, client)
        return LoginResult(user=user, token=token, created=created)

    async def start_session(self, user: UserRecord, client: str) -> str:
        token = new_token()
        await self.runner.write(
            self.runner.store.create_auth_session, user.id, hash_token(token), client
        )
        return token

    async def user_for_token(self, token: str) -> UserRecord:
        user = await self.runner.read(self.runner.store.user_for_token, hash_token(token))
        if user is None:
            raise RequestRefused(ErrorCode.AUTH_FAILED, "session expired or logged out")
        if user.disabled:
            raise RequestRefused(ErrorCode.ACCOUNT_DISABLED, "this account is disabled")
        return user

    async def logout(self, token: str) -> None:
        await self.runner.write(self.runner.store.delete_auth_session, hash_token(token))
