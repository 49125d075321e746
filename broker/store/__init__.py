"""Persistence: the only package that imports SQLAlchemy. Returns plain records."""

from .admin import AccountRecord, AuditRecord, BlockRecord, InviteInvalid, PrankRecord
from .backup import BackupError, BackupReport, backup_sqlite
from .database import Engines, make_engines, sqlite_url_for
from .mailstore import MailStore, NotFound, StoreUnavailable, UsernameTaken, call_guarded
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
    "SendIntent",
    "SendOutcome",
    "StoreUnavailable",
    "UserRecord",
    "UsernameTaken",
    "WriterProcess",
    "backup_sqlite",
    "call_guarded",
    "make_engines",
    "sqlite_url_for",
]
