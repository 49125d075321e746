"""`mailnet admin backup FILE`: a consistent copy of a live SQLite broker's database.

It runs on the broker's machine and reads the database file itself (the same --db / data
directory as `mailnet serve`): whoever can read that file can copy it anyway, so it asks for no
login. The copy goes through SQLite's online backup API while the broker keeps running.
"""

from __future__ import annotations

from pathlib import Path

import click

from broker.config import Config

from .output import EXIT_USAGE, emit_json, fail


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--db",
    "url",
    metavar="URL",
    help="SQLite URL of the broker's database [env MAILNET_DB; default: the broker's file].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def backup(file: Path, url: str | None, as_json: bool) -> None:
    """Copy the live SQLite database to FILE (consistent, while the broker runs).

    Restore by stopping the broker and putting FILE in place of the database file (removing
    its -wal and -shm files); see docs/operations.md. PostgreSQL: use pg_dump.
    """
    from broker.store import BackupError, StoreUnavailable, backup_sqlite

    if not file.parent.is_dir():
        fail(f"no such directory: {file.parent}", EXIT_USAGE)
    target = url or Config().with_env().db_url
    try:
        report = backup_sqlite(target, file)
    except (BackupError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)
    except StoreUnavailable as exc:
        fail(f"cannot read the database: {exc}", EXIT_USAGE)
    if as_json:
        emit_json(
            {
                "file": str(report.path),
                "bytes": report.size_bytes,
                "messages": report.messages,
                "revision": report.revision,
            }
        )
        return
    click.echo(
        f"Backed up {report.messages} message(s) to {report.path} "
        f"({report.size_bytes:,} bytes, schema {report.revision})."
    )
