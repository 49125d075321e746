"""A user's deletions and archiving of their own mail, and the retention admins set per kind:
a background sweep removes expired entries, only those their owner's client acknowledged
(undelivered mail is never removed silently), and logs what it removed. Every change reaches
the owner's live sessions as a `mailbox` event."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import partial

import trio

from broker.protocol import ErrorCode, RequestRefused
from broker.store import UserRecord
from broker.store.retention import SWEEP_BATCH, NotAllInMailbox

from .admin import AccountAdmin
from .mailbox_sync import MailboxSync
from .runner import StoreRunner

log = logging.getLogger("mailnet.retention")


class Retention:
    def __init__(self, runner: StoreRunner, sync: MailboxSync, admin: AccountAdmin) -> None:
        self.runner = runner
        self.sync = sync
        self.admin = admin
        self.swept_total: Counter[str] = Counter()  # entries removed by the sweep, per kind

    async def delete(self, user: UserRecord, seqs: Sequence[int]) -> int:
        store = self.runner.store
        try:
            removed = await self.runner.write(
                store.delete_entries, user.id, list(seqs), self.sync.node_id
            )
        except NotAllInMailbox:
            raise RequestRefused(ErrorCode.NOT_FOUND, "no such message in your mailbox") from None
        self.sync.changed(user.id, "deleted", removed)
        return len(removed)

    async def archive(self, user: UserRecord, seqs: Sequence[int], *, archive: bool = True) -> int:
        """Archive the entries (or, `archive` false, bring them back); how many changed."""
        store = self.runner.store
        try:
            changed = await self.runner.write(
                partial(store.archive_entries, archive=archive),
                user.id,
                list(seqs),
                self.sync.node_id,
            )
        except NotAllInMailbox:
            raise RequestRefused(ErrorCode.NOT_FOUND, "no such message in your mailbox") from None
        self.sync.changed(user.id, "archived" if archive else "unarchived", changed)
        return len(changed)

    async def rules(self, user: UserRecord, kind: str | None, days: int | None) -> dict[str, int]:
        """Admins only: set the rule of `kind` (days None: keep for ever), then list them."""
        admin = await self.admin.require_admin(user)
        store = self.runner.store
        if kind is not None:
            await self.runner.write(store.set_retention, kind, days)
            detail = "keep for ever" if days is None else f"keep {days} days"
            log.info("admin %r: retention of %s: %s", admin.username, kind, detail)
            await self.runner.write(store.record_audit, admin.id, "retention", kind, detail)
        return await self.runner.read(store.retention_rules)

    async def sweep(self) -> int:
        """Remove what retention rules expire (acknowledged entries only); how many."""
        removed = 0
        while True:
            swept = await self.runner.write(self.runner.store.sweep_retention)
            by_user: dict[int, list[int]] = defaultdict(list)
            kinds: Counter[str] = Counter()
            for entry in swept:
                by_user[entry.user_id].append(entry.seq)
                kinds[entry.kind] += 1
            for user_id, seqs in by_user.items():
                self.sync.changed(user_id, "deleted", sorted(seqs))
            for kind, count in kinds.items():
                log.info("retention removed %d acknowledged %s entries", count, kind)
            self.swept_total.update(kinds)
            removed += len(swept)
            if len(swept) < SWEEP_BATCH:
                return removed

    async def sweep_forever(self, interval: float) -> None:
        while True:
            try:
                await self.sweep()
            except RequestRefused as exc:  # the store is unavailable: try at the next round
                log.warning("retention sweep skipped: %s", exc.message)
            except Exception:  # never takes the broker down: logged, tried again next round
                log.exception("retention sweep failed")
            await trio.sleep(interval)
