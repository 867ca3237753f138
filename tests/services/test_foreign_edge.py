"""The record, fed by an edge node of the tests' own (tests/foreign_edge.py, payloads built as Eclipse
Tahu's JavaScript client builds them) and by a clone of it with the same edge node id: the context
service driven message by message without a broker (over Mosquitto:
tests/integration/test_foreign_edge.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.context.app import ContextService
from services.context.record import RecordStore
from services.context.state import MachineState
from tests.foreign_edge import ForeignNode, Message
from uns.mqtt import BrokerAddress
from uns.site import parse_site

MIN = 60_000
T0 = 1_795_000_000_000
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
                  signals: {execution: a, mode: b, program: p, part_count: c, alarm_code: d, estop: e}
"""
READY: dict[str, bool | int | str] = {
    "execution": "READY",
    "mode": "AUTOMATIC",
    "program": "O4711",
    "part_count": 100,
    "alarm_code": 0,
    "estop": False,
}


class Clock:
    speed = 1.0

    def __init__(self) -> None:
        self.now = T0

    def now_ms(self) -> int:
        return self.now


class Plant:
    """The context service and a record; messages are fed at their own time (the clock follows)."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = RecordStore(tmp_path / "record.db")
        self.clock = Clock()
        self.service = ContextService(parse_site(SITE), self.store, BrokerAddress("127.0.0.1", 1), self.clock)

    def feed(self, minutes: float, *messages: Message | list[Message]) -> None:
        self.clock.now = T0 + int(minutes * MIN)
        for m in messages:
            for topic, payload in m if isinstance(m, list) else [m]:
                self.service.on_message(topic, payload)
        self.service.flush()

    def state(self) -> tuple[MachineState, float | None]:
        t = self.service.trackers["vf2-01"]
        return t.state, None if t.since_ms is None else (t.since_ms - T0) / MIN

    def parts(self) -> int:
        return sum(p.delta for p in self.store.parts("vf2-01", 0, T0 + 1000 * MIN))


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    p = Plant(tmp_path)
    yield p
    p.store.close()


def at(minutes: float) -> int:
    return T0 + int(minutes * MIN)


@pytest.mark.parametrize("stamped_births", [False, True], ids=["tahu-js", "stamped-births"])
def test_a_death_without_metric_timestamps_ends_the_machines_data(plant: Plant, stamped_births: bool) -> None:
    a = ForeignNode("dayton", "edge1", {"vf2-01": READY}, bdseq=3, stamped=stamped_births)
    plant.feed(0, a.births(at(0)))
    plant.feed(1, a.data("vf2-01", at(1), execution="ACTIVE"))
    assert plant.state() == (MachineState.RUNNING, 1)
    a.stamped = False
    plant.feed(5, a.will(at(0)))  # the broker sends the Will made when it connected
    assert plant.state() == (MachineState.COMMS_LOSS, 5)  # from when the death arrived
    assert [(i.state, (i.start_ms - T0) / MIN) for i in plant.store.intervals("vf2-01", 0, at(10))] == [
        (MachineState.IDLE, 0),
        (MachineState.RUNNING, 1),
    ]
    assert plant.service.host.counters["malformed"] == 0


def test_a_death_that_cannot_be_read_ends_the_data_from_its_arrival(plant: Plant) -> None:
    a = ForeignNode("dayton", "edge1", {"vf2-01": READY}, bdseq=3)
    plant.feed(0, a.births(at(0)), a.data("vf2-01", at(0.5), execution="ACTIVE"))
    plant.feed(2, ("spBv1.0/dayton/NDEATH/edge1", b"\x0a\xff\xff"))
    assert plant.state() == (MachineState.COMMS_LOSS, 2)
    plant.feed(2.1, a.births(at(2.1)))  # it lived after all: asked for a rebirth, it is back
    assert plant.state() == (MachineState.RUNNING, 2.1)


@pytest.mark.parametrize("stamped", [False, True], ids=["tahu-js", "stamped"])
def test_a_clone_of_the_edge_node_is_named_and_part_counts_stay_exact(
    plant: Plant, stamped: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's cloned gateway: the same edge node id, another counter. The real machine makes
    12 parts; the record has 12, whatever the clone says, and the clone's death does not end the
    real node's data."""
    a = ForeignNode("dayton", "edge1", {"vf2-01": READY}, bdseq=3, stamped=stamped)
    clone = ForeignNode(
        "dayton", "edge1", {"vf2-01": {**READY, "part_count": 900}}, bdseq=41, stamped=stamped
    )
    plant.feed(0, a.births(at(0)))
    plant.feed(1, a.data("vf2-01", at(1), execution="ACTIVE"))
    for i in range(5):
        plant.feed(2 + i, a.parts("vf2-01", at(2 + i)))
    assert plant.parts() == 5
    caplog.set_level(logging.WARNING, "uns.sparkplug.host")
    plant.feed(7, clone.births(at(7)))  # the clone is plugged in
    plant.feed(7.1, clone.parts("vf2-01", at(7.1)))
    plant.feed(7.2, a.parts("vf2-01", at(7.2)))  # the real one goes on: two sessions
    assert plant.parts() == 5  # not the clone's counter, nor the real one's after it
    assert plant.state() == (MachineState.COMMS_LOSS, 7)  # "we do not know", from the clone's birth
    assert ("dayton", "edge1") in plant.service.host.conflicts
    [named] = [r.getMessage() for r in caplog.records if "claimed by two sessions" in r.getMessage()]
    assert "bdSeq 3 (" in named
    assert "bdSeq 41 (" in named
    assert plant.service._health["edge/edge1"]["conflict"] is True
    for i in range(5):  # both go on; the real one makes 5 more parts meanwhile
        plant.feed(8 + i, a.parts("vf2-01", at(8 + i)), clone.parts("vf2-01", at(8 + i)))
    assert plant.parts() == 5
    assert plant.state() == (MachineState.COMMS_LOSS, 7)
    plant.feed(13, clone.will(at(7)))  # the clone is unplugged: one session remains
    assert not plant.service.host.conflicts
    assert plant.service._health["edge/edge1"]["conflict"] is False
    assert plant.state() == (MachineState.COMMS_LOSS, 7)
    plant.feed(13.1, a.births(at(13.1)))  # it answers the rebirth request: the 6 parts of the conflict
    assert plant.parts() == 11
    assert plant.state() == (MachineState.RUNNING, 13.1)
    plant.feed(14, a.parts("vf2-01", at(14)))
    plant.feed(15, a.will(at(0)))  # and then the real one dies
    assert plant.parts() == 12 == int(a.values["vf2-01"]["part_count"]) - 100
    assert plant.state() == (MachineState.COMMS_LOSS, 15)
    states = [(i.state, (i.start_ms - T0) / MIN) for i in plant.store.intervals("vf2-01", 0, at(20))]
    assert states == [
        (MachineState.IDLE, 0),
        (MachineState.RUNNING, 1),
        (MachineState.COMMS_LOSS, 7),
        (MachineState.RUNNING, 13.1),
    ]


async def test_the_conflict_is_in_the_records_health(plant: Plant) -> None:
    a = ForeignNode("dayton", "edge1", {"vf2-01": READY}, bdseq=3)
    clone = ForeignNode("dayton", "edge1", {"vf2-01": READY}, bdseq=41)
    plant.feed(0, a.births(at(0)), a.parts("vf2-01", at(0.1)), clone.births(at(0.2)))
    plant.feed(0.3, a.parts("vf2-01", at(0.3)))
    task = asyncio.create_task(plant.service._report_health(0.01))
    await asyncio.sleep(0.1)
    task.cancel()
    health = {(scope, name): value for scope, name, value, _ in plant.store.health()}
    assert health[("edge/edge1", "conflict")] == 1.0
    assert health[("host/test-host", "nodes_in_conflict")] == 1.0
    assert health[("host/test-host", "conflicts")] == 1.0
