"""An edge node on MQTT: `EdgeSession` (the rules) plus a connection (the I/O).

The Will is made anew before every CONNECT (bdSeq + 1); births go out as soon as the connection is
up, again on an NCMD `Node Control/Rebirth`, and again when the primary host's STATE turns online.
On a clean stop the node publishes its NDEATH itself (a clean DISCONNECT sends no Will).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable

from uns.clock import Clock
from uns.mqtt import BrokerAddress, MqttClient, Will
from uns.sparkplug.edge import EdgeSession, Message, Sample
from uns.sparkplug.topic import MessageType, SparkplugTopic, parse_state, state_topic

logger = logging.getLogger(__name__)


class EdgeNode:
    def __init__(
        self,
        session: EdgeSession,
        address: BrokerAddress,
        clock: Clock,
        *,
        primary_host_id: str | None = None,
    ) -> None:
        self.session = session
        self.address = address
        self.clock = clock
        self.primary_host_id = primary_host_id
        self._lock = threading.Lock()  # the Will is made on paho's thread
        self._client: MqttClient | None = None
        self.counters: dict[str, int] = {"births": 0, "data_sent": 0, "data_unsent": 0, "bad_commands": 0}
        self._host_online_ts = -1

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.session
        subs = [
            (str(SparkplugTopic(s.group_id, MessageType.NCMD, s.edge_node_id)), 1),
            (f"spBv1.0/{s.group_id}/DCMD/{s.edge_node_id}/+", 1),
        ]
        if self.primary_host_id is not None:
            subs.append((state_topic(self.primary_host_id), 1))
        self._client = MqttClient(
            f"{s.group_id}.{s.edge_node_id}",
            self.address,
            self,
            loop,
            will=self._will,
            subscriptions=tuple(subs),
        )
        self._client.start()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _will(self) -> Will:
        with self._lock:
            topic, payload = self.session.new_connection(self.clock.now_ms())
        return Will(topic, payload, qos=1, retain=False)

    def _send(self, messages: Iterable[Message | None], kind: str = "data") -> None:
        assert self._client is not None
        for message in messages:
            if message is None:
                continue
            sent = self._client.publish(message[0], message[1])
            if kind == "data":
                self.counters["data_sent" if sent else "data_unsent"] += 1

    def _births(self) -> None:
        with self._lock:
            births = self.session.births(self.clock.now_ms())
        self.counters["births"] += 1
        self._send(births, "birth")

    # -- MqttHandler ------------------------------------------------------------------------
    def on_connected(self) -> None:
        self._births()

    def on_disconnected(self, reason: str) -> None:
        pass

    def on_message(self, topic: str, payload: bytes) -> None:
        host = parse_state(topic)
        if host is not None:
            self._on_host_state(host, payload)
            return
        try:
            with self._lock:
                rebirth = self.session.is_rebirth_request(topic, payload)
        except ValueError as exc:
            self.counters["bad_commands"] += 1
            logger.warning("edge node %s: ignored a command on %s: %s", self.session.edge_node_id, topic, exc)
            return
        if rebirth:
            logger.info("edge node %s: rebirth requested", self.session.edge_node_id)
            self._births()

    def _on_host_state(self, host: str, payload: bytes) -> None:
        try:
            state = json.loads(payload)
            online, ts = bool(state["online"]), int(state["timestamp"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("edge node %s: bad STATE of host %s: %s", self.session.edge_node_id, host, exc)
            return
        if online and ts > self._host_online_ts:
            # The primary host came (back) online: it needs our births (Sparkplug 3.0).
            self._host_online_ts = ts
            self._births()

    # -- what the bridge tells us -------------------------------------------------------------
    def device_online(self, device_id: str, samples: Iterable[Sample]) -> None:
        with self._lock:
            msg = self.session.device_online(device_id, self.clock.now_ms(), samples)
        if self.connected:
            self._send([msg], "birth")

    def device_offline(self, device_id: str) -> None:
        with self._lock:
            msg = self.session.device_offline(device_id, self.clock.now_ms())
        if self.connected:
            self._send([msg], "death")

    def data(self, device_id: str | None, samples: Iterable[Sample]) -> None:
        with self._lock:
            msg = self.session.data(device_id, samples, self.clock.now_ms())
        if msg is not None:
            self._send([msg])

    async def stop(self) -> None:
        """Clean exit: publish our own NDEATH (QoS 1), then disconnect."""
        if self._client is None:
            return
        with self._lock:
            topic, payload = self.session.death(self.clock.now_ms())
        await self._client.publish_and_wait(topic, payload, qos=1)
        self._client.stop()
