"""The search query language, one for the CLI, the web and the protocol (sans I/O).

    from:bob to:carol with:dave kind:email is:unread before:2026-11-01 after:2026-10-01
    "exact phrase" words

Words and phrases match subjects and bodies (all of them must match; case and accents are
ignored); the operators filter. A `key:value` whose key is not an operator is an ordinary word
(`10:30` searches for 10 and 30), as in the mail programs people know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from .errors import ErrorCode, RemoteProtocolError

MAX_QUERY_CHARS = 500
MAX_TERMS = 20
KINDS = ("email", "text", "announcement", "rickroll")
OPERATORS = ("from", "to", "with", "kind", "is", "before", "after")

# A quoted phrase, an operator with a quoted or bare value, or a bare run of non-spaces.
_TOKEN = re.compile(
    r'"(?P<phrase>[^"]*)"?|(?P<key>[A-Za-z]+):(?:"(?P<quoted>[^"]*)"?|(?P<value>\S*))|(?P<bare>\S+)'
)
# What the full-text index calls a word (unicode61: letters, digits; everything else separates).
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class SearchQuery:
    """A parsed query: every field narrows the result; empty means no condition."""

    words: tuple[str, ...] = ()
    phrases: tuple[tuple[str, ...], ...] = ()  # each phrase as its words, in order
    senders: tuple[str, ...] = ()  # from: (any of them)
    recipients: tuple[str, ...] = ()  # to: (any of them)
    correspondents: tuple[str, ...] = ()  # with: sent to or received from (any of them)
    kinds: tuple[str, ...] = ()
    unread: bool | None = None  # is:unread True, is:read False
    before: datetime | None = None  # sent strictly before
    after: datetime | None = None  # sent at or after

    @property
    def has_text(self) -> bool:
        return bool(self.words or self.phrases)


def _refuse(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_REQUEST, f"search: {message}")


def _moment(key: str, value: str) -> datetime:
    """An ISO date (midnight UTC) or date-time (UTC unless it says otherwise)."""
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _refuse(
            f"{key}:{value!r} is not a date (use 2026-11-01 or 2026-11-01T09:30)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def words_of(text: str) -> tuple[str, ...]:
    """The words of a text as the index sees them, lower-cased."""
    return tuple(word.lower() for word in _WORD.findall(text))


def parse_search(text: str) -> SearchQuery:
    """Parse a query; RemoteProtocolError (bad_request) says what is wrong with it."""
    if len(text) > MAX_QUERY_CHARS:
        raise _refuse(f"a query is at most {MAX_QUERY_CHARS} characters")
    words: list[str] = []
    phrases: list[tuple[str, ...]] = []
    lists: dict[str, list[str]] = {"from": [], "to": [], "with": [], "kind": []}
    unread: bool | None = None
    before: datetime | None = None
    after: datetime | None = None
    terms = 0
    for match in _TOKEN.finditer(text):
        terms += 1
        if terms > MAX_TERMS:
            raise _refuse(f"a query has at most {MAX_TERMS} terms")
        key = (match["key"] or "").lower()
        if match["phrase"] is not None:
            phrase = words_of(match["phrase"])
            if len(phrase) == 1:
                words.append(phrase[0])
            elif phrase:
                phrases.append(phrase)
            continue
        if key not in OPERATORS:
            words.extend(words_of(match[0]))
            continue
        value = match["quoted"] if match["quoted"] is not None else match["value"] or ""
        if not value:
            raise _refuse(f"{key}: needs a value")
        if key == "kind":
            if value.lower() not in KINDS:
                raise _refuse(f"kind:{value} is not one of {', '.join(KINDS)}")
            lists["kind"].append(value.lower())
        elif key == "is":
            if value.lower() not in ("unread", "read"):
                raise _refuse(f"is:{value}: use is:unread or is:read")
            unread = value.lower() == "unread"
        elif key == "before":
            before = _moment(key, value)
        elif key == "after":
            after = _moment(key, value)
        else:
            lists[key].append(value.lower())
    return SearchQuery(
        words=tuple(dict.fromkeys(words)),
        phrases=tuple(dict.fromkeys(phrases)),
        senders=tuple(lists["from"]),
        recipients=tuple(lists["to"]),
        correspondents=tuple(lists["with"]),
        kinds=tuple(dict.fromkeys(lists["kind"])),
        unread=unread,
        before=before,
        after=after,
    )
