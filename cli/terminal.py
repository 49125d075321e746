"""Text from other people, made safe for a terminal before the CLI prints it.

A message body, subject, user name or client name may hold control characters (C0, DEL, C1:
`ESC ] 0;title BEL`, `ESC [ 2 J`, `ESC ] 52;c;...` and the rest) that a terminal would obey, and
bidirectional overrides and isolates that make text read differently from what it is. Every
human-readable printer of the CLI passes its text through `safe_for_terminal`, which shows each
such character as a visible escape (`\\x1b`, `\\x9b`, `\\u202e`) and keeps everything else,
newline and tab included. JSON output keeps the exact text: `json_safe_for_terminal` only writes
those characters as JSON `\\uXXXX` escapes, which decode to the same string.
"""

from __future__ import annotations

import re

# Newline and tab lay text out and are kept; every other C0 control, DEL and C1 is escaped.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"
# Bidirectional embeddings/overrides (U+202A-202E), isolates (U+2066-2069), the marks LRM,
# RLM and ALM: they reorder or disguise the text around them.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# Line and paragraph separators (some terminals and tools break lines on them), and lone
# surrogates, which cannot be encoded for output at all (JSON may carry them as \\udXXX).
_OTHER = "\u2028\u2029\ud800-\udfff"

UNSAFE = re.compile(f"[{_CONTROLS}{_BIDI}{_OTHER}]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_for_terminal(text: str) -> str:
    """`text` with every control, bidi and separator character shown as a `\\xNN` / `\\uNNNN`
    escape (all printable ASCII), so printing it cannot steer the terminal or disguise text."""
    return UNSAFE.sub(_visible, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_safe_for_terminal(document: str) -> str:
    """A JSON document (from json.dumps) with the same characters written as JSON escapes.

    Such characters can only stand inside JSON strings, where `\\uXXXX` means the same
    character, so the decoded value is unchanged.
    """
    return UNSAFE.sub(_json_escape, document)
