"""The pieces of LAN discovery that need no network: the TXT record, the choice among brokers
found, the invite address, the `serve --lan` checks and summary. tests/test_lan.py runs the whole
thing for real in network namespaces."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cli_helpers import cli_env, run_cli
from conftest import RunningBroker

from broker import discovery, lan
from broker.config import Config
from broker.discovery import Advertisement, AdvertisementError, Found
from cli.discover import trustworthy
from cli.lan import lan_summary_lines

FINGERPRINT = "SHA256:" + ":".join(["0F"] * 32)
OTHER = "SHA256:" + ":".join(["AB"] * 32)


def advert(name: str = "classroom", fingerprint: str = FINGERPRINT) -> Advertisement:
    return Advertisement(name, fingerprint, ("169.254.77.1",), 7878, web_port=8443)


def txt_bytes(record: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in record.items()}


def test_an_advertisement_survives_its_txt_record() -> None:
    ad = advert()
    assert ad.txt() == {"name": "classroom", "fp": FINGERPRINT, "proto": "1", "web": "8443"}
    assert Advertisement.from_txt(txt_bytes(ad.txt()), ["169.254.77.1"], 7878) == ad


@pytest.mark.parametrize(
    "record",
    [
        {"name": "classroom"},
        {"name": "classroom", "fp": "SHA256:00"},
        {"fp": FINGERPRINT},
    ],
)
def test_an_advertisement_without_name_or_valid_fingerprint_is_not_used(
    record: dict[str, str],
) -> None:
    with pytest.raises(AdvertisementError):
        Advertisement.from_txt(txt_bytes(record), ["169.254.77.1"], 7878)


def test_a_probe_for_a_name_asks_for_an_answer_every_responder_on_the_computer_hears() -> None:
    """A unicast (QU) answer defending a name reaches one of the sockets sharing port 5353: a
    second broker of that name on the same computer missed it and advertised a twin."""
    probing = object.__new__(discovery._MulticastProbing)  # builds the probe, opens no socket
    info = discovery._service_info(advert())
    probe = probing.generate_service_query(info)
    assert [(q.name, q.unique) for q in probe.questions] == [(discovery.SERVICE_TYPE, False)]
    assert [record.alias for record in probe.authorities] == [info.name]


def test_a_name_from_the_network_loses_its_control_characters() -> None:
    record = {"name": "class\x1b[2Jroom\x07", "fp": FINGERPRINT.lower()}
    ad = Advertisement.from_txt(txt_bytes(record), ["169.254.77.1"], 7878)
    assert ad.name == "class[2Jroom"
    assert ad.fingerprint == FINGERPRINT


def test_a_broker_presenting_another_certificate_than_advertised_is_dropped_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    genuine = Found(advert(), "169.254.77.1:7878", FINGERPRINT)
    spoofed = Found(advert(fingerprint=OTHER), "169.254.77.1:7878", FINGERPRINT)
    assert trustworthy([genuine, spoofed]) == [genuine]
    warning = capsys.readouterr().err
    assert "WARNING: refusing the broker advertised as 'classroom'" in warning
    assert f"advertises certificate {OTHER} but presented {FINGERPRINT}" in warning


def test_two_brokers_with_one_name_and_different_certificates_are_flagged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    one = Found(advert(), "169.254.77.1:7878", FINGERPRINT)
    two = Found(advert(fingerprint=OTHER), "169.254.77.9:7878", OTHER)
    assert trustworthy([one, two]) == [one, two]
    assert "2 brokers call themselves 'classroom'" in capsys.readouterr().err


def test_the_invite_address_is_a_lan_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lan, "lan_addresses", lambda: ["192.168.1.20"])
    everywhere = Config(host="0.0.0.0", lan=True)
    # Reached on a LAN address: share that one; reached on loopback: the machine's LAN address.
    assert lan.invite_url(everywhere, "https", "10.0.0.5", 8080) == "https://10.0.0.5:8080/"
    assert lan.invite_url(everywhere, "https", "127.0.0.1", 8080) == "https://192.168.1.20:8080/"
    assert lan.invite_url(Config(host="10.0.0.5"), "https", "10.0.0.5", 1) == "https://10.0.0.5:1/"
    assert lan.invite_url(Config(), "https", "127.0.0.1", 8080) is None


def test_serve_lan_prints_the_lan_addresses_and_a_qr_code_of_the_web_ui() -> None:
    text = "\n".join(lan_summary_lines(advert()))
    assert "On the LAN as 'classroom'" in text
    assert "  169.254.77.1:7878" in text
    assert "Web UI on the LAN: https://169.254.77.1:8443/" in text
    assert "▄" in text and "█" in text  # the QR code, in half blocks
    assert lan.qr_svg("https://169.254.77.1:8443/").startswith("<svg")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--insecure-plaintext"], "--lan needs TLS"),
        (["--host", "127.0.0.1"], "other computers cannot reach a loopback address"),
    ],
)
async def test_serve_lan_refuses_plaintext_and_loopback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = await run_cli(
        "serve", "--lan", "--data-dir", str(tmp_path), *args, env=cli_env(None, None)
    )
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_login_refuses_a_bad_browse_time(tmp_path: Path) -> None:
    env = cli_env(tmp_path, None, MAILNET_BROWSE_SECONDS="soon")
    result = await run_cli("login", "alice", "--password-stdin", env=env, stdin=b"password1\n")
    assert result.returncode == 2, result
    assert "MAILNET_BROWSE_SECONDS='soon' is not a number" in result.stderr


async def test_the_invite_of_a_loopback_broker_says_to_serve_with_lan(web: RunningBroker) -> None:
    async with httpx.AsyncClient(base_url=web.info.web[0], timeout=10) as client:
        assert (await client.get("/api/invite")).status_code == 401
        login = await client.post(
            "/api/login", json={"username": "alice", "password": "password1", "create": True}
        )
        token = login.json()["token"]
        invite = await client.get("/api/invite", headers={"Authorization": f"Bearer {token}"})
    assert invite.status_code == 200
    body = invite.json()
    assert body["url"] is None and body["svg"] is None
    assert "mailnet serve --lan" in body["message"]


def test_a_broker_of_another_protocol_version_is_skipped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ad = Advertisement("classroom", FINGERPRINT, ("169.254.77.1",), 7878, protocol="2")
    assert trustworthy([Found(ad, "169.254.77.1:7878", FINGERPRINT)]) == []
    assert "it speaks protocol '2'" in capsys.readouterr().err
