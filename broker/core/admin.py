"""Account security services: password change, blocking, and the admin role's operations.

Every admin operation re-reads the caller's account, so a demoted or disabled admin loses its
powers at once, and is written to the audit log. Ending a user's live sessions goes through
Presence: each transport waits on its sessions' `ended` event and closes the connection.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from broker.protocol import ErrorCode, RequestRefused
from broker.store import PresenceRow, UserRecord

from .accounts import Accounts, hash_token
from .cluster import node_name_of
from .presence import LiveSession, Presence
from .runner import StoreRunner
from .views import iso

log = logging.getLogger("mailnet.admin")

AUDIT_PAGE = 100


@dataclass(frozen=True)
class PasswordChanged:
    token: str  # a fresh token for the session that asked; every other one is dead
    sessions_ended: int


class AccountAdmin:
    def __init__(self, runner: StoreRunner, accounts: Accounts, presence: Presence) -> None:
        self.runner = runner
        self.accounts = accounts
        self.presence = presence
        self.node_name = ""
        # With several nodes on one database: the other nodes' presence rows (their users online,
        # one row per user and node), so the listings cover the whole cluster.
        self.other_nodes: Callable[[], Awaitable[list[PresenceRow]]] | None = None

    async def _other_nodes(self) -> list[PresenceRow]:
        if self.other_nodes is None:
            return []
        try:
            return await self.other_nodes()
        except RequestRefused:  # the store is down: this node's own view still answers
            return []

    # -- any user ---------------------------------------------------------------------------

    async def change_password(
        self,
        user: UserRecord,
        old_password: str,
        new_password: str,
        *,
        peer: str,
        client: str,
        current: LiveSession | None = None,
    ) -> PasswordChanged:
        if current is not None:
            current.token_hash = ""  # exempt from revocation sweeps while its login changes
        token = await self.accounts.change_password(
            user, old_password, new_password, peer=peer, client=client
        )
        if current is not None:
            current.token_hash = hash_token(token)
        ended = self.presence.end_sessions_of(
            user.id, "your password was changed; log in again", keep=current
        )
        return PasswordChanged(token=token, sessions_ended=ended)

    async def _user_named(self, username: str) -> UserRecord:
        other = await self.runner.read(self.runner.store.user_by_name, username)
        if other is None:
            raise RequestRefused(ErrorCode.NOT_FOUND, f"no such user: {username}")
        return other

    async def block(self, user: UserRecord, username: str) -> dict[str, Any]:
        other = await self._user_named(username)
        if other.id == user.id:
            raise RequestRefused(ErrorCode.BAD_REQUEST, "you cannot block yourself")
        added = await self.runner.write(self.runner.store.add_block, user.id, other.id)
        if added:
            log.info("%r blocked %r", user.username, other.username)
        return {"blocked": other.username, "changed": added}

    async def unblock(self, user: UserRecord, username: str) -> dict[str, Any]:
        other = await self._user_named(username)
        removed = await self.runner.write(self.runner.store.remove_block, user.id, other.id)
        if removed:
            log.info("%r unblocked %r", user.username, other.username)
        return {"unblocked": other.username, "changed": removed}

    async def list_blocks(self, user: UserRecord) -> list[dict[str, Any]]:
        blocks = await self.runner.read(self.runner.store.blocks_of, user.id)
        return [{"username": b.username, "since": iso(b.since)} for b in blocks]

    async def end_revoked_sessions_forever(self, interval: float) -> None:
        """With several nodes on one database, a kick, disable or password change on one node
        revokes the logins in the database; this closes the live sessions that ran under them
        on this node. (On one node the sessions are ended at once, without waiting.)"""
        if not self.runner.store.shares_commits:
            return
        while True:
            await trio.sleep(interval)
            sessions = [s for s in self.presence.all_sessions() if s.token_hash]
            if not sessions:
                continue
            asked = {s.token_hash for s in sessions}
            try:
                alive = await self.runner.read(
                    self.runner.store.existing_token_hashes, sorted(asked)
                )
            except RequestRefused:
                continue  # the database is unavailable: check again later
            for session in sessions:
                if session.token_hash in asked and session.token_hash not in alive:
                    log.info("session %d of %r was revoked elsewhere", session.id, session.username)
                    session.end("your login was ended (kicked, disabled or password changed)")

    # -- admins only ----------------------------------------------------------------------------

    async def require_admin(self, user: UserRecord) -> UserRecord:
        fresh = await self.runner.read(self.runner.store.user_by_id, user.id)
        if fresh is None or fresh.role != "admin" or fresh.disabled:
            log.warning("admin operation refused for %r", user.username)
            raise RequestRefused(ErrorCode.FORBIDDEN, "this needs an admin account")
        return fresh

    async def _audit(self, admin: UserRecord, action: str, target: str, detail: str = "") -> None:
        log.info("admin %r: %s %s %s", admin.username, action, target, detail)
        await self.runner.write(self.runner.store.record_audit, admin.id, action, target, detail)

    async def users(self, user: UserRecord) -> list[dict[str, Any]]:
        await self.require_admin(user)
        accounts = await self.runner.read(self.runner.store.list_accounts)
        elsewhere = {row.user_id for row in await self._other_nodes()}
        return [
            {
                "username": a.username,
                "role": a.role,
                "disabled": a.disabled,
                "created": iso(a.created_at),
                "online": self.presence.is_online(a.id) or a.id in elsewhere,
            }
            for a in accounts
        ]

    async def set_disabled(self, user: UserRecord, username: str, disabled: bool) -> dict[str, Any]:
        admin = await self.require_admin(user)
        target = await self._user_named(username)
        if disabled and target.id == admin.id:
            raise RequestRefused(ErrorCode.BAD_REQUEST, "you cannot disable your own account")
        logins = await self.runner.write(self.runner.store.set_disabled, target.id, disabled)
        live = 0
        if disabled:
            live = self.presence.end_sessions_of(target.id, "your account was disabled")
        action = "disable" if disabled else "enable"
        await self._audit(admin, action, target.username, f"{logins} logins, {live} live")
        return {"username": target.username, "disabled": disabled, "sessions_ended": live}

    async def kick(self, user: UserRecord, username: str) -> dict[str, Any]:
        admin = await self.require_admin(user)
        target = await self._user_named(username)
        logins = await self.runner.write(self.runner.store.delete_auth_sessions_of, target.id)
        live = self.presence.end_sessions_of(target.id, "an admin ended your session")
        await self._audit(admin, "kick", target.username, f"{logins} logins, {live} live")
        return {"username": target.username, "sessions_ended": live, "tokens_revoked": logins}

    async def sessions(self, user: UserRecord) -> list[dict[str, Any]]:
        await self.require_admin(user)
        now = trio.current_time()
        live = sorted(self.presence.all_sessions(), key=lambda s: (s.username, s.id))
        listed = [
            {
                "username": s.username,
                "client": s.client,
                "since": iso(s.since),
                "idle_seconds": round(max(0.0, now - s.last_active), 1),
                "address": s.address,
                "node": self.node_name,
                "sessions": 1,
            }
            for s in live
        ]
        # Other nodes write one row per user (not per session): one line each, with its count.
        wall = datetime.now(UTC)
        for row in await self._other_nodes():
            listed.append(
                {
                    "username": row.username,
                    "client": "",
                    "since": iso(row.since),
                    "idle_seconds": round(max(0.0, (wall - row.last_active).total_seconds()), 1),
                    "address": "",
                    "node": node_name_of(row.node_id),
                    "sessions": row.sessions,
                }
            )
        return sorted(listed, key=lambda r: (r["username"], r["node"]))

    async def audit(self, user: UserRecord, limit: int = AUDIT_PAGE) -> dict[str, Any]:
        await self.require_admin(user)
        pranks = await self.runner.read(self.runner.store.recent_pranks, limit)
        actions = await self.runner.read(self.runner.store.recent_audit, limit)
        return {
            "rickrolls": [
                {
                    "message_id": p.message_id,
                    "sent_at": iso(p.sent_at),
                    "sender": p.sender,
                    "recipient": p.recipient,
                }
                for p in pranks
            ],
            "actions": [
                {
                    "at": iso(a.at),
                    "admin": a.actor,
                    "action": a.action,
                    "target": a.target,
                    "detail": a.detail,
                }
                for a in actions
            ],
        }

    async def create_invite(self, user: UserRecord, ttl_seconds: float) -> dict[str, Any]:
        admin = await self.require_admin(user)
        code = secrets.token_urlsafe(16)  # 128 random bits; only its hash is stored
        expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        await self.runner.write(
            self.runner.store.create_invite, admin.id, hash_token(code), expires
        )
        await self._audit(admin, "invite", "", f"expires {iso(expires)}")
        return {"invite": code, "expires": iso(expires)}
