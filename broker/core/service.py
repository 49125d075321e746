"""The broker's core services behind one facade that every transport (TCP, web) calls.

No transport holds business rules: the sender is always the authenticated user, limits and
quotas are checked here, and live delivery goes through Presence.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from broker.config import Config
from broker.protocol import ErrorCode, RequestRefused, requests
from broker.protocol.search import parse_search
from broker.store import (
    HistoryQuery,
    MailStore,
    NotFound,
    SendCommitter,
    SendIntent,
    SendOutcome,
    StoreUnavailable,
    UserRecord,
    call_guarded,
)

from .accounts import Accounts, LoginResult, hash_token
from .admin import AccountAdmin
from .cluster import SharedPresence
from .cluster_limits import SharedSendRate
from .commits import CommitQueue, choose_committer
from .ledger import Ledger
from .listening import ThreadListener, follow_in_thread
from .mailbox_sync import MailboxSync
from .metrics import BrokerMetrics
from .prelogin import PreLoginBudget
from .presence import LiveSession, OnlineUser, Presence
from .retention import Retention
from .runner import StoreRunner
from .throttle import SendRateLimiter
from .views import RICKROLL_BODY, RICKROLL_SUBJECT

_new_tuple = tuple.__new__
if SendIntent._fields != (  # what Broker._intent builds, in this order
    "sender_id",
    "sender",
    "kind",
    "recipients",
    "subject",
    "body",
    "client_msg_id",
    "in_reply_to",
    "require_ack",
):
    raise ImportError("SendIntent's fields changed: update Broker._intent")

log = logging.getLogger("mailnet.broker")

ACK_FLUSH_INTERVAL = 1.0
DISK_CHECK_INTERVAL = 1.0
READY_CHECK_TIMEOUT = 2.0  # seconds /readyz waits for the database


class Broker:
    def __init__(
        self,
        store: MailStore,
        config: Config,
        *,
        committer: SendCommitter[Any] | None = None,
    ) -> None:
        """The broker on `store`; its sends committed by `committer`, or by the one that
        `config.send_writer` names (ValueError if it names none)."""
        self.config = config
        self.runner = StoreRunner(store)
        self.accounts = Accounts(self.runner, config)
        self.presence = Presence()
        self.mailbox_sync = MailboxSync(self.runner, self.presence)
        self.ledger = Ledger(self.runner, self.mailbox_sync)
        # Several nodes on one database: `who` and presence events span all of them.
        self.shared_presence = (
            SharedPresence(
                self.runner,
                self.presence,
                refresh=config.presence_refresh,
                node_name=config.node,
            )
            if store.shares_commits
            else None
        )
        self.committer = committer if committer is not None else choose_committer(store, config)
        self.commits = CommitQueue(self.committer, self._deliver, quota=config.mailbox_quota)
        self.send_limits: SendRateLimiter | SharedSendRate = SendRateLimiter(
            config.send_rate, config.send_burst
        )
        # Nodes sharing PostgreSQL share each user's send rate too (cluster_limits.py).
        self.shared_send_rate = (
            SharedSendRate(self.runner, config.send_rate, config.send_burst)
            if store.shares_commits
            else None
        )
        if self.shared_send_rate is not None:
            self.send_limits = self.shared_send_rate
        self.node_name = config.node
        self.metrics = BrokerMetrics(self.node_name)
        self.commits.on_commit_time = self.metrics.commit_seconds.observe
        self.admin = AccountAdmin(self.runner, self.accounts, self.presence)
        self.admin.node_name = config.node
        if self.shared_presence is not None:
            self.admin.other_nodes = self.shared_presence.fresh_rows
        self.retention = Retention(self.runner, self.mailbox_sync, self.admin)
        # What connections that have not logged in may buffer, all transports together.
        self.prelogin = PreLoginBudget(config.pre_login_buffer_bytes)
        self._pending_acks: dict[int, int] = {}
        # Highest seq any client of each user acknowledged here, written or not: a session that
        # starts before the store has it must not be handed those entries again.
        self._acked_through: dict[int, int] = {}
        self._ack_lock = trio.Lock()
        # Whether this node hears other nodes' commits now (PostgreSQL; /readyz reports it).
        self.listening = not store.shares_commits
        self.metrics.watch(
            live_sessions=lambda: sum(
                len(self.presence.sessions_of(u)) for u in self.presence.online_users()
            ),
            commit_queue=lambda: self.commits.waiting,
            pending_acks=lambda: len(self._pending_acks),
            listening=lambda: 1 if self.listening else 0,
        )
        self._disk_checked_at = -1e9
        self._disk_full = False
        self._db_dir: Path | None = (
            Path(store.engines.write.url.database or ".").parent
            if store.engines.is_sqlite
            else None
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work: the group committer and the ack flusher."""
        await self.accounts.prepare()
        await trio.to_thread.run_sync(self.committer.start)
        try:
            await self._run(task_status)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.committer.close)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery  # for sends waiting on a shared rate lease
            nursery.start_soon(self.commits.run)
            nursery.start_soon(self.presence.announce_forever)
            nursery.start_soon(self._flush_acks_forever)
            nursery.start_soon(self.retention.sweep_forever, self.config.retention_sweep)
            nursery.start_soon(
                self.admin.end_revoked_sessions_forever, self.config.revoked_session_check
            )
            if self.runner.store.shares_commits:
                await nursery.start(self._follow_other_nodes)
                await nursery.start(self.mailbox_sync.follow_other_nodes)
            if self.shared_presence is not None:
                nursery.start_soon(self.shared_presence.run)
            task_status.started()

    async def _follow_other_nodes(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Wake local sessions when any node commits mail for their user (PostgreSQL).

        Reports itself started once LISTEN is in force, so a commit made after the broker says
        it is up is never missed (or after LISTEN_WAIT, with a warning, if the database is slow).
        """

        def listen(via: ThreadListener) -> None:
            self.runner.store.listen_for_commits(
                lambda pairs: via.call(self._notice_commits, pairs),
                via.should_stop,
                lambda: via.call(self._listening_for_commits, via.listening),
                lambda: via.call(self._not_listening_for_commits),
                self.metrics.notify_lag.observe,  # thread-safe
            )

        await follow_in_thread(
            listen, what="other nodes' commits: their mail may lag", task_status=task_status
        )

    def _listening_for_commits(self, listening: trio.Event) -> None:
        """LISTEN is in force (again): every live session here reads the store once, for the
        commits whose notices were missed while it was down."""
        listening.set()
        self.listening = True
        for user_id in self.presence.online_users():
            for session in self.presence.sessions_of(user_id):
                session.catch_up()

    def _not_listening_for_commits(self) -> None:
        self.listening = False

    async def readiness(self) -> dict[str, bool]:
        """What /readyz checks: the database answers, its schema is at head, and (with several
        nodes) this node hears the others' commits."""
        checks = {"database": False, "schema_at_head": False, "listening": self.listening}
        at_head = self.runner.store.schema_at_head
        with trio.move_on_after(READY_CHECK_TIMEOUT):
            try:  # abandoned if the database hangs: a health check must answer
                head = await trio.to_thread.run_sync(call_guarded, at_head, abandon_on_cancel=True)
            except StoreUnavailable:
                pass
            else:
                checks["database"], checks["schema_at_head"] = True, head
        return checks

    def _notice_commits(self, pairs: list[tuple[int, int]]) -> None:
        for user_id, seq in pairs:
            for session in self.presence.sessions_of(user_id):
                session.notice_commit(seq)

    # -- sessions ---------------------------------------------------------------------------

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
        return await self.accounts.login(
            username, password, create=create, client=client, peer=peer, invite=invite
        )

    async def user_for_token(self, token: str) -> UserRecord:
        return await self.accounts.user_for_token(token)

    async def authenticate(self, username: str, password: str, *, peer: str) -> UserRecord:
        """Check a password without opening a session (HTTP Basic auth on each request)."""
        return await self.accounts.check_password(username, password, peer=peer)

    async def logout(self, user: UserRecord, token: str | None) -> None:
        await self.flush_acks()
        if token is not None:
            await self.accounts.logout(token)

    @asynccontextmanager
    async def live_session(
        self,
        user: UserRecord,
        *,
        client: str,
        resume_after: int | None,
        address: str = "",
        quiet: bool = False,
        token: str | None = None,
        presence_batch: bool = False,
    ) -> AsyncIterator[LiveSession]:
        """Register a live session (it shows in `who`) and feed it from its resume point.

        A quiet session (a one-shot command) is neither online nor fed: see Presence. The
        login `token` it runs under lets a revocation on any node end it. With
        `presence_batch` it is told presence changes as one `presence_batch` event per tick.
        """
        acked = max(user.acked_seq, self._acked_through.get(user.id, 0))
        # Nobody can have seen past the last seq given out (read at login): a larger resume
        # point (a database restored from backup, a buggy client) would skip the next mail.
        start = acked if resume_after is None else min(resume_after, max(user.last_seq, acked))
        session = LiveSession(
            user.id,
            user.username,
            client,
            cursor=max(0, start),
            address=address,
            presence_batch=presence_batch,
        )
        if token is not None:
            session.token_hash = hash_token(token)
        self.presence.add(session, quiet=quiet)
        log.info(
            "session %d of %r %s (%s)",
            session.id,
            user.username,
            "opened" if quiet else "online",
            client or "client",
        )
        try:
            yield session
        finally:
            self.presence.remove(session)
            log.info("session %d of %r offline", session.id, user.username)

    def touch_user(self, user_id: int) -> None:
        """A request without a live session of its own (HTTP) is activity: it resets the
        user's idle time in `who`."""
        self.presence.touch_user(user_id)

    async def fetch_after(self, user_id: int, after_seq: int, limit: int):  # type: ignore[no-untyped-def]
        """A live feed's read (a store outage is the feed's to wait out: core/feed.py)."""
        return await self.runner.read(self.runner.store.entries_after, user_id, after_seq, limit)

    def ack(self, session: LiveSession, seq: int) -> None:
        """A session's client has everything through seq. Written to the store in the background.

        Only what this session was sent can be acknowledged through it: a larger seq would hide
        the user's next mail from every later session.
        """
        seq = min(seq, session.cursor)
        user_id = session.user_id
        if seq > self._pending_acks.get(user_id, 0):
            self._pending_acks[user_id] = seq
        if seq > self._acked_through.get(user_id, 0):
            self._acked_through[user_id] = seq

    async def flush_acks(self) -> None:
        """Write the pending acks; when it returns, every ack received before the call is stored."""
        # One flush at a time: a caller that needs the acks written (logout) waits for a flush
        # already writing them, instead of finding nothing pending and answering too early.
        async with self._ack_lock:
            if not self._pending_acks:
                return
            acks, self._pending_acks = self._pending_acks, {}
            try:
                delivered = await self.runner.write(
                    self.runner.store.ack_through, acks, self.mailbox_sync.node_id
                )
            except RequestRefused:
                for user_id, seq in acks.items():  # keep them for the next try
                    self._pending_acks[user_id] = max(seq, self._pending_acks.get(user_id, 0))
            else:
                self.ledger.delivered(delivered)

    async def _flush_acks_forever(self) -> None:
        try:
            while True:
                await trio.sleep(ACK_FLUSH_INTERVAL)
                await self.flush_acks()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.flush_acks()

    # -- sending ------------------------------------------------------------------------------

    def _check_disk(self, now: float) -> None:
        if self._db_dir is None:
            return
        if now - self._disk_checked_at >= DISK_CHECK_INTERVAL:
            self._disk_checked_at = now
            try:
                free = shutil.disk_usage(self._db_dir).free
            except OSError:
                return
            self._disk_full = free < self.config.min_free_disk_bytes
            if self._disk_full:
                log.error("refusing sends: only %d bytes free for the database", free)
        if self._disk_full:
            raise RequestRefused(
                ErrorCode.STORAGE_FULL, "the broker's disk is nearly full; nothing was stored"
            )

    async def send(self, user: UserRecord, request: requests.Send) -> SendOutcome:
        """Store one message durably (group commit), then push it to online recipients; for a
        caller that waits (the web API). The TCP transport uses start_sends."""
        done = trio.Event()
        box: list[SendOutcome | RequestRefused] = []

        def on_done(results: list[SendOutcome | RequestRefused]) -> None:
            box.extend(results)
            done.set()

        self.start_sends(user, [request], on_done)
        await done.wait()
        (result,) = box
        if isinstance(result, RequestRefused):
            raise result
        return result

    def start_sends(
        self,
        user: UserRecord,
        sends: Sequence[requests.Send],
        on_done: Callable[[list[SendOutcome | RequestRefused]], None],
    ) -> None:
        """Several sends of one user (a connection's window), stored in one group commit.

        Each is answered on its own, in order, through one call of `on_done` once they are on
        disk (or at once if none could be): its outcome, or why it was refused (rate limit,
        disk, quota, unknown recipient...). A refusal of one does not touch the others.
        `on_done` runs in the committer task: it must not block.
        """
        shared = self.shared_send_rate
        if shared is not None and not shared.holds(user.id, len(sends)):
            self._nursery.start_soon(
                shared.lease_then,
                user.id,
                len(sends),
                partial(self._start_sends_now, user, sends, on_done),
                lambda refusal: on_done([refusal] * len(sends)),
            )
            return
        self._start_sends_now(user, sends, on_done)

    def _start_sends_now(
        self,
        user: UserRecord,
        sends: Sequence[requests.Send],
        on_done: Callable[[list[SendOutcome | RequestRefused]], None],
    ) -> None:
        results: list[SendOutcome | RequestRefused | None] = []
        intents: list[SendIntent] = []
        stored_at: list[int] = []  # where each intent's outcome goes in results
        now = trio.current_time()
        for request in sends:
            try:
                intent = self._intent(user, request, now)
            except RequestRefused as exc:
                results.append(exc)
                continue
            stored_at.append(len(results))
            results.append(None)
            intents.append(intent)

        def committed(done: Sequence[SendOutcome] | RequestRefused) -> None:
            # A refusal here is the whole batch failing: nothing of it was stored.
            outcomes: Sequence[SendOutcome | RequestRefused] = (
                [done] * len(intents) if isinstance(done, RequestRefused) else done
            )
            for index, outcome in zip(stored_at, outcomes, strict=True):
                if isinstance(outcome, SendOutcome) and outcome.error_code is not None:
                    outcome = RequestRefused(
                        ErrorCode(outcome.error_code), outcome.error_message or ""
                    )
                results[index] = outcome
            answers = [r for r in results if r is not None]
            self.metrics.count_sends([send.kind for send in sends], answers)
            on_done(answers)

        self.commits.enqueue(intents, committed)

    def _intent(self, user: UserRecord, request: requests.Send, now: float) -> SendIntent:
        """What to store for one send, once the user's rate and the disk allow it."""
        retry_after = self.send_limits.retry_after(user.id, now)
        if retry_after > 0:
            raise RequestRefused(
                ErrorCode.RATE_LIMITED,
                "sending too fast; slow down",
                retry_after=round(retry_after, 3),
            )
        self._check_disk(now)
        subject, body = request.subject, request.body
        if request.kind == "rickroll":
            subject, body = RICKROLL_SUBJECT, RICKROLL_BODY
        # tuple.__new__: a NamedTuple's own __new__ is a Python function with keywords, and
        # this runs for every send (the field order is checked at import, atop this module).
        return _new_tuple(
            SendIntent,
            (
                user.id,
                user.username,
                request.kind,
                request.to,
                subject,
                body,
                request.client_msg_id,
                request.in_reply_to,
                request.require_ack,
            ),
        )

    def _deliver(self, outcomes: Sequence[SendOutcome]) -> None:
        for outcome in outcomes:
            for delivery in outcome.deliveries:
                for session in self.presence.sessions_of(delivery.user_id):
                    session.offer(delivery.entry)

    # -- reading --------------------------------------------------------------------------------

    async def inbox(self, user: UserRecord, request: requests.Inbox):  # type: ignore[no-untyped-def]
        return await self.runner.read(
            _inbox,
            self.runner.store,
            user.id,
            request.unread_only,
            request.limit,
            request.before_seq,
            request.archived,
        )

    async def mark_read(self, user: UserRecord, seqs: Sequence[int], *, read: bool = True) -> int:
        """Mark entries read (or unread again); every session of the user hears of the change."""
        store = self.runner.store
        try:
            changed = await self.runner.write(
                partial(store.set_read_state, read=read, node_id=self.mailbox_sync.node_id),
                user.id,
                list(seqs),
            )
        except NotFound:
            raise RequestRefused(ErrorCode.NOT_FOUND, "no such message in your mailbox") from None
        self.mailbox_sync.changed(user.id, "read" if read else "unread", changed)
        if read and changed:
            await self.ledger.read(user, changed)
        return len(changed)

    async def who(self) -> list[OnlineUser]:
        """Users online on this node or, with a shared database, on any node."""
        local = self.presence.who()
        if self.shared_presence is None:
            return local
        return await self.shared_presence.who(local)

    async def history(self, user: UserRecord, request: requests.History):  # type: ignore[no-untyped-def]
        with_user_id = None
        if request.with_user is not None:
            other = await self.runner.read(self.runner.store.user_by_name, request.with_user)
            if other is None:
                raise RequestRefused(
                    ErrorCode.UNKNOWN_RECIPIENT, f"no such user: {request.with_user}"
                )
            with_user_id = other.id
        query = HistoryQuery(
            with_user_id=with_user_id,
            kind=request.kind,
            search=request.search,
            since=request.since,
            limit=request.limit,
            before_id=request.before_id,
            query=None if request.query is None else parse_search(request.query),
            offset=request.offset,
            thread_id=request.thread,
            username=user.username,
        )
        return await self.runner.read(self.runner.store.history, user.id, query)

    async def set_prefs(
        self, user: UserRecord, prank_opt_out: bool | None, read_receipts: bool | None = None
    ) -> dict[str, Any]:
        """Set the preferences given (None: unchanged); all of them as they now are."""
        store = self.runner.store
        if prank_opt_out is not None:
            await self.runner.write(store.set_prank_opt_out, user.id, prank_opt_out)
        if read_receipts is not None:
            await self.runner.write(store.set_read_receipts, user.id, read_receipts)
        fresh = await self.runner.read(store.user_by_id, user.id)
        assert fresh is not None
        receipts = await self.runner.read(store.read_receipts_enabled, user.id)
        return {"prank_opt_out": fresh.prank_opt_out, "read_receipts": receipts}

    async def me(self, user: UserRecord) -> dict[str, Any]:
        fresh = await self.runner.read(self.runner.store.user_by_id, user.id)
        unread = await self.runner.read(self.runner.store.unread_count, user.id)
        receipts = await self.runner.read(self.runner.store.read_receipts_enabled, user.id)
        assert fresh is not None
        return {
            "username": fresh.username,
            "role": fresh.role,
            "prank_opt_out": fresh.prank_opt_out,
            "read_receipts": receipts,
            "unread": unread,
            "last_seq": fresh.last_seq,
        }


def _inbox(  # type: ignore[no-untyped-def]
    store: MailStore,
    user_id: int,
    unread_only: bool,
    limit: int,
    before_seq: int | None,
    archived: bool = False,
):
    return store.inbox(
        user_id, unread_only=unread_only, limit=limit, before_seq=before_seq, archived=archived
    )
