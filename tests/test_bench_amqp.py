"""The benchmark's lean AMQP client: its hand-made hot-path frames are the bytes pamqp would
make, and (where RabbitMQ answers on 127.0.0.1:5672) it drives a quorum queue end to end."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

pamqp = pytest.importorskip("pamqp")

from pamqp import body, commands, frame, header  # noqa: E402

from bench import amqpload  # noqa: E402


def test_a_hand_framed_persistent_publish_is_what_pamqp_marshals():
    payload = b"12345.678"
    expected = (
        frame.marshal(commands.Basic.Publish(exchange="", routing_key="q-1"), 1)
        + frame.marshal(
            header.ContentHeader(0, len(payload), commands.Basic.Properties(delivery_mode=2)), 1
        )
        + frame.marshal(body.ContentBody(payload), 1)
    )
    assert amqpload.publish_frames(1, "q-1", payload) == expected


def test_a_hand_framed_ack_is_what_pamqp_marshals():
    for tag, multiple in [(1, False), (2**40, True)]:
        assert amqpload.ack_frame(1, tag, multiple=multiple) == frame.marshal(
            commands.Basic.Ack(delivery_tag=tag, multiple=multiple), 1
        )


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


async def test_the_peer_workload_delivers_through_a_quorum_queue_and_deletes_it(monkeypatch):
    if not rabbitmq_answers():
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")

    async def go_at_once() -> None:
        pass

    monkeypatch.setattr(amqpload, "ready_and_wait_for_go", go_at_once)
    params: dict[str, Any] = {"pairs": 1, "window": 4, "duration": 0.5, "warmup": 0.2}
    with trio.fail_after(30):
        result = await amqpload.peer("127.0.0.1", 5672, params)
    assert result["delivered"] > 0
    assert result["acked"] > 0
