"""Store methods for account security and administration: passwords, blocks, the audit log,
invites. A mixin of MailStore; each method opens its own short transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from .database import Engines
from .models import AuditEntry, AuthSession, Block, Invite, Message, User, utcnow

users = cast(Table, User.__table__)
sessions = cast(Table, AuthSession.__table__)
blocks = cast(Table, Block.__table__)
audit_log = cast(Table, AuditEntry.__table__)
invites = cast(Table, Invite.__table__)
messages = cast(Table, Message.__table__)


class InviteInvalid(Exception):
    """The invite code is unknown, already used, or expired."""


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An account as an admin sees it (no password hash)."""

    id: int
    username: str
    role: str
    disabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BlockRecord:
    username: str
    since: datetime


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    actor: str | None
    action: str
    target: str
    detail: str


@dataclass(frozen=True, slots=True)
class PrankRecord:
    """A rick-roll with its real sender: for admins only."""

    message_id: int
    sent_at: datetime
    sender: str
    recipient: str


def blocked_pairs(conn, sender_ids: Iterable[int]) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(blocker_id, blocked_id) for every block against one of these senders."""
    ids = sorted(set(sender_ids))
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(ids), 2000):
        rows = conn.execute(
            select(blocks.c.blocker_id, blocks.c.blocked_id).where(
                blocks.c.blocked_id.in_(ids[start : start + 2000])
            )
        )
        pairs.update((row.blocker_id, row.blocked_id) for row in rows)
    return pairs


def redeem_invite(conn, code_hash: str, user_id: int) -> None:  # type: ignore[no-untyped-def]
    """Mark an invite used by a new account, inside the caller's transaction."""
    now = utcnow()
    result = conn.execute(
        update(invites)
        .where(
            invites.c.code_hash == code_hash,
            invites.c.used_by.is_(None),
            invites.c.expires_at > now,
        )
        .values(used_by=user_id, used_at=now)
    )
    if result.rowcount != 1:
        raise InviteInvalid("the invite code is unknown, used or expired")


class AdminStoreMixin:
    engines: Engines

    # -- passwords and login sessions ---------------------------------------------------------

    def change_password(self, user_id: int, password_hash: str) -> int:
        """Set a new password hash and end every login session of the user (count returned)."""
        with self.engines.write.begin() as conn:
            conn.execute(
                update(users).where(users.c.id == user_id).values(password_hash=password_hash)
            )
            result = conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
        return result.rowcount

    def existing_token_hashes(self, token_hashes: list[str]) -> set[str]:
        """Which of these login sessions still exist (the others were revoked)."""
        found: set[str] = set()
        with self.engines.read.connect() as conn:
            for start in range(0, len(token_hashes), 2000):
                chunk = token_hashes[start : start + 2000]
                found.update(
                    conn.execute(
                        select(sessions.c.token_hash).where(sessions.c.token_hash.in_(chunk))
                    ).scalars()
                )
        return found

    def delete_auth_sessions_of(self, user_id: int) -> int:
        with self.engines.write.begin() as conn:
            result = conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
        return result.rowcount

    # -- administration -------------------------------------------------------------------------

    def list_accounts(self) -> list[AccountRecord]:
        with self.engines.read.connect() as conn:
            rows = conn.execute(
                select(
                    users.c.id, users.c.username, users.c.role, users.c.disabled, users.c.created_at
                ).order_by(users.c.username)
            )
            return [AccountRecord(r.id, r.username, r.role, r.disabled, r.created_at) for r in rows]

    def set_disabled(self, user_id: int, disabled: bool) -> int:
        """Disable (ending every login session) or enable an account; sessions ended returned."""
        with self.engines.write.begin() as conn:
            conn.execute(update(users).where(users.c.id == user_id).values(disabled=disabled))
            if not disabled:
                return 0
            result = conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
        return result.rowcount

    def record_audit(self, actor_id: int | None, action: str, target: str, detail: str) -> None:
        with self.engines.write.begin() as conn:
            conn.execute(
                insert(audit_log).values(
                    at=utcnow(),
                    actor_id=actor_id,
                    action=action[:32],
                    target=target[:64],
                    detail=detail[:200],
                )
            )

    def recent_audit(self, limit: int) -> list[AuditRecord]:
        actor = users.alias("actor")
        query = (
            select(audit_log, actor.c.username.label("actor"))
            .select_from(audit_log)
            .outerjoin(actor, actor.c.id == audit_log.c.actor_id)
            .order_by(audit_log.c.id.desc())
            .limit(limit)
        )
        with self.engines.read.connect() as conn:
            return [
                AuditRecord(r.at, r.actor, r.action, r.target, r.detail)
                for r in conn.execute(query)
            ]

    def recent_pranks(self, limit: int) -> list[PrankRecord]:
        sender = users.alias("sender")
        query = (
            select(
                messages.c.id,
                messages.c.created_at,
                messages.c.recipients,
                sender.c.username.label("sender"),
            )
            .select_from(messages)
            .join(sender, sender.c.id == messages.c.sender_id)
            .where(messages.c.kind == "rickroll")
            .order_by(messages.c.id.desc())
            .limit(limit)
        )
        with self.engines.read.connect() as conn:
            return [
                PrankRecord(r.id, r.created_at, r.sender, r.recipients) for r in conn.execute(query)
            ]

    # -- blocks -----------------------------------------------------------------------------------

    def add_block(self, blocker_id: int, blocked_id: int) -> bool:
        """Block; False if it was already in place."""
        try:
            with self.engines.write.begin() as conn:
                conn.execute(
                    insert(blocks).values(
                        blocker_id=blocker_id, blocked_id=blocked_id, created_at=utcnow()
                    )
                )
        except IntegrityError:
            return False
        return True

    def remove_block(self, blocker_id: int, blocked_id: int) -> bool:
        with self.engines.write.begin() as conn:
            result = conn.execute(
                delete(blocks).where(
                    blocks.c.blocker_id == blocker_id, blocks.c.blocked_id == blocked_id
                )
            )
        return result.rowcount > 0

    def blocks_of(self, blocker_id: int) -> list[BlockRecord]:
        query = (
            select(users.c.username, blocks.c.created_at)
            .select_from(blocks)
            .join(users, users.c.id == blocks.c.blocked_id)
            .where(blocks.c.blocker_id == blocker_id)
            .order_by(users.c.username)
        )
        with self.engines.read.connect() as conn:
            return [BlockRecord(r.username, r.created_at) for r in conn.execute(query)]

    # -- invites -----------------------------------------------------------------------------

    def create_invite(self, created_by: int, code_hash: str, expires_at: datetime) -> None:
        with self.engines.write.begin() as conn:
            conn.execute(
                insert(invites).values(
                    code_hash=code_hash,
                    created_by=created_by,
                    created_at=utcnow(),
                    expires_at=expires_at,
                )
            )

    def count_open_invites(self) -> int:
        with self.engines.read.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(invites)
                .where(invites.c.used_by.is_(None), invites.c.expires_at > utcnow())
            ).scalar_one()
