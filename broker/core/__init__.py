"""Core services: accounts, sessions and presence, mailbox delivery, history."""

from broker.store import SendOutcome, UserRecord

from .feed import Message
from .presence import LiveSession, OnlineUser
from .service import Broker
from .session import Outlet, Session
from .views import entry_view, iso, mail_event, online_user_view

__all__ = [
    "Broker",
    "LiveSession",
    "Message",
    "OnlineUser",
    "Outlet",
    "SendOutcome",
    "Session",
    "UserRecord",
    "entry_view",
    "iso",
    "mail_event",
    "online_user_view",
]
