"""Persistence: the only package that imports SQLAlchemy. Returns plain records."""

from .admin import AccountRecord, AuditRecord, BlockRecord, InviteInvalid, PrankRecord
from .backup import BackupError, BackupReport, backup_sqlite
from .committer import SendCommitter, ThreadCommitter
from .database import Engines, make_engines, named_connections, sqlite_url_for
from .guard import StoreUnavailable, call_guarded
from .mailstore import MailStore, NotFound, UsernameTaken
from .presence_rows import PresenceChange, PresenceRow
from .records import Delivery, EntryRecord, HistoryQuery, SendIntent, SendOutcome, UserRecord
from .writer import WriterProcess

__all__ = [
    "AccountRecord",
    "AuditRecord",
    "BackupError",
    "BackupReport",
    "BlockRecord",
    "Delivery",
    "Engines",
    "EntryRecord",
    "HistoryQuery",
    "InviteInvalid",
    "MailStore",
    "NotFound",
    "PrankRecord",
    "PresenceChange",
    "PresenceRow",
    "SendCommitter",
    "SendIntent",
    "SendOutcome",
    "StoreUnavailable",
    "ThreadCommitter",
    "UserRecord",
    "UsernameTaken",
    "WriterProcess",
    "backup_sqlite",
    "call_guarded",
    "make_engines",
    "named_connections",
    "sqlite_url_for",
]
