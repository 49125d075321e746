"""Nodes sharing a PostgreSQL database present one certificate: a fingerprint pinned through
any node (or a balancer in front of them) holds for all; --tls-cert/--tls-key still override."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import trio

from broker import tls
from broker.client import Trust, connect
from tests.conftest import make_config, running_broker

PG_URL = os.environ.get("MAILNET_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)


async def test_nodes_on_one_database_present_one_certificate(pg_url: str, tmp_path: Path) -> None:
    with trio.fail_after(30):

        def node(name: str, **overrides: object):  # type: ignore[no-untyped-def]
            config = make_config(tmp_path / name, db=pg_url, node_name=name)
            return dataclasses.replace(config, insecure_plaintext=False, **overrides)

        own = tls.ensure_self_signed_certificate(tmp_path / "own", ["127.0.0.1"])
        async with (
            running_broker(node("a")) as a,
            running_broker(node("b")) as b,
            running_broker(node("c", tls_cert=own.cert_path, tls_key=own.key_path)) as c,
        ):
            assert a.info.fingerprint is not None
            assert b.info.fingerprint == a.info.fingerprint
            assert c.info.fingerprint == tls.certificate_fingerprint(own.cert_path.read_bytes())
            # A client that pinned node A's certificate logs in through node B.
            known = tmp_path / "known_servers.json"
            async with connect(a.address, trust=Trust.pinning(known)) as client:
                await client.login("alice", "password1", create=True)
            pinned = tls.KnownServers(known).fingerprint_for(a.address)
            assert pinned == a.info.fingerprint
            tls.KnownServers(known).pin(b.address, pinned)
            async with connect(b.address, trust=Trust.pinning(known, accept_new=False)) as client:
                await client.login("alice", "password1")
        # Restarted, node B keeps presenting the cluster's certificate.
        async with running_broker(node("b")) as b:
            assert b.info.fingerprint == a.info.fingerprint
