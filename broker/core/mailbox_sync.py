"""Every session of a user in step: a change to their mailbox (read, unread, deleted, archived,
unarchived, acked) made by one session is pushed as a `mailbox` event to all of that user's
live sessions, on this node at once and, with a shared PostgreSQL database, on the other nodes
through the change's NOTIFY (broker/store/mailbox_notify.py). Senders' receipts travel the
same way."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import trio

from broker.protocol.events import MailboxChange, MailboxEvent, ReceiptEvent
from broker.store.mailbox_notify import DeliveredNotice, Notice, ReceiptNotice

from .listening import ThreadListener, follow_in_thread
from .presence import Presence
from .runner import StoreRunner
from .views import iso

log = logging.getLogger("mailnet.mailbox")


class MailboxSync:
    def __init__(self, runner: StoreRunner, presence: Presence) -> None:
        self.runner = runner
        self.presence = presence
        # Names this node in its change notices, so it does not push its own changes twice.
        self.node_id = uuid.uuid4().hex

    def changed(self, user_id: int, change: MailboxChange, seqs: Sequence[int]) -> None:
        """Push the change to every live session of the user on this node."""
        if not seqs:
            return
        for session in self.presence.sessions_of(user_id):
            session.offer_event(MailboxEvent(change=change, seqs=list(seqs)))

    def receipt(
        self, sender_id: int, message_id: int, username: str, state: str, at: str = ""
    ) -> None:
        """Push a receipt to every live session of the message's sender on this node."""
        sessions = self.presence.sessions_of(sender_id)
        if not sessions:
            return
        event = ReceiptEvent(
            message_id=message_id,
            username=username,
            state=state,  # type: ignore[arg-type]
            at=at or iso(datetime.now(UTC)),
        )
        for session in sessions:
            session.offer_event(event)

    def _noticed(self, notice: Notice) -> None:
        if notice.node_id == self.node_id:
            return  # pushed here already
        if isinstance(notice, ReceiptNotice):
            self.receipt(notice.sender_id, notice.message_id, notice.username, notice.state)
        elif isinstance(notice, DeliveredNotice):
            at = iso(datetime.now(UTC))
            for sender_id, message_id in notice.delivered:
                self.receipt(sender_id, message_id, notice.username, "delivered", at)
        else:
            self.changed(notice.user_id, notice.change, notice.seqs)  # type: ignore[arg-type]

    async def follow_other_nodes(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Push the changes other nodes make (PostgreSQL); started once LISTEN is in force."""

        def listen(via: ThreadListener) -> None:
            self.runner.store.listen_for_mailbox_changes(
                lambda notice: via.call(self._noticed, notice),
                via.should_stop,
                lambda: via.call(via.listening.set),
            )

        await follow_in_thread(listen, what="other nodes' mailbox changes", task_status=task_status)
