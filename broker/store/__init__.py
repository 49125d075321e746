"""Persistence: the only package that imports SQLAlchemy. Returns plain records."""

from .database import Engines, make_engines, sqlite_url_for
from .mailstore import MailStore, NotFound, StoreUnavailable, UsernameTaken, call_guarded
from .records import Delivery, EntryRecord, HistoryQuery, SendIntent, SendOutcome, UserRecord

__all__ = [
    "Delivery",
    "Engines",
    "EntryRecord",
    "HistoryQuery",
    "MailStore",
    "NotFound",
    "SendIntent",
    "SendOutcome",
    "StoreUnavailable",
    "UserRecord",
    "UsernameTaken",
    "call_guarded",
    "make_engines",
    "sqlite_url_for",
]
