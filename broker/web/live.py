"""The WebSocket at /api/ws: a live session fed like a TCP connection's (backlog, then live).

Protocol (docs/http-api.md): the client's first message is `{"op": "auth", "token": ...,
"after_seq": N}` within the login timeout; the server answers `ready`, then sends every entry
after N in seq order and new mail and presence events as they come. The client acks what it has
and pings; a socket silent for the heartbeat timeout is closed and leaves `who`. On shutdown
every socket is closed with 1001 (going away) so browsers reconnect instead of reporting an
error; logging a token out closes its sockets with 1008.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from typing import Any

import msgspec
import trio
from starlette.websockets import WebSocket

from broker.config import Config
from broker.core import Broker, Message, Session
from broker.core.prelogin import BUSY_MESSAGE
from broker.core.presence import PushedEvent, event_of
from broker.core.throttle import ConnectionLimits
from broker.protocol import ErrorCode, ProtocolError, RequestRefused, parse_request, requests
from broker.protocol.responses import LoginResult

from .auth import client_address
from .budget import pre_login_cap, reserved

log = logging.getLogger("mailnet.web.live")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the broker is shutting down
CLOSE_POLICY = 1008  # not authenticated, logged out, or no heartbeat
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # too many connections


class Silence(Enum):
    GONE = "the client closed the socket"
    TIMED_OUT = "nothing arrived before the deadline"


class LiveSockets:
    """The open sockets: counted per address, and found by token so a logout can close them."""

    def __init__(self, config: Config) -> None:
        self.limits = ConnectionLimits(config.max_connections, config.max_connections_per_ip)
        self._by_token: dict[str, set[LiveSocket]] = {}

    def add(self, token: str, socket: LiveSocket) -> None:
        self._by_token.setdefault(token, set()).add(socket)

    def discard(self, token: str, socket: LiveSocket) -> None:
        sockets = self._by_token.get(token)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self._by_token[token]

    def revoke(self, token: str) -> None:
        """The token was logged out: close every socket that authenticated with it."""
        for socket in list(self._by_token.get(token, ())):
            socket.revoke()

    def __len__(self) -> int:
        return sum(len(sockets) for sockets in self._by_token.values())


def _error(code: str, message: str) -> dict[str, Any]:
    return {"event": "error", "error": {"code": str(code), "message": message}}


class LiveSocket:
    """One WebSocket: messages to typed requests for its Session, whose answers, pushes and end
    it encodes as JSON messages (it is the session's Outlet)."""

    def __init__(
        self, broker: Broker, config: Config, sockets: LiveSockets, websocket: WebSocket
    ) -> None:
        self.broker = broker
        self.config = config
        self.sockets = sockets
        self.websocket = websocket
        self.peer = client_address(websocket)
        self._send_lock = trio.Lock()
        self._scope = trio.CancelScope()
        self._revoked = False
        self._client_gone = False
        self._ready_sent = trio.Event()  # nothing is pushed before the `ready` event
        self._nursery: trio.Nursery | None = None
        self.session: Session | None = None

    def revoke(self) -> None:
        self._revoked = True
        self._scope.cancel()

    async def send(self, *messages: dict[str, Any]) -> None:
        async with self._send_lock:
            for message in messages:
                await self.websocket.send_text(json.dumps(message, separators=(",", ":")))

    async def close(self, code: int, reason: str = "", *last: dict[str, Any]) -> None:
        if self._client_gone:
            return
        self._client_gone = True
        try:
            with trio.move_on_after(1):
                await self.send(*last)
                await self.websocket.close(code, reason)
        except Exception as exc:  # the client went away meanwhile
            log.debug("closing socket of %s: %r", self.peer, exc)

    async def receive(self, deadline: float) -> dict[str, Any] | Silence:
        """The next message as a dict (empty if it was not a JSON object), or why none came."""
        with trio.move_on_at(deadline) as waiting:
            message = await self.websocket.receive()
        if waiting.cancelled_caught:
            return Silence.TIMED_OUT
        if message["type"] == "websocket.disconnect":
            self._client_gone = True
            return Silence.GONE
        raw = message.get("text")
        if raw is None:
            try:
                raw = (message.get("bytes") or b"").decode("utf-8")
            except UnicodeDecodeError:
                return {}
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    async def serve(self) -> None:
        """Run the socket to its end; never raises except for cancellation."""
        finished = False
        try:
            with self._scope:
                await self._serve()
            finished = True
        except Exception:
            finished = True
            log.exception("WebSocket of %s failed", self.peer)
            await self.close(
                CLOSE_INTERNAL, "internal error", _error(ErrorCode.INTERNAL, "internal error")
            )
            return
        finally:
            if not finished:  # cancelled (alone or in a group): the broker is shutting down
                with trio.CancelScope(shield=True):
                    await self.close(CLOSE_GOING_AWAY, "the broker is shutting down")
        if self._revoked:
            await self.close(
                CLOSE_POLICY, "logged out", _error(ErrorCode.AUTH_FAILED, "logged out")
            )

    # -- the session's Outlet -------------------------------------------------------------------

    async def push(self, mail: list[Message], events: list[PushedEvent]) -> None:
        await self._ready_sent.wait()
        await self.send(*mail, *[msgspec.to_builtins(event_of(e)) for e in events])

    async def end(self, code: ErrorCode, message: str) -> None:
        if code == ErrorCode.INTERNAL:
            await self.close(CLOSE_INTERNAL, "internal error", _error(code, "internal error"))
        else:
            if code == ErrorCode.SESSION_ENDED:
                reason = "session ended"
            elif code == ErrorCode.TIMEOUT and self.session and self.session.user is not None:
                reason = "no heartbeat"
            else:
                reason = ""
            await self.close(CLOSE_POLICY, reason, _error(code, message))
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- messages in ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        await self.websocket.accept()
        refusal = self.sockets.limits.admit(self.peer)
        if refusal is not None:
            log.warning("refusing WebSocket from %s: %s", self.peer, refusal)
            await self.close(
                CLOSE_TRY_AGAIN_LATER, "", _error(ErrorCode.TOO_MANY_CONNECTIONS, refusal)
            )
            return
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.session = Session(
                    self.broker,
                    peer=self.peer,
                    outlet=self,
                    nursery=nursery,
                    login_timeout_message="authenticate within the login timeout",
                )
                await self._authenticate_then_read(self.session)
                nursery.cancel_scope.cancel()
        finally:
            self.sockets.limits.release(self.peer)

    async def _authenticate_then_read(self, session: Session) -> None:
        with reserved(self.broker.prelogin, pre_login_cap(self.config)) as admitted:  # budget.py
            if not admitted:
                busy = _error(ErrorCode.TOO_MANY_CONNECTIONS, BUSY_MESSAGE)
                await self.close(CLOSE_TRY_AGAIN_LATER, "", busy)
                return
            frame = await self.receive(session.read_deadline())
        if frame is Silence.GONE:
            return
        if frame is Silence.TIMED_OUT:
            await session.expire()
            return
        assert isinstance(frame, dict)
        if frame.get("op") != "auth":
            await self.close(
                CLOSE_POLICY,
                "",
                _error(ErrorCode.NOT_AUTHENTICATED, 'send {"op": "auth", "token": ...} first'),
            )
            return
        try:
            resume = parse_request(
                {
                    "op": "resume",
                    "token": frame.get("token"),
                    "resume_after": frame.get("after_seq") or None,
                    "client": "web",
                }
            )
            assert isinstance(resume, requests.Resume)
            ready = await session.handle(resume)
        except (ProtocolError, RequestRefused) as exc:
            await self.close(CLOSE_POLICY, "", _error(exc.code, exc.message))
            return
        assert isinstance(ready, LoginResult)
        self.sockets.add(resume.token, self)
        try:
            await self.send(
                {
                    "event": "ready",
                    "username": ready.username,
                    "last_seq": ready.last_seq,
                    "resume_after": ready.resume_after,
                    "heartbeat_interval": ready.heartbeat_interval,
                }
            )
            self._ready_sent.set()
            await self._read(session)
        finally:
            self.sockets.discard(resume.token, self)

    async def _read(self, session: Session) -> None:
        while True:
            frame = await self.receive(session.read_deadline())
            if frame is Silence.GONE:
                return
            if frame is Silence.TIMED_OUT:
                await session.expire()
                return
            assert isinstance(frame, dict)
            op = frame.get("op")
            if op == "ping":
                await self.send({"event": "pong"})
            elif op == "ack":
                try:
                    await session.handle(parse_request(frame))
                except (ProtocolError, RequestRefused) as exc:
                    await self.send(_error(exc.code, exc.message))
            elif op == "auth":
                await self.send(_error(ErrorCode.ALREADY_AUTHENTICATED, "already authenticated"))
            elif not frame:
                await self.send(_error(ErrorCode.BAD_FRAME, "send JSON objects"))
            else:
                await self.send(_error(ErrorCode.UNKNOWN_OP, "this socket takes auth, ack, ping"))


async def serve_live_socket(
    broker: Broker, config: Config, sockets: LiveSockets, websocket: WebSocket
) -> None:
    await LiveSocket(broker, config, sockets, websocket).serve()
