"""Who is calling: a bearer token (from POST /api/login) or HTTP Basic credentials.

Both go through the core (`Broker.user_for_token`, `Broker.authenticate`), so the web has the
same login throttling and the same single `auth_failed` answer for unknown users and wrong
passwords as the TCP protocol. No cookies: nothing a cross-site request could ride on.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from broker.core import Broker, UserRecord
from broker.core.accounts import AUTH_FAILED_MESSAGE
from broker.protocol import ErrorCode, ProtocolError, RequestRefused, parse_request, requests

from .forwarded import forwarded_client


@dataclass(frozen=True)
class Caller:
    user: UserRecord
    token: str | None  # None when the caller sent Basic credentials


def client_address(connection: HTTPConnection) -> str:
    peer = connection.client.host if connection.client else "?"
    return forwarded_client(connection, peer)  # X-Forwarded-For from a trusted proxy only


def _refused() -> RequestRefused:
    return RequestRefused(ErrorCode.AUTH_FAILED, AUTH_FAILED_MESSAGE)


async def user_for_token(broker: Broker, token: object) -> UserRecord:
    """The user a token belongs to; the token is checked as the protocol's `resume` checks it."""
    try:
        request = parse_request({"op": "resume", "token": token})
    except ProtocolError:
        raise RequestRefused(ErrorCode.AUTH_FAILED, "session expired or logged out") from None
    assert isinstance(request, requests.Resume)
    return await broker.user_for_token(request.token)


async def authenticate(broker: Broker, connection: HTTPConnection) -> Caller:
    header = connection.headers.get("authorization")
    if not header:
        raise RequestRefused(
            ErrorCode.NOT_AUTHENTICATED,
            "log in first: send 'Authorization: Bearer <token>' or HTTP Basic credentials",
        )
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    match scheme.lower():
        case "bearer":
            return Caller(await user_for_token(broker, credentials), credentials)
        case "basic":
            username, password = _decode_basic(credentials)
            try:
                login = parse_request({"op": "login", "username": username, "password": password})
            except ProtocolError:
                raise _refused() from None
            assert isinstance(login, requests.Login)
            user = await broker.authenticate(
                login.username, login.password, peer=client_address(connection)
            )
            return Caller(user, None)
    raise RequestRefused(ErrorCode.NOT_AUTHENTICATED, "use Bearer or Basic authorization")


def _decode_basic(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _refused() from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise _refused()
    return username, password
