"""What the package installs and how the checkout-only benchmark is reached."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from cli_helpers import REPO, cli_env

from cli import bench as cli_bench
from cli import output
from cli.main import main


def installed_packages() -> list[str]:
    """The packages `pip install .` puts in site-packages, as pyproject.toml selects them
    (setuptools' find: directories with an __init__.py whose dotted name matches a pattern)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    names = (
        ".".join(init.parent.relative_to(REPO).parts)
        for init in REPO.glob("**/__init__.py")
        if ".venv" not in init.parts
    )
    return sorted(n for n in names if any(fnmatchcase(n, pattern) for pattern in include))


def test_benchmark_and_crash_harness_are_not_installed() -> None:
    packages = installed_packages()
    assert "broker" in packages and "broker.core" in packages and "cli" in packages
    assert not [name for name in packages if name == "bench" or ".bench" in name], packages


def test_mailnet_bench_runs_the_checkouts_benchmark() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "--help"],
        env=cli_env(None, None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: python -m bench" in result.stdout
    assert "--quick" in result.stdout


def test_mailnet_bench_outside_a_checkout_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_bench, "CHECKOUT", tmp_path)
    code = output.run_cli(lambda: main.main(["bench", "--quick"], "mailnet", None, False))
    assert code == output.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "source checkout" in err and "python -m bench" in err
