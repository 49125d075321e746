"""Fuzz the HTTP API from its own OpenAPI schema with schemathesis: no request may cause a 5xx.

schemathesis runs as its command-line tool in a subprocess (it has its own event loop and
threads) against a live broker in this trio test, authenticated with HTTP Basic so that a
fuzzed POST /api/logout cannot revoke the credentials the rest of the run uses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest
import trio
from conftest import make_config, running_broker

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


def schemathesis_command() -> list[str]:
    """schemathesis from this interpreter's environment (CI does not put the venv on PATH)."""
    pytest.importorskip("schemathesis", reason="pip install -e '.[test]'")
    return [sys.executable, "-m", "schemathesis.cli"]


async def test_fuzzing_the_openapi_schema_finds_no_server_errors(tmp_path):
    command = schemathesis_command()
    config = make_config(
        tmp_path / "broker",
        web_port=0,
        login_slow_after=10**6,  # fuzzed logins fail a lot; spacing them out would only slow this
        send_burst=10**6,
    )
    async with running_broker(config) as broker:
        url = broker.info.web[0]
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for name in ("alice", "bob"):  # so that some fuzzed recipients exist
                response = await client.post(
                    "/api/login", json={"username": name, "password": "password1", "create": True}
                )
                assert response.status_code == 200
        env = {
            **os.environ,
            "HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "NO_COLOR": "1",
        }
        with trio.fail_after(240):
            result = await trio.run_process(
                [
                    *command,
                    "run",
                    url + "openapi.json",
                    "--auth",
                    "alice:password1",
                    "--checks",
                    CHECKS,
                    "--max-examples",
                    os.environ.get("MAILNET_FUZZ_EXAMPLES", "15"),
                    "--phases",
                    "examples,coverage,fuzzing",
                    "--workers",
                    "1",
                    "--seed",
                    os.environ.get("MAILNET_FUZZ_SEED", "1"),  # fixed, so a CI run is repeatable
                    "--generation-database",
                    "none",
                    "--request-timeout",
                    "10",
                    "--no-color",
                ],
                cwd=tmp_path,
                env=env,
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                check=False,
            )
    output = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, output
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None and int(generated.group(1)) >= 100, output  # it really ran
