"""The trio client library for mailnet: what the CLI, the terminal client and the tests use.

    async with connect("127.0.0.1:7878", trust=Trust.plaintext()) as client:
        await client.login("alice", "secret", create=True)
        await client.send_text("bob", "hello")
        entry = await client.next_mail()

Requests may be many in flight at once (each waits for the response with its id). Pushed mail
arrives in seq order; a redelivered entry (seq already seen) is dropped, so an application sees
each message once, and the library acknowledges what it has handed out.

Requests are built from broker.protocol's types and encoded by broker.protocol.wire; every
answer and event is read through its type, so a broker that answers out of shape is noticed
(UnexpectedAnswer). The convenience methods return the answers as JSON objects (dicts), as the
CLI prints them; `call(request, ResultType)` returns the typed result:

    page = await client.call(requests.Inbox(limit=5), responses.InboxResult)
"""

from __future__ import annotations

import itertools
import math
import socket
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import trio

from broker import tls
from broker.protocol import NEED_DATA, FrameConnection, RemoteProtocolError, requests
from broker.protocol.events import MailEvent
from broker.protocol.requests import Request
from broker.protocol.responses import (
    RESULT_TYPES,
    LoginResult,
    MarkReadResult,
    Result,
)
from broker.protocol.wire import decode_event, decode_failure, decode_result, request_payload

R = TypeVar("R", bound=Result)

DEFAULT_PORT = 7878


class ClientError(Exception):
    """Base of the client library's errors."""


class BrokerUnreachable(ClientError):
    """The broker could not be reached or the connection was lost."""


class TrustError(ClientError):
    """The broker's certificate is not the one expected (or could not be verified)."""


class UnexpectedAnswer(ClientError):
    """The broker answered with a frame that does not have the shape the protocol promises."""


MAX_EVENTS_KEPT = 1000  # pushed events kept for next_event; older ones are dropped


class RequestFailed(ClientError):
    """The broker answered a request with an error."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass(frozen=True)
class Trust:
    """How the client decides to trust a broker's TLS certificate (or to use no TLS)."""

    mode: str  # "pin" | "ca" | "plaintext"
    ca_file: Path | None = None
    known_servers: Path | None = None
    accept_new: bool = True

    @classmethod
    def plaintext(cls) -> Trust:
        return cls("plaintext")

    @classmethod
    def pinning(cls, known_servers: Path, *, accept_new: bool = True) -> Trust:
        return cls("pin", known_servers=known_servers, accept_new=accept_new)

    @classmethod
    def certificate_authority(cls, ca_file: Path | None = None) -> Trust:
        return cls("ca", ca_file=ca_file)


def parse_server(server: str) -> tuple[str, int]:
    """'host', 'host:port', '[::1]:port' -> (host, port)."""
    server = server.strip()
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest.lstrip(":")
    elif server.count(":") == 1:
        host, port = server.split(":")
    else:
        host, port = server, ""
    try:
        return host or "127.0.0.1", int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ClientError(f"invalid server address {server!r}: use HOST:PORT") from None


def _why_broken(exc: BaseException) -> str:
    """What broke a connection, never empty: trio's errors often carry only their cause."""
    for reason in (exc, exc.__cause__, exc.__context__):
        if reason is not None and str(reason):
            return str(reason)
    return "the connection was reset"


@dataclass
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    response: dict[str, Any] | None = None


class Client:
    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        self._stream = stream
        self._nursery = nursery
        self._frames = FrameConnection(max_frame_bytes=16 * 1024 * 1024)
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._send_lock = trio.Lock()
        self._mail_in, self._mail_out = trio.open_memory_channel[dict[str, Any]](math.inf)
        # Events nobody takes (`listen` takes only mail) must not pile up for ever: the oldest
        # go first once MAX_EVENTS_KEPT wait, counted in events_dropped.
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS_KEPT)
        self._event_arrived = trio.Event()
        self._reader_done = False
        self.events_dropped = 0
        self._closed: str | None = None
        self.username: str | None = None
        self.token: str | None = None
        self.last_seq = 0  # highest seq handed to the application
        self._acked_seq = 0
        self.duplicates_dropped = 0
        self.errors: list[dict[str, Any]] = []  # error frames not tied to a request
        self.pin: tls.PinResult | None = None  # set by connect() when the broker was pinned

    # -- plumbing ---------------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    break
                self._frames.receive_data(data)
                while (frame := self._frames.next_frame()) is not NEED_DATA:
                    assert isinstance(frame, dict)
                    self._route(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError) as exc:
            self._closed = self._closed or f"connection lost: {_why_broken(exc)}"
        finally:
            if self._closed is None:
                self._closed = "the broker closed the connection"
            for waiter in self._waiters.values():
                waiter.done.set()
            self._mail_in.close()
            self._reader_done = True
            self._event_arrived.set()

    def _route(self, frame: dict[str, Any]) -> None:
        if "event" in frame:
            try:
                event = decode_event(frame)
            except RemoteProtocolError:  # an event this library does not know: passed on as is
                self._keep_event(frame)
                return
            if isinstance(event, MailEvent):
                seq = event.entry.seq
                if seq is not None and seq <= self.last_seq:
                    self.duplicates_dropped += 1  # a redelivery after a reconnect: seen already
                    return
                if seq is not None:
                    self.last_seq = seq
                self._mail_in.send_nowait(frame["entry"])
            else:
                self._keep_event(frame)
            return
        re = frame.get("re")
        waiter = self._waiters.get(re) if isinstance(re, int) else None
        if waiter is None:
            self.errors.append(frame)
            if not frame.get("ok", True):
                code = frame.get("error", {}).get("code")
                if code in ("timeout", "frame_too_large", "too_many_connections", "session_ended"):
                    self._closed = frame["error"].get("message", code)
            return
        waiter.response = frame
        waiter.done.set()

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        await self._send_bytes(self._frames.send(frame))

    async def _send_bytes(self, data: bytes) -> None:
        if self._closed is not None:
            raise BrokerUnreachable(self._closed)
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BrokerUnreachable(f"connection lost: {_why_broken(exc)}") from None

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send any frame as a request (fields as given, unchecked) and wait for its response;
        RequestFailed on an error response. The typed way is call()."""
        rid = next(self._ids)
        return await self._exchange(rid, self._frames.send({"op": op, "id": rid, **fields}))

    async def call(self, request: Request, result_type: type[R]) -> R:
        """Send a typed request and return its typed result; RequestFailed on an error
        response, UnexpectedAnswer if the answer is not a `result_type`."""
        return self._read(await self._ask(request), result_type)

    async def _ask(self, request: Request) -> dict[str, Any]:
        """Send a typed request; its response, checked against the operation's result type."""
        rid = next(self._ids)
        response = await self._exchange(
            rid, self._frames.send_payload(request_payload(request, rid))
        )
        self._read(response, RESULT_TYPES[str(type(request).__struct_config__.tag)])
        return response

    @staticmethod
    def _read(response: dict[str, Any], result_type: type[R]) -> R:
        try:
            return decode_result(response, result_type)
        except RemoteProtocolError as exc:
            raise UnexpectedAnswer(exc.message) from None

    async def _exchange(self, rid: int, data: bytes) -> dict[str, Any]:
        waiter = self._waiters[rid] = _Waiter()
        try:
            await self._send_bytes(data)
            await waiter.done.wait()
        finally:
            del self._waiters[rid]
        response = waiter.response
        if response is None:
            raise BrokerUnreachable(self._closed or "connection lost")
        if not response.get("ok"):
            raise _failed(response)
        return response

    async def _heartbeat(self, interval: float) -> None:
        while self._closed is None:
            await trio.sleep(interval)
            try:
                await self.flush_ack()
                await self.ping()
            except ClientError:
                return

    # -- sessions -----------------------------------------------------------------------------

    def _after_login(self, response: dict[str, Any]) -> dict[str, Any]:
        result = self._read(response, LoginResult)
        self.username = result.username
        self.token = result.token
        # The broker starts this session after resume_after, so that much needs no ack. Mail
        # routed before this runs (pushed right behind the response) is not acked yet: taking
        # last_seq as acknowledged here would leave it unacked and have it sent again next time.
        resume_after = result.resume_after
        self.last_seq = max(self.last_seq, resume_after)
        self._acked_seq = max(self._acked_seq, resume_after)
        self._nursery.start_soon(self._heartbeat, result.heartbeat_interval)
        return response

    async def login(
        self,
        username: str,
        password: str,
        *,
        create: bool = False,
        resume_after: int | None = None,
        client: str = "mailnet-python",
        invite: str | None = None,
        live: bool = True,
    ) -> dict[str, Any]:
        """Log in. live=False: a one-shot session, not shown online and pushed no mail."""
        login = requests.Login(
            username=username,
            password=password,
            create=create,
            resume_after=resume_after,
            client=client,
            invite=invite,
            live=live,
        )
        return self._after_login(await self._ask(login))

    async def resume(
        self,
        token: str,
        *,
        resume_after: int | None = None,
        client: str = "mailnet-python",
        live: bool = True,
    ) -> dict[str, Any]:
        resume = requests.Resume(token=token, resume_after=resume_after, client=client, live=live)
        return self._after_login(await self._ask(resume))

    async def logout(self) -> None:
        await self.flush_ack()
        await self._ask(requests.Logout())

    async def ping(self) -> None:
        await self._ask(requests.Ping())

    # -- sending --------------------------------------------------------------------------------

    async def send(
        self,
        kind: str,
        *,
        to: list[str] | None = None,
        subject: str | None = None,
        body: str | None = None,
        client_msg_id: str | None = None,
        in_reply_to: int | None = None,
        require_ack: bool = False,
    ) -> dict[str, Any]:
        send = requests.Send(
            kind=kind,  # type: ignore[arg-type]  # any text: the broker names what it refuses
            to=tuple(to or ()),
            subject=subject,
            body=body or "",
            client_msg_id=client_msg_id or uuid.uuid4().hex,
            in_reply_to=in_reply_to,
            require_ack=require_ack,
        )
        return await self._ask(send)

    async def send_email(self, to: list[str], subject: str, body: str, **kw: Any) -> dict[str, Any]:
        return await self.send("email", to=to, subject=subject, body=body, **kw)

    async def send_text(self, to: str, body: str, **kw: Any) -> dict[str, Any]:
        return await self.send("text", to=[to], body=body, **kw)

    async def announce(self, subject: str, body: str, **kw: Any) -> dict[str, Any]:
        return await self.send("announcement", subject=subject, body=body, **kw)

    async def rickroll(self, to: str, **kw: Any) -> dict[str, Any]:
        return await self.send("rickroll", to=[to], **kw)

    # -- receiving ------------------------------------------------------------------------------

    async def next_mail(self) -> dict[str, Any]:
        """The next pushed mailbox entry (each seq once). BrokerUnreachable when closed."""
        try:
            return await self._mail_out.receive()
        except trio.EndOfChannel:
            raise BrokerUnreachable(self._closed or "connection closed") from None

    def pending_mail(self) -> list[dict[str, Any]]:
        """Entries already received and not yet taken, without waiting."""
        entries = []
        while True:
            try:
                entries.append(self._mail_out.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return entries

    def _keep_event(self, frame: dict[str, Any]) -> None:
        if len(self._events) == MAX_EVENTS_KEPT:
            self.events_dropped += 1
        self._events.append(frame)
        self._event_arrived.set()

    async def next_event(self) -> dict[str, Any]:
        """The oldest pushed event not taken yet (presence, mailbox, receipt, ...), in order;
        BrokerUnreachable once the connection is closed and none is left."""
        while not self._events:
            if self._reader_done:
                raise BrokerUnreachable(self._closed or "connection closed")
            self._event_arrived = trio.Event()
            await self._event_arrived.wait()
        return self._events.popleft()

    async def flush_ack(self) -> None:
        """Tell the broker we have everything through last_seq (no response expected)."""
        if self.last_seq > self._acked_seq:
            seq = self.last_seq
            await self._send_bytes(
                self._frames.send_payload(request_payload(requests.Ack(seq=seq)))
            )
            self._acked_seq = seq

    async def inbox(
        self,
        *,
        unread_only: bool = False,
        limit: int = 50,
        before_seq: int | None = None,
        archived: bool = False,
    ) -> dict[str, Any]:
        inbox = requests.Inbox(
            unread_only=unread_only, limit=limit, before_seq=before_seq, archived=archived
        )
        return await self._ask(inbox)

    async def mark_read(self, seqs: list[int]) -> int:
        return (await self.call(requests.MarkRead(seqs=tuple(seqs)), MarkReadResult)).marked

    async def mark_unread(self, seqs: list[int]) -> int:
        marked: int = (await self.request("mark_unread", seqs=seqs))["marked"]
        return marked

    async def delete(self, seqs: list[int]) -> int:
        """Delete entries of one's own mailbox (one's copy only)."""
        deleted: int = (await self.request("delete", seqs=seqs))["deleted"]
        return deleted

    async def archive(self, seqs: list[int]) -> int:
        archived: int = (await self.request("archive", seqs=seqs))["archived"]
        return archived

    async def unarchive(self, seqs: list[int]) -> int:
        """Bring archived entries back to the inbox."""
        unarchived: int = (await self.request("unarchive", seqs=seqs))["unarchived"]
        return unarchived

    async def admin_retention(
        self, kind: str | None = None, days: int | None = None
    ) -> dict[str, int]:
        """Set the retention of a kind (days None: for ever); the rules, by kind."""
        fields = {k: v for k, v in {"kind": kind, "days": days}.items() if v is not None}
        rules: dict[str, int] = (await self.request("admin_retention", **fields))["rules"]
        return rules

    async def who(self) -> list[dict[str, Any]]:
        response = await self._ask(requests.Who())
        users: list[dict[str, Any]] = response["users"]
        return users

    async def history(
        self,
        *,
        with_user: str | None = None,
        kind: str | None = None,
        search: str | None = None,
        since: str | datetime | None = None,
        limit: int | None = None,
        before_id: int | None = None,
        query: str | None = None,
        offset: int = 0,
        thread: int | None = None,
    ) -> list[dict[str, Any]]:
        """Mail sent and received, newest first; `since` an ISO date or date-time (text);
        `query` in the search language (then best match first), paged by `offset`."""
        if isinstance(since, str):
            try:
                since = requests.parse_since(since)
            except RemoteProtocolError as exc:  # as the broker would answer it
                raise RequestFailed(exc.code.value, exc.message) from None
        request = requests.History(
            with_user=with_user,
            kind=kind,  # type: ignore[arg-type]  # any text: the broker names what it refuses
            search=search,
            since=since,
            limit=50 if limit is None else limit,
            before_id=before_id,
            query=query,
            offset=offset,
            thread=thread,
        )
        items: list[dict[str, Any]] = (await self._ask(request))["items"]
        return items

    async def set_prefs(
        self, *, prank_opt_out: bool | None = None, read_receipts: bool | None = None
    ) -> dict[str, Any]:
        prefs = requests.SetPrefs(prank_opt_out=prank_opt_out, read_receipts=read_receipts)
        return await self._ask(prefs)

    async def acknowledge(self, message_id: int) -> dict[str, Any]:
        """Acknowledge a message of one's mailbox that asks for it."""
        return await self._ask(requests.Acknowledge(message_id=message_id))

    async def message_status(self, message_id: int) -> dict[str, Any]:
        """The delivery ledger of a message one sent (any message, for an admin)."""
        return await self._ask(requests.MessageStatus(message_id=message_id))

    # -- account security and administration ---------------------------------------------------

    async def change_password(self, old_password: str, new_password: str) -> dict[str, Any]:
        """Every other login of this user ends; this connection stays, with a new token."""
        change = requests.ChangePassword(old_password=old_password, new_password=new_password)
        response = await self._ask(change)
        self.token = response["token"]
        return response

    async def block(self, username: str) -> dict[str, Any]:
        return await self._ask(requests.Block(username=username))

    async def unblock(self, username: str) -> dict[str, Any]:
        return await self._ask(requests.Unblock(username=username))

    async def list_blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = (await self._ask(requests.ListBlocks()))["blocks"]
        return blocks

    async def admin_users(self) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = (await self._ask(requests.AdminUsers()))["users"]
        return users

    async def admin_set_disabled(self, username: str, disabled: bool) -> dict[str, Any]:
        return await self._ask(requests.AdminSetDisabled(username=username, disabled=disabled))

    async def admin_kick(self, username: str) -> dict[str, Any]:
        return await self._ask(requests.AdminKick(username=username))

    async def admin_sessions(self) -> list[dict[str, Any]]:
        response = await self._ask(requests.AdminSessions())
        sessions: list[dict[str, Any]] = response["sessions"]
        return sessions

    async def admin_audit(self, *, limit: int = 100) -> dict[str, Any]:
        return await self._ask(requests.AdminAudit(limit=limit))

    async def admin_invite(self) -> dict[str, Any]:
        return await self._ask(requests.AdminInvite())

    @property
    def closed(self) -> bool:
        return self._closed is not None


def _failed(response: dict[str, Any]) -> RequestFailed:
    """The error of a failed response, with its detail fields (retry_after...)."""
    error = response.get("error")
    details = dict(error) if isinstance(error, dict) else {}
    try:
        failure = decode_failure(response)
    except RemoteProtocolError:  # out of shape: say what can be said
        return RequestFailed(str(details.pop("code", "error")), str(details.pop("message", "")))
    details.pop("code", None)
    details.pop("message", None)
    return RequestFailed(failure.code, failure.message, details)


UNANSWERED_DATA_TIMEOUT_MS = 60_000


def _notice_a_vanished_broker(tcp: trio.SocketStream) -> None:
    """Fail the connection when the broker's host stops acknowledging (powered off, network
    gone) instead of retransmitting heartbeats for the kernel's default quarter of an hour."""
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, UNANSWERED_DATA_TIMEOUT_MS)


async def _open_stream(
    host: str, port: int, trust: Trust
) -> tuple[trio.abc.Stream, tls.PinResult | None]:
    """The connected (and TLS-checked) stream, and the pin check's result in pinning mode."""
    try:
        tcp = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach the broker at {host}:{port}: {exc}") from None
    _notice_a_vanished_broker(tcp)
    if trust.mode == "plaintext":
        return tcp, None
    if trust.mode == "ca":
        context = tls.client_ssl_context_for_ca(trust.ca_file)
    else:
        context = tls.client_ssl_context_for_pinning()
    stream = trio.SSLStream(tcp, context, server_hostname=host)
    try:
        await stream.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        await trio.aclose_forcefully(tcp)
        raise TrustError(f"the broker's certificate could not be verified: {exc}") from None
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(tcp)
        raise BrokerUnreachable(f"TLS handshake with {host}:{port} failed: {exc}") from None
    pin = None
    if trust.mode == "pin":
        assert trust.known_servers is not None
        der = stream.getpeercert(binary_form=True)
        try:
            pin = tls.check_pinned_fingerprint(
                tls.KnownServers(trust.known_servers),
                tls.format_server_address(host, port),
                der,
                accept_new=trust.accept_new,
            )
        except tls.TLSError as exc:
            await trio.aclose_forcefully(stream)
            raise TrustError(str(exc)) from None
    return stream, pin


@asynccontextmanager
async def connect(server: str, *, trust: Trust) -> AsyncIterator[Client]:
    """Open a connection to a broker; closes it (and its background tasks) on exit."""
    host, port = parse_server(server)
    stream, pin = await _open_stream(host, port, trust)
    try:
        async with trio.open_nursery() as nursery:
            client = Client(stream, nursery)
            client.pin = pin
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                # Close first, shielded, and cancel last: a checkpoint after cancelling the
                # nursery would raise Cancelled, which the nursery then swallows along with the
                # exception the body raised (the caller would see the `async with` end normally).
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is ours, not the caller's: hand back the body's own exception as it was
        # raised (`except*` still matches it), not wrapped in a group of one.
        only = group
        while isinstance(only, BaseExceptionGroup) and len(only.exceptions) == 1:
            only = only.exceptions[0]
        if isinstance(only, BaseExceptionGroup):
            raise
        raise only from None
