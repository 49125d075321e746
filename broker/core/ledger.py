"""The sender's side of a message: its delivery ledger (`message_status`), acknowledgements of
messages that ask for them (`acknowledge`), and the `receipt` events that keep a sender's live
sessions up to date as recipients' clients take their mail, and as recipients read and
acknowledge it."""

from __future__ import annotations

from datetime import datetime

from broker.protocol import ErrorCode, RequestRefused
from broker.protocol import responses as r
from broker.store import UserRecord
from broker.store.ledger import Delivered, LedgerLine, NotAcknowledgeable, NotInMailbox

from .mailbox_sync import MailboxSync
from .runner import StoreRunner
from .views import iso


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)


class Ledger:
    def __init__(self, runner: StoreRunner, sync: MailboxSync) -> None:
        self.runner = runner
        self.sync = sync

    async def _receipts(self, receipts: list[tuple[int, int, str, str]]) -> None:
        """(sender id, message id, state, recipient name): pushed to the senders' sessions on
        this node at once, and on the others (PostgreSQL) through a notice."""
        for sender_id, message_id, state, username in receipts:
            self.sync.receipt(sender_id, message_id, username, state)
        if receipts and self.runner.store.shares_commits:
            await self.runner.write(
                self.runner.store.announce_receipts, self.sync.node_id, receipts
            )

    async def acknowledge(self, user: UserRecord, message_id: int) -> r.AcknowledgeResult:
        store = self.runner.store
        try:
            done = await self.runner.write(
                store.acknowledge, user.id, message_id, self.sync.node_id
            )
        except NotInMailbox:
            raise RequestRefused(
                ErrorCode.NOT_FOUND, f"no message {message_id} in your mailbox"
            ) from None
        except NotAcknowledgeable:
            raise RequestRefused(
                ErrorCode.BAD_REQUEST, f"message {message_id} does not ask to be acknowledged"
            ) from None
        if done.changed:
            self.sync.changed(user.id, "acked", [done.seq])
            await self._receipts([(done.sender_id, message_id, "acked", user.username)])
        return r.AcknowledgeResult(
            message_id=message_id, acked_at=iso(done.at), changed=done.changed
        )

    def delivered(self, done: Delivered) -> None:
        """Tell the senders on this node that an ack flush delivered their messages (the flush
        announced them to the other nodes in its own transaction)."""
        at = iso(done.at)
        for receipt in done.receipts:
            self.sync.receipt(
                receipt.sender_id, receipt.message_id, receipt.username, "delivered", at
            )

    async def read(self, user: UserRecord, seqs: list[int]) -> None:
        """Tell the senders of entries the user just read (unless they turned receipts off)."""
        receipts = await self.runner.read(self.runner.store.read_receipts_for, user.id, seqs)
        await self._receipts(
            [(receipt.sender_id, receipt.message_id, "read", user.username) for receipt in receipts]
        )

    async def status(self, user: UserRecord, message_id: int) -> r.MessageStatusResult:
        ledger = await self.runner.read(self.runner.store.message_ledger, message_id)
        if ledger is None or (ledger.sender_id != user.id and user.role != "admin"):
            raise RequestRefused(
                ErrorCode.NOT_FOUND, f"no message {message_id} of yours"
            )  # the same answer whether it exists or not
        lines = [_line(line) for line in ledger.recipients]
        states = [line.state for line in lines]
        return r.MessageStatusResult(
            message_id=ledger.message_id,
            kind=ledger.kind,  # type: ignore[arg-type]
            subject=ledger.subject,
            sent_at=iso(ledger.sent_at),
            require_ack=ledger.require_ack,
            total=len(lines),
            delivered=sum(s != "queued" for s in states),
            read=sum(s in ("read", "acked") for s in states),
            acked=states.count("acked"),
            recipients=lines,
        )


def _line(line: LedgerLine) -> r.LedgerLine:
    return r.LedgerLine(
        username=line.username,
        state=line.state,  # type: ignore[arg-type]
        delivered_at=_iso(line.delivered_at),
        read_at=_iso(line.read_at),
        acked_at=_iso(line.acked_at),
    )
