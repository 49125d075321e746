"""Checks on what the user typed, made before anything reaches the wire.

Each check raises a CliError with exit code 2 and one readable line: a server address that is
not HOST:PORT, a body or subject the broker would refuse, text that is not UTF-8, a config
directory that cannot hold the session file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from broker.protocol.requests import MAX_BODY_CHARS, MAX_SUBJECT_CHARS, SUBJECT_FORBIDDEN_RE

from .output import EXIT_USAGE, fail

DEFAULT_PORT = 7878
ADDRESS_HELP = "use HOST:PORT, e.g. 127.0.0.1:7878, or [::1]:7878 for IPv6"
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")  # a name or an IPv4 address


def parse_server_address(text: str) -> tuple[str, int]:
    """'host', 'host:port', '[v6]', '[v6]:port' -> (host, port); exit 2 for anything else.

    An IPv6 address must be in brackets: '::1:7878' could be an address or an address and a
    port. The port is 1-65535 (0, "any port", only makes sense for a broker).
    """
    value = text.strip()

    def refuse(why: str) -> NoReturn:
        fail(f"invalid server address {text!r}: {why}; {ADDRESS_HELP}", EXIT_USAGE)

    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed:
            refuse("']' missing after the IPv6 address")
        if rest and not rest.startswith(":"):
            refuse("expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            refuse(f"{host!r} is not an IPv6 address")
    elif value.count(":") > 1:
        refuse("an IPv6 address goes in brackets")
    else:
        host, colon, port_text_or_empty = value.partition(":")
        port_text = port_text_or_empty if colon else None
        if not host:
            refuse("the host is missing")
        if not _HOST_NAME.fullmatch(host):
            refuse(f"{host!r} is not a host name or address")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isascii() or not port_text.isdigit():
        refuse("the port must be a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        refuse(f"port {port} is out of range (1-65535)")
    return host, port


def check_utf8(text: str, what: str) -> str:
    """Text that came from the command line (undecodable bytes became lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        fail(f"{what} is not valid UTF-8 text (at character {exc.start + 1})", EXIT_USAGE)
    return text


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(
            f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            EXIT_USAGE,
        )


def read_stdin_text(what: str = "standard input") -> str:
    """All of standard input, which must be UTF-8."""
    return decode_utf8(sys.stdin.buffer.read(), what)


def read_stdin_line(what: str = "standard input") -> str:
    """One line of standard input (UTF-8), without its line ending."""
    return decode_utf8(sys.stdin.buffer.readline(), what).rstrip("\r\n")


def check_body(body: str) -> str:
    check_utf8(body, "the message body")
    if not body.strip():
        fail("the message body is empty", EXIT_USAGE)
    if len(body) > MAX_BODY_CHARS:
        fail(
            f"the message body has {len(body):,} characters; the limit is {MAX_BODY_CHARS:,}",
            EXIT_USAGE,
        )
    return body


def check_subject(subject: str) -> str:
    check_utf8(subject, "the subject")
    if len(subject) > MAX_SUBJECT_CHARS:
        fail(
            f"the subject has {len(subject):,} characters; the limit is {MAX_SUBJECT_CHARS}",
            EXIT_USAGE,
        )
    if SUBJECT_FORBIDDEN_RE.search(subject):
        fail("the subject must be one line, without control characters", EXIT_USAGE)
    return subject


def check_config_dir(directory: Path) -> None:
    """The config directory exists (or can be made) and a file can be written in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        fail(
            f"the config directory {directory} is not usable ({reason}): fix it, or set "
            "MAILNET_CONFIG_DIR to a writable directory",
            EXIT_USAGE,
        )
