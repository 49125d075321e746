"""The requests a client may send: frozen msgspec Structs, tagged by their `op`.

`parse_request(frame)` checks every field of every operation and raises RemoteProtocolError
with `bad_request` or `unknown_op`, worded as docs/protocol.md shows; the limits on names,
subjects and bodies live here so that every transport enforces the same ones. The constraints
annotated on the fields (Meta) are what the JSON Schema of the protocol (broker.protocol.schema)
publishes; tests/test_protocol_schema.py checks that the two agree.
"""

from __future__ import annotations

import builtins
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, get_args

import msgspec
from msgspec import Meta

from .errors import ErrorCode, RemoteProtocolError
from .search import MAX_QUERY_CHARS, parse_search

USERNAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
# Line breaks and control characters (tab excepted): a subject is shown on one terminal line.
SUBJECT_FORBIDDEN_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
MIN_PASSWORD_CHARS: Final = 6
MAX_PASSWORD_BYTES: Final = 72  # bcrypt's limit; longer passwords are refused, not truncated
MAX_SUBJECT_CHARS: Final = 200
MAX_BODY_CHARS: Final = 64_000
MAX_RECIPIENTS: Final = 100
MAX_CLIENT_MSG_ID_CHARS: Final = 64
MAX_TOKEN_CHARS: Final = 128
MAX_PAGE: Final = 1000
MAX_SEARCH_CHARS: Final = 200
MAX_SEARCH_OFFSET: Final = 10_000  # ranked results page by offset; deeper pages cost more
MAX_INVITE_CHARS: Final = 64

Kind = Literal["email", "text", "announcement", "rickroll"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)
MAX_INT: Final = 2**62  # the largest integer any field takes: the database holds 64 bits
MAX_REQUEST_ID: Final = 2**53 - 1  # exact in every JSON implementation

# The canonical form; the broker also strips surrounding spaces and lower-cases.
Username = Annotated[
    str,
    Meta(
        pattern="^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
        description="1-32 letters, digits, '.', '_' or '-'; case does not matter.",
        examples=["bob"],
    ),
]
Seq = Annotated[int, Meta(ge=0, le=MAX_INT)]
PositiveInt = Annotated[int, Meta(ge=1, le=MAX_INT)]
PageSize = Annotated[int, Meta(ge=1, le=MAX_PAGE)]
RequestId = Annotated[int, Meta(ge=0, le=MAX_REQUEST_ID)]

# What the checks below refuse in text, said in JSON Schema for the published schema (the
# checks decide; tests/test_protocol_schema.py checks that the two agree).
NO_NUL: Final = Meta(pattern=r"^[^\u0000]*$")
NOT_BLANK: Final = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
TEXT: Final = Meta(min_length=1, pattern=NOT_BLANK)
_NOT_ONE_LINE = r"\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029"
ONE_LINE: Final = Meta(
    min_length=1, pattern=f"^[^{_NOT_ONE_LINE}]*[^\\s{_NOT_ONE_LINE}][^{_NOT_ONE_LINE}]*$"
)


class _Request(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="op"):
    """Every request is tagged by its operation, `op`. The request id (`id`) is not part of
    the request: request_id() reads it, broker.protocol.wire.request_payload writes it. A client
    leaves out the fields at their defaults."""


class Login(_Request, tag="login", frozen=True):
    username: Username
    password: Annotated[str, NO_NUL, Meta(max_length=200)]
    create: bool = False
    resume_after: Seq | None = None
    client: Annotated[str, TEXT, Meta(max_length=100)] = ""
    # needed to create an account when registration is 'invite'
    invite: Annotated[str, TEXT, Meta(max_length=MAX_INVITE_CHARS)] | None = None
    live: bool = True  # False: a one-shot command, not online and pushed nothing
    presence_batch: bool = False  # presence changes as one presence_batch event per tick


class Resume(_Request, tag="resume", frozen=True):
    """Log in again with a session token saved by an earlier login."""

    token: Annotated[str, TEXT, Meta(max_length=MAX_TOKEN_CHARS)]
    resume_after: Seq | None = None
    client: Annotated[str, TEXT, Meta(max_length=100)] = ""
    live: bool = True
    presence_batch: bool = False


class Logout(_Request, tag="logout", frozen=True):
    pass


class Ping(_Request, tag="ping", frozen=True):
    pass


class Send(_Request, tag="send", frozen=True):
    """A message; which fields a kind needs is checked by parse_request (docs/protocol.md)."""

    kind: Kind
    to: Annotated[tuple[Username, ...], Meta(max_length=MAX_RECIPIENTS)] = ()
    subject: Annotated[str, ONE_LINE, Meta(max_length=MAX_SUBJECT_CHARS)] | None = None
    body: Annotated[str, NO_NUL, Meta(max_length=MAX_BODY_CHARS)] = ""
    client_msg_id: Annotated[str, TEXT, Meta(max_length=MAX_CLIENT_MSG_ID_CHARS)] | None = None
    # A reply: the id of a message the sender can see in their own history (else not_found).
    in_reply_to: PositiveInt | None = None
    # Ask every recipient to acknowledge it (`acknowledge`); email and announcement only.
    require_ack: bool = False


class Ack(_Request, tag="ack", frozen=True):
    seq: Seq


class Inbox(_Request, tag="inbox", frozen=True):
    unread_only: bool = False
    limit: PageSize = 50
    before_seq: PositiveInt | None = None
    archived: bool = False  # include archived entries (hidden by default)


class MarkRead(_Request, tag="mark_read", frozen=True):
    seqs: Annotated[tuple[PositiveInt, ...], Meta(min_length=1, max_length=MAX_PAGE)]


class MarkUnread(_Request, tag="mark_unread", frozen=True):
    """Mark entries unread again (as mark_read, the other way)."""

    seqs: Annotated[tuple[PositiveInt, ...], Meta(min_length=1, max_length=MAX_PAGE)]


class Delete(_Request, tag="delete", frozen=True):
    """Remove entries from one's own mailbox (the message stays for everyone else)."""

    seqs: Annotated[tuple[PositiveInt, ...], Meta(min_length=1, max_length=MAX_PAGE)]


class Archive(_Request, tag="archive", frozen=True):
    """Archive entries of one's own mailbox: kept, but out of the inbox."""

    seqs: Annotated[tuple[PositiveInt, ...], Meta(min_length=1, max_length=MAX_PAGE)]


class Unarchive(_Request, tag="unarchive", frozen=True):
    """Bring archived entries of one's own mailbox back to the inbox (archive undone)."""

    seqs: Annotated[tuple[PositiveInt, ...], Meta(min_length=1, max_length=MAX_PAGE)]


class Who(_Request, tag="who", frozen=True):
    pass


class History(_Request, tag="history", frozen=True):
    with_user: Username | None = msgspec.field(default=None, name="with")
    kind: Kind | None = None
    search: Annotated[str, TEXT, Meta(max_length=MAX_SEARCH_CHARS)] | None = None
    # On the wire an ISO 8601 date or date-time (without a zone: UTC); parsed, always in UTC.
    since: datetime | None = None
    limit: PageSize = 50
    before_id: PositiveInt | None = None
    # The search language (broker/protocol/search.py): parse_request checks that it parses.
    query: Annotated[str, Meta(max_length=MAX_QUERY_CHARS)] | None = None
    # Paging through ranked results (a query with words); before_id pages by message id.
    offset: Annotated[int, Meta(ge=0, le=MAX_SEARCH_OFFSET)] = 0
    # Only the messages of one thread (a thread_id, as entries carry it).
    thread: PositiveInt | None = None


class SetPrefs(_Request, tag="set_prefs", frozen=True):
    """At least one preference; the ones left out keep their value."""

    prank_opt_out: bool | None = None
    read_receipts: bool | None = None  # False: senders see "delivered", never "read"


class Acknowledge(_Request, tag="acknowledge", frozen=True):
    """Acknowledge a message in one's mailbox that asks for it (announce --require-ack)."""

    message_id: PositiveInt


class MessageStatus(_Request, tag="message_status", frozen=True):
    """The delivery ledger of a message: its sender's or an admin's only."""

    message_id: PositiveInt


# -- account security and administration (docs/security.md) ---------------------------------


class ChangePassword(_Request, tag="change_password", frozen=True):
    old_password: Annotated[str, NO_NUL, Meta(max_length=200)]
    # At most 72 UTF-8 bytes (checked): as many characters when they are ASCII.
    new_password: Annotated[
        str, Meta(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_BYTES, pattern=NOT_BLANK)
    ]


class Block(_Request, tag="block", frozen=True):
    username: Username


class Unblock(_Request, tag="unblock", frozen=True):
    username: Username


class ListBlocks(_Request, tag="list_blocks", frozen=True):
    pass


class AdminUsers(_Request, tag="admin_users", frozen=True):
    pass


class AdminSetDisabled(_Request, tag="admin_set_disabled", frozen=True):
    username: Username
    disabled: bool


class AdminKick(_Request, tag="admin_kick", frozen=True):
    username: Username


class AdminSessions(_Request, tag="admin_sessions", frozen=True):
    pass


class AdminAudit(_Request, tag="admin_audit", frozen=True):
    limit: PageSize = 100


class AdminInvite(_Request, tag="admin_invite", frozen=True):
    pass


MAX_RETENTION_DAYS: Final = 36_500


class AdminRetention(_Request, tag="admin_retention", frozen=True):
    """Set how many days mailbox entries of a kind are kept (`days` null: for ever); without
    `kind`, only list the rules."""

    kind: Kind | None = None
    days: Annotated[int, Meta(ge=1, le=MAX_RETENTION_DAYS)] | None = None


Request = (
    Login
    | Resume
    | Logout
    | Ping
    | Send
    | Ack
    | Inbox
    | MarkRead
    | MarkUnread
    | Delete
    | Archive
    | Unarchive
    | Who
    | History
    | SetPrefs
    | Acknowledge
    | MessageStatus
    | ChangePassword
    | Block
    | Unblock
    | ListBlocks
    | AdminUsers
    | AdminSetDisabled
    | AdminKick
    | AdminSessions
    | AdminAudit
    | AdminInvite
    | AdminRetention
)


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_REQUEST, message)


class _Fields:
    """Typed access to a request's fields with one clear error per problem."""

    def __init__(self, frame: dict[str, Any]) -> None:
        self.frame = frame

    def _get(self, name: str, required: bool) -> Any:
        if name not in self.frame or self.frame[name] is None:
            if required:
                raise _bad(f"missing field '{name}'")
            return None
        return self.frame[name]

    def str(
        self, name: str, *, required: bool = True, max_chars: int, allow_empty: bool = False
    ) -> Any:  # a str, or None when not required and absent
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _bad(f"field '{name}' must be a string")
        if len(value) > max_chars:
            raise _bad(f"field '{name}' is longer than {max_chars} characters")
        if "\x00" in value:  # PostgreSQL cannot store it, and no text needs it
            raise _bad(f"field '{name}' must not contain NUL characters")
        if not allow_empty and not value.strip():
            raise _bad(f"field '{name}' must not be empty")
        return value

    def int(
        self, name: builtins.str, *, required: bool = True, minimum: int = 0, maximum: int = MAX_INT
    ) -> Any:  # an int, or None when not required and absent
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"field '{name}' must be an integer")
        if not minimum <= value <= maximum:
            raise _bad(f"field '{name}' must be between {minimum} and {maximum}")
        return value

    def bool(self, name: builtins.str, *, default: bool = False) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise _bad(f"field '{name}' must be true or false")
        return value


# Names already checked, as written -> normalized: every send names its recipients, and the
# same few names come again and again. Bounded; only valid names get in.
_NORMALIZED: dict[str, str] = {}
_NORMALIZED_MAX = 4096


def normalize_username(value: object, field: str = "username") -> str:
    if type(value) is str:
        known = _NORMALIZED.get(value)
        if known is not None:
            return known
    elif not isinstance(value, str):
        raise _bad(f"field '{field}' must be a string")
    name = value.strip().lower()
    if not USERNAME_RE.fullmatch(name):
        raise _bad(f"invalid user name {value[:40]!r}: use 1-32 letters, digits, '.', '_' or '-'")
    if len(_NORMALIZED) >= _NORMALIZED_MAX:
        _NORMALIZED.clear()
    _NORMALIZED[value] = name
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise _bad(f"password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise _bad(f"password must be at most {MAX_PASSWORD_BYTES} bytes")
    return password


def parse_since(value: str) -> datetime:
    """An ISO 8601 date or date-time as an aware datetime in UTC (no zone: UTC)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _bad(f"'since' must be an ISO date or date-time, not {value[:40]!r}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:  # in UTC here, so no database sees a date it cannot hold (9999-12-31T23:00-05:00)
        return moment.astimezone(UTC)
    except OverflowError:
        raise _bad(f"'since' is out of range: {value[:40]!r}") from None


def _parse_send(f: _Fields) -> Send:
    kind = f.str("kind", max_chars=20)
    if kind not in KINDS:
        raise _bad(f"field 'kind' must be one of {', '.join(KINDS)}")
    raw_to = f.frame.get("to")
    if kind == "announcement":
        if raw_to not in (None, []):
            raise _bad("an announcement goes to everyone: leave 'to' out")
        to: tuple[str, ...] = ()
    else:
        if isinstance(raw_to, str):
            raw_to = [raw_to]
        if not isinstance(raw_to, list) or not raw_to:
            raise _bad("field 'to' must be a non-empty list of user names")
        if len(raw_to) > MAX_RECIPIENTS:
            raise _bad(f"at most {MAX_RECIPIENTS} recipients per message")
        if len(raw_to) == 1:  # the common case, without the de-duplication
            to = (normalize_username(raw_to[0], "to"),)
        else:
            to = tuple(dict.fromkeys([normalize_username(name, "to") for name in raw_to]))
        if kind in ("text", "rickroll") and len(to) != 1:
            raise _bad(f"a {kind} goes to exactly one user")
    subject = None
    if kind in ("email", "announcement"):
        subject = f.str("subject", max_chars=MAX_SUBJECT_CHARS)
        if SUBJECT_FORBIDDEN_RE.search(subject):
            raise _bad("field 'subject' must be one line, without control characters")
    elif "subject" in f.frame and f.frame["subject"] is not None:
        raise _bad(f"a {kind} has no subject")
    if kind == "rickroll":
        if f.frame.get("body") not in (None, ""):
            raise _bad("a rick-roll has no body: the broker writes it")
        body = ""
    else:
        body = f.str("body", max_chars=MAX_BODY_CHARS)
    client_msg_id = f.str("client_msg_id", required=False, max_chars=MAX_CLIENT_MSG_ID_CHARS)
    in_reply_to = f.int("in_reply_to", required=False, minimum=1)
    if in_reply_to is not None and kind in ("announcement", "rickroll"):
        raise _bad(f"a {kind} cannot be a reply")
    require_ack = f.bool("require_ack")
    if require_ack and kind not in ("email", "announcement"):
        raise _bad(f"a {kind} cannot ask to be acknowledged")
    return Send(
        kind=kind,
        to=to,
        subject=subject,
        body=body,
        client_msg_id=client_msg_id,
        in_reply_to=in_reply_to,
        require_ack=require_ack,
    )


def _parse_history(f: _Fields) -> History:
    with_user = f.frame.get("with")
    kind = f.str("kind", required=False, max_chars=20)
    if kind is not None and kind not in KINDS:
        raise _bad(f"field 'kind' must be one of {', '.join(KINDS)}")
    since = f.str("since", required=False, max_chars=40)
    query = f.str("query", required=False, max_chars=MAX_QUERY_CHARS, allow_empty=True)
    if query is not None:
        parse_search(query)  # a query that does not parse is refused like any other bad field
    return History(
        with_user=None if with_user is None else normalize_username(with_user, "with"),
        kind=kind,
        search=f.str("search", required=False, max_chars=MAX_SEARCH_CHARS),
        since=None if since is None else parse_since(since),
        limit=f.int("limit", required=False, minimum=1, maximum=MAX_PAGE) or 50,
        before_id=f.int("before_id", required=False, minimum=1),
        query=query,
        offset=f.int("offset", required=False, minimum=0, maximum=MAX_SEARCH_OFFSET) or 0,
        thread=f.int("thread", required=False, minimum=1),
    )


def _parse_seqs(f: _Fields) -> tuple[int, ...]:
    seqs = f.frame.get("seqs")
    if not isinstance(seqs, list) or not seqs or len(seqs) > MAX_PAGE:
        raise _bad(f"field 'seqs' must be a list of 1 to {MAX_PAGE} sequence numbers")
    # Capped like every other integer field (_Fields.int): the database holds 64-bit integers.
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 2**62 for s in seqs):
        raise _bad("field 'seqs' must hold positive integers")
    return tuple(dict.fromkeys(seqs))


def _parse(op: str, f: _Fields) -> Request:
    match op:
        case "login":
            return Login(
                username=normalize_username(f.frame.get("username")),
                password=f.str("password", max_chars=200, allow_empty=True),
                create=f.bool("create"),
                resume_after=f.int("resume_after", required=False),
                client=f.str("client", required=False, max_chars=100) or "",
                invite=f.str("invite", required=False, max_chars=MAX_INVITE_CHARS),
                live=f.bool("live", default=True),
                presence_batch=f.bool("presence_batch", default=False),
            )
        case "resume":
            return Resume(
                token=f.str("token", max_chars=MAX_TOKEN_CHARS),
                resume_after=f.int("resume_after", required=False),
                client=f.str("client", required=False, max_chars=100) or "",
                live=f.bool("live", default=True),
                presence_batch=f.bool("presence_batch", default=False),
            )
        case "logout":
            return Logout()
        case "ping":
            return Ping()
        case "send":
            return _parse_send(f)
        case "ack":
            return Ack(seq=f.int("seq"))
        case "inbox":
            return Inbox(
                unread_only=f.bool("unread_only"),
                limit=f.int("limit", required=False, minimum=1, maximum=MAX_PAGE) or 50,
                before_seq=f.int("before_seq", required=False, minimum=1),
                archived=f.bool("archived"),
            )
        case "mark_read":
            return MarkRead(seqs=_parse_seqs(f))
        case "mark_unread":
            return MarkUnread(seqs=_parse_seqs(f))
        case "delete":
            return Delete(seqs=_parse_seqs(f))
        case "archive":
            return Archive(seqs=_parse_seqs(f))
        case "unarchive":
            return Unarchive(seqs=_parse_seqs(f))
        case "who":
            return Who()
        case "history":
            return _parse_history(f)
        case "set_prefs":
            prefs = {}
            for name in ("prank_opt_out", "read_receipts"):
                value = f.frame.get(name)
                if value is not None and not isinstance(value, bool):
                    raise _bad(f"field '{name}' must be true or false")
                prefs[name] = value
            if all(value is None for value in prefs.values()):
                raise _bad("field 'prank_opt_out' or 'read_receipts' must be true or false")
            return SetPrefs(**prefs)
        case "acknowledge":
            return Acknowledge(message_id=f.int("message_id", minimum=1))
        case "message_status":
            return MessageStatus(message_id=f.int("message_id", minimum=1))
        case "change_password":
            return ChangePassword(
                old_password=f.str("old_password", max_chars=200, allow_empty=True),
                new_password=check_password(f.str("new_password", max_chars=200)),
            )
        case "block":
            return Block(username=normalize_username(f.frame.get("username")))
        case "unblock":
            return Unblock(username=normalize_username(f.frame.get("username")))
        case "list_blocks":
            return ListBlocks()
        case "admin_users":
            return AdminUsers()
        case "admin_set_disabled":
            value = f.frame.get("disabled")
            if not isinstance(value, bool):
                raise _bad("field 'disabled' must be true or false")
            return AdminSetDisabled(
                username=normalize_username(f.frame.get("username")), disabled=value
            )
        case "admin_kick":
            return AdminKick(username=normalize_username(f.frame.get("username")))
        case "admin_sessions":
            return AdminSessions()
        case "admin_audit":
            return AdminAudit(
                limit=f.int("limit", required=False, minimum=1, maximum=MAX_PAGE) or 100
            )
        case "admin_invite":
            return AdminInvite()
        case "admin_retention":
            kind = f.str("kind", required=False, max_chars=20)
            if kind is not None and kind not in KINDS:
                raise _bad(f"field 'kind' must be one of {', '.join(KINDS)}")
            days = f.int("days", required=False, minimum=1, maximum=MAX_RETENTION_DAYS)
            if kind is None and days is not None:
                raise _bad("field 'days' needs a 'kind'")
            return AdminRetention(kind=kind, days=days)
    raise RemoteProtocolError(ErrorCode.UNKNOWN_OP, f"unknown operation {op[:40]!r}")


def request_id(frame: dict[str, Any]) -> int | None:
    """The client's request id, echoed in the response as 're' (None if absent or invalid)."""
    value = frame.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REQUEST_ID:
        return value
    return None


def parse_request(frame: dict[str, Any]) -> Request:
    op = frame.get("op")
    if not isinstance(op, str):
        raise _bad("missing field 'op'")
    return _parse(op, _Fields(frame))
