"""The TCP (and TLS) transport: frames in, core calls, frames out. One task tree per connection.

Each connection reads frames with a deadline (the login timeout before authentication, the
heartbeat timeout after), runs sends concurrently up to a window so a client may keep many in
flight, and pushes its user's mail from a feed task. Nothing a client sends can take the broker
down: every failure becomes an error frame or a closed connection and a log line.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from broker.config import Config
from broker.core import (
    Broker,
    LiveSession,
    SendOutcome,
    UserRecord,
    entry_view,
    mail_event,
    online_user_view,
)
from broker.core.presence import encode_events
from broker.core.throttle import ConnectionLimits
from broker.protocol import (
    MAX_SENT_FRAME_BYTES,
    NEED_DATA,
    ErrorCode,
    FrameConnection,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RequestRefused,
    error_response,
    fit_page,
    ok_response,
    parse_request,
    request_id,
    requests,
)

log = logging.getLogger("mailnet.tcp")

RECEIVE_SIZE = 64 * 1024
MAX_FAILED_LOGINS_PER_CONNECTION = 3


def peer_address(stream: trio.abc.Stream) -> str:
    inner = getattr(stream, "transport_stream", stream)
    try:
        return str(inner.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "?"


@dataclass(eq=False)
class ClientConnection:
    broker: Broker
    config: Config
    stream: trio.abc.Stream
    peer: str
    frames: FrameConnection = field(init=False)
    user: UserRecord | None = None
    token: str | None = None
    session: LiveSession | None = None
    _send_lock: trio.Lock = field(default_factory=trio.Lock)
    _outgoing: list[bytes] = field(default_factory=list)
    _flush_wanted: trio.Event = field(default_factory=trio.Event)
    _closing: bool = False
    _flusher_started: bool = False
    # When the socket was accepted: the TLS handshake and the login share one deadline.
    accepted_at: float | None = None
    _failed_logins: int = 0

    def __post_init__(self) -> None:
        self.frames = FrameConnection(
            max_frame_bytes=self.config.max_frame_bytes, max_send_bytes=MAX_SENT_FRAME_BYTES
        )
        self._window = trio.Semaphore(self.config.max_in_flight_per_connection)
        start = trio.current_time() if self.accepted_at is None else self.accepted_at
        self._login_deadline = start + self.config.login_timeout

    async def write(self, *objs: dict[str, Any]) -> None:
        """Send frames; returns once they are handed to the socket (backpressure).

        Writers queue their bytes and whoever holds the lock sends everything queued, so the
        responses to a group commit's sends leave in one syscall instead of one each.
        """
        await self._write_bytes(b"".join(self.frames.send(obj) for obj in objs))

    async def _write_bytes(self, data: bytes) -> None:
        """Send frames already encoded (see write)."""
        self._outgoing.append(data)
        await self._flush()

    async def _flush(self) -> None:
        """Send everything queued, unless an earlier writer holding the lock already has."""
        lock = self._send_lock
        try:  # free: take it without the two scheduling round trips of `async with`
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._outgoing:
                data = b"".join(self._outgoing)
                self._outgoing.clear()
                await self.stream.send_all(data)
        finally:
            lock.release()

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._read_frames()
            finally:
                nursery.cancel_scope.cancel()

    def _deadline(self) -> float:
        if self.user is None:  # logging in has one fixed deadline, however chatty the client
            return self._login_deadline
        return trio.current_time() + self.config.heartbeat_timeout

    async def _read_frames(self) -> None:
        deadline = self._deadline()
        while not self._closing:
            with trio.move_on_at(deadline) as waiting:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if waiting.cancelled_caught:
                await self._expire()
                return
            if not data:
                return  # the client closed the connection
            try:
                self.frames.receive_data(data)
            except RemoteProtocolError as exc:  # oversized: the next frame cannot be found
                log.info("closing %s: %s", self.peer, exc.message)
                await self._refuse_and_close(exc.code, exc.message)
                return
            sends: list[tuple[int | None, requests.Send]] = []  # read, not yet started
            while not self._closing:
                try:
                    frame = self.frames.next_frame()
                except RemoteProtocolError as exc:
                    self._start_sends(sends)
                    if self.frames.broken:  # an oversized frame behind others in one read
                        log.info("closing %s: %s", self.peer, exc.message)
                        await self._refuse_and_close(exc.code, exc.message)
                        return
                    log.info("bad frame from %s: %s", self.peer, exc.message)
                    await self.write(error_response(None, exc.code, exc.message))
                    continue
                if frame is NEED_DATA:
                    break
                assert isinstance(frame, dict)
                await self._dispatch(frame, sends)
                deadline = self._deadline()
            self._start_sends(sends)

    async def _expire(self) -> None:
        if self.user is None:
            log.info("closing %s: no login within %.0fs", self.peer, self.config.login_timeout)
            await self._refuse_and_close(ErrorCode.TIMEOUT, "login took too long")
        else:
            log.info(
                "session of %r from %s expired: no heartbeat for %.0fs",
                self.user.username,
                self.peer,
                self.config.heartbeat_timeout,
            )
            await self._refuse_and_close(ErrorCode.TIMEOUT, "no heartbeat: session expired")

    async def _refuse_and_close(self, code: ErrorCode, message: str) -> None:
        self._closing = True
        with trio.move_on_after(1):
            await self.write(error_response(None, code, message))

    async def _dispatch(
        self, frame: dict[str, Any], sends: list[tuple[int | None, requests.Send]]
    ) -> None:
        """Answer one frame. Sends are collected in `sends` (each holding a slot of the
        window) and started together by _start_sends; anything else is answered now."""
        rid = request_id(frame)
        try:
            request = parse_request(frame)
        except ProtocolError as exc:
            # Code and op only: the message may quote a field, and a field may hold a secret.
            op = frame.get("op")
            log.info(
                "%s from %s (op %.20r)", exc.code, self.peer, op if isinstance(op, str) else None
            )
            await self.write(error_response(rid, exc.code, exc.message))
            return
        if isinstance(request, requests.Send):
            try:  # no scheduling round trip per frame while the window has room
                self._window.acquire_nowait()
            except trio.WouldBlock:
                self._start_sends(sends)  # what was read goes now; then wait for room
                await self._window.acquire()  # backpressure: stop reading when it is full
            sends.append((rid, request))
        else:
            self._start_sends(sends)
            await self._answer(rid, request)

    def _start_sends(self, sends: list[tuple[int | None, requests.Send]]) -> None:
        """Store the sends read so far as one group; their answers are queued by _answered
        when it commits (no task waits for them) and written by the flusher."""
        if not sends:
            return
        batch = list(sends)
        sends.clear()
        try:
            user = self._require_user()
            self.broker.start_sends(
                user, [request for _, request in batch], partial(self._answered, batch)
            )
        except RequestRefused as exc:
            self._answered(batch, [exc] * len(batch))
        except Exception:
            log.exception("internal error answering %d sends", len(batch))
            internal = RequestRefused(ErrorCode.INTERNAL, "internal error; it was logged")
            self._answered(batch, [internal] * len(batch))

    def _answered(
        self,
        sends: list[tuple[int | None, requests.Send]],
        results: list[SendOutcome | RequestRefused],
    ) -> None:
        """Queue the answers to a group of sends, free their window slots, wake the flusher.
        Runs in the committer's task: nothing here may block."""
        try:
            frames = []
            for (rid, _), result in zip(sends, results, strict=True):
                if isinstance(result, RequestRefused):
                    log.info("refused Send from %s: %s", self.peer, result.message)
                    frames.append(
                        self.frames.send(
                            error_response(rid, result.code, result.message, **result.details)
                        )
                    )
                else:  # ints, a bool and None: the fast encoder's case
                    frames.append(
                        self.frames.send_plain(
                            ok_response(
                                rid, message_id=result.message_id, duplicate=result.duplicate
                            )
                        )
                    )
            self._outgoing.append(b"".join(frames))
            self._flush_wanted.set()
            if not self._flusher_started:  # started by the first sends: none while idle
                self._flusher_started = True
                with contextlib.suppress(RuntimeError):  # closed: nobody to answer
                    self._nursery.start_soon(self._flush_forever)
        finally:
            for _ in sends:
                self._window.release()

    async def _flush_forever(self) -> None:
        """Write what _answered queued, as soon as the connection can take it."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            await self._flush()

    async def _answer(self, rid: int | None, request: requests.Request) -> None:
        try:
            result = await self._handle(request)
        except RequestRefused as exc:
            log.info("refused %s from %s: %s", type(request).__name__, self.peer, exc.message)
            response = error_response(rid, exc.code, exc.message, **exc.details)
        except ProtocolError as exc:
            response = error_response(rid, exc.code, exc.message)
        except Exception:
            log.exception("internal error answering %s", type(request).__name__)
            response = error_response(rid, ErrorCode.INTERNAL, "internal error; it was logged")
        else:
            if result is None:
                return
            response = ok_response(rid, **result)
        try:
            await self.write(response)
        except LocalProtocolError as exc:  # too large to send; nothing was written
            log.error("cannot answer %s from %s: %s", type(request).__name__, self.peer, exc)
            await self.write(error_response(rid, ErrorCode.INTERNAL, "the answer is too large"))

    def _require_user(self) -> UserRecord:
        if self.user is None:
            raise RequestRefused(ErrorCode.NOT_AUTHENTICATED, "log in first")
        if self.session is not None:
            self.session.touch()
        return self.user

    async def _handle(self, request: requests.Request) -> dict[str, Any] | None:
        broker = self.broker
        match request:
            case requests.Ping():
                return {"pong": True}
            case requests.Login() | requests.Resume():
                try:
                    return await self._log_in(request)
                except RequestRefused as exc:
                    self._count_failed_login(exc)
                    raise
            case requests.Logout():
                user = self._require_user()
                await broker.logout(user, self.token)
                self._closing = True
                return {"bye": True}
            case requests.Ack(seq=seq):
                self._require_user()
                assert self.session is not None  # every login opens one
                broker.ack(self.session, seq)
                return None
            case requests.Inbox():
                entries, unread = await broker.inbox(self._require_user(), request)
                page, cut = fit_page([entry_view(e) for e in entries])
                return {"entries": page, "unread": unread, **({"truncated": True} if cut else {})}
            case requests.MarkRead(seqs=seqs):
                return {"marked": await broker.mark_read(self._require_user(), seqs)}
            case requests.Who():
                self._require_user()
                return {"users": [online_user_view(u) for u in await broker.who()]}
            case requests.History():
                items = await broker.history(self._require_user(), request)
                page, cut = fit_page([entry_view(e) for e in items])
                return {"items": page, **({"truncated": True} if cut else {})}
            case requests.SetPrefs(prank_opt_out=value):
                return await broker.set_prefs(self._require_user(), value)
            case requests.ChangePassword(old_password=old, new_password=new):
                changed = await broker.admin.change_password(
                    self._require_user(),
                    old,
                    new,
                    peer=self.peer,
                    client=self.session.client if self.session else "",
                    current=self.session,
                )
                self.token = changed.token
                return {"token": changed.token, "sessions_ended": changed.sessions_ended}
            case requests.Block(username=name):
                return await broker.admin.block(self._require_user(), name)
            case requests.Unblock(username=name):
                return await broker.admin.unblock(self._require_user(), name)
            case requests.ListBlocks():
                return {"blocks": await broker.admin.list_blocks(self._require_user())}
            case requests.AdminUsers():
                return {"users": await broker.admin.users(self._require_user())}
            case requests.AdminSetDisabled(username=name, disabled=disabled):
                return await broker.admin.set_disabled(self._require_user(), name, disabled)
            case requests.AdminKick(username=name):
                return await broker.admin.kick(self._require_user(), name)
            case requests.AdminSessions():
                return {"sessions": await broker.admin.sessions(self._require_user())}
            case requests.AdminAudit(limit=limit):
                return await broker.admin.audit(self._require_user(), limit)
            case requests.AdminInvite():
                return await broker.admin.create_invite(
                    self._require_user(), self.config.invite_ttl
                )
        raise RemoteProtocolError(ErrorCode.UNKNOWN_OP, "unsupported operation")

    def _count_failed_login(self, refusal: RequestRefused) -> None:
        """A few failed logins and the connection is closed after its answer: a guesser must
        reconnect (and count against the connection limits) to keep guessing."""
        if refusal.code in (ErrorCode.AUTH_FAILED, ErrorCode.RATE_LIMITED):
            self._failed_logins += 1
            if self._failed_logins >= MAX_FAILED_LOGINS_PER_CONNECTION:
                log.info("closing %s: %d failed logins", self.peer, self._failed_logins)
                self._closing = True

    async def _log_in(self, request: requests.Login | requests.Resume) -> dict[str, Any]:
        if self.user is not None:
            raise RequestRefused(ErrorCode.ALREADY_AUTHENTICATED, "already logged in")
        created = False
        if isinstance(request, requests.Login):
            result = await self.broker.login(
                request.username,
                request.password,
                create=request.create,
                client=request.client,
                peer=self.peer,
                invite=request.invite,
            )
            user, token, created = result.user, result.token, result.created
        else:
            user, token = await self.broker.user_for_token(request.token), request.token
        self.user, self.token = user, token
        self.session = await self._nursery.start(self._run_feed, user, token, request)
        # No task per session waiting for its end: one is started if it ends (idle memory).
        self.session.call_on_end(
            partial(self._nursery.start_soon, self._close_when_ended, self.session)
        )
        return {
            "username": user.username,
            "role": user.role,
            "token": token,
            "created": created,
            "last_seq": user.last_seq,
            "resume_after": self.session.cursor,
            "heartbeat_interval": self.config.heartbeat_interval,
            **({"presence_batch": True} if request.presence_batch else {}),
        }

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
        ) as session:
            task_status.started(session)
            if not request.live:
                await trio.sleep_forever()  # registered for kicks only: nothing to push
            while True:
                entries, events = await session.next_items(self.broker.fetch_after)
                # Mail events hold only strings, ints, bools and None: the fast encoder's case.
                send_plain, send = self.frames.send_plain, self.frames.send
                data = b"".join([send_plain(mail_event(e)) for e in entries])
                if events:  # presence events are shared by every session: encoded once
                    data += encode_events(events, send)
                await self._write_bytes(data)

    async def _close_when_ended(self, session: LiveSession) -> None:
        """Close the connection when the core ends its session (kick, disable, password)."""
        await session.ended.wait()
        log.info(
            "closing session %d of %r from %s: %s",
            session.id,
            session.username,
            self.peer,
            session.end_reason,
        )
        await self._refuse_and_close(ErrorCode.SESSION_ENDED, session.end_reason)
        self._nursery.cancel_scope.cancel()


def _is_dropped_connection(exc: BaseException) -> bool:
    """A peer that vanished (reset, closed), even if the connection's nursery wrapped it."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_dropped_connection(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)


async def handle_connection(
    broker: Broker,
    config: Config,
    limits: ConnectionLimits,
    stream: trio.abc.Stream,
    ssl_context: ssl.SSLContext | None,
) -> None:
    """serve_tcp's handler: never raises, so one bad client cannot stop the listener."""
    accepted_at = trio.current_time()
    peer = peer_address(stream)
    refusal = limits.admit(peer)
    try:
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True)
            # A refused connection gets a short handshake, just long enough to be told why.
            limit = config.login_timeout if refusal is None else min(config.login_timeout, 2.0)
            try:
                with trio.move_on_after(limit) as scope:
                    await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                log.info("closing %s: TLS handshake failed: %s", peer, exc.__cause__ or exc)
                return
            if scope.cancelled_caught:
                log.info("closing %s: TLS handshake took too long", peer)
                return
        connection = ClientConnection(broker, config, stream, peer, accepted_at=accepted_at)
        if refusal is not None:
            log.warning("refusing connection from %s: %s", peer, refusal)
            await connection._refuse_and_close(ErrorCode.TOO_MANY_CONNECTIONS, refusal)
            return
        await connection.serve()
    except Exception as exc:
        if _is_dropped_connection(exc):
            log.debug("connection from %s dropped: %s", peer, exc)
        else:
            log.exception("connection from %s failed", peer)
    finally:
        if refusal is None:
            limits.release(peer)
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await trio.aclose_forcefully(stream)
