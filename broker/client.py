"""The trio client library for mailnet: what the CLI, the terminal client and the tests use.

    async with connect("127.0.0.1:7878", trust=Trust.plaintext()) as client:
        await client.login("alice", "secret", create=True)
        await client.send_text("bob", "hello")
        entry = await client.next_mail()

Requests may be many in flight at once (each waits for the response with its id). Pushed mail
arrives in seq order; a redelivered entry (seq already seen) is dropped, so an application sees
each message once, and the library acknowledges what it has handed out.
"""

from __future__ import annotations

import itertools
import math
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from broker import tls
from broker.protocol import NEED_DATA, FrameConnection, RemoteProtocolError

DEFAULT_PORT = 7878


class ClientError(Exception):
    """Base of the client library's errors."""


class BrokerUnreachable(ClientError):
    """The broker could not be reached or the connection was lost."""


class TrustError(ClientError):
    """The broker's certificate is not the one expected (or could not be verified)."""


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
        self._events_in, self._events_out = trio.open_memory_channel[dict[str, Any]](math.inf)
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
            self._closed = self._closed or f"connection lost: {exc}"
        finally:
            if self._closed is None:
                self._closed = "the broker closed the connection"
            for waiter in self._waiters.values():
                waiter.done.set()
            self._mail_in.close()
            self._events_in.close()

    def _route(self, frame: dict[str, Any]) -> None:
        if "event" in frame:
            if frame["event"] == "mail":
                entry = frame["entry"]
                if entry["seq"] is not None and entry["seq"] <= self.last_seq:
                    self.duplicates_dropped += 1  # a redelivery after a reconnect: seen already
                    return
                self.last_seq = entry["seq"]
                self._mail_in.send_nowait(entry)
            else:
                self._events_in.send_nowait(frame)
            return
        waiter = self._waiters.get(frame.get("re")) if frame.get("re") is not None else None
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
        if self._closed is not None:
            raise BrokerUnreachable(self._closed)
        data = self._frames.send(frame)
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BrokerUnreachable(f"connection lost: {exc}") from None

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its response; RequestFailed on an error response."""
        rid = next(self._ids)
        waiter = self._waiters[rid] = _Waiter()
        try:
            await self._send_frame({"op": op, "id": rid, **fields})
            await waiter.done.wait()
        finally:
            del self._waiters[rid]
        response = waiter.response
        if response is None:
            raise BrokerUnreachable(self._closed or "connection lost")
        if not response.get("ok"):
            error = dict(response.get("error") or {})
            raise RequestFailed(
                str(error.pop("code", "error")), str(error.pop("message", "")), error
            )
        return response

    async def _heartbeat(self, interval: float) -> None:
        while self._closed is None:
            await trio.sleep(interval)
            try:
                await self.flush_ack()
                await self.request("ping")
            except ClientError:
                return

    # -- sessions -----------------------------------------------------------------------------

    def _after_login(self, response: dict[str, Any]) -> dict[str, Any]:
        self.username = response["username"]
        self.token = response["token"]
        # The broker starts this session after resume_after, so that much needs no ack. Mail
        # routed before this runs (pushed right behind the response) is not acked yet: taking
        # last_seq as acknowledged here would leave it unacked and have it sent again next time.
        resume_after = response["resume_after"]
        self.last_seq = max(self.last_seq, resume_after)
        self._acked_seq = max(self._acked_seq, resume_after)
        self._nursery.start_soon(self._heartbeat, float(response["heartbeat_interval"]))
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
        fields: dict[str, Any] = {"username": username, "password": password, "create": create}
        if not live:
            fields["live"] = False
        if resume_after is not None:
            fields["resume_after"] = resume_after
        if invite is not None:
            fields["invite"] = invite
        response = await self.request("login", client=client, **fields)
        return self._after_login(response)

    async def resume(
        self,
        token: str,
        *,
        resume_after: int | None = None,
        client: str = "mailnet-python",
        live: bool = True,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"token": token, "client": client}
        if not live:
            fields["live"] = False
        if resume_after is not None:
            fields["resume_after"] = resume_after
        return self._after_login(await self.request("resume", **fields))

    async def logout(self) -> None:
        await self.flush_ack()
        await self.request("logout")

    async def ping(self) -> None:
        await self.request("ping")

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
        fields: dict[str, Any] = {
            "kind": kind,
            "client_msg_id": client_msg_id or uuid.uuid4().hex,
        }
        if to is not None:
            fields["to"] = to
        if subject is not None:
            fields["subject"] = subject
        if body is not None:
            fields["body"] = body
        if in_reply_to is not None:
            fields["in_reply_to"] = in_reply_to
        if require_ack:
            fields["require_ack"] = True
        return await self.request("send", **fields)

    async def send_email(self, to: list[str], subject: str, body: str, **kw: Any) -> dict:
        return await self.send("email", to=to, subject=subject, body=body, **kw)

    async def send_text(self, to: str, body: str, **kw: Any) -> dict:
        return await self.send("text", to=[to], body=body, **kw)

    async def announce(self, subject: str, body: str, **kw: Any) -> dict:
        return await self.send("announcement", subject=subject, body=body, **kw)

    async def rickroll(self, to: str, **kw: Any) -> dict:
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

    async def next_event(self) -> dict[str, Any]:
        try:
            return await self._events_out.receive()
        except trio.EndOfChannel:
            raise BrokerUnreachable(self._closed or "connection closed") from None

    async def flush_ack(self) -> None:
        """Tell the broker we have everything through last_seq (no response expected)."""
        if self.last_seq > self._acked_seq:
            seq = self.last_seq
            await self._send_frame({"op": "ack", "seq": seq})
            self._acked_seq = seq

    async def inbox(
        self,
        *,
        unread_only: bool = False,
        limit: int = 50,
        before_seq: int | None = None,
        archived: bool = False,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"unread_only": unread_only, "limit": limit}
        if before_seq is not None:
            fields["before_seq"] = before_seq
        if archived:
            fields["archived"] = True
        return await self.request("inbox", **fields)

    async def mark_read(self, seqs: list[int]) -> int:
        return (await self.request("mark_read", seqs=seqs))["marked"]

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

    async def admin_retention(
        self, kind: str | None = None, days: int | None = None
    ) -> dict[str, int]:
        """Set the retention of a kind (days None: for ever); the rules, by kind."""
        fields = {k: v for k, v in {"kind": kind, "days": days}.items() if v is not None}
        rules: dict[str, int] = (await self.request("admin_retention", **fields))["rules"]
        return rules

    async def who(self) -> list[dict[str, Any]]:
        return (await self.request("who"))["users"]

    async def history(self, **filters: Any) -> list[dict[str, Any]]:
        fields = {k: v for k, v in filters.items() if v is not None}
        if "with_user" in fields:
            fields["with"] = fields.pop("with_user")
        return (await self.request("history", **fields))["items"]

    async def set_prefs(
        self, *, prank_opt_out: bool | None = None, read_receipts: bool | None = None
    ) -> dict[str, Any]:
        fields = {"prank_opt_out": prank_opt_out, "read_receipts": read_receipts}
        return await self.request("set_prefs", **{k: v for k, v in fields.items() if v is not None})

    async def acknowledge(self, message_id: int) -> dict[str, Any]:
        """Acknowledge a message of one's mailbox that asks for it."""
        return await self.request("acknowledge", message_id=message_id)

    async def message_status(self, message_id: int) -> dict[str, Any]:
        """The delivery ledger of a message one sent (any message, for an admin)."""
        return await self.request("message_status", message_id=message_id)

    # -- account security and administration ---------------------------------------------------

    async def change_password(self, old_password: str, new_password: str) -> dict[str, Any]:
        """Every other login of this user ends; this connection stays, with a new token."""
        response = await self.request(
            "change_password", old_password=old_password, new_password=new_password
        )
        self.token = response["token"]
        return response

    async def block(self, username: str) -> dict[str, Any]:
        return await self.request("block", username=username)

    async def unblock(self, username: str) -> dict[str, Any]:
        return await self.request("unblock", username=username)

    async def list_blocks(self) -> list[dict[str, Any]]:
        return (await self.request("list_blocks"))["blocks"]

    async def admin_users(self) -> list[dict[str, Any]]:
        return (await self.request("admin_users"))["users"]

    async def admin_set_disabled(self, username: str, disabled: bool) -> dict[str, Any]:
        return await self.request("admin_set_disabled", username=username, disabled=disabled)

    async def admin_kick(self, username: str) -> dict[str, Any]:
        return await self.request("admin_kick", username=username)

    async def admin_sessions(self) -> list[dict[str, Any]]:
        return (await self.request("admin_sessions"))["sessions"]

    async def admin_audit(self, *, limit: int = 100) -> dict[str, Any]:
        return await self.request("admin_audit", limit=limit)

    async def admin_invite(self) -> dict[str, Any]:
        return await self.request("admin_invite")

    @property
    def closed(self) -> bool:
        return self._closed is not None


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
