"""An edge node of the tests' own (tests/foreign_edge.py: payloads as Eclipse Tahu's JavaScript client
builds them, Will included) and a clone of it (another gateway with the same edge node id and the
same broker login), against the context service, through a real Mosquitto with the site's ACL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.context.app import ContextService
from services.context.record import RecordStore
from services.context.state import MachineState
from tests.foreign_edge import ForeignNode
from tests.helpers import Recorder, address, track
from tests.services.test_foreign_edge import READY, SITE
from uns.broker import Mosquitto
from uns.clock import WallClock
from uns.mqtt import MqttClient, Will
from uns.site import parse_site

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto.for_site(tmp_path / "mosquitto", parse_site(SITE))
    b.start()
    yield b
    b.stop()


def edge_login(broker: Mosquitto) -> str:
    """The broker user an edge node dayton/edge1 logs in as (its own, where the ACL has one)."""
    return next(u for u in ("dayton.edge1", "bridge") if u in broker.creds.passwords)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def gateway(broker: Mosquitto, node: ForeignNode, client_id: str) -> Recorder:
    """A connection of `node`: its Will is its NDEATH; it hears its commands."""
    topic, death = node.will(0)
    rec = Recorder()
    rec.client = MqttClient(
        client_id,
        address(broker, edge_login(broker)),
        rec,
        asyncio.get_running_loop(),
        will=lambda: Will(topic, death, qos=1, retain=False),
        subscriptions=(("spBv1.0/dayton/NCMD/edge1", 0),),
    )
    rec.client.start()
    track(rec.client)
    await rec.wait_connected()
    await asyncio.sleep(0.1)  # the SUBACK
    return rec


def send(rec: Recorder, *messages: tuple[str, bytes]) -> None:
    assert rec.client is not None
    for topic, payload in messages:
        rec.client.publish(topic, payload, qos=0)


async def test_a_foreign_edge_node_and_its_clone_over_mosquitto(broker: Mosquitto, tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "record.db")
    service = ContextService(parse_site(SITE), store, address(broker, "services"), WallClock())
    service.health_interval_s = 0.1
    service.start(asyncio.get_running_loop())
    track(service._client)
    await until(lambda: service._client is not None and service._client.connected, "the host")
    tracker = service.trackers["vf2-01"]

    def state() -> MachineState:
        return tracker.state

    def parts() -> int:
        return sum(p.delta for p in store.parts("vf2-01", 0, 2**62))

    now = WallClock().now_ms
    a = ForeignNode("dayton", "edge1", {"vf2-01": READY}, bdseq=3)
    gw_a = await gateway(broker, a, "gateway-a")
    send(gw_a, *a.births(now()), a.data("vf2-01", now(), execution="ACTIVE"))
    for _ in range(3):
        send(gw_a, a.parts("vf2-01", now()))
    await until(lambda: parts() == 3, "3 parts")
    assert state() is MachineState.RUNNING

    # the clone: another gateway, the same edge node id and login, its own counter
    clone = ForeignNode("dayton", "edge1", {"vf2-01": {**READY, "part_count": 900}}, bdseq=41)
    gw_b = await gateway(broker, clone, "gateway-b")
    send(gw_b, *clone.births(now()), clone.parts("vf2-01", now()))
    await until(lambda: service.host.on_probation("dayton", "edge1"), "the clone's births")
    send(gw_a, a.parts("vf2-01", now()))
    await until(lambda: ("dayton", "edge1") in service.host.conflicts, "the conflict")
    assert state() is MachineState.COMMS_LOSS
    for _ in range(3):
        send(gw_a, a.parts("vf2-01", now()))
        send(gw_b, clone.parts("vf2-01", now()))
    await until(
        lambda: any(row[:2] == ("edge/edge1", "conflict") and row[2] == 1.0 for row in store.health()),
        "the conflict in the record's health",
    )
    assert gw_a.messages == gw_b.messages == []  # no rebirth requests while it lasts
    assert parts() == 3

    # the clone is unplugged: the broker sends its Will; the host asks the one left for its births
    assert gw_b.client is not None
    gw_b.client.abort()
    await gw_a.wait_for(lambda t, p: t == "spBv1.0/dayton/NCMD/edge1")
    assert not service.host.conflicts
    send(gw_a, *a.births(now()))
    await until(lambda: state() is MachineState.RUNNING, "the real one back")
    assert parts() == 7  # the 4 made during the conflict, from its counter
    send(gw_a, a.parts("vf2-01", now()))
    await until(lambda: parts() == 8, "8 parts")

    # and then the real one dies: its Will has no metric timestamp
    assert gw_a.client is not None
    gw_a.client.abort()
    await until(lambda: state() is MachineState.COMMS_LOSS, "comms_loss after its death")
    assert parts() == 8 == int(a.values["vf2-01"]["part_count"]) - 100
    await service.stop()
    store.close()


async def test_a_sparkplug_source_over_mosquitto_with_the_edge_nodes_own_login(tmp_path: Path) -> None:
    """A machine of a foreign edge node declared as a `sparkplug` source (its own group, edge node
    and device ids, metric names and codes: tests/services/test_sparkplug_source.py): the edge node
    logs in as the user the site's ACL gives it, may publish as itself only, and the record is what
    it sent."""
    from tests.services.test_sparkplug_source import DEVICE, TYPES
    from tests.services.test_sparkplug_source import READY as CODES_READY
    from tests.services.test_sparkplug_source import SITE as FOREIGN_SITE

    site = parse_site(FOREIGN_SITE)
    broker = Mosquitto.for_site(tmp_path / "mosquitto", site)
    broker.start()
    store = RecordStore(tmp_path / "record.db")
    service = ContextService(site, store, address(broker, "services"), WallClock())
    try:
        service.start(asyncio.get_running_loop())
        track(service._client)
        await until(lambda: service._client is not None and service._client.connected, "the host")
        now = WallClock().now_ms
        edge = ForeignNode("plant-b", "ignition-edge-1", {DEVICE: CODES_READY}, bdseq=1, types=TYPES)
        rec = Recorder()
        rec.client = MqttClient(
            "ignition-edge-1",
            address(broker, "plant-b.ignition-edge-1"),
            rec,
            asyncio.get_running_loop(),
            subscriptions=(("spBv1.0/plant-b/NCMD/ignition-edge-1", 0),),
        )
        rec.client.start()
        track(rec.client)
        await rec.wait_connected()
        send(rec, *edge.births(now() - 2000), edge.data(DEVICE, now(), **{"Status/Execution": 1}))
        tracker = service.trackers["haas-01"]
        await until(lambda: tracker.state is MachineState.RUNNING, "haas-01 running")
        send(rec, edge.data(DEVICE, now(), **{"Counters/PartsMade": 5003, "Status/Execution": 0}))
        await until(lambda: tracker.state is MachineState.IDLE, "haas-01 idle")
        await until(lambda: sum(p.delta for p in store.parts("haas-01", 0, 2**62)) == 3, "3 parts")
        # as another edge node (ours): the broker drops it, the record does not move
        mine = ForeignNode("dayton", "edge1", {"vf2-01": READY}, bdseq=1)
        send(rec, *mine.births(now()))
        await asyncio.sleep(0.5)
        assert service.trackers["vf2-01"].since_ms is None
        assert [i.state for i in store.intervals("haas-01", 0, 2**62)] == [
            MachineState.IDLE,
            MachineState.RUNNING,
        ]
    finally:
        await service.stop()
        store.close()
        broker.stop()
