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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from broker.config import Config
from broker.core import Broker, Message, SendOutcome, Session
from broker.core.prelogin import PreLoginFrames
from broker.core.presence import PushedEvent, encode_events
from broker.core.session import INTERNAL_MESSAGE
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
    ok_response,
    parse_request,
    request_id,
    requests,
    wire,
)
from broker.transport.deadlines import ReadDeadlines
from broker.transport.fastsocket import FastSocketStream, FastTLSStream
from broker.transport.proxied import accept_proxied

log = logging.getLogger("mailnet.tcp")

RECEIVE_SIZE = 64 * 1024


def peer_address(stream: trio.abc.Stream) -> str:
    inner: Any = getattr(stream, "transport_stream", stream)  # a SocketStream, or a test's
    try:
        return str(inner.socket.getpeername()[0])
    except (AttributeError, OSError):
        return "?"


@dataclass(eq=False)
class ClientConnection:
    """One client's connection: bytes to typed requests for its Session, whose answers, pushes
    and end it encodes as frames (it is the session's Outlet)."""

    broker: Broker
    config: Config
    stream: trio.abc.Stream
    peer: str
    deadlines: ReadDeadlines
    frames: PreLoginFrames = field(init=False)
    session: Session = field(init=False)
    _send_lock: trio.Lock = field(default_factory=trio.Lock)
    _outgoing: list[bytes] = field(default_factory=list)
    _flush_wanted: trio.Event = field(default_factory=trio.Event)
    _closing: bool = False
    _flusher_started: bool = False
    # When the socket was accepted: the TLS handshake and the login share one deadline.
    accepted_at: float | None = None
    # For `deadlines`: when the client must have sent something, and whether we wait on it.
    deadline: float = 0.0
    waiting: bool = False
    _expiring: bool = False

    def __post_init__(self) -> None:
        frames = FrameConnection(
            max_frame_bytes=self.config.max_frame_bytes, max_send_bytes=MAX_SENT_FRAME_BYTES
        )
        self.frames = PreLoginFrames(  # small frames and a shared budget until login
            frames,
            self.broker.prelogin,
            lambda: self.session.user is not None,
            max_pre_login_frame_bytes=self.config.max_pre_login_frame_bytes,
        )
        self._window = trio.Semaphore(self.config.max_in_flight_per_connection)
        # Plaintext on a socket: answers to committed sends may be written from the callback.
        self._direct = self.stream if isinstance(self.stream, FastSocketStream) else None

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
            self.session = Session(
                self.broker,
                peer=self.peer,
                outlet=self,
                nursery=nursery,
                started_at=self.accepted_at,
            )
            # No flusher until the first sends (_answered): an idle connection keeps fewer tasks.
            try:
                await self._read_frames()
            finally:
                self.frames.close()  # gives back its share of the pre-login budget
                nursery.cancel_scope.cancel()

    # -- the session's Outlet -------------------------------------------------------------------

    async def push(self, mail: list[Message], events: list[PushedEvent]) -> None:
        # Mail events hold only strings, ints, bools and None: the fast encoder's case.
        send_plain = self.frames.send_plain
        data = b"".join([send_plain(m) for m in mail])
        if events:  # a presence tick's events are encoded once for every connection
            send = self.frames.send_payload
            data += encode_events(events, lambda e: send(wire.event_payload(e)))
        await self._write_bytes(data)

    async def end(self, code: ErrorCode, message: str) -> None:
        await self._refuse_and_close(code, message)
        self._nursery.cancel_scope.cancel()

    # -- frames in ------------------------------------------------------------------------------

    def expire_soon(self) -> None:
        """The client was silent past its deadline (see ReadDeadlines): end the session."""
        if not self._expiring:
            self._expiring = True
            with contextlib.suppress(RuntimeError):  # already closing
                self._nursery.start_soon(self.session.expire)

    async def _read_frames(self) -> None:
        session = self.session
        receive_some = self.stream.receive_some
        self.deadline = session.read_deadline()
        self.deadlines.add(self)
        try:
            await self._read_loop(session, receive_some)
        finally:
            self.deadlines.discard(self)

    async def _read_loop(
        self, session: Session, receive_some: Callable[[int], Awaitable[bytes | bytearray]]
    ) -> None:
        while not (self._closing or session.closing):
            self.waiting = True  # ReadDeadlines ends the session if this lasts too long
            try:
                data = await receive_some(RECEIVE_SIZE)
            finally:
                self.waiting = False
            if not data:
                return  # the client closed the connection
            try:
                self.frames.receive_data(data)  # type: ignore[arg-type]  # bytes or bytearray
            except RemoteProtocolError as exc:  # oversized: the next frame cannot be found
                log.info("closing %s: %s", self.peer, exc.message)
                await self._refuse_and_close(exc.code, exc.message)
                return
            sends: list[tuple[int | None, requests.Send]] = []  # read, not yet started
            while not (self._closing or session.closing):
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
                self.deadline = session.read_deadline()
            self._start_sends(sends)

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
            self.session.start_sends(
                [request for _, request in batch], partial(self._answered, batch)
            )
        except RequestRefused as exc:
            self._answered(batch, [exc] * len(batch))
        except Exception:
            log.exception("internal error answering %d sends", len(batch))
            internal = RequestRefused(ErrorCode.INTERNAL, INTERNAL_MESSAGE)
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
            data = b"".join(frames)
            if self._direct is not None and not self._outgoing and not self._send_lock.locked():
                # Nobody is writing: send now, without waking the flusher (most answers fit).
                try:
                    data = data[self._direct.try_send(data) :]
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # gone: the reader sees it and ends the connection
                if not data:
                    return
            self._outgoing.append(data)
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
            result = await self.session.handle(request)
        except RequestRefused as exc:
            log.info("refused %s from %s: %s", type(request).__name__, self.peer, exc.message)
            payload = wire.error_payload(rid, exc.code, exc.message, **exc.details)
        except ProtocolError as exc:
            payload = wire.error_payload(rid, exc.code, exc.message)
        except Exception:
            log.exception("internal error answering %s", type(request).__name__)
            payload = wire.error_payload(rid, ErrorCode.INTERNAL, INTERNAL_MESSAGE)
        else:
            if result is None:
                return
            try:
                payload = wire.result_payload(rid, result)
                data = self.frames.send_payload(payload)
            except LocalProtocolError as exc:  # too large to send; nothing was written
                log.error("cannot answer %s from %s: %s", type(request).__name__, self.peer, exc)
                payload = wire.error_payload(rid, ErrorCode.INTERNAL, "the answer is too large")
            else:
                await self._write_bytes(data)
                return
        await self._write_bytes(self.frames.send_payload(payload))


def _is_dropped_connection(exc: BaseException) -> bool:
    """A peer that vanished (reset, closed), even if the connection's nursery wrapped it."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_dropped_connection(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)


async def handle_connection(
    broker: Broker,
    config: Config,
    limits: ConnectionLimits,
    deadlines: ReadDeadlines,
    stream: trio.abc.Stream,
    ssl_context: ssl.SSLContext | None,
) -> None:
    """serve_tcp's handler: never raises, so one bad client cannot stop the listener."""
    accepted_at = trio.current_time()
    peer = peer_address(stream)
    if isinstance(stream, trio.SocketStream):  # fewer scheduling passes per read and write
        stream = FastSocketStream(stream)
    deadline = accepted_at + config.login_timeout
    relayed = await accept_proxied(stream, peer, config, deadline=deadline)
    if relayed is None:  # a trusted balancer sent no valid PROXY header (closed already)
        return
    stream, peer = relayed
    refusal = limits.admit(peer)
    try:
        if ssl_context is not None:
            # OpenSSL on the descriptor; behind a PROXY header (bytes already read past it),
            # trio's SSLStream, which can be handed them.
            stream = (
                FastTLSStream(stream, ssl_context)
                if isinstance(stream, FastSocketStream)
                else trio.SSLStream(stream, ssl_context, server_side=True)
            )
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
        connection = ClientConnection(
            broker, config, stream, peer, deadlines, accepted_at=accepted_at
        )
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
