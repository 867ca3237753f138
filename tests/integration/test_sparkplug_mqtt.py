"""Every Sparkplug B 3.0 session rule, for our edge node and our host, through a real Mosquitto
started with the project's own config and ACL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.buffer import DiskBuffer
from bridge.edge_node import EdgeNode
from services.context.app import ContextService
from services.context.record import RecordStore
from services.context.state import MachineState
from tests.helpers import address, recorder, track
from uns.broker import Mosquitto
from uns.clock import WallClock
from uns.site import parse_site
from uns.sparkplug.edge import BDSEQ, REBIRTH, EdgeSession, MetricDef, Sample
from uns.sparkplug.host import RebirthRequest
from uns.sparkplug.payload import DataType, Metric, Payload, decode, encode
from uns.sparkplug.topic import MessageType, parse

DEFS = {
    "vf2-01": [
        MetricDef("execution", DataType.STRING),
        MetricDef("mode", DataType.STRING),
        MetricDef("part_count", DataType.UINT32),
        MetricDef("alarm_code", DataType.INT32),
        MetricDef("estop", DataType.BOOLEAN),
    ]
}
SITE = """\
enterprise: acme
site: dayton
sparkplug: {group_id: dayton, edge_node_id: edge1, host_id: test-host}
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - id: vf2-01
                source:
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {execution: a, mode: b, part_count: c, alarm_code: d, estop: e}
"""
READY = [
    Sample("execution", "READY", 1000),
    Sample("mode", "AUTOMATIC", 1000),
    Sample("part_count", 7, 1000),
    Sample("alarm_code", 0, 1000),
    Sample("estop", False, 1000),
]


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def of_type(kind: MessageType):  # type: ignore[no-untyped-def]
    return lambda topic, payload: (
        topic.startswith("spBv1.0/") and "STATE" not in topic and parse(topic).message_type is kind
    )


async def edge_node(broker: Mosquitto, last_bdseq: int = 255, primary_host_id: str | None = None) -> EdgeNode:
    node = EdgeNode(
        EdgeSession("dayton", "edge1", DEFS, last_bdseq=last_bdseq),
        address(broker, "bridge"),
        WallClock(),
        primary_host_id=primary_host_id,
    )
    node.start(asyncio.get_running_loop())
    track(node._client)
    return node


# -- our edge node -------------------------------------------------------------------------------
async def test_edge_births_in_order_with_seq_aliases_and_timestamps(mosquitto: Mosquitto) -> None:
    watch = await recorder(mosquitto, "services", "spBv1.0/#")
    node = await edge_node(mosquitto)
    await watch.wait_for(of_type(MessageType.NBIRTH))
    node.device_online("vf2-01", READY)
    node.data("vf2-01", [Sample("execution", "ACTIVE", 2000)])
    node.data("vf2-01", [Sample("part_count", 8, 3000)])
    await watch.wait_for(of_type(MessageType.DDATA), count=2)
    sparkplug = [(parse(t).message_type, decode(p)) for t, p in watch.messages]
    assert [k for k, _ in sparkplug] == [
        MessageType.NBIRTH,
        MessageType.DBIRTH,
        MessageType.DDATA,
        MessageType.DDATA,
    ]
    assert [p.seq for _, p in sparkplug] == [0, 1, 2, 3]
    nbirth, dbirth, ddata = sparkplug[0][1], sparkplug[1][1], sparkplug[2][1]
    assert {m.name for m in nbirth.metrics} == {BDSEQ, REBIRTH}
    assert all(m.name and m.alias and m.datatype for m in dbirth.metrics)
    assert all(m.name is None and m.alias for m in ddata.metrics)
    assert all(m.timestamp for _, p in sparkplug for m in p.metrics)
    assert ddata.metrics[0].timestamp == 2000  # the source's time, not ours
    await node.stop()
    assert watch.client is not None
    watch.client.stop()


async def test_edge_will_carries_the_nbirth_bdseq_and_goes_up_per_connection(mosquitto: Mosquitto) -> None:
    watch = await recorder(mosquitto, "services", "spBv1.0/#")
    node = await edge_node(mosquitto, last_bdseq=254)
    [(_, nbirth)] = await watch.wait_for(of_type(MessageType.NBIRTH))
    assert {m.name: m.value for m in decode(nbirth).metrics}[BDSEQ] == 255
    assert node._client is not None
    node._client.abort()  # a crash: the broker sends the Will
    [(_, death)] = await watch.wait_for(of_type(MessageType.NDEATH), timeout=30)
    ndeath = decode(death)
    assert ndeath.seq is None
    assert [(m.name, m.value) for m in ndeath.metrics] == [(BDSEQ, 255)]
    node.start(asyncio.get_running_loop())  # a new connection: bdSeq wraps to 0
    track(node._client)
    births = await watch.wait_for(of_type(MessageType.NBIRTH), count=2)
    assert {m.name: m.value for m in decode(births[1][1]).metrics}[BDSEQ] == 0
    await node.stop()
    [_, (_, clean)] = await watch.wait_for(of_type(MessageType.NDEATH), count=2)
    assert [(m.name, m.value) for m in decode(clean).metrics] == [(BDSEQ, 0)]  # the clean exit's own NDEATH


async def test_edge_rebirth_on_command_keeps_bdseq_and_restarts_seq(mosquitto: Mosquitto) -> None:
    watch = await recorder(mosquitto, "services", "spBv1.0/#")
    node = await edge_node(mosquitto)
    await watch.wait_for(of_type(MessageType.NBIRTH))
    node.device_online("vf2-01", READY)
    node.data("vf2-01", [Sample("execution", "ACTIVE", 2000)])
    await watch.wait_for(of_type(MessageType.DDATA))
    assert watch.client is not None
    watch.client.publish(*RebirthRequest("dayton", "edge1", "test").command(5), qos=1)
    births = await watch.wait_for(of_type(MessageType.NBIRTH), count=2)
    dbirths = await watch.wait_for(of_type(MessageType.DBIRTH), count=2)
    first, again = decode(births[0][1]), decode(births[1][1])
    assert again.seq == 0
    assert {m.name: m.value for m in again.metrics}[BDSEQ] == {m.name: m.value for m in first.metrics}[BDSEQ]
    rebirth_dbirth = decode(dbirths[1][1])
    assert rebirth_dbirth.seq == 1
    assert {m.name: m.value for m in rebirth_dbirth.metrics}["execution"] == "ACTIVE"  # current values
    # a command that cannot be read is counted, and the node goes on
    watch.client.publish("spBv1.0/dayton/NCMD/edge1", b"\xff\xfe", qos=1)
    await asyncio.sleep(0.3)
    assert node.counters["bad_commands"] == 1
    await node.stop()


def host_state(online: bool, ts: int) -> tuple[str, bytes, int, bool]:
    return "spBv1.0/STATE/test-host", json.dumps({"online": online, "timestamp": ts}).encode(), 1, True


async def test_edge_waits_for_its_primary_host_and_replays_what_it_buffered(mosquitto: Mosquitto) -> None:
    watch = await recorder(mosquitto, "services", "spBv1.0/#")
    node = await edge_node(mosquitto, primary_host_id="test-host")
    node.device_online("vf2-01", READY)
    node.data("vf2-01", [Sample("execution", "ACTIVE", 2000)])
    node.data("vf2-01", [Sample("execution", "FEED_HOLD", 3000)])
    await asyncio.sleep(0.5)
    assert watch.messages == []  # no host online: nothing goes out, everything is kept
    assert node.buffer.depth == 3
    assert watch.client is not None
    watch.client.publish(*host_state(True, 5))
    ddata = await watch.wait_for(of_type(MessageType.DDATA), count=3)
    sparkplug = [(t, p) for t, p in watch.messages if "STATE" not in t]
    kinds = [parse(t).message_type for t, _ in sparkplug]
    assert kinds[:2] == [MessageType.NBIRTH, MessageType.DBIRTH]  # births first
    replayed = [decode(p) for _, p in ddata]
    assert all(m.is_historical for p in replayed for m in p.metrics)
    assert [len(p.metrics) for p in replayed] == [5, 5, 5]  # whole snapshots
    by_alias = {m.alias: m.name for m in decode(sparkplug[1][1]).metrics}
    execution = [next(m for m in p.metrics if by_alias[m.alias] == "execution") for p in replayed]
    assert [(m.value, m.timestamp) for m in execution] == [
        ("READY", 1000),
        ("ACTIVE", 2000),
        ("FEED_HOLD", 3000),
    ]
    assert [p.seq for p in replayed] == [2, 3, 4]
    await asyncio.sleep(0.2)
    assert node.buffer.depth == 0
    node.data("vf2-01", [Sample("execution", "ACTIVE", 4000)])  # then live data
    [*_, (_, live)] = await watch.wait_for(of_type(MessageType.DDATA), count=4)
    assert [(m.value, m.is_historical) for m in decode(live).metrics] == [("ACTIVE", False)]
    # the host goes away: buffer again; it comes back: births, then what was missed
    watch.client.publish(*host_state(False, 5))
    await asyncio.sleep(0.3)
    node.data("vf2-01", [Sample("execution", "READY", 5000)])
    assert node.buffer.depth >= 1
    watch.client.publish(*host_state(True, 6))
    await watch.wait_for(of_type(MessageType.NBIRTH), count=2)
    [*_, (_, last)] = await watch.wait_for(
        lambda t, p: of_type(MessageType.DDATA)(t, p) and any(m.timestamp == 5000 for m in decode(p).metrics)
    )
    assert all(m.is_historical for m in decode(last).metrics)
    await node.stop()


async def test_edge_trusts_a_state_no_newer_than_it_has_seen_only_after_its_grace(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A broker that dies with the host connected publishes no Will and keeps the host's online STATE;
    after its restart it hands that out while the host may not be back. (Here the host is the test,
    with no Will, so a clean stop of the broker keeps its online STATE too.) The edge node waits for a
    newer STATE (the host connecting again: it goes on at once) or, at most, its grace (the host was
    connected all along). What it has seen survives its own restart, in its buffer file. A STATE
    it cannot read changes nothing."""
    grace = 3.0
    watch = await recorder(mosquitto, "services", "spBv1.0/dayton/#")
    assert watch.client is not None

    def node_on(buffer: DiskBuffer) -> EdgeNode:
        node = EdgeNode(
            EdgeSession("dayton", "edge1", DEFS, last_bdseq=buffer.last_bdseq),
            address(mosquitto, "bridge"),
            WallClock(),
            primary_host_id="test-host",
            buffer=buffer,
            host_grace_s=grace,
        )
        node.start(asyncio.get_running_loop())
        track(node._client)
        return node

    def births() -> int:
        return sum(1 for t, p in watch.messages if of_type(MessageType.NBIRTH)(t, p))

    async def restart_broker() -> None:
        mosquitto.stop()  # (clean: the retained STATE is saved, and no Will goes out)
        await until(lambda: not node.connected)
        mosquitto.start()
        await until(lambda: node.connected and watch.client is not None and watch.client.connected)

    node = node_on(DiskBuffer(tmp_path / "edge1.db"))
    watch.client.publish(*host_state(True, 5))
    await until(lambda: births() == 1)
    node.device_online("vf2-01", READY)
    await restart_broker()
    await asyncio.sleep(0.5)  # the retained STATE, as it was before the restart, is in
    assert not node.publishable
    assert births() == 1
    node.data("vf2-01", [Sample("execution", "ACTIVE", 2000)])  # waits in the buffer
    await until(lambda: births() == 2, timeout=grace + 5)  # no news: it trusts the STATE
    [*_, (_, replayed)] = await watch.wait_for(
        lambda t, p: of_type(MessageType.DDATA)(t, p) and any(m.timestamp == 2000 for m in decode(p).metrics)
    )
    assert all(m.is_historical for m in decode(replayed).metrics)

    await restart_broker()
    await asyncio.sleep(0.3)
    assert not node.publishable
    # a STATE that cannot be read is logged and changes nothing: still waiting, still connected
    watch.client.publish("spBv1.0/STATE/test-host", b"online!", 1, False)
    watch.client.publish("spBv1.0/STATE/test-host", b'{"online": true}', 1, False)
    await asyncio.sleep(0.3)
    assert node.connected
    assert not node.publishable
    watch.client.publish(*host_state(True, 7))  # the host is back: no wait for the grace
    await until(lambda: births() == 3, timeout=grace * 0.6)

    await node.stop()  # its own restart: the STATE it finds (7) is the one it saw last
    node = node_on(DiskBuffer(tmp_path / "edge1.db"))
    await until(lambda: node.connected)
    await asyncio.sleep(0.5)
    assert not node.publishable
    assert births() == 3
    await until(lambda: births() == 4, timeout=grace + 5)
    await node.stop()


# -- our host ------------------------------------------------------------------------------------
async def host(broker: Mosquitto, tmp_path: Path) -> tuple[ContextService, RecordStore]:
    store = RecordStore(tmp_path / "record.db")
    service = ContextService(parse_site(SITE), store, address(broker, "services"), WallClock())
    service.start(asyncio.get_running_loop())
    track(service._client)
    return service, store


async def test_host_state_online_retained_and_will_with_the_same_timestamp(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    service, store = await host(mosquitto, tmp_path)
    watch = await recorder(mosquitto, "bridge", "spBv1.0/STATE/+")
    [(_, online)] = await watch.wait_for(lambda t, p: t == "spBv1.0/STATE/test-host")
    state = json.loads(online)
    assert state["online"] is True
    assert service._client is not None
    service._client.abort()
    [_, (_, offline)] = await watch.wait_for(lambda t, p: t == "spBv1.0/STATE/test-host", count=2, timeout=30)
    assert json.loads(offline) == {"online": False, "timestamp": state["timestamp"]}
    # retained: a client that subscribes later still sees the last STATE
    late = await recorder(mosquitto, "bridge", "spBv1.0/STATE/+", client_id="late")
    await late.wait_for(lambda t, p: json.loads(p)["online"] is False)
    store.close()


async def test_host_clean_exit_publishes_offline_first(mosquitto: Mosquitto, tmp_path: Path) -> None:
    service, store = await host(mosquitto, tmp_path)
    watch = await recorder(mosquitto, "bridge", "spBv1.0/STATE/+")
    await watch.wait_for(lambda t, p: json.loads(p)["online"] is True)
    await service.stop()
    await watch.wait_for(lambda t, p: json.loads(p)["online"] is False)
    store.close()


async def test_host_requests_rebirth_on_seq_gap_and_unknown_alias_and_survives_garbage(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    service, store = await host(mosquitto, tmp_path)
    watch = await recorder(mosquitto, "bridge", "spBv1.0/dayton/NCMD/+")
    edge = await recorder(mosquitto, "bridge", client_id="raw-edge")
    assert edge.client is not None
    session = EdgeSession("dayton", "edge1", DEFS)
    session.new_connection(0)
    session.device_online("vf2-01", 0, READY)
    for message in session.births(1000):
        edge.client.publish(*message)
    # garbage and a topic that is not Sparkplug: counted, logged, the host goes on
    edge.client.publish("spBv1.0/dayton/DDATA/edge1/vf2-01", b"\x08\xff\xff\xff", qos=1)
    # (the ACL keeps topics like this one from reaching the host at all; hand it over directly)
    service.on_message("spBv1.0/dayton/BOGUS/edge1", b"x")
    # a seq gap
    session.data("vf2-01", [Sample("execution", "ACTIVE", 2000)], 2000)
    msg = session.data("vf2-01", [Sample("execution", "ACTIVE", 3000)], 3000)
    assert msg is not None
    edge.client.publish(*msg, qos=1)
    [(topic, payload)] = await watch.wait_for(lambda t, p: True)
    assert topic == "spBv1.0/dayton/NCMD/edge1"
    assert [(m.name, m.value) for m in decode(payload).metrics] == [(REBIRTH, True)]
    counters = service.host.counters
    assert counters["malformed"] == 1
    assert counters["not_sparkplug"] == 1
    assert counters["seq_gaps"] == 1
    # an unknown alias, after the throttle window: another rebirth request
    service.host.rebirth_interval_s = 0
    bad = Payload(4000, (Metric(None, 999, 4000, DataType.INT32, 1),), seq=(decode(msg[1]).seq or 0) + 1)
    edge.client.publish("spBv1.0/dayton/DDATA/edge1/vf2-01", encode(bad, with_datatypes=False), qos=1)
    await watch.wait_for(lambda t, p: True, count=2)
    assert counters["unknown_metrics"] == 1
    # the good data around the bad is kept: the machine ran from 3000 on
    await asyncio.sleep(0.2)
    assert service.trackers["vf2-01"].state is MachineState.RUNNING
    assert service.trackers["vf2-01"].since_ms == 3000
    store.close()


async def test_host_marks_machines_comms_loss_on_ndeath(mosquitto: Mosquitto, tmp_path: Path) -> None:
    _service, store = await host(mosquitto, tmp_path)
    tree = await recorder(mosquitto, "viewer", "acme/#", client_id="viewer")
    node = await edge_node(mosquitto)
    node.device_online("vf2-01", READY)
    await tree.wait_for(lambda t, p: json.loads(p)["state"] == "idle")
    assert node._client is not None
    node._client.abort()
    [(topic, payload)] = await tree.wait_for(
        lambda t, p: json.loads(p)["state"] == "comms_loss" and json.loads(p)["since"] is not None, timeout=30
    )
    assert topic == "acme/dayton/machining/mills/cell-1/vf2-01/state"
    assert json.loads(payload)["since"].endswith("Z")
    # the record follows the tree (under load, its writes gather for up to RECORD_GAP_S)
    for _ in range(100):
        [row] = store.current_states()
        if row.state is MachineState.COMMS_LOSS:
            break
        await asyncio.sleep(0.02)
    assert row.state is MachineState.COMMS_LOSS
    store.close()


# -- the broker's ACL ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "topic"),
    [("viewer", "spBv1.0/dayton/NCMD/edge1"), ("bridge", "acme/dayton/x"), ("viewer", "acme/dayton/x")],
)
async def test_acl_keeps_each_role_to_its_topics(mosquitto: Mosquitto, role: str, topic: str) -> None:
    watch = await recorder(mosquitto, "services", "#")
    writer = await recorder(mosquitto, role, client_id="writer")
    assert writer.client is not None
    writer.client.publish(topic, b"x", qos=1)
    assert watch.client is not None
    watch.client.publish("acme/marker", b"m", qos=1)
    await watch.wait_for(lambda t, p: t == "acme/marker")
    assert topic not in watch.topics()
