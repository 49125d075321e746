import trio


async def test_text_reaches_online_recipient_live(broker):
    with trio.fail_after(10):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            ack = await alice.send_text("bob", "hello bob")
            assert ack["message_id"] > 0
            entry = await bob.next_mail()
            assert entry["body"] == "hello bob"
            assert entry["sender"] == "alice"
