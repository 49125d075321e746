"""`mailnet bench`: run a source checkout's benchmark (`python -m bench`), with its options.

The benchmark and crash harness (bench/) are not installed with the package; from an editable
install (`pip install -e .`) the checkout sits beside this package and the command runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from . import output

# Where an editable install's source checkout is: the parent of the cli/ package.
CHECKOUT = Path(__file__).resolve().parent.parent


def find_checkout(root: Path) -> Path | None:
    """`root` if it is a mailnet checkout holding the benchmark, else None."""
    return root if (root / "bench" / "__main__.py").is_file() else None


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmark a fresh local broker (127.0.0.1, temporary database) and print the figures.

    Needs a source checkout (pip install -e .): runs `python -m bench ARGS` there; `mailnet bench
    --help` lists its options. Progress goes to stderr.
    """
    checkout = find_checkout(CHECKOUT)
    if checkout is None:
        output.fail(
            "mailnet bench runs from a source checkout (pip install -e .): the benchmark is not "
            "installed with the package; in a checkout run `python -m bench`",
            output.EXIT_USAGE,
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
    code = subprocess.call([sys.executable, "-m", "bench", *args], env=env)
    sys.exit(code)
