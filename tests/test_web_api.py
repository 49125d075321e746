"""The HTTP/JSON API and the /api/ws WebSocket over a real broker on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from conftest import RunningBroker, make_config, running_broker
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from broker.client import RequestFailed
from broker.core import Broker
from broker.server import certificate_paths

WAIT = 10
PASSWORD = "password1"


@asynccontextmanager
async def http(broker: RunningBroker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=broker.info.web[0], timeout=WAIT) as client:
        yield client


async def login(client: httpx.AsyncClient, name: str, *, create: bool = True) -> str:
    response = await client.post(
        "/api/login", json={"username": name, "password": PASSWORD, "create": create}
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]["code"]


@asynccontextmanager
async def open_websocket(broker: RunningBroker) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to /api/ws on a TCP stream this test owns and closes: trio-websocket's
    client does not close its socket itself when the server ends the connection."""
    host, _, port = urlsplit(broker.info.web[0]).netloc.rpartition(":")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream(host, int(port))
        try:
            ws = await wrap_client_stream(nursery, stream, host, "/api/ws")
            try:
                yield ws
            finally:
                await ws.aclose()
        finally:
            await stream.aclose()


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        return json.loads(await ws.get_message())


async def receive_event(ws: WebSocketConnection, name: str) -> dict[str, Any]:
    """The next event called `name`, skipping others (presence changes come at any time)."""
    while True:
        message = await receive(ws)
        if message["event"] == name:
            return message


async def receive_mail(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    return [(await receive_event(ws, "mail"))["entry"] for _ in range(count)]


@asynccontextmanager
async def live(
    broker: RunningBroker, token: str, after_seq: int = 0
) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket(broker) as ws:
        await ws.send_message(json.dumps({"op": "auth", "token": token, "after_seq": after_seq}))
        ready = await receive(ws)
        assert ready["event"] == "ready", ready
        yield ws


async def closed_with(ws: WebSocketConnection) -> tuple[int, list[dict[str, Any]]]:
    """Read until the server closes: the close code, and what came before it."""
    messages = []
    with trio.fail_after(WAIT):
        try:
            while True:
                messages.append(json.loads(await ws.get_message()))
        except ConnectionClosed as closed:
            return closed.reason.code, messages


# -- accounts and authentication ------------------------------------------------------------


async def test_login_creates_an_account_then_checks_its_password(web):
    async with http(web) as client:
        first = await client.post(
            "/api/login", json={"username": "Alice", "password": PASSWORD, "create": True}
        )
        assert first.status_code == 200
        assert first.json()["created"] is True
        assert first.json()["username"] == "alice"
        again = await client.post("/api/login", json={"username": "alice", "password": PASSWORD})
        assert again.status_code == 200
        assert again.json()["created"] is False
        assert again.json()["token"] != first.json()["token"]
        me = await client.get("/api/me", headers=bearer(again.json()["token"]))
        assert me.json()["username"] == "alice"


async def test_wrong_password_and_unknown_user_get_the_same_401(web):
    async with http(web) as client:
        await login(client, "alice")
        wrong = await client.post("/api/login", json={"username": "alice", "password": "nope123"})
        unknown = await client.post("/api/login", json={"username": "zed", "password": "nope123"})
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        assert error_code(wrong) == "auth_failed"
        basic_wrong = await client.get("/api/me", auth=("alice", "nope123"))
        basic_unknown = await client.get("/api/me", auth=("zed", "nope123"))
        assert basic_wrong.status_code == basic_unknown.status_code == 401
        assert basic_wrong.json() == basic_unknown.json()


async def test_short_password_for_a_new_account_is_refused(web):
    async with http(web) as client:
        response = await client.post(
            "/api/login", json={"username": "alice", "password": "123", "create": True}
        )
        assert response.status_code == 422
        assert error_code(response) == "bad_request"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer " + "x" * 500},
        {"Authorization": "Basic !!!not base64!!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Digest whatever"},
    ],
)
async def test_missing_or_invalid_credentials_get_401_json(web, headers):
    async with http(web) as client:
        response = await client.get("/api/inbox", headers=headers)
        assert response.status_code == 401
        assert error_code(response) in ("not_authenticated", "auth_failed")
        assert "Bearer" in response.headers["www-authenticate"]
        assert "Basic" not in response.headers["www-authenticate"]  # no browser password pop-up


async def test_a_logged_out_token_stops_working(web):
    async with http(web) as client:
        token = await login(client, "alice")
        assert (await client.post("/api/logout", headers=bearer(token))).json() == {
            "logged_out": True
        }
        response = await client.get("/api/me", headers=bearer(token))
        assert response.status_code == 401


async def test_curl_one_liner_sends_a_text_with_basic_auth(web):
    async with http(web) as client:
        await login(client, "alice")
        bob = await login(client, "bob")
        # curl -u alice:password1 -H 'content-type: application/json' \
        #      -d '{"to":"bob","body":"hi"}' http://127.0.0.1:8080/api/texts
        response = await client.post(
            "/api/texts",
            auth=("alice", PASSWORD),
            headers={"content-type": "application/json"},
            content=b'{"to":"bob","body":"hi"}',
        )
        assert response.status_code == 200, response.text
        assert response.json()["duplicate"] is False
        inbox = (await client.get("/api/inbox", headers=bearer(bob))).json()
        [entry] = inbox["entries"]
        assert (entry["kind"], entry["sender"], entry["body"]) == ("text", "alice", "hi")
        assert entry["message_id"] == response.json()["message_id"]


async def test_basic_auth_does_not_open_a_session(web):
    async with http(web) as client:
        await login(client, "alice")
        response = await client.post("/api/logout", auth=("alice", PASSWORD))
        assert response.json() == {"logged_out": False}
        assert (await client.get("/api/who", auth=("alice", PASSWORD))).json() == {"users": []}


# -- every endpoint ---------------------------------------------------------------------------


async def test_email_text_announcement_inbox_read_and_history(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")
        carol = await login(client, "carol")
        email = await client.post(
            "/api/emails",
            headers=bearer(alice),
            json={"to": ["bob", "carol"], "subject": "Lunch", "body": "At noon?"},
        )
        assert email.status_code == 200, email.text
        text = await client.post(
            "/api/texts", headers=bearer(carol), json={"to": "bob", "body": "see you there"}
        )
        news = await client.post(
            "/api/announcements",
            headers=bearer(alice),
            json={"subject": "Maintenance", "body": "Friday 6pm"},
        )
        assert text.status_code == news.status_code == 200

        inbox = (await client.get("/api/inbox", headers=bearer(bob))).json()
        assert inbox["unread"] == 3
        kinds = {e["kind"]: e for e in inbox["entries"]}
        assert set(kinds) == {"email", "text", "announcement"}
        assert kinds["email"]["recipients"] == ["bob", "carol"]
        assert kinds["email"]["subject"] == "Lunch"
        assert kinds["announcement"]["sender"] == "alice"
        assert all(e["direction"] == "in" and e["read"] is False for e in inbox["entries"])

        marked = await client.post(
            "/api/read", headers=bearer(bob), json={"seqs": [kinds["email"]["seq"]]}
        )
        assert marked.json() == {"marked": 1}
        me = (await client.get("/api/me", headers=bearer(bob))).json()
        assert me["unread"] == 2
        assert me["last_seq"] == 3
        unread = (await client.get("/api/inbox?unread=true", headers=bearer(bob))).json()
        assert {e["kind"] for e in unread["entries"]} == {"text", "announcement"}
        first_page = (await client.get("/api/inbox?limit=1", headers=bearer(bob))).json()
        [newest] = first_page["entries"]
        older = await client.get(f"/api/inbox?before_seq={newest['seq']}", headers=bearer(bob))
        assert newest["seq"] not in {e["seq"] for e in older.json()["entries"]}

        with_carol = await client.get("/api/history?with=carol&kind=text", headers=bearer(bob))
        [item] = with_carol.json()["items"]
        assert item["body"] == "see you there"
        found = await client.get("/api/history?search=noon", headers=bearer(bob))
        assert [i["subject"] for i in found.json()["items"]] == ["Lunch"]
        sent = (await client.get("/api/history", headers=bearer(alice))).json()["items"]
        assert {i["direction"] for i in sent} >= {"out"}
        future = await client.get("/api/history?since=2999-01-01", headers=bearer(bob))
        assert future.json() == {"items": []}


async def test_a_retried_send_with_the_same_client_msg_id_is_stored_once(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")
        body = {"to": "bob", "body": "once", "client_msg_id": "retry-1"}
        first = await client.post("/api/texts", headers=bearer(alice), json=body)
        second = await client.post("/api/texts", headers=bearer(alice), json=body)
        assert first.json()["message_id"] == second.json()["message_id"]
        assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
        assert len((await client.get("/api/inbox", headers=bearer(bob))).json()["entries"]) == 1


async def test_rickroll_hides_its_sender_and_respects_the_opt_out(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")
        prank = {"to": "bob", "client_msg_id": "prank-1"}
        sent = await client.post("/api/rickrolls", headers=bearer(alice), json=prank)
        assert sent.status_code == 200, sent.text
        again = await client.post("/api/rickrolls", headers=bearer(alice), json=prank)
        assert again.json() == {"message_id": sent.json()["message_id"], "duplicate": True}
        [entry] = (await client.get("/api/inbox", headers=bearer(bob))).json()["entries"]
        assert entry["kind"] == "rickroll"
        assert entry["sender"] is None
        assert entry["recipients"] == []
        assert "alice" not in json.dumps(entry)
        history = (await client.get("/api/history", headers=bearer(bob))).json()["items"]
        assert all(item["sender"] is None for item in history)

        prefs = await client.put("/api/prefs", headers=bearer(bob), json={"prank_opt_out": True})
        assert prefs.json() == {"prank_opt_out": True, "read_receipts": True}
        assert (await client.get("/api/me", headers=bearer(bob))).json()["prank_opt_out"] is True
        refused = await client.post("/api/rickrolls", headers=bearer(alice), json={"to": "bob"})
        assert refused.status_code == 403
        assert error_code(refused) == "prank_refused"


async def test_marking_another_users_entry_read_is_not_found(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")
        await client.post("/api/texts", headers=bearer(alice), json={"to": "bob", "body": "mine"})
        [entry] = (await client.get("/api/inbox", headers=bearer(bob))).json()["entries"]
        response = await client.post(
            "/api/read", headers=bearer(alice), json={"seqs": [entry["seq"]]}
        )
        assert response.status_code == 404
        assert error_code(response) == "not_found"
        still = (await client.get("/api/inbox", headers=bearer(bob))).json()["entries"]
        assert still[0]["read"] is False


async def test_sender_is_always_the_authenticated_user(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")
        await client.post(
            "/api/texts",
            headers=bearer(alice),
            json={"to": "bob", "body": "who am i", "sender": "carol", "from": "carol"},
        )
        [entry] = (await client.get("/api/inbox", headers=bearer(bob))).json()["entries"]
        assert entry["sender"] == "alice"


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content", "status", "code"),
    [
        ("/api/texts", b"{not json", 400, "bad_frame"),
        ("/api/texts", b"", 400, "bad_frame"),
        ("/api/texts", b"\xff\xfe", 400, "bad_frame"),
        ("/api/texts", b"[1, 2]", 422, "bad_request"),
        ("/api/texts", b"[" * 100_000, 400, "bad_frame"),
        ("/api/texts", b'{"body": "no recipient"}', 422, "bad_request"),
        ("/api/texts", b'{"to": ["bob", "carol"], "body": "two"}', 422, "bad_request"),
        ("/api/texts", b'{"to": "bob", "body": "x", "subject": "texts have none"}', 422, None),
        ("/api/texts", b'{"to": "zed", "body": "nobody"}', 422, "unknown_recipient"),
        ("/api/texts", b'{"to": "bob", "body": 5}', 422, "bad_request"),
        ("/api/texts", b'{"to": "bob", "body": "   "}', 422, "bad_request"),
        ("/api/emails", b'{"to": [], "subject": "s", "body": "b"}', 422, "bad_request"),
        ("/api/emails", b'{"to": ["bob"], "subject": "a\\nb", "body": "b"}', 422, "bad_request"),
        ("/api/announcements", b'{"to": ["bob"], "subject": "s", "body": "b"}', 422, None),
        ("/api/rickrolls", b'{"to": "bob", "body": "my own words"}', 422, "bad_request"),
        ("/api/read", b'{"seqs": []}', 422, "bad_request"),
        ("/api/read", b'{"seqs": [0]}', 422, "bad_request"),
        ("/api/read", b'{"seqs": [true]}', 422, "bad_request"),
        ("/api/read", b'{"seqs": [405909669546727833600]}', 422, "bad_request"),
        ("/api/login", b'{"username": "no spaces allowed", "password": "x"}', 422, None),
        ("/api/login", b'{"username": 7, "password": "x"}', 422, "bad_request"),
    ],
)
async def test_bad_bodies_get_a_json_error(web, path, content, status, code):
    async with http(web) as client:
        alice = await login(client, "alice")
        await login(client, "bob")
        await login(client, "carol")
        response = await client.post(
            path,
            headers={**bearer(alice), "content-type": "application/json"},
            content=content,
        )
        assert response.status_code == status, response.text
        assert error_code(response) == (code or error_code(response))
        assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    "query",
    [
        "/api/inbox?limit=0",
        "/api/inbox?limit=abc",
        "/api/inbox?limit=100000",
        "/api/inbox?before_seq=-1",
        "/api/inbox?unread=maybe",
        "/api/history?kind=fax",
        "/api/history?since=yesterday",
        "/api/history?with=Not%20A%20Name",
        "/api/history?limit=99999999999999999999999",
    ],
)
async def test_bad_queries_get_422(web, query):
    async with http(web) as client:
        alice = await login(client, "alice")
        response = await client.get(query, headers=bearer(alice))
        assert response.status_code == 422, response.text
        assert error_code(response) == "bad_request"


async def test_history_with_an_unknown_user_is_a_clear_error(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        response = await client.get("/api/history?with=zed", headers=bearer(alice))
        assert response.status_code == 422
        assert error_code(response) == "unknown_recipient"


async def test_a_body_over_the_frame_limit_is_refused_with_413(tmp_path):
    config = make_config(tmp_path, web_port=0, max_frame_bytes=4096)
    async with running_broker(config) as broker, http(broker) as client:
        alice = await login(client, "alice")
        await login(client, "bob")
        big = {"to": "bob", "body": "x" * 10_000}
        response = await client.post("/api/texts", headers=bearer(alice), json=big)
        assert response.status_code == 413
        assert error_code(response) == "frame_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"x" * 1000

        streamed = await client.post(
            "/api/texts",
            headers={**bearer(alice), "content-type": "application/json"},
            content=chunks(),
        )
        assert streamed.status_code == 413


async def test_a_form_body_is_refused_with_415(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        response = await client.post(
            "/api/texts", headers=bearer(alice), data={"to": "bob", "body": "hi"}
        )
        assert response.status_code == 415
        assert error_code(response) == "unsupported_media_type"


async def test_unknown_paths_and_methods_answer_json(web):
    async with http(web) as client:
        missing = await client.get("/api/nothing-here")
        assert missing.status_code == 404
        assert error_code(missing) == "not_found"
        wrong_method = await client.delete("/api/inbox")
        assert wrong_method.status_code == 405
        assert error_code(wrong_method) == "method_not_allowed"
        assert "GET" in wrong_method.headers["allow"]
        plain_ws = await client.get("/api/ws")
        assert plain_ws.status_code == 426


# -- the page, headers, schema ---------------------------------------------------------------


async def test_the_page_and_its_files_are_served_with_security_headers(web):
    async with http(web) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "/static/app.js" in page.text
        script = await client.get("/static/app.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        for response in (page, script, await client.get("/api/me")):
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert "set-cookie" not in response.headers


async def test_api_responses_are_not_cached(web):
    async with http(web) as client:
        token = await login(client, "alice")
        response = await client.get("/api/inbox", headers=bearer(token))
        assert response.headers["cache-control"] == "no-store"


async def test_the_openapi_schema_lists_every_api_route(web):
    async with http(web) as client:
        schema = (await client.get("/openapi.json")).json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/login",
        "/api/logout",
        "/api/me",
        "/api/emails",
        "/api/texts",
        "/api/announcements",
        "/api/rickrolls",
        "/api/inbox",
        "/api/read",
        "/api/unread",
        "/api/acknowledge",
        "/api/delete",
        "/api/archive",
        "/api/unarchive",
        "/api/retention",
        "/api/status",
        "/api/who",
        "/api/history",
        "/api/prefs",
        "/api/invite",
    }
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "basic"}


async def test_https_uses_the_brokers_own_certificate(tmp_path):
    config = make_config(tmp_path, web_port=0, insecure_plaintext=False)
    async with running_broker(config) as broker:
        [url] = broker.info.web
        assert url.startswith("https://127.0.0.1:")
        cert, _ = certificate_paths(config)
        trusted = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=url, verify=trusted, timeout=WAIT) as client:
            response = await client.post(
                "/api/login", json={"username": "alice", "password": PASSWORD, "create": True}
            )
            assert response.status_code == 200


# -- the WebSocket -------------------------------------------------------------------------------


async def test_websocket_gets_mail_sent_by_a_tcp_client(web):
    async with http(web) as client:
        bob = await login(client, "bob")
        async with live(web, bob) as ws, web.user("alice") as alice:
            ack = await alice.send_text("bob", "over TCP, read in the browser")
            [entry] = await receive_mail(ws, 1)
            assert entry["message_id"] == ack["message_id"]
            assert (entry["sender"], entry["body"]) == ("alice", "over TCP, read in the browser")


async def test_websocket_gets_mail_sent_over_http_and_answers_pings(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")
        async with live(web, bob) as ws:
            await client.post(
                "/api/emails",
                headers=bearer(alice),
                json={"to": ["bob"], "subject": "Hi", "body": "live"},
            )
            [entry] = await receive_mail(ws, 1)
            assert (entry["kind"], entry["subject"], entry["seq"]) == ("email", "Hi", 1)
            await ws.send_message(json.dumps({"op": "ping"}))
            assert await receive_event(ws, "pong") == {"event": "pong"}


async def test_websocket_resumes_after_reconnect_without_doubles_or_misses(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")

        async def text(body: str) -> None:
            response = await client.post(
                "/api/texts", headers=bearer(alice), json={"to": "bob", "body": body}
            )
            assert response.status_code == 200

        async with live(web, bob) as ws:
            for n in range(1, 4):
                await text(f"m{n}")
            seen = await receive_mail(ws, 3)
            # Acknowledge only the first: the resume point is what the client says it has.
            await ws.send_message(json.dumps({"op": "ack", "seq": seen[0]["seq"]}))
        for n in range(4, 7):  # while bob's browser is offline
            await text(f"m{n}")
        async with live(web, bob, after_seq=seen[-1]["seq"]) as ws:
            await text("m7")
            resumed = await receive_mail(ws, 4)
        bodies = [e["body"] for e in seen + resumed]
        assert bodies == [f"m{n}" for n in range(1, 8)]
        seqs = [e["seq"] for e in seen + resumed]
        assert seqs == list(range(1, 8))


async def test_websocket_without_after_seq_starts_after_what_was_acknowledged(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")
        for n in range(3):
            await client.post(
                "/api/texts", headers=bearer(alice), json={"to": "bob", "body": f"m{n}"}
            )
        async with live(web, bob) as ws:
            await receive_mail(ws, 3)
            await ws.send_message(json.dumps({"op": "ack", "seq": 3}))
            await ws.send_message(json.dumps({"op": "ping"}))
            await receive_event(ws, "pong")  # the ack was read before this
        await client.post("/api/logout", headers=bearer(bob))  # flushes acks to the store
        bob = await login(client, "bob", create=False)
        await client.post("/api/texts", headers=bearer(alice), json={"to": "bob", "body": "new"})
        async with live(web, bob) as ws:
            [entry] = await receive_mail(ws, 1)
            assert (entry["seq"], entry["body"]) == (4, "new")


async def test_websocket_reports_presence_and_shows_in_who(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        bob = await login(client, "bob")
        async with live(web, alice) as alice_ws:
            async with live(web, bob):
                event = await receive_event(alice_ws, "presence")
                while event["username"] != "bob":
                    event = await receive_event(alice_ws, "presence")
                assert event["online"] is True
                who = (await client.get("/api/who", headers=bearer(alice))).json()["users"]
                assert {u["username"] for u in who} == {"alice", "bob"}
                assert all(u["sessions"] == 1 for u in who)
            event = await receive_event(alice_ws, "presence")
            assert event == {"event": "presence", "username": "bob", "online": False}
            who = (await client.get("/api/who", headers=bearer(alice))).json()["users"]
            assert [u["username"] for u in who] == ["alice"]


async def test_websocket_must_authenticate_first(web):
    async with open_websocket(web) as ws:
        await ws.send_message(json.dumps({"op": "ping"}))
        code, messages = await closed_with(ws)
    assert code == 1008
    assert messages[0]["error"]["code"] == "not_authenticated"


async def test_websocket_with_a_bad_token_is_closed(web):
    async with open_websocket(web) as ws:
        await ws.send_message(json.dumps({"op": "auth", "token": "forged"}))
        code, messages = await closed_with(ws)
    assert code == 1008
    assert messages[0]["error"]["code"] == "auth_failed"


async def test_websocket_that_never_authenticates_is_closed_at_the_login_timeout(tmp_path):
    config = make_config(tmp_path, web_port=0, login_timeout=0.2)
    async with running_broker(config) as broker, open_websocket(broker) as ws:
        code, messages = await closed_with(ws)
    assert code == 1008
    assert messages[0]["error"]["code"] == "timeout"


async def test_silent_websocket_expires_and_leaves_who(tmp_path):
    config = make_config(tmp_path, web_port=0, heartbeat_timeout=0.3)
    async with running_broker(config) as broker, http(broker) as client:
        alice = await login(client, "alice")
        async with live(broker, alice) as ws:
            code, messages = await closed_with(ws)
        assert code == 1008
        assert messages[-1]["error"]["code"] == "timeout"
        assert (await client.get("/api/who", headers=bearer(alice))).json() == {"users": []}


async def test_websocket_answers_bad_messages_and_stays_open(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        async with live(web, alice) as ws:
            for bad in ("not json", "[]", '{"op": "send"}', '{"op": "ack", "seq": "x"}'):
                await ws.send_message(bad)
                assert (await receive_event(ws, "error"))["error"]["code"]
            await ws.send_message(json.dumps({"op": "ping"}))
            assert await receive_event(ws, "pong") == {"event": "pong"}


async def test_logging_out_closes_that_tokens_websockets(web):
    async with http(web) as client:
        alice = await login(client, "alice")
        other_tab = await login(client, "alice", create=False)
        async with live(web, alice) as ws, live(web, other_tab) as other_ws:
            await client.post("/api/logout", headers=bearer(alice))
            code, messages = await closed_with(ws)
            assert code == 1008
            assert messages[-1]["error"]["code"] == "auth_failed"
            await other_ws.send_message(json.dumps({"op": "ping"}))
            assert await receive_event(other_ws, "pong") == {"event": "pong"}


async def test_shutdown_closes_websockets_with_going_away(tmp_path):
    async with running_broker(make_config(tmp_path, web_port=0)) as broker:
        async with http(broker) as client:
            alice = await login(client, "alice")
        async with live(broker, alice) as ws:
            broker.stop()
            code, _ = await closed_with(ws)
    assert code == 1001


async def test_an_admin_kick_closes_the_users_websocket(web):
    async with http(web) as client:
        await login(client, "root")  # the first account is the admin
        bob = await login(client, "bob")
        async with live(web, bob) as ws, web.user("root") as admin:
            await admin.admin_kick("bob")
            code, messages = await closed_with(ws)
        assert code == 1008
        assert messages[-1]["error"]["code"] == "session_ended"
        assert (await client.get("/api/me", headers=bearer(bob))).status_code == 401


async def test_an_oversized_websocket_message_closes_the_socket(tmp_path):
    config = make_config(tmp_path, web_port=0, max_frame_bytes=4096)
    async with running_broker(config) as broker, http(broker) as client:
        alice = await login(client, "alice")
        async with live(broker, alice) as ws:
            await ws.send_message(json.dumps({"op": "ping", "pad": "x" * 10_000}))
            code, _ = await closed_with(ws)
        assert code == 1009


async def test_websockets_beyond_the_per_address_limit_are_refused(tmp_path):
    config = make_config(tmp_path, web_port=0, max_connections_per_ip=1)
    async with running_broker(config) as broker, http(broker) as client:
        alice = await login(client, "alice")
        async with live(broker, alice), open_websocket(broker) as second:
            code, messages = await closed_with(second)
        assert code == 1013
        assert messages[0]["error"]["code"] == "too_many_connections"


async def test_sending_too_fast_is_rate_limited_like_over_tcp(tmp_path):
    config = make_config(tmp_path, web_port=0, send_rate=0.01, send_burst=2)
    async with running_broker(config) as broker, http(broker) as client:
        alice = await login(client, "alice")
        await login(client, "bob")
        statuses = []
        for n in range(3):
            response = await client.post(
                "/api/texts", headers=bearer(alice), json={"to": "bob", "body": f"m{n}"}
            )
            statuses.append(response.status_code)
        assert statuses == [200, 200, 429]
        assert error_code(response) == "rate_limited"
        assert int(response.headers["retry-after"]) >= 1
        async with broker.user(
            "alice"
        ) as tcp_alice:  # the budget is the user's, not the transport's
            with pytest.raises(RequestFailed) as refused:
                await tcp_alice.send_text("bob", "over TCP")
            assert refused.value.code == "rate_limited"


async def test_an_unexpected_failure_is_a_json_500_without_details(web, monkeypatch, caplog):
    def broken(self):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Broker, "who", broken)
    async with http(web) as client:
        token = await login(client, "alice")
        response = await client.get("/api/who", headers=bearer(token))
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error; it was logged"}
    }
    assert "secret internals" not in response.text
    assert "secret internals" in caplog.text  # logged for the operator
