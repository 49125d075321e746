"""The group commit's writes to SQLite, in a process of their own.

The event loop and a writer thread share one interpreter lock: every time the writer releases
it (each SQLite call) it must win it back from the busy loop, so a batch that takes ~20 ms
alone took ~100 ms inside a loaded broker, and its Python work was taken from the loop's core.
`WriterProcess` runs `MailStore.store_sends` in a child process with its own connection and its
own interpreter: the loop keeps its core, the commit gets the other one.

The protocol over the pipe is small: the parent sends the batch's intents (as tuples) and the
quota; the child commits (the same `store_sends`, so the same transaction, checks and
idempotency) and answers with what only it knows (ids, seqs, the commit's timestamp); the
parent rebuilds the records from the intents it already holds. Nothing is acknowledged before
the child's answer arrives, and the child answers only after its commit.

If the child dies, the batch in flight fails with StoreUnavailable (the senders were told
nothing, and retry with the same client_msg_id: a batch that did commit is recognised) and
the next batch starts a new child. If the broker dies, the child reads end-of-file and exits
after the commit it is in, if any.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

from broker.gctune import tune_gc

from .checkpoint import WalCheckpointer, no_automatic_checkpoints
from .guard import StoreUnavailable, call_guarded
from .mailstore import MailStore
from .records import SendIntent, SendOutcome, deliveries_of
from .sendbatch import Stored

log = logging.getLogger("mailnet.store.writer")

# (message_id, duplicate, error_code, error_message, ((user_id, username, seq), ...))
_Compact = tuple[
    int | None, bool, str | None, str | None, tuple[tuple[int, str, int], ...], int | None
]
# What the child answers for a batch: the commit's timestamp and one _Compact per intent.
Committed = tuple[datetime | None, list[_Compact]]


START_TIMEOUT = 60.0  # seconds for a new child to open the database and say it is ready


class WriterProcess:
    """`store_sends` in a child process. Blocking: call it from a worker thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()  # one batch on the pipe at a time
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self.started = 0  # children started so far

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        with self._lock:
            self._ensure_child()

    def _ensure_child(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.poll() is None:
            return self._conn
        self._discard()
        # A plain subprocess on a socket pair, not multiprocessing: nothing of the broker's
        # own __main__ is imported again in the child, whatever started the broker.
        ours, theirs = socket.socketpair()
        with ours, theirs:
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno())],
                stdin=subprocess.PIPE,  # the URL, kept out of the process list
                stdout=subprocess.DEVNULL,  # the broker's stdout may carry `serve --json`
                pass_fds=[theirs.fileno()],
                start_new_session=True,  # Ctrl-C reaches the broker, which closes the pipe
                env={**os.environ, "PYTHONPATH": _import_path()},
            )
            assert process.stdin is not None
            process.stdin.write(self.url.encode("utf-8"))
            process.stdin.close()
            self._process, self._conn = process, Connection(ours.detach())
        self.started += 1
        # It says it is ready once it has the database open: a child that cannot start (a
        # broken install, a database it cannot open) is an error now, not at the first send.
        try:
            if not self._conn.poll(START_TIMEOUT):
                raise OSError(f"no answer within {START_TIMEOUT:.0f}s")
            status, detail = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = process.poll()
            self._discard()
            why = f"exit code {code}" if code is not None else str(exc)
            raise StoreUnavailable(f"the writer process could not start ({why})") from exc
        if status != "ready":
            self._discard()
            raise StoreUnavailable(f"the writer process could not start: {detail}")
        log.info("writer process %s started", process.pid)
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = self._conn = None

    def store_sends(self, intents: Sequence[SendIntent], quota: int) -> list[SendOutcome]:
        """MailStore.store_sends, committed by the child: the same outcomes, in order."""
        return self.outcomes(intents, self.commit(intents, quota))

    def commit(self, intents: Sequence[SendIntent], quota: int) -> Committed:
        """Have the child commit the batch; what only it knows, once it has committed.

        Turn it into outcomes with `outcomes` (pure Python: the broker does that on its own
        thread while the child commits the next batch)."""
        packed = [
            (
                i.sender_id,
                i.sender,
                i.kind,
                i.recipients,
                i.subject,
                i.body,
                i.client_msg_id,
                i.in_reply_to,
                i.require_ack,
            )
            for i in intents
        ]
        with self._lock:
            conn = self._ensure_child()
            try:
                try:
                    conn.send((packed, quota))
                except OSError:  # it died before this batch reached it: a new one takes it
                    self._discard()
                    conn = self._ensure_child()
                    conn.send((packed, quota))
                status, payload = conn.recv()
            except (EOFError, OSError) as exc:
                pid = self.pid
                self._discard()
                log.error("writer process %s stopped during a batch: %s", pid, exc)
                raise StoreUnavailable("the writer process stopped") from exc
        if status == "unavailable":
            raise StoreUnavailable(payload)
        if status != "ok":
            raise RuntimeError(f"the writer process failed: {payload}")
        return payload  # type: ignore[no-any-return]

    @staticmethod
    def outcomes(intents: Sequence[SendIntent], committed: Committed) -> list[SendOutcome]:
        sent_at, compact = committed
        return _outcomes(intents, sent_at, compact)

    def close(self) -> None:
        """Stop the child once the batch in flight (if any) has been answered."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):  # a dead child needs no goodbye
                    self._conn.send(None)
            self._discard()


_new = tuple.__new__


def _outcomes(
    intents: Sequence[SendIntent], sent_at: datetime | None, compact: list[_Compact]
) -> list[SendOutcome]:
    outcomes = []
    for intent, (message_id, duplicate, error_code, error_message, targets, thread_id) in zip(
        intents, compact, strict=True
    ):
        if error_code is not None or duplicate or not targets:
            outcomes.append(
                SendOutcome(
                    message_id=message_id,
                    duplicate=duplicate,
                    error_code=error_code,
                    error_message=error_message,
                )
            )
            continue
        assert message_id is not None and sent_at is not None
        deliveries = deliveries_of(intent, message_id, sent_at, targets, thread_id)
        outcomes.append(_new(SendOutcome, (message_id, False, deliveries, None, None)))
    return outcomes


def _compact(
    sent_at: datetime,
    outcomes: Sequence[SendOutcome],
    stored: Stored,
) -> Committed:
    """What the broker needs of a committed batch (see store_sends_compact)."""
    compact: list[_Compact] = []
    for index, outcome in enumerate(outcomes):
        targets, thread_id = stored.get(index, ((), None))
        compact.append(
            (
                outcome.message_id,
                outcome.duplicate,
                outcome.error_code,
                outcome.error_message,
                tuple(targets),
                thread_id,
            )
        )
    return (sent_at if stored else None), compact


def _check(store: MailStore) -> None:
    with store.engines.write.connect():
        pass


def _serve(conn: Connection, url: str) -> None:
    """The child: commit each batch it is sent, answer, until told to stop or orphaned."""
    # The broker decides when to stop (it closes the pipe): a batch is never cut short here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_gc()  # as the broker does
    store = MailStore.open(url)
    checkpointer = None
    if store.engines.is_sqlite:  # checkpoints off the commit path (checkpoint.py)
        no_automatic_checkpoints(store.engines.write)
        checkpointer = WalCheckpointer(store.engines.read)
        checkpointer.start()
    try:
        try:
            call_guarded(_check, store)
        except StoreUnavailable as exc:
            conn.send(("unavailable", str(exc)))
            return
        conn.send(("ready", None))
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return  # the broker is gone
            if request is None:
                return
            packed, quota = request
            intents = [SendIntent(*fields) for fields in packed]
            try:
                sent_at, outcomes, stored = call_guarded(store.store_sends_compact, intents, quota)
            except StoreUnavailable as exc:
                reply: tuple[str, object] = ("unavailable", str(exc))
            except Exception as exc:  # reported to the broker, which logs it
                reply = ("error", f"{type(exc).__name__}: {exc}")
            else:
                reply = ("ok", _compact(sent_at, outcomes, stored))
            try:
                conn.send(reply)
            except OSError:
                return
    finally:
        if checkpointer is not None:
            checkpointer.stop()
        store.close()


_CHILD = (
    "import sys; from multiprocessing.connection import Connection; "
    "from broker.store.writer import _serve; _serve(Connection(int(sys.argv[1])), sys.stdin.read())"
)


def _import_path() -> str:
    """PYTHONPATH for the child: where this broker package was imported from, first."""
    here = str(Path(__file__).resolve().parents[2])
    inherited = os.environ.get("PYTHONPATH")
    return here if not inherited else here + os.pathsep + inherited
