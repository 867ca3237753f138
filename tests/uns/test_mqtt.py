"""uns/mqtt.py against a real Mosquitto: a message its handler fails on costs no other message of
its batch; retained messages are told apart; a payload above the broker's packet limit is refused
before it is sent (the broker would drop the connection); QoS 1 within the broker's Receive Maximum;
a refused login. Against a fake broker (what Mosquitto never sends): malformed packets, a broker
that stops answering, QoS 1 sent again after a reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.helpers import Recorder, address, recorder, track
from uns.broker import Mosquitto
from uns.mqtt import BrokerAddress, MqttClient


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


# -- the client's own protocol handling ------------------------------------------------------------
async def test_qos1_beyond_the_brokers_receive_maximum_arrives_whole_and_in_order(
    mosquitto: Mosquitto,
) -> None:
    """3,000 QoS 1 messages at once: the client keeps within the Receive Maximum of the broker's
    CONNACK (mosquitto.conf max_inflight_messages; the broker would drop a client that went past it)
    and sends the rest as acknowledgements come."""
    watch = await recorder(mosquitto, "viewer", "acme/#", client_id="watch")
    await watch.wait_connected()
    sender = await recorder(mosquitto, "integration", client_id="sender")
    assert sender.client is not None
    await sender.wait_connected()
    assert sender.client._receive_max == 100
    for n in range(3_000):
        assert sender.client.publish("acme/dayton/_command/parts", str(n).encode(), 1)
    assert len(sender.client._inflight) == 100
    await watch.wait_for(lambda t, p: p == b"2999", timeout=30)
    assert [int(p) for _, p in watch.messages] == list(range(3_000))
    assert sender.client.connected
    assert not sender.client._inflight
    assert not sender.client._queued


async def test_a_topic_with_a_wildcard_is_refused_before_it_is_sent(mosquitto: Mosquitto) -> None:
    sender = await recorder(mosquitto, "integration", client_id="sender")
    assert sender.client is not None
    await sender.wait_connected()
    for topic in ("acme/+/_command/parts", "acme/#", ""):
        with pytest.raises(ValueError, match="wildcard"):
            sender.client.publish(topic, b"{}", 1)
    await asyncio.sleep(0.2)
    assert sender.client.connected  # (the broker drops a client that publishes on one)


async def test_a_refused_login_is_said_and_tried_again(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    wrong = BrokerAddress("127.0.0.1", mosquitto.port, "viewer", "not-the-password")
    rec.client = MqttClient("wrong", wrong, rec, asyncio.get_running_loop())
    track(rec.client)
    with caplog.at_level(logging.WARNING):
        rec.client.start()
        await asyncio.sleep(2.5)  # the first try, and another 1 s later
    refused = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refused) >= 2
    assert "Not authorized" in refused[0] or "Bad User Name or Password" in refused[0]
    assert not rec.client.connected
    assert rec.connects == 0


class FakeBroker:
    """A TCP server that speaks just enough MQTT to say what a real broker never says: malformed
    packets, silence after a PING, a PUBLISH never acknowledged. (Mosquitto cannot be made to send
    these; everything else in this file runs against the real one.)"""

    def __init__(self, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]):
        self.script = script
        self.connections = 0
        self.received: list[list[bytes]] = []  # the packets of each connection, as they came
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self.connections
        self.connections += 1
        self.received.append([])
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.script(reader, writer, n)
        writer.close()

    async def packet(self, reader: asyncio.StreamReader, n: int) -> bytes:
        first = await reader.readexactly(1)
        length, shift = 0, 0
        while True:
            b = (await reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        packet = first + await reader.readexactly(length)
        self.received[n].append(packet)
        return packet

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


CONNACK = b"\x20\x03\x00\x00\x00"  # session not present, success, no properties


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x30\xff\xff\xff\xff\x01",  # a remaining length of five bytes
        b"\x30\x04\x00\x09ab",  # a PUBLISH whose topic runs past its packet
        b"\x30\x06\x00\x02\xff\xfe\x00x",  # a topic that is not UTF-8
        b"\x20\x05\x00\x00\x02\x77\x01",  # properties with an unknown identifier
    ],
)
async def test_a_malformed_packet_from_the_broker_drops_the_connection_and_nothing_else(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Said (naming the broker), the connection made again, the handler told; the good message
    before it was delivered, and the next connection's messages are."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await broker.packet(reader, n)  # CONNECT
        writer.write(CONNACK)
        writer.write(b"\x30\x07\x00\x01t\x00ok!" if n else b"\x30\x07\x00\x01t\x00one")
        if n == 0:
            writer.write(garbage)
        await writer.drain()
        await reader.read()  # until the client goes

    broker = FakeBroker(script)
    port = await broker.start()
    rec = Recorder()
    disconnects: list[str] = []
    rec.on_disconnected = disconnects.append  # type: ignore[method-assign,assignment]
    rec.client = MqttClient("fragile", BrokerAddress("127.0.0.1", port), rec, asyncio.get_running_loop())
    track(rec.client)
    with caplog.at_level(logging.ERROR):
        rec.client.start()
        await _until(lambda: rec.connects == 2 and (b"ok!" in [p for _, p in rec.messages]))
    await broker.close()
    assert f"malformed packet from mqtt://127.0.0.1:{port}" in caplog.text
    assert disconnects
    assert "malformed packet" in disconnects[0]
    assert ("t", b"one") in rec.messages  # (before the garbage)


async def test_a_silent_broker_is_left_and_unacknowledged_qos1_is_sent_again_first() -> None:
    """The first connection takes a QoS 1 message and never acknowledges it, nor answers the
    keep-alive PINGREQ: after one and a half keep-alives the client leaves, and on the next
    connection sends that message again before anything new."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await broker.packet(reader, n)  # CONNECT
        writer.write(CONNACK)
        await writer.drain()
        while True:
            packet = await broker.packet(reader, n)
            if n and packet[0] >> 4 == 3 and packet[0] & 0x06:  # ack QoS 1 on the second connection
                writer.write(b"\x40\x02" + _packet_id(packet))
                await writer.drain()

    broker = FakeBroker(script)
    port = await broker.start()
    rec = Recorder()
    client = rec.client = MqttClient(
        "patient", BrokerAddress("127.0.0.1", port), rec, asyncio.get_running_loop(), keepalive=1
    )
    track(client)
    client.start()
    await _until(lambda: client.connected)
    assert client.publish("a/first", b"1", 1)
    waited = asyncio.ensure_future(client.publish_and_wait("a/second", b"2", 1, timeout=8))
    await _until(lambda: broker.connections == 2 and client.connected, timeout=8)
    assert client.publish("a/third", b"3", 1)
    assert await waited  # acknowledged on the second connection
    await _until(lambda: not client._inflight)
    await broker.close()
    first = broker.received[0]
    assert b"\xc0" in first  # it pinged (PINGREQ), and heard nothing
    topics = [_topic(p) for p in broker.received[1] if p[0] >> 4 == 3]
    assert topics == ["a/first", "a/second", "a/third"]


def _topic(packet: bytes) -> str:
    """A PUBLISH's topic (FakeBroker keeps a packet's first byte and its body)."""
    n = int.from_bytes(packet[1:3], "big")
    return packet[3 : 3 + n].decode()


def _packet_id(packet: bytes) -> bytes:
    n = int.from_bytes(packet[1:3], "big")
    return packet[3 + n : 5 + n]


async def test_a_flood_pauses_reading_and_loses_nothing(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past INBOX_HIGH messages read and not handed over, reading pauses (the broker keeps the rest)
    until the inbox is down to INBOX_LOW; every message still arrives, in order, in slices."""
    monkeypatch.setattr("uns.mqtt.INBOX_HIGH", 200)
    monkeypatch.setattr("uns.mqtt.INBOX_LOW", 50)
    monkeypatch.setattr("uns.mqtt.BATCH", 10)
    paused: list[bool] = []

    class Slow(Recorder):
        def on_message(self, topic: str, payload: bytes) -> None:
            assert self.client is not None
            paused.append(self.client._paused)
            time.sleep(0.0002)  # a handler slower than the broker sends
            super().on_message(topic, payload)

    slow = Slow()
    slow.client = MqttClient(
        "slow", address(mosquitto, "viewer"), slow, asyncio.get_running_loop(), subscriptions=(("acme/#", 1),)
    )
    track(slow.client)
    slow.client.start()
    await slow.wait_connected()
    await asyncio.sleep(0.2)
    sender = await recorder(mosquitto, "integration", client_id="sender")
    assert sender.client is not None
    await sender.wait_connected()
    for n in range(5_000):
        assert sender.client.publish("acme/dayton/_command/parts", str(n).encode(), 0)
    await slow.wait_for(lambda t, p: p == b"4999", timeout=30)
    assert [int(p) for _, p in slow.messages] == list(range(5_000))
    assert any(paused)  # it did pause
    assert not slow.client._paused  # and read on
