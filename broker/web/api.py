"""The JSON endpoints under /api: each builds the protocol's request dict, lets
broker.protocol validate it, and hands the typed request to a core Session for the caller.
No business rule lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.config import Config
from broker.core import Broker, Message, Session
from broker.protocol import ProtocolError, RequestRefused, parse_request, requests
from broker.protocol.responses import Result

from .auth import authenticate, client_address
from .budget import read_login_body
from .errors import NO_STORE, error_response, internal_error_response
from .inputs import InputError, query_bool, query_int, query_str, read_json_object
from .live import LiveSockets

log = logging.getLogger("mailnet.web.api")

Handler = Callable[[Request], Awaitable[dict[str, Any]]]


def _json(result: Result) -> Message:
    """A typed result as the JSON object the endpoint answers (the same fields as over TCP)."""
    fields: Message = msgspec.to_builtins(result)
    return fields


class HttpApi:
    def __init__(self, broker: Broker, config: Config, sockets: LiveSockets) -> None:
        self.broker = broker
        self.config = config
        self.sockets = sockets

    def routes(self) -> list[Route]:
        def route(path: str, handler: Handler, method: str) -> Route:
            return Route(path, self._answering(handler), methods=[method])

        return [
            route("/api/login", self.login, "POST"),
            route("/api/logout", self.logout, "POST"),
            route("/api/me", self.me, "GET"),
            route("/api/emails", self.send_email, "POST"),
            route("/api/texts", self.send_text, "POST"),
            route("/api/announcements", self.send_announcement, "POST"),
            route("/api/rickrolls", self.send_rickroll, "POST"),
            route("/api/inbox", self.inbox, "GET"),
            route("/api/read", self.mark_read, "POST"),
            route("/api/unread", self.mark_unread, "POST"),
            route("/api/acknowledge", self.acknowledge, "POST"),
            route("/api/delete", self.delete, "POST"),
            route("/api/archive", self.archive, "POST"),
            route("/api/unarchive", self.unarchive, "POST"),
            route("/api/retention", self.retention, "POST"),
            route("/api/status", self.message_status, "GET"),
            route("/api/who", self.who, "GET"),
            route("/api/history", self.history, "GET"),
            route("/api/prefs", self.set_prefs, "PUT"),
        ]

    def _answering(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Turn every outcome of `handler` into JSON: a result, or an error with its status."""

        async def endpoint(request: Request) -> Response:
            try:
                result = await handler(request)
            except RequestRefused as exc:
                log.info("refused %s %s: %s", request.method, request.url.path, exc.message)
                return error_response(exc.code, exc.message, details=exc.details)
            except (ProtocolError, InputError) as exc:
                return error_response(exc.code, exc.message)
            except Exception:
                log.exception("internal error answering %s %s", request.method, request.url.path)
                return internal_error_response()
            return JSONResponse(result, headers=NO_STORE)

        return endpoint

    async def _session(self, request: Request) -> Session:
        """The caller's session for this request (a request is activity: see require_user)."""
        caller = await authenticate(self.broker, request)
        session = Session.of_caller(
            self.broker, caller.user, caller.token, peer=client_address(request)
        )
        session.require_user()
        return session

    async def _answer(self, session: Session, request: requests.Request) -> Message:
        result = await session.handle(request)
        assert result is not None  # only an ack has no answer, and HTTP has no ack
        return _json(result)

    async def _body(self, request: Request) -> dict[str, Any]:
        return await read_json_object(
            request, max_bytes=self.config.max_frame_bytes, timeout=self.config.login_timeout
        )

    # -- sessions ---------------------------------------------------------------------------

    async def login(self, request: Request) -> dict[str, Any]:
        body = await read_login_body(request, self.broker.prelogin, self.config)  # budget.py
        login = parse_request(
            {
                "op": "login",
                "username": body.get("username"),
                "password": body.get("password"),
                "create": body.get("create"),
                "invite": body.get("invite"),
            }
        )
        assert isinstance(login, requests.Login)
        session = Session(self.broker, peer=client_address(request), fit_pages=False)
        result = await session.log_in(msgspec.structs.replace(login, client="web"))
        return {
            "token": result.token,
            "username": result.user.username,
            "role": result.user.role,
            "created": result.created,
            "last_seq": result.user.last_seq,
        }

    async def logout(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        await self._answer(session, requests.Logout())
        if session.token is not None:
            self.sockets.revoke(session.token)
        return {"logged_out": session.token is not None}

    async def me(self, request: Request) -> dict[str, Any]:
        return await (await self._session(request)).me()

    # -- sending ----------------------------------------------------------------------------

    async def _send(self, request: Request, kind: str) -> dict[str, Any]:
        session = await self._session(request)
        body = await self._body(request)
        send = parse_request({**body, "op": "send", "kind": kind})
        assert isinstance(send, requests.Send)
        return _json(await session.send(send))

    async def send_email(self, request: Request) -> dict[str, Any]:
        return await self._send(request, "email")

    async def send_text(self, request: Request) -> dict[str, Any]:
        return await self._send(request, "text")

    async def send_announcement(self, request: Request) -> dict[str, Any]:
        return await self._send(request, "announcement")

    async def send_rickroll(self, request: Request) -> dict[str, Any]:
        return await self._send(request, "rickroll")

    # -- reading ----------------------------------------------------------------------------

    async def inbox(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        inbox = parse_request(
            {
                "op": "inbox",
                "unread_only": query_bool(request, "unread"),
                "limit": query_int(request, "limit"),
                "before_seq": query_int(request, "before_seq"),
                "archived": query_bool(request, "archived"),
            }
        )
        assert isinstance(inbox, requests.Inbox)
        return await self._answer(session, inbox)

    async def mark_read(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        body = await self._body(request)
        mark = parse_request({"op": "mark_read", "seqs": body.get("seqs")})
        assert isinstance(mark, requests.MarkRead)
        return await self._answer(session, mark)

    async def mark_unread(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        body = await self._body(request)
        mark = parse_request({"op": "mark_unread", "seqs": body.get("seqs")})
        return await self._answer(session, mark)

    async def _seqs_op(self, request: Request, op: str) -> dict[str, Any]:
        session = await self._session(request)
        body = await self._body(request)
        return await self._answer(session, parse_request({"op": op, "seqs": body.get("seqs")}))

    async def delete(self, request: Request) -> dict[str, Any]:
        return await self._seqs_op(request, "delete")

    async def archive(self, request: Request) -> dict[str, Any]:
        return await self._seqs_op(request, "archive")

    async def unarchive(self, request: Request) -> dict[str, Any]:
        return await self._seqs_op(request, "unarchive")

    async def retention(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        body = await self._body(request)
        rule = parse_request(
            {"op": "admin_retention", "kind": body.get("kind"), "days": body.get("days")}
        )
        return await self._answer(session, rule)

    async def acknowledge(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        body = await self._body(request)
        ack = parse_request({"op": "acknowledge", "message_id": body.get("message_id")})
        return await self._answer(session, ack)

    async def message_status(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        status = parse_request(
            {"op": "message_status", "message_id": query_int(request, "message_id")}
        )
        return await self._answer(session, status)

    async def who(self, request: Request) -> dict[str, Any]:
        return await self._answer(await self._session(request), requests.Who())

    async def history(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        history = parse_request(
            {
                "op": "history",
                "with": query_str(request, "with"),
                "kind": query_str(request, "kind"),
                "search": query_str(request, "search"),
                "since": query_str(request, "since"),
                "limit": query_int(request, "limit"),
                "before_id": query_int(request, "before_id"),
                "query": query_str(request, "q"),
                "offset": query_int(request, "offset"),
                "thread": query_int(request, "thread"),
            }
        )
        assert isinstance(history, requests.History)
        return await self._answer(session, history)

    async def set_prefs(self, request: Request) -> dict[str, Any]:
        session = await self._session(request)
        body = await self._body(request)
        prefs = parse_request(
            {
                "op": "set_prefs",
                "prank_opt_out": body.get("prank_opt_out"),
                "read_receipts": body.get("read_receipts"),
            }
        )
        assert isinstance(prefs, requests.SetPrefs)
        return await self._answer(session, prefs)
