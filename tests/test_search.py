"""The search language (parsed without I/O) and full-text search on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from cli_helpers import User
from hypothesis import given
from hypothesis import strategies as st

from broker.client import Client, RequestFailed
from broker.protocol import RemoteProtocolError
from broker.protocol.search import MAX_TERMS, SearchQuery, parse_search
from tests.conftest import RunningBroker, make_config, running_broker

PG_URL = os.environ.get("MAILNET_TEST_PG_URL", "")

# -- the language, sans I/O ------------------------------------------------------------------


def test_operators_phrases_and_words_are_parsed() -> None:
    query = parse_search(
        "from:Bob to:carol with:dave kind:email is:unread before:2026-11-01 "
        'after:2026-10-01T09:30 "Exact  Phrase" budget Café'
    )
    assert query == SearchQuery(
        words=("budget", "café"),
        phrases=(("exact", "phrase"),),
        senders=("bob",),
        recipients=("carol",),
        correspondents=("dave",),
        kinds=("email",),
        unread=True,
        before=datetime(2026, 11, 1, tzinfo=UTC),
        after=datetime(2026, 10, 1, 9, 30, tzinfo=UTC),
    )


def test_a_key_that_is_not_an_operator_is_words_as_in_mail_programs() -> None:
    assert parse_search("meet at 10:30 re:lunch").words == ("meet", "at", "10", "30", "re", "lunch")
    assert parse_search('"one"').words == ("one",)  # a one-word phrase is a word
    assert parse_search("is:read").unread is False
    assert not parse_search("").has_text


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("kind:fax", "kind:fax is not one of"),
        ("is:starred", "use is:unread or is:read"),
        ("before:yesterday", "is not a date"),
        ("from:", "from: needs a value"),
        ("x" * 501, "at most 500 characters"),
        (" ".join(["w"] * (MAX_TERMS + 1)), f"at most {MAX_TERMS} terms"),
    ],
)
def test_a_bad_query_says_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_search(text)
    assert caught.value.code == "bad_request"
    assert complaint in caught.value.message


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_as_bad_request(text: str) -> None:
    try:
        query = parse_search(text)
    except RemoteProtocolError as exc:
        assert exc.code == "bad_request"
        return
    # Every word reaches the index quoted: no text of a user is ever an FTS operator.
    for word in query.words:
        assert word and '"' not in word
    for phrase in query.phrases:
        assert len(phrase) > 1 and all(w and '"' not in w for w in phrase)


# -- full text, on SQLite and on PostgreSQL --------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RunningBroker]:
    overrides: dict[str, object] = {"send_rate": 10_000.0, "send_burst": 10_000}
    if request.param == "postgresql":
        overrides["db"] = request.getfixturevalue("pg_url")
    async with running_broker(make_config(tmp_path, **overrides)) as running:
        yield running


async def _ids(client: Client, query: str, **kw: object) -> list[int]:
    return [item["message_id"] for item in await client.history(query=query, **kw)]


async def test_words_phrases_and_operators_find_exactly_the_matching_mail(
    store_broker: RunningBroker,
) -> None:
    with trio.fail_after(60):
        async with (
            store_broker.user("alice") as alice,
            store_broker.user("bob") as bob,
            store_broker.user("carol") as carol,
        ):
            sent = {}

            async def send(name: str, coro: object) -> None:
                sent[name] = (await coro)["message_id"]  # type: ignore[misc]

            await send("body", bob.send_email(["alice"], "Plans", "the budget meeting is Monday"))
            await send("subject", bob.send_email(["alice", "carol"], "Budget", "see attached"))
            await send("reversed", bob.send_text("alice", "meeting about the budget"))
            await send("accent", carol.send_text("alice", "Un café au Crème?"))
            await send("mine", alice.send_email(["bob"], "Re: Plans", "budget approved"))
            await send("other", bob.send_text("carol", "budget secret for carol only"))
            await send("prank", bob.rickroll("alice"))
            await send("news", carol.announce("Budget day", "everyone: budget review"))
            await alice.mark_read([2])  # the second entry alice received: "subject"

            # Words: every word must match, in subject or body; never another user's mail.
            budget = await _ids(alice, "budget")
            assert set(budget) == {sent[k] for k in ("body", "subject", "reversed", "mine", "news")}
            assert await _ids(alice, "secret") == []  # bob to carol: not alice's mail
            assert await _ids(carol, "secret") == [sent["other"]]
            # Ranked: a match in the subject (weight 2) beats one only in the body.
            assert budget.index(sent["subject"]) < budget.index(sent["body"])
            # A phrase keeps its order; case and accents do not matter.
            assert await _ids(alice, '"budget meeting"') == [sent["body"]]
            assert await _ids(alice, '"meeting about"') == [sent["reversed"]]
            assert await _ids(alice, "CAFÉ crème") == [sent["accent"]]
            if store_broker.config.db_url.startswith("sqlite"):
                # FTS5's unicode61 folds accents; PostgreSQL's 'simple' configuration does not.
                assert await _ids(alice, "CAFE creme") == [sent["accent"]]
            # Operators.
            assert set(await _ids(alice, "from:bob budget")) == {
                sent["body"],
                sent["subject"],
                sent["reversed"],
            }
            assert await _ids(alice, "to:carol budget") == [sent["subject"]]
            assert set(await _ids(alice, "with:bob kind:email")) == {
                sent["body"],
                sent["subject"],
                sent["mine"],
            }
            assert set(await _ids(alice, "kind:text")) == {sent["reversed"], sent["accent"]}
            assert sent["subject"] not in await _ids(alice, "is:unread")
            assert await _ids(alice, "is:read") == [sent["subject"]]
            assert await _ids(alice, "budget before:2000-01-01") == []
            assert len(await _ids(alice, "budget after:2000-01-01")) == 5
            # A received rick-roll never matches its sender: that would reveal who sent it.
            assert sent["prank"] not in await _ids(alice, "from:bob")
            assert sent["prank"] in await _ids(alice, "kind:rickroll")
            # Paging through ranked results by offset: every result once.
            pages = [await _ids(alice, "budget", limit=2, offset=n) for n in (0, 2, 4)]
            assert [id_ for page in pages for id_ in page] == budget

            with pytest.raises(RequestFailed) as caught:
                await alice.history(query="kind:fax")
            assert caught.value.code == "bad_request"


async def test_search_from_the_cli_and_a_bad_query_is_exit_2(
    broker: RunningBroker, tmp_path: Path
) -> None:
    alice = User("alice", tmp_path / "alice", broker.address)
    bob = User("bob", tmp_path / "bob", broker.address)
    await alice.login()
    await bob.login()
    await bob.ok("send", "--to", "alice", "--subject", "Agenda", "--body", "budget and rota")
    await bob.ok("text", "alice", "lunch?")
    found = (await alice.ok("search", "from:bob", '"budget and"', "--json")).json_lines()
    assert [(item["subject"], item["sender"]) for item in found] == [("Agenda", "bob")]
    human = await alice.ok("search", "lunch")
    assert "lunch?" in human.stdout
    assert (await alice.ok("search", "nothing-like-this")).stdout.strip() == "Nothing found."
    bad = await alice("search", "is:starred")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "mailnet: error: search: is:starred: use is:unread or is:read"


async def test_names_with_dots_find_their_own_mail_and_never_a_look_alikes(
    store_broker: RunningBroker,
) -> None:
    """The index keeps a name as one token ('.' '_' '-' become 'q'): john.doe and johnqdoe share
    a token, so the mailbox check must keep each to their own mail."""
    with trio.fail_after(60):
        async with (
            store_broker.user("john.doe") as john,
            store_broker.user("johnqdoe") as lookalike,
            store_broker.user("sam_x-y") as sam,
        ):
            to_john = (await sam.send_text("john.doe", "quarterly numbers"))["message_id"]
            from_john = (await john.send_text("sam_x-y", "quarterly reply"))["message_id"]
            assert set(await _ids(john, "quarterly")) == {to_john, from_john}
            assert set(await _ids(sam, "quarterly")) == {to_john, from_john}
            assert await _ids(lookalike, "quarterly") == []
            assert await _ids(john, "from:sam_x-y quarterly") == [to_john]
