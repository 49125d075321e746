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

import errno
import os
from typing import Any

import trio

FAIR_EVERY = 16  # operations without a wait before one yield to the other tasks
DEFAULT_RECEIVE_SIZE = 64 * 1024

# What a dead peer looks like to read(2)/write(2); anything else is a bug and propagates.
_BROKEN = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class FastSocketStream(trio.abc.HalfCloseableStream):
    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.socket = inner.socket  # peer_address() and setsockopt callers look for it
        self._fd = inner.socket.fileno()
        self._unyielded = 0
        self._closed = False

    def _check_open(self) -> int:
        if self._closed or self.socket.fileno() == -1:
            raise trio.ClosedResourceError("the connection is closed")
        return self._fd

    async def _maybe_yield(self) -> None:
        """Count an operation that did not wait; every FAIR_EVERY of them, let others run."""
        self._unyielded += 1
        if self._unyielded >= FAIR_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = DEFAULT_RECEIVE_SIZE if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            fd = self._check_open()
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                self._unyielded = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            except _BROKEN as exc:
                raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc
            await self._maybe_yield()
            return data

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the socket takes now, without waiting: the number of bytes written (0 if
        it is full). Raises BrokenResourceError/ClosedResourceError like send_all."""
        fd = self._check_open()
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except _BROKEN as exc:
            raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc
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
            self._unyielded = 0
        else:
            await self._maybe_yield()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        await self.inner.aclose()

    def setsockopt(self, *args: Any) -> None:
        self.inner.setsockopt(*args)
