"""The CLI's saved login: {server, username, token, last_seq} in the config dir, mode 0600.

The config dir is platformdirs' per-user one, or MAILNET_CONFIG_DIR (tests isolate it there).
The known-servers file for TLS pinning lives next to the session.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import platformdirs

SESSION_FILE_NAME = "session.json"


def config_dir() -> Path:
    override = os.environ.get("MAILNET_CONFIG_DIR")
    if override:
        return Path(override)
    return Path(platformdirs.user_config_dir("mailnet", appauthor=False))


def session_path() -> Path:
    return config_dir() / SESSION_FILE_NAME


def known_servers_path() -> Path:
    return config_dir() / "known_servers.json"


@dataclass(frozen=True)
class SavedSession:
    server: str
    username: str
    token: str
    last_seq: int = 0  # highest mailbox seq this computer has shown (listen, shell)

    def with_last_seq(self, seq: int) -> SavedSession:
        return replace(self, last_seq=max(self.last_seq, seq))


class SessionFileError(Exception):
    """The session file exists but cannot be read or is malformed."""


def load_session(path: Path | None = None) -> SavedSession | None:
    path = path or session_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SessionFileError(
            f"cannot read the saved session {path} ({exc}); delete it and log in again"
        ) from None
    try:
        return SavedSession(
            server=str(data["server"]),
            username=str(data["username"]),
            token=str(data["token"]),
            last_seq=int(data.get("last_seq", 0)),
        )
    except (KeyError, TypeError, ValueError):
        raise SessionFileError(
            f"the saved session {path} is malformed; delete it and log in again"
        ) from None


def save_session(session: SavedSession, path: Path | None = None) -> Path:
    """Write the session atomically; the file is created 0600 so the token is never exposed."""
    path = path or session_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temp file from a crash may have other bits
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(asdict(session), file, indent=2)
            file.write("\n")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def delete_session(path: Path | None = None) -> bool:
    path = path or session_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
