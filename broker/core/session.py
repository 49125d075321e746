"""One client session's life, the same for every transport: its login state, the dispatch of each
operation to the core, its feed (backlog, live mail, presence events) and its end.

A transport turns bytes or HTTP into typed requests (`broker.protocol.requests`), hands them to
`Session.handle` (sends to `Session.start_sends`) and encodes the results; what the session sends
on its own (mail, events, why it ended) leaves through the transport's `Outlet`. The session owns
no socket and no clock: the transport reads until `read_deadline()` and calls `expire()` when
nothing came. See docs/architecture.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

import msgspec
import trio

from broker.protocol import ErrorCode, ProtocolError, RequestRefused, requests
from broker.protocol import responses as r
from broker.store import SendOutcome, UserRecord

from .accounts import LoginResult
from .feed import Message, deliver_feed
from .operations import carry_out
from .presence import LiveSession, PushedEvent
from .service import Broker

log = logging.getLogger("mailnet.session")

MAX_FAILED_LOGINS_PER_CONNECTION = 3
INTERNAL_MESSAGE = "internal error; it was logged"

SendsDone = Callable[[list[SendOutcome | RequestRefused]], None]


class Outlet(Protocol):
    """A transport's side of a live session: the one way its pushes and its end go out."""

    async def push(self, mail: list[Message], events: list[PushedEvent]) -> None:
        """Send `mail` events (entries in seq order, as views.mail_event builds them: the
        fast encoders' case), then the other `events` (broker.protocol.events)."""

    async def end(self, code: ErrorCode, message: str) -> None:
        """Tell the client why the session ends (an error), then close the connection."""


class Session:
    """A client's session on one connection (TCP, WebSocket) or for one HTTP request.

    A live transport passes its `outlet` and the `nursery` its connection runs in: a login then
    registers the session in `who` and feeds it there until the connection ends. Without them
    (HTTP), a login only hands out a token.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        peer: str,
        outlet: Outlet | None = None,
        nursery: trio.Nursery | None = None,
        started_at: float | None = None,
        fit_pages: bool = True,
        login_timeout_message: str = "login took too long",
    ) -> None:
        self.broker = broker
        self.config = broker.config
        self.peer = peer
        self.user: UserRecord | None = None
        self.token: str | None = None
        self.live: LiveSession | None = None
        # Set once the connection must close after its current answer (logout, login guessing).
        self.closing = False
        self._outlet = outlet
        self._nursery = nursery
        self._fit_pages = fit_pages  # pages of entries must fit in one frame (TCP)
        self._login_timeout_message = login_timeout_message
        self._failed_logins = 0
        start = trio.current_time() if started_at is None else started_at
        self._login_deadline = start + self.config.login_timeout

    @classmethod
    def of_caller(
        cls, broker: Broker, user: UserRecord, token: str | None, *, peer: str
    ) -> Session:
        """The session of one HTTP request, whose caller is already authenticated."""
        session = cls(broker, peer=peer, fit_pages=False)
        session.user, session.token = user, token
        return session

    # -- state --------------------------------------------------------------------------------

    def read_deadline(self) -> float:
        """When the client must have sent something: logging in has one fixed deadline however
        chatty the client; after that, each message restarts the heartbeat timeout."""
        if self.user is None:
            return self._login_deadline
        return trio.current_time() + self.config.heartbeat_timeout

    def require_user(self) -> UserRecord:
        """The logged-in user (a request is activity: it resets their idle time in `who`)."""
        if self.user is None:
            raise RequestRefused(ErrorCode.NOT_AUTHENTICATED, "log in first")
        if self.live is not None:
            self.live.touch()
        elif self._outlet is None:
            self.broker.touch_user(self.user.id)
        return self.user

    async def expire(self) -> None:
        """Nothing arrived before read_deadline(): end the session, saying why."""
        if self.user is None:
            log.info("closing %s: no login within %.0fs", self.peer, self.config.login_timeout)
            await self._end(ErrorCode.TIMEOUT, self._login_timeout_message)
        else:
            log.info(
                "session of %r from %s expired: no heartbeat for %.0fs",
                self.user.username,
                self.peer,
                self.config.heartbeat_timeout,
            )
            await self._end(ErrorCode.TIMEOUT, "no heartbeat: session expired")

    async def _end(self, code: ErrorCode, message: str) -> None:
        self.closing = True
        if self._outlet is not None:
            await self._outlet.end(code, message)

    # -- dispatch -----------------------------------------------------------------------------

    def start_sends(self, sends: Sequence[requests.Send], on_done: SendsDone) -> None:
        """Store several sends in one group commit; `on_done` gets each one's outcome, in order,
        once they are on disk (see Broker.start_sends). Raises RequestRefused if none may go."""
        self.broker.start_sends(self.require_user(), sends, on_done)

    async def send(self, request: requests.Send) -> r.SendResult:
        """One send, answered once it is on disk."""
        outcome = await self.broker.send(self.require_user(), request)
        assert outcome.message_id is not None  # refusals are raised
        return r.SendResult(message_id=outcome.message_id, duplicate=outcome.duplicate)

    async def me(self) -> Message:
        return await self.broker.me(self.require_user())

    async def handle(self, request: requests.Request) -> r.Result | None:
        """Carry out one request (many sends at once: see start_sends): its typed result, or None
        when it has no answer (ack). Raises RequestRefused or ProtocolError to refuse it.
        Every refusal is counted in the metrics by its code, for every transport (a send's
        outcome is counted where it is stored: Broker.start_sends)."""
        try:
            return await self._carry_out(request)
        except (RequestRefused, ProtocolError) as exc:
            if not isinstance(request, requests.Send):
                self.broker.metrics.count_error(str(exc.code))
            raise
        except Exception:
            self.broker.metrics.count_error(str(ErrorCode.INTERNAL))
            raise

    async def _carry_out(self, request: requests.Request) -> r.Result | None:
        """handle's work. What changes the session is here; what needs only its user is in
        operations.py."""
        broker = self.broker
        match request:
            case requests.Ping():
                return r.PingResult()
            case requests.Login() | requests.Resume():
                try:
                    return await self._logged_in(request)
                except RequestRefused as exc:
                    self._count_failed_login(exc)
                    raise
            case requests.Logout():
                await broker.logout(self.require_user(), self.token)
                self.closing = True
                return r.LogoutResult()
            case requests.Ack(seq=seq):
                self.require_user()
                if self.live is not None:  # every live login opens one
                    broker.ack(self.live, seq)
                return None
            case requests.Send():
                return await self.send(request)
            case requests.ChangePassword(old_password=old, new_password=new):
                changed = await broker.admin.change_password(
                    self.require_user(),
                    old,
                    new,
                    peer=self.peer,
                    client=self.live.client if self.live else "",
                    current=self.live,
                )
                self.token = changed.token
                return r.ChangePasswordResult(
                    token=changed.token, sessions_ended=changed.sessions_ended
                )
        return await carry_out(broker, self.require_user(), request, fit_pages=self._fit_pages)

    # -- login --------------------------------------------------------------------------------

    def _count_failed_login(self, refusal: RequestRefused) -> None:
        """A few failed logins and the connection is closed after its answer: a guesser must
        reconnect (and count against the connection limits) to keep guessing."""
        if refusal.code in (ErrorCode.AUTH_FAILED, ErrorCode.RATE_LIMITED):
            self._failed_logins += 1
            if self._failed_logins >= MAX_FAILED_LOGINS_PER_CONNECTION:
                log.info("closing %s: %d failed logins", self.peer, self._failed_logins)
                self.closing = True

    async def log_in(self, request: requests.Login | requests.Resume) -> LoginResult:
        """Authenticate the session; on a live transport, also register it and start its feed.
        (`handle` answers a login with this, as the protocol's LoginResult.)"""
        if self.user is not None:
            raise RequestRefused(ErrorCode.ALREADY_AUTHENTICATED, "already logged in")
        if isinstance(request, requests.Login):
            result = await self.broker.login(
                request.username,
                request.password,
                create=request.create,
                client=request.client,
                peer=self.peer,
                invite=request.invite,
            )
        else:
            user = await self.broker.user_for_token(request.token)
            result = LoginResult(user=user, token=request.token, created=False)
        self.user, self.token = result.user, result.token
        if self._nursery is not None:  # else no connection to feed: HTTP
            self.live = await self._nursery.start(
                self._run_feed, result.user, result.token, request
            )
            # No task per session waiting for its end: one starts if it ends (idle memory).
            self.live.call_on_end(
                partial(self._nursery.start_soon, self._end_when_ended, self.live)
            )
        return result

    async def _logged_in(self, request: requests.Login | requests.Resume) -> r.LoginResult:
        result = await self.log_in(request)
        assert self.live is not None, "a session without a transport to feed: call log_in"
        return r.LoginResult(
            username=result.user.username,
            role=result.user.role,  # type: ignore[arg-type]  # the store holds admin or user
            token=result.token,
            created=result.created,
            last_seq=result.user.last_seq,
            resume_after=self.live.cursor,
            heartbeat_interval=self.config.heartbeat_interval,
            presence_batch=True if request.presence_batch else msgspec.UNSET,
        )

    # -- feed and end -------------------------------------------------------------------------

    async def _run_feed(
        self,
        user: UserRecord,
        token: str,
        request: requests.Login | requests.Resume,
        *,
        task_status: trio.TaskStatus[LiveSession] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with self.broker.live_session(
            user,
            client=request.client,
            resume_after=request.resume_after,
            address=self.peer,
            quiet=not request.live,
            token=token,
            presence_batch=request.presence_batch,
        ) as live:
            task_status.started(live)
            if not request.live:
                await trio.sleep_forever()  # registered for kicks only: nothing to push
            await self._deliver_feed(live)

    async def _deliver_feed(self, live: LiveSession) -> None:
        assert self._outlet is not None
        failed = await deliver_feed(live, self.broker.fetch_after, self._outlet.push)
        if failed:
            await self._end(ErrorCode.INTERNAL, INTERNAL_MESSAGE)

    async def _end_when_ended(self, live: LiveSession) -> None:
        """Close the connection when the core ends its session (kick, disable, password)."""
        await live.ended.wait()
        log.info(
            "closing session %d of %r from %s: %s",
            live.id,
            live.username,
            self.peer,
            live.end_reason,
        )
        await self._end(ErrorCode.SESSION_ENDED, live.end_reason)
