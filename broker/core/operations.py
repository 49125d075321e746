"""The operations that need only the logged-in user: each typed request to its core call, and
the call's outcome as the protocol's typed result. Session.handle sends them here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

from broker.protocol import ErrorCode, RemoteProtocolError, fit_page, requests
from broker.protocol import responses as r
from broker.protocol.events import Entry
from broker.store import EntryRecord, UserRecord

from .service import Broker
from .views import entry_view, online_user_view

R = TypeVar("R", bound=r.Result)


def _typed(kind: type[R], fields: dict[str, Any]) -> R:
    """A result the core built as a dict (the admin services), as its protocol type."""
    return msgspec.convert(fields, kind)


def _page(entries: Sequence[EntryRecord], *, fit: bool) -> tuple[list[Entry], bool]:
    """Entries as their owner sees them; with `fit`, only as many as one frame holds."""
    views = [entry_view(e) for e in entries]
    page, cut = fit_page(views) if fit else (views, False)
    return msgspec.convert(page, list[Entry]), cut


async def carry_out(
    broker: Broker, user: UserRecord, request: requests.Request, *, fit_pages: bool
) -> r.Result:
    """Run `request` for `user`; RequestRefused or ProtocolError say why not."""
    admin = broker.admin
    match request:
        case requests.Inbox():
            found, unread = await broker.inbox(user, request)
            entries, cut = _page(found, fit=fit_pages)
            inbox = r.InboxResult(entries=entries, unread=unread)
            if cut:
                inbox.truncated = True
            return inbox
        case requests.MarkRead(seqs=seqs):
            return r.MarkReadResult(marked=await broker.mark_read(user, seqs))
        case requests.Delete(seqs=seqs):
            return r.DeleteResult(deleted=await broker.retention.delete(user, seqs))
        case requests.Archive(seqs=seqs):
            return r.ArchiveResult(archived=await broker.retention.archive(user, seqs))
        case requests.Unarchive(seqs=seqs):
            unarchived = await broker.retention.archive(user, seqs, archive=False)
            return r.UnarchiveResult(unarchived=unarchived)
        case requests.AdminRetention(kind=kind, days=days):
            rules = await broker.retention.rules(user, kind, days)
            return r.AdminRetentionResult(rules=rules)
        case requests.MarkUnread(seqs=seqs):
            return r.MarkUnreadResult(marked=await broker.mark_read(user, seqs, read=False))
        case requests.Who():
            users = [online_user_view(u) for u in await broker.who()]
            return r.WhoResult(users=msgspec.convert(users, list[r.OnlineUser]))
        case requests.History():
            items, cut = _page(await broker.history(user, request), fit=fit_pages)
            history = r.HistoryResult(items=items)
            if cut:
                history.truncated = True
            return history
        case requests.SetPrefs(prank_opt_out=value, read_receipts=receipts):
            return _typed(r.PrefsResult, await broker.set_prefs(user, value, receipts))
        case requests.Acknowledge(message_id=message_id):
            return await broker.ledger.acknowledge(user, message_id)
        case requests.MessageStatus(message_id=message_id):
            return await broker.ledger.status(user, message_id)
        case requests.Block(username=name):
            return _typed(r.BlockResult, await admin.block(user, name))
        case requests.Unblock(username=name):
            return _typed(r.UnblockResult, await admin.unblock(user, name))
        case requests.ListBlocks():
            return _typed(r.ListBlocksResult, {"blocks": await admin.list_blocks(user)})
        case requests.AdminUsers():
            return _typed(r.AdminUsersResult, {"users": await admin.users(user)})
        case requests.AdminSetDisabled(username=name, disabled=disabled):
            return _typed(r.AdminSetDisabledResult, await admin.set_disabled(user, name, disabled))
        case requests.AdminKick(username=name):
            return _typed(r.AdminKickResult, await admin.kick(user, name))
        case requests.AdminSessions():
            return _typed(r.AdminSessionsResult, {"sessions": await admin.sessions(user)})
        case requests.AdminAudit(limit=limit):
            return _typed(r.AdminAuditResult, await admin.audit(user, limit))
        case requests.AdminInvite():
            invite = await admin.create_invite(user, broker.config.invite_ttl)
            return _typed(r.AdminInviteResult, invite)
    raise RemoteProtocolError(ErrorCode.UNKNOWN_OP, "unsupported operation")
