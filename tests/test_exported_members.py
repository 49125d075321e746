"""Pins the public surface of broker.protocol: adding or removing a name is a deliberate act."""

from __future__ import annotations

import broker.protocol

EXPECTED = [
    "DEFAULT_MAX_FRAME_BYTES",
    "KINDS",
    "MAX_SENT_FRAME_BYTES",
    "NEED_DATA",
    "Ack",
    "ErrorCode",
    "FrameConnection",
    "History",
    "Inbox",
    "LocalProtocolError",
    "Login",
    "Logout",
    "MarkRead",
    "Ping",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "RequestRefused",
    "Resume",
    "Send",
    "SetPrefs",
    "Who",
    "check_password",
    "encode_frame",
    "error_response",
    "event",
    "fit_page",
    "normalize_username",
    "ok_response",
    "parse_request",
    "request_id",
]


def test_protocol_all_is_pinned() -> None:
    assert broker.protocol.__all__ == EXPECTED


def test_every_exported_name_exists_and_comes_from_the_protocol_package() -> None:
    for name in broker.protocol.__all__:
        member = getattr(broker.protocol, name)
        module = getattr(member, "__module__", None)
        if isinstance(member, type) or callable(member):
            assert module is not None and module.startswith("broker.protocol"), (name, module)


def test_no_public_name_is_left_out_of_all() -> None:
    public = {
        name
        for name, member in vars(broker.protocol).items()
        if not name.startswith("_") and getattr(member, "__module__", "").startswith("broker.")
    }
    assert public <= set(broker.protocol.__all__)


def test_the_protocol_package_imports_neither_trio_nor_sqlalchemy() -> None:
    """Sans-I/O: checked in a fresh interpreter, so other tests' imports cannot hide a leak."""
    import subprocess
    import sys
    from pathlib import Path

    program = (
        "import sys, broker.protocol\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'sqlalchemy'))\n"
        "print(leaked)\n"
        "assert not leaked\n"
    )
    repo = Path(__file__).resolve().parent.parent
    ran = subprocess.run(
        [sys.executable, "-c", program], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
