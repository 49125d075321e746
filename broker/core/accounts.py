"""Accounts and logins: bcrypt off the trio thread, bearer tokens stored hashed, throttling.

Unknown users and wrong passwords take the same path (one bcrypt check, against a dummy hash
for an unknown user) and give the same error, so a login failure tells nothing about whether
the account exists. Throttling is keyed by the name typed, existing or not, for the same reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass

import bcrypt
import trio

from broker.config import REGISTRATION_POLICIES, Config
from broker.protocol import ErrorCode, RequestRefused, check_password
from broker.protocol.requests import MAX_PASSWORD_BYTES
from broker.store import InviteInvalid, MailStore, UsernameTaken, UserRecord

from .cluster_limits import SharedLoginLedger
from .runner import StoreRunner
from .throttle import LoginAttempt, LoginRefused, LoginThrottle

log = logging.getLogger("mailnet.accounts")

AUTH_FAILED_MESSAGE = "unknown user or wrong password"
# Waits longer than this are answered at once with rate_limited and retry_after instead.
MAX_INLINE_WAIT = 5.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class LoginResult:
    user: UserRecord
    token: str
    created: bool


class Accounts:
    def __init__(self, runner: StoreRunner, config: Config) -> None:
        if config.registration not in REGISTRATION_POLICIES:
            raise ValueError(
                f"registration must be one of {', '.join(REGISTRATION_POLICIES)}, "
                f"not {config.registration!r}"
            )
        self.runner = runner
        self.config = config
        self._bcrypt_limiter = trio.CapacityLimiter(2)
        self._dummy_hash: bytes | None = None
        self.throttle = LoginThrottle(
            failures_per_hour=config.login_failures_per_hour,
            slow_after=config.login_slow_after,
            max_delay=config.login_max_delay,
            max_wait=min(MAX_INLINE_WAIT, config.login_max_delay),
        )
        # Nodes sharing PostgreSQL count failed logins together (cluster_limits.py).
        self.shared_ledger = (
            SharedLoginLedger(runner, self.throttle) if runner.store.shares_commits else None
        )

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

    async def check_password(self, username: str, password: str, *, peer: str) -> UserRecord:
        """The account, if this is its password; slowed and capped as docs/security.md says."""
        if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            # bcrypt ignores bytes past 72: refuse rather than let a longer password that
            # merely starts with the right one log in. Says nothing about the account.
            raise RequestRefused(
                ErrorCode.BAD_REQUEST, f"password must be at most {MAX_PASSWORD_BYTES} bytes"
            )
        try:
            attempt = await self._admit(username, peer)
        except LoginRefused as exc:
            log.warning("login for %r from %s refused unchecked: %s", username, peer, exc.reason)
            raise RequestRefused(
                ErrorCode.RATE_LIMITED, exc.reason, retry_after=round(exc.retry_after, 1)
            ) from None
        outcome: bool | None = None  # None: not checked (cancelled, store down)
        try:
            if attempt.delay > 0:
                await trio.sleep(attempt.delay)
            user = await self.runner.read(self.runner.store.user_by_name, username)
            outcome = await self._verify(password, None if user is None else user.password_hash)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(attempt, ok=outcome, username=username, address=peer)
        if not outcome:
            log.warning("login failed for %r from %s", username, peer)
            # From an address the owner used before: answered as from anywhere else.
            if attempt.failure_refusal is not None:
                wait = round(attempt.failure_refusal.retry_after, 1)
                reason = attempt.failure_refusal.reason
                raise RequestRefused(ErrorCode.RATE_LIMITED, reason, retry_after=wait)
            if attempt.failure_delay > 0:
                await trio.sleep(attempt.failure_delay)
            raise RequestRefused(ErrorCode.AUTH_FAILED, AUTH_FAILED_MESSAGE)
        assert user is not None
        if user.disabled:
            log.info("login of disabled account %r from %s refused", username, peer)
            raise RequestRefused(ErrorCode.ACCOUNT_DISABLED, "this account is disabled")
        return user

    async def _admit(self, username: str, peer: str) -> LoginAttempt:
        if self.shared_ledger is None:
            return self.throttle.admit(username, peer)
        return await self.shared_ledger.admit(username, peer)

    async def _finish(
        self, attempt: LoginAttempt, *, ok: bool | None, username: str, address: str
    ) -> None:
        if self.shared_ledger is None:
            self.throttle.finish(attempt, ok=ok, username=username, address=address)
        else:
            await self.shared_ledger.finish(attempt, ok=ok, username=username, address=address)

    async def remember_address(self, username: str, peer: str) -> None:
        if self.shared_ledger is None:
            self.throttle.remember_address(username, peer)
        else:
            await self.shared_ledger.remember_address(username, peer)

    async def login(
        self,
        username: str,
        password: str,
        *,
        create: bool,
        client: str,
        peer: str,
        invite: str | None = None,
    ) -> LoginResult:
        created = False
        user = await self.runner.read(self.runner.store.user_by_name, username)
        if user is None and create:
            user = await self._register(username, password, peer=peer, invite=invite)
            created = user is not None
        if not created:
            user = await self.check_password(username, password, peer=peer)
        assert user is not None
        token = await self.start_session(user, client)
        return LoginResult(user=user, token=token, created=created)

    async def _register(
        self, username: str, password: str, *, peer: str, invite: str | None
    ) -> UserRecord | None:
        """A new account under the registration policy; None if the name was taken meanwhile."""
        policy = self.config.registration
        first = policy != "open" and await self.runner.read(self.runner.store.count_users) == 0
        invite_hash = None
        if policy == "open" or (first and is_loopback(peer)):
            pass  # a closed broker's first account (its admin) is made on the broker's machine
        elif policy == "invite" and invite:
            invite_hash = hash_token(invite)
        else:
            log.info("registration of %r from %s refused (%s)", username, peer, policy)
            message = "this broker does not accept new accounts"
            if policy == "invite":
                message = "this broker needs an invite code to create an account"
            raise RequestRefused(ErrorCode.REGISTRATION_CLOSED, message)
        check_password(password)
        try:
            user = await self.runner.write(
                _create_user, self.runner.store, username, await self._hash(password), invite_hash
            )
        except UsernameTaken:
            return None  # created meanwhile by someone else: the password is checked instead
        except InviteInvalid:
            log.info("registration of %r from %s refused: bad invite", username, peer)
            raise RequestRefused(
                ErrorCode.REGISTRATION_CLOSED, "the invite code is unknown, used or expired"
            ) from None
        log.info("account %r created from %s (%s)", username, peer, user.role)
        await self.remember_address(username, peer)
        return user

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

    async def change_password(
        self, user: UserRecord, old_password: str, new_password: str, *, peer: str, client: str
    ) -> str:
        """Check the old password, store the new one, end every login session of the user.

        Returns a fresh token for the session that asked, which stays logged in.
        """
        await self.check_password(user.username, old_password, peer=peer)
        check_password(new_password)
        ended = await self.runner.write(
            self.runner.store.change_password, user.id, await self._hash(new_password)
        )
        log.info("password of %r changed from %s; %d login(s) ended", user.username, peer, ended)
        return await self.start_session(user, client)


def _create_user(
    store: MailStore, username: str, password_hash: str, invite_hash: str | None
) -> UserRecord:
    return store.create_user(username, password_hash, invite_hash=invite_hash)
