"""A context worker's partition, held by one live worker at a time: `check_unheld` refuses to start a
worker whose Sparkplug host STATE another live worker holds (docs/operations.md, "Several context
workers")."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from uns.clock import iso
from uns.mqtt import BrokerAddress, MqttClient
from uns.site import Site
from uns.sparkplug.topic import parse_state, state_topic

logger = logging.getLogger(__name__)


class PartitionHeldError(RuntimeError):
    """A context worker that must not start: another live one holds its partition (or the broker
    could not be asked)."""


class _StateCheck:
    """Reads the retained STATE of one host id. The marker it sends itself after subscribing comes
    back after any retained message of that subscription (the broker sends those first), so it
    knows when there is none."""

    def __init__(self, host_id: str, marker: str) -> None:
        self.host_id = host_id
        self.marker = marker
        self.client: MqttClient | None = None
        self.state: bytes | None = None
        self.done = asyncio.Event()

    def on_connected(self) -> None:
        assert self.client is not None
        self.client.publish(self.marker, b"check", 1, False)

    def on_disconnected(self, reason: str) -> None:
        pass

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.marker:
            self.done.set()
        elif parse_state(topic) == self.host_id:
            self.state = payload

    def on_retained(self, topic: str, payload: bytes) -> None:
        if parse_state(topic) == self.host_id:
            self.state = payload


async def check_unheld(
    site: Site, worker: str | None, address: BrokerAddress, timeout_s: float = 30.0
) -> None:
    """Refuse to start a context worker whose host STATE (`spBv1.0/STATE/<host id>`, retained) says
    online: another live worker holds the partition. One that died has had its Will (offline)
    published by the broker, so its replacement may start. PartitionHeldError says which and why."""
    partition = site.partition(worker)
    host = partition.host_id
    root = f"{site.config.enterprise}/{site.config.site}"
    check = _StateCheck(host, f"{root}/_reply/context/{host}/{uuid.uuid4().hex}")
    check.client = MqttClient(
        f"uns-check.{host}.{uuid.uuid4().hex[:8]}",
        address,
        check,
        asyncio.get_running_loop(),
        subscriptions=((state_topic(host), 1), (check.marker, 1)),
    )
    check.client.start()
    try:
        async with asyncio.timeout(timeout_s):
            await check.done.wait()
    except TimeoutError:
        raise PartitionHeldError(
            f"{partition}: could not read {state_topic(host)} from the broker {address} within"
            f" {timeout_s:g} s, so whether another worker holds the partition is unknown; not started"
        ) from None
    finally:
        check.client.stop()
    if check.state is None:
        return
    try:
        doc = json.loads(check.state)
        online, since = bool(doc["online"]), int(doc["timestamp"])
    except (ValueError, KeyError, TypeError):
        logger.warning("%s: unreadable STATE %r; taken as offline", state_topic(host), check.state[:100])
        return
    if online:
        raise PartitionHeldError(
            f"{partition} is held by another live worker: {state_topic(host)} says online since"
            f" {iso(since)}. Stop that one first (one that died is replaced as soon as the broker has"
            " published its Will, offline)"
        )
