"""The memory that connections which have not logged in may hold, shared by all of them.

Before login a connection may only send small frames (`max_pre_login_frame_bytes`: a login is a
few hundred bytes), and everything buffered for such connections together, on the TCP port
and the web port, is charged to one budget (`pre_login_buffer_bytes`). A connection that would
take the budget past its end is refused with `too_many_connections` and closed; a logged-in
connection holds nothing of it, so logged-in users never meet this limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.protocol import ErrorCode, FrameConnection, RemoteProtocolError

BUSY_MESSAGE = "the broker is busy with connections that have not logged in; try again later"


class PreLoginBudget:
    """Bytes held for unauthenticated connections, in total (one per broker process)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0  # the most ever held at once (for tests and operators)
        self._held: dict[object, int] = {}

    def hold(self, owner: object, size: int) -> bool:
        """Set what `owner` holds to `size` bytes; False (and nothing changed) if that would
        take the budget past its total."""
        before = self._held.get(owner, 0)
        if size > before and self.used - before + size > self.total:
            return False
        self.used += size - before
        if size:
            self._held[owner] = size
        else:
            self._held.pop(owner, None)
        self.peak = max(self.peak, self.used)
        return True

    def release(self, owner: object) -> None:
        self.hold(owner, 0)

    @property
    def holders(self) -> int:
        return len(self._held)


class PreLoginFrames:
    """Wraps a connection's FrameConnection: until `logged_in()` says so, it accepts only
    small frames and charges what it buffers to the shared budget, refusing with
    too_many_connections (before buffering) what would not fit."""

    def __init__(
        self,
        frames: FrameConnection,
        budget: PreLoginBudget,
        logged_in: Callable[[], bool],
        *,
        max_pre_login_frame_bytes: int,
    ) -> None:
        self.frames = frames
        self.budget = budget
        self._logged_in = logged_in
        self._full_max_frame_bytes = frames.max_frame_bytes
        self._promoted = False
        frames.max_frame_bytes = min(frames.max_frame_bytes, max_pre_login_frame_bytes)

    def _promote_once_logged_in(self) -> bool:
        if not self._promoted and self._logged_in():
            self._promoted = True
            self.frames.max_frame_bytes = self._full_max_frame_bytes
            self.budget.release(self)
            # From now on the wrapped connection's own methods, without this layer's cost on
            # every frame of a logged-in connection.
            self.receive_data = self.frames.receive_data  # type: ignore[method-assign]
            self.next_frame = self.frames.next_frame  # type: ignore[method-assign]
        return self._promoted

    def receive_data(self, data: bytes) -> None:
        if not self._promote_once_logged_in() and not self.budget.hold(
            self, self.frames.buffered + len(data)
        ):
            raise RemoteProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, BUSY_MESSAGE)
        try:
            self.frames.receive_data(data)
        finally:
            self._recharge()

    def next_frame(self) -> dict[str, Any] | object:
        self._promote_once_logged_in()  # a frame pipelined behind the login may be large
        try:
            return self.frames.next_frame()
        finally:
            self._recharge()

    def _recharge(self) -> None:
        if not self._promoted:  # the buffer only shrank since it was charged: always fits
            self.budget.hold(self, self.frames.buffered)

    def close(self) -> None:
        """The connection ended: give back what it held."""
        self.budget.release(self)

    # The rest is the wrapped FrameConnection's.
    @property
    def buffered(self) -> int:
        return self.frames.buffered

    @property
    def broken(self) -> bool:
        return self.frames.broken

    def send(self, obj: dict[str, Any]) -> bytes:
        return self.frames.send(obj)

    def send_plain(self, obj: dict[str, Any]) -> bytes:
        return self.frames.send_plain(obj)

    def send_payload(self, payload: bytes) -> bytes:
        return self.frames.send_payload(payload)
