"""The `mailnet` command: the click group `main`, and the registration of every command.

Commands live in small modules (account, sending, reading, serve, shell, admin, ...) and are
added below with `main.add_command(...)`. Exit codes and the error line live in cli.output.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from . import output
from .inputs import check_utf8
from .output import EXIT_CODES_HELP

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class MailnetGroup(click.Group):
    """A group whose standalone run never shows a traceback: see cli.output.run_cli."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        parent_main = super().main

        def invoke() -> Any:
            arguments = sys.argv[1:] if args is None else list(args)
            for number, argument in enumerate(arguments, 1):
                check_utf8(argument, f"argument {number}")
            return parent_main(arguments, prog_name or "mailnet", complete_var, False, **extra)

        sys.exit(output.run_cli(invoke))


@click.group(cls=MailnetGroup, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
def main() -> None:
    """mailnet: a persistent store-and-forward message broker and its client.

    Start a broker with `mailnet serve`, log in with `mailnet login`, then send emails, texts and
    announcements, read your inbox, see who is online, or use the interactive `mailnet shell`.
    """


# -- commands ------------------------------------------------------------------------------------

from .account import login, logout, prefs  # noqa: E402
from .reading import history, inbox, listen, read, search, who  # noqa: E402
from .sending import announce, rickroll, send, text  # noqa: E402
from .serve import db, serve  # noqa: E402
from .shell import shell  # noqa: E402

for command in (login, logout, send, text, announce, rickroll, inbox, read, who, history, prefs):
    main.add_command(command)
main.add_command(search)
for command in (listen, shell, serve, db):
    main.add_command(command)

# Commands defined in other modules (cli/admin.py, cli/bench.py) register here the same way.

from .admin import admin, block, blocks, passwd, unblock  # noqa: E402

main.add_command(passwd)
main.add_command(block)
main.add_command(unblock)
main.add_command(blocks)
main.add_command(admin)

from .backup import backup  # noqa: E402
from .export import export  # noqa: E402

admin.add_command(backup)
main.add_command(export)

from .mailbox import ack, archive, delete, reply, retention, status, unarchive, unread  # noqa: E402

main.add_command(reply)
main.add_command(unread)
main.add_command(ack)
main.add_command(status)
main.add_command(delete)
main.add_command(archive)
main.add_command(unarchive)
admin.add_command(retention)

from .bench import bench  # noqa: E402

main.add_command(bench)

from .discover import servers  # noqa: E402

main.add_command(servers)

from .trust import trust  # noqa: E402

main.add_command(trust)
