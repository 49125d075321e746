"""The JSON endpoints under /api: each builds the protocol's request dict, lets
broker.protocol validate it, and calls the core facade. No business rule lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.config import Config
from broker.core import Broker, entry_view, online_user_view
from broker.protocol import ProtocolError, RequestRefused, parse_request, requests

from .auth import Caller, authenticate, client_address
from .errors import NO_STORE, error_response, internal_error_response
from .inputs import InputError, query_bool, query_int, query_str, read_json_object
from .live import LiveSockets

log = logging.getLogger("mailnet.web.api")

Handler = Callable[[Request], Awaitable[dict[str, Any]]]


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

    async def _caller(self, request: Request) -> Caller:
        caller = await authenticate(self.broker, request)
        for session in self.broker.presence.sessions_of(caller.user.id):
            session.touch()  # a request is activity: it resets the user's idle time in `who`
        return caller

    async def _body(self, request: Request) -> dict[str, Any]:
        return await read_json_object(
            request, max_bytes=self.config.max_frame_bytes, timeout=self.config.login_timeout
        )

    # -- sessions ---------------------------------------------------------------------------

    async def login(self, request: Request) -> dict[str, Any]:
        body = await self._body(request)
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
        result = await self.broker.login(
            login.username,
            login.password,
            create=login.create,
            client="web",
            peer=client_address(request),
            invite=login.invite,
        )
        return {
            "token": result.token,
            "username": result.user.username,
            "role": result.user.role,
            "created": result.created,
            "last_seq": result.user.last_seq,
        }

    async def logout(self, request: Request) -> dict[str, Any]:
        caller = await self._caller(request)
        await self.broker.logout(caller.user, caller.token)
        if caller.token is not None:
            self.sockets.revoke(caller.token)
        return {"logged_out": caller.token is not None}

    async def me(self, request: Request) -> dict[str, Any]:
        caller = await self._caller(request)
        return await self.broker.me(caller.user)

    # -- sending ----------------------------------------------------------------------------

    async def _send(self, request: Request, kind: str) -> dict[str, Any]:
        caller = await self._caller(request)
        body = await self._body(request)
        send = parse_request({**body, "op": "send", "kind": kind})
        assert isinstance(send, requests.Send)
        outcome = await self.broker.send(caller.user, send)
        return {"message_id": outcome.message_id, "duplicate": outcome.duplicate}

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
        caller = await self._caller(request)
        inbox = parse_request(
            {
                "op": "inbox",
                "unread_only": query_bool(request, "unread"),
                "limit": query_int(request, "limit"),
                "before_seq": query_int(request, "before_seq"),
            }
        )
        assert isinstance(inbox, requests.Inbox)
        entries, unread = await self.broker.inbox(caller.user, inbox)
        return {"entries": [entry_view(e) for e in entries], "unread": unread}

    async def mark_read(self, request: Request) -> dict[str, Any]:
        caller = await self._caller(request)
        body = await self._body(request)
        mark = parse_request({"op": "mark_read", "seqs": body.get("seqs")})
        assert isinstance(mark, requests.MarkRead)
        return {"marked": await self.broker.mark_read(caller.user, mark.seqs)}

    async def who(self, request: Request) -> dict[str, Any]:
        await self._caller(request)
        return {"users": [online_user_view(u) for u in await self.broker.who()]}

    async def history(self, request: Request) -> dict[str, Any]:
        caller = await self._caller(request)
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
            }
        )
        assert isinstance(history, requests.History)
        items = await self.broker.history(caller.user, history)
        return {"items": [entry_view(e) for e in items]}

    async def set_prefs(self, request: Request) -> dict[str, Any]:
        caller = await self._caller(request)
        body = await self._body(request)
        prefs = parse_request({"op": "set_prefs", "prank_opt_out": body.get("prank_opt_out")})
        assert isinstance(prefs, requests.SetPrefs)
        return await self.broker.set_prefs(caller.user, prefs.prank_opt_out)
