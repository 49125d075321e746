"""A socket stream that schedules only when it has to wait.

trio's SocketStream makes every `receive_some` and `send_all` a full scheduling point: a read
that finds data waiting still parks the task once (`cancel_shielded_checkpoint`) and goes
through an async context manager and a conflict detector. On a broker that answers one small
frame per read (a heartbeat, a request/response client) that is a third of the loop's time
per request. `FastSocketStream` wraps a SocketStream and does the I/O itself on the descriptor:

- a read or write that can complete at once completes at once (`os.read`/`os.write` on the
  non-blocking descriptor) after a cancellation check (`checkpoint_if_cancelled`, which costs
  no scheduling pass);
- only when the kernel says EAGAIN does it wait (`wait_readable`/`wait_writable`), which is a
  real checkpoint;
- every FAIR_EVERY operations that did not wait, it yields once anyway, so a client that keeps
  its socket full cannot hold the loop.

`try_send` writes what the socket takes now without awaiting at all, for callbacks that must
not block (the committer answering a group of sends). TLS wraps this stream like any other
(trio.SSLStream over it), so both transports share it. Everything else (options, EOF, close)
is the inner SocketStream's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
from typing import NoReturn

import trio

FAIR_EVERY = 16  # operations without a wait before one yield to the other tasks
DEFAULT_RECEIVE_SIZE = 64 * 1024

# What a dead peer looks like to read(2)/write(2); anything else is a bug and propagates.
_BROKEN = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
_BROKEN_ERRNOS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


def _peer_gone(exc: OSError) -> bool:
    """Whether an error of a read, a write or OpenSSL means the connection is over (ssl.SSLError
    is an OSError: any that reaches here, a protocol error or an unexpected EOF, ends it)."""
    return isinstance(exc, (*_BROKEN, ssl.SSLError)) or exc.errno in _BROKEN_ERRNOS


def _receive_size(max_bytes: int | None) -> int:
    """receive_some's argument, checked as trio's streams check it."""
    if max_bytes is None:
        return DEFAULT_RECEIVE_SIZE
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    return max_bytes


def _broke(exc: OSError) -> trio.BrokenResourceError:
    return trio.BrokenResourceError(f"the connection broke: {exc}")


class _FairTurns:
    """Counts the reads and writes that completed without waiting; every FAIR_EVERY of them
    the stream yields once, so a socket that never runs dry cannot hold the loop."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = 0

    def waited(self) -> None:
        """The operation waited for the socket: the others had their turn."""
        self._count = 0

    async def completed(self) -> None:
        self._count += 1
        if self._count >= FAIR_EVERY:
            self._count = 0
            await trio.lowlevel.cancel_shielded_checkpoint()


class FastSocketStream(trio.abc.HalfCloseableStream):
    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.socket = inner.socket  # peer_address() looks for it
        self._fd = inner.socket.fileno()
        self._turns = _FairTurns()
        self._closed = False

    def _check_open(self) -> int:
        if self._closed or self.socket.fileno() == -1:
            raise trio.ClosedResourceError("the connection is closed")
        return self._fd

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = _receive_size(max_bytes)
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            fd = self._check_open()
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                self._turns.waited()
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError as exc:
                if _peer_gone(exc):
                    raise _broke(exc) from exc
                raise
            await self._turns.completed()
            return data

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the socket takes now, without waiting: the number of bytes written (0 if
        it is full). Raises BrokenResourceError/ClosedResourceError like send_all."""
        fd = self._check_open()
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if _peer_gone(exc):
                raise _broke(exc) from exc
            raise

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        with memoryview(data) as view:
            sent = self.try_send(view) if view else 0
            waited = False
            while sent < len(view):
                await trio.lowlevel.wait_writable(self._check_open())
                waited = True
                sent += self.try_send(view[sent:])
        if waited:
            self._turns.waited()
        else:
            await self._turns.completed()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        await self.inner.aclose()


class FastTLSStream(trio.abc.Stream):
    """TLS on the descriptor: the standard library's SSLSocket (OpenSSL's record layer in C,
    reading and writing the kernel socket itself) driven like FastSocketStream, instead of
    trio.SSLStream's Python state machine over memory BIOs. A read or write that OpenSSL can
    complete at once completes at once; on SSLWantRead/WriteError it waits for the socket.

    OpenSSL's rule for a write that could not finish (it must be retried with the same data)
    holds because send_all retries the very same buffer until it is written; a send_all that
    is cancelled half-way leaves the stream broken, as trio.SSLStream does.
    """

    def __init__(self, plain: FastSocketStream, context: ssl.SSLContext) -> None:
        fd = plain.socket.detach()  # the trio socket gives the descriptor up to us
        raw = socket.socket(fileno=fd)
        raw.setblocking(False)
        self._ssl = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        self.socket = self._ssl  # peer_address() looks for it
        self._fd = fd
        self._turns = _FairTurns()
        self._closed = False
        self._broken = False

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the connection is closed")
        if self._broken:
            raise trio.BrokenResourceError("the TLS stream broke earlier")

    def _fail(self, exc: OSError) -> NoReturn:
        """Raise what a failed read or write means: BrokenResourceError if the peer is gone
        (the stream is then unusable), the error itself otherwise."""
        if _peer_gone(exc):
            self._broken = True
            raise _broke(exc) from exc
        raise exc

    async def _wait_for(self, exc: Exception) -> None:
        self._turns.waited()
        if isinstance(exc, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(self._fd)
        else:
            await trio.lowlevel.wait_readable(self._fd)

    async def do_handshake(self) -> None:
        self._check_usable()
        while True:
            try:
                self._ssl.do_handshake()
                return
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                await self._wait_for(exc)
            except OSError as exc:  # ssl.SSLError included: any failure ends the handshake
                self._broken = True
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = _receive_size(max_bytes)
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_usable()
            try:
                data = self._ssl.recv(size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                await self._wait_for(exc)
                continue
            except ssl.SSLZeroReturnError:
                return b""  # the peer said close_notify
            except OSError as exc:
                self._fail(exc)
            await self._turns.completed()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        view = memoryview(data)
        sent = 0
        waited = False
        try:
            while sent < len(view):
                chunk = view[sent:]
                while True:  # OpenSSL: retry the same buffer until it is written
                    try:
                        sent += self._ssl.send(chunk)
                        break
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                        waited = True
                        self._check_usable()
                        await self._wait_for(exc)
        except OSError as exc:
            self._fail(exc)
        except BaseException:  # cancelled between retries: OpenSSL's write is half done
            self._broken = True
            raise
        finally:
            view.release()
        if not waited:  # (a wait already counted as the others' turn)
            await self._turns.completed()

    async def wait_send_all_might_not_block(self) -> None:
        self._check_usable()
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if not self._broken:
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self._ssl.unwrap()  # close_notify, best effort: never waits
        trio.lowlevel.notify_closing(self._fd)
        self._ssl.close()
        await trio.lowlevel.checkpoint()
