"""A user's own mailbox housekeeping (delete, archive, unarchive) and the admins' retention per
kind, enforced by a sweep that removes only entries their owner's client already acknowledged.
A mixin of MailStore; each method opens its own short transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, cast

from sqlalchemy import Table, delete, func, insert, select, update

from .database import Engines
from .mailbox_notify import announce_mailbox_change
from .models import MailboxEntry, Message, RetentionRule, User, utcnow

users = cast(Table, User.__table__)
messages = cast(Table, Message.__table__)
mailbox = cast(Table, MailboxEntry.__table__)
rules = cast(Table, RetentionRule.__table__)

SWEEP_BATCH = 5000  # entries removed per transaction: a sweep never holds the writer long


class NotAllInMailbox(Exception):
    """A seq is not in the user's mailbox: nothing was changed."""


class SweptEntry(NamedTuple):
    user_id: int
    seq: int
    kind: str


class RetentionStoreMixin:
    engines: Engines

    @property
    def shares_commits(self) -> bool:  # MailStore's
        raise NotImplementedError

    def _own_seqs(self, conn, user_id: int, seqs: Sequence[int]) -> None:  # type: ignore[no-untyped-def]
        found = conn.execute(
            select(func.count())
            .select_from(mailbox)
            .where(mailbox.c.user_id == user_id, mailbox.c.seq.in_(list(seqs)))
        ).scalar_one()
        if found != len(seqs):
            raise NotAllInMailbox(user_id)

    def delete_entries(self, user_id: int, seqs: Sequence[int], node_id: str = "") -> list[int]:
        """Remove the user's own copies (the message stays for its sender and other
        recipients); the seqs removed."""
        with self.engines.write.begin() as conn:
            self._own_seqs(conn, user_id, seqs)
            removed = sorted(
                conn.execute(
                    delete(mailbox)
                    .where(mailbox.c.user_id == user_id, mailbox.c.seq.in_(list(seqs)))
                    .returning(mailbox.c.seq)
                ).scalars()
            )
            if removed and node_id and self.shares_commits:
                announce_mailbox_change(conn, node_id, user_id, "deleted", removed)
        return removed

    def archive_entries(
        self, user_id: int, seqs: Sequence[int], node_id: str = "", *, archive: bool = True
    ) -> list[int]:
        """Archive the user's own entries (kept, out of the inbox), or with `archive` false
        bring archived ones back; the seqs that changed."""
        state = mailbox.c.archived_at.is_(None) if archive else mailbox.c.archived_at.is_not(None)
        with self.engines.write.begin() as conn:
            self._own_seqs(conn, user_id, seqs)
            changed = sorted(
                conn.execute(
                    update(mailbox)
                    .where(mailbox.c.user_id == user_id, mailbox.c.seq.in_(list(seqs)), state)
                    .values(archived_at=utcnow() if archive else None)
                    .returning(mailbox.c.seq)
                ).scalars()
            )
            if changed and node_id and self.shares_commits:
                change = "archived" if archive else "unarchived"
                announce_mailbox_change(conn, node_id, user_id, change, changed)
        return changed

    def set_retention(self, kind: str, days: int | None) -> None:
        """Keep entries of `kind` for `days` (None: keep them for ever)."""
        with self.engines.write.begin() as conn:
            conn.execute(delete(rules).where(rules.c.kind == kind))
            if days is not None:
                conn.execute(insert(rules).values(kind=kind, days=days, updated_at=utcnow()))

    def retention_rules(self) -> dict[str, int]:
        with self.engines.read.connect() as conn:
            return {row.kind: row.days for row in conn.execute(select(rules.c.kind, rules.c.days))}

    def sweep_retention(self, now: datetime | None = None) -> list[SweptEntry]:
        """Remove, per retention rule, entries older than its days that their owner's client
        has acknowledged (seq <= the owner's acked_seq): undelivered mail is never removed.
        At most SWEEP_BATCH entries; call again while it returns that many."""
        now = now or utcnow()
        swept: list[SweptEntry] = []
        with self.engines.write.begin() as conn:
            for kind, days in conn.execute(select(rules.c.kind, rules.c.days)).all():
                if len(swept) >= SWEEP_BATCH:
                    break
                cutoff = now - timedelta(days=days)
                owner = users.alias("owner")
                ids = (
                    select(mailbox.c.id)
                    .join(messages, messages.c.id == mailbox.c.message_id)
                    .join(owner, owner.c.id == mailbox.c.user_id)
                    .where(
                        messages.c.kind == kind,
                        messages.c.created_at < cutoff,
                        mailbox.c.seq <= owner.c.acked_seq,
                    )
                    .limit(SWEEP_BATCH - len(swept))
                )
                chosen = [row.id for row in conn.execute(ids)]
                if not chosen:
                    continue
                for row in conn.execute(
                    delete(mailbox)
                    .where(mailbox.c.id.in_(chosen))
                    .returning(mailbox.c.user_id, mailbox.c.seq)
                ):
                    swept.append(SweptEntry(row.user_id, row.seq, kind))
        return swept
