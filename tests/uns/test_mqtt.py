"""uns/mqtt.py against a real Mosquitto: a message its handler fails on costs no other message of
its batch; retained messages are told apart; a payload above the broker's packet limit is refused
before it is sent (the broker would drop the connection, and paho would send it again at every
reconnect)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.helpers import Recorder, address, recorder, track
from uns.broker import Mosquitto
from uns.mqtt import MqttClient


class Picky(Recorder):
    """Fails on what a careless parser fails on: a megabyte of `[`."""

    def __init__(self) -> None:
        super().__init__()
        self.retained: list[str] = []

    def on_message(self, topic: str, payload: bytes) -> None:
        json.loads(payload)  # RecursionError on deep nesting, ValueError on garbage
        super().on_message(topic, payload)

    def on_retained(self, topic: str, payload: bytes) -> None:
        self.retained.append(topic)


async def test_one_bad_message_costs_no_other(mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    handler = Picky()
    handler.client = MqttClient(
        "picky",
        address(mosquitto, "services"),
        handler,
        asyncio.get_running_loop(),
        subscriptions=(("acme/+/_command/#", 1),),
    )
    track(handler.client)
    handler.client.start()
    await handler.wait_connected()
    sender = await recorder(mosquitto, "integration", client_id="sender")
    assert sender.client is not None
    await sender.wait_connected()
    topic = "acme/dayton/_command/dispatch"
    with caplog.at_level(logging.ERROR):
        for n in range(50):  # interleaved, so that good and bad share batches
            sender.client.publish(topic, json.dumps({"n": n}).encode(), 1)
            sender.client.publish(topic, b"[" * 1_000_000 if n % 10 == 0 else b"not json", 1)
        await handler.wait_for(lambda t, p: json.loads(p) == {"n": 49}, timeout=20)
    assert [json.loads(p)["n"] for _, p in handler.messages] == list(range(50))
    assert handler.client.handler_errors == 50
    said = [r for r in caplog.records if "could not be handled" in r.getMessage()]
    assert len(said) == 1  # once per topic
    assert topic in said[0].getMessage()
    # a retained one goes to on_retained, not on_message
    sender.client.publish("acme/dayton/_command/parts", b"{}", 1, retain=True)
    for _ in range(100):
        if handler.retained:
            break
        await asyncio.sleep(0.05)
    assert handler.retained == []  # delivered live: not retained to this subscriber
    late = Picky()
    late.client = MqttClient(
        "late",
        address(mosquitto, "services"),
        late,
        asyncio.get_running_loop(),
        subscriptions=(("acme/+/_command/#", 1),),
    )
    track(late.client)
    late.client.start()
    for _ in range(100):
        if late.retained:
            break
        await asyncio.sleep(0.05)
    assert late.retained == ["acme/dayton/_command/parts"]
    assert late.messages == []


async def test_the_packet_limit_is_the_brokers_own_from_its_connack(mosquitto: Mosquitto) -> None:
    """Told 10 MB, the client takes the broker's 1 MiB (mosquitto.conf max_packet_size) once connected."""
    handler = Picky()
    handler.client = MqttClient(
        "told-too-much",
        address(mosquitto, "integration"),
        handler,
        asyncio.get_running_loop(),
        max_packet=10_000_000,
    )
    track(handler.client)
    handler.client.start()
    for _ in range(100):
        if handler.client.connected:
            break
        await asyncio.sleep(0.05)
    assert handler.client.connected
    assert 1_040_000 < handler.client.max_payload < 1_048_576
    assert not handler.client.publish("acme/dayton/_command/dispatch", b"x" * 1_048_576, 1)
    assert handler.client.refused_publishes == 1


async def test_a_payload_above_the_packet_limit_is_refused_before_it_is_sent(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    sender = await recorder(mosquitto, "integration", client_id="sender")
    assert sender.client is not None
    await sender.wait_connected()
    with caplog.at_level(logging.ERROR):
        assert not sender.client.publish("acme/dayton/_command/dispatch", b"x" * 2_000_000, 1)
    assert sender.client.refused_publishes == 1
    assert "above the broker's packet limit" in caplog.text
    await asyncio.sleep(0.5)
    assert sender.client.connected  # the connection was never put at risk
    assert sender.client.publish("acme/dayton/_command/dispatch", b"{}", 1)
