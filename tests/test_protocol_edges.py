"""The framing keeps docs/protocol.md's word at its edges: nesting depth and number length.

Nesting deeper than MAX_NESTING (512) levels and numbers of more than 4,300 digits (integers
and floats alike) or past a double's range are answered `bad_frame`, and the connection goes on
with the next frame; anything within the limits is read as JSON. Property tests run on the
sans-I/O FrameConnection; one test sends the same edge cases over a real socket.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.protocol import NEED_DATA, FrameConnection, RemoteProtocolError, encode_frame
from broker.protocol.framing import HEADER, MAX_NESTING, MAX_NUMBER_DIGITS, nesting_depth
from tests.conftest import make_config, running_broker
from tests.test_security_limits import raw_connection

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame_of(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def nested(depth: int, *, opener: str = "[", inner: str = "") -> bytes:
    """A ping whose `x` nests `depth - 1` levels below the top-level object (depth in all)."""
    if opener == "{":
        opening, closing = '{"k":' * (depth - 2) + "{}", "}" * (depth - 2)
    else:
        opening, closing = "[" * (depth - 1) + inner, "]" * (depth - 1)
    return f'{{"op":"ping","id":1,"x":{opening}{closing}}}'.encode()


def read_one(payload: bytes) -> dict[str, object]:
    """Feed one frame then a ping; return the first frame's result, and check the ping still
    comes through (the bad frame was consumed, the connection is not broken)."""
    connection = FrameConnection(max_frame_bytes=len(payload) + 64)
    connection.receive_data(frame_of(payload) + encode_frame({"op": "ping", "id": 2}))
    try:
        first = connection.next_frame()
    except RemoteProtocolError as exc:
        first = {"refused": exc.code, "message": exc.message}
    assert not connection.broken
    assert connection.next_frame() == {"op": "ping", "id": 2}
    assert connection.next_frame() is NEED_DATA
    assert isinstance(first, dict)
    return first


# -- nesting ------------------------------------------------------------------------------------


@EXAMPLES
@given(depth=st.integers(900, 1100), opener=st.sampled_from("[{"))
def test_frames_nested_900_to_1100_levels_deep_are_bad_frames(depth: int, opener: str) -> None:
    result = read_one(nested(depth, opener=opener))
    assert result["refused"] == "bad_frame"
    assert f"over {MAX_NESTING} levels" in str(result["message"])


@EXAMPLES
@given(depth=st.integers(2, MAX_NESTING), opener=st.sampled_from("[{"))
def test_frames_nested_up_to_the_limit_are_read(depth: int, opener: str) -> None:
    payload = nested(depth, opener=opener)
    assert nesting_depth(payload) == depth
    assert read_one(payload)["op"] == "ping"


def test_the_limit_is_exact() -> None:
    assert read_one(nested(MAX_NESTING))["op"] == "ping"
    assert read_one(nested(MAX_NESTING + 1))["refused"] == "bad_frame"


@EXAMPLES
@given(brackets=st.integers(900, 1100))
def test_brackets_inside_strings_are_not_nesting(brackets: int) -> None:
    body = "[{" * brackets + '\\"]}' * brackets
    payload = ('{"op":"ping","id":1,"x":"' + body + '"}').encode()
    assert nesting_depth(payload) == 1
    assert read_one(payload)["x"] == json.loads(f'"{body}"')


# -- number length ------------------------------------------------------------------------------


@EXAMPLES
@given(digits=st.integers(4000, 5000), negative=st.booleans())
def test_integers_are_read_up_to_4300_digits_and_refused_beyond(
    digits: int, negative: bool
) -> None:
    text = ("-" if negative else "") + "7" * digits
    result = read_one(f'{{"op":"ping","id":1,"x":{text}}}'.encode())
    if digits <= MAX_NUMBER_DIGITS:
        assert result["x"] == int(text)
    else:
        assert result["refused"] == "bad_frame"


@EXAMPLES
@given(
    digits=st.integers(4000, 5000),
    shape=st.sampled_from(["fraction", "integer_part", "exponent_split"]),
)
def test_floats_are_read_up_to_4300_digits_and_refused_beyond(digits: int, shape: str) -> None:
    if shape == "fraction":
        text = "0." + "3" * (digits - 1)
    elif shape == "integer_part":
        text = "1" + "0" * (digits - 2) + ".5e-4000"
        digits += 4
    else:
        text = "2." + "1" * (digits - 2) + "e-1"
    result = read_one(f'{{"op":"ping","id":1,"x":{text}}}'.encode())
    if digits <= MAX_NUMBER_DIGITS:
        assert result["x"] == float(text)
    else:
        assert result["refused"] == "bad_frame"
        assert "digits" in str(result["message"])


@pytest.mark.parametrize("text", ["1e400", "-1e309", "1" * 400 + ".0"])
def test_floats_past_a_doubles_range_are_refused_not_read_as_infinity(text: str) -> None:
    result = read_one(f'{{"op":"ping","id":1,"x":{text}}}'.encode())
    assert result["refused"] == "bad_frame"


# -- over a real socket --------------------------------------------------------------------------


async def test_a_live_broker_answers_edge_frames_with_bad_frame_and_stays_open(
    tmp_path: Path,
) -> None:
    edge_cases = [
        nested(900),
        nested(1000, opener="{"),
        nested(1023),
        nested(1100),
        b'{"op":"ping","id":1,"x":' + b"9" * 4301 + b"}",
        b'{"op":"ping","id":1,"x":0.' + b"1" * 5000 + b"}",
        b'{"op":"ping","id":1,"x":1e400}',
    ]
    with trio.fail_after(20):
        async with (
            running_broker(make_config(tmp_path)) as broker,
            raw_connection(broker) as raw,
        ):
            for payload in edge_cases:
                await raw.send_raw(frame_of(payload))
                reply = await raw.receive()
                assert reply["re"] is None
                assert reply["error"]["code"] == "bad_frame"
            # The connection is still open and in order.
            assert (await raw.request("ping"))["pong"] is True
            await raw.send_raw(frame_of(nested(MAX_NESTING)))
            assert (await raw.receive())["pong"] is True
