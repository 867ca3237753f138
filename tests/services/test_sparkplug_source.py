"""A machine published by a Sparkplug edge node we did not write (Ignition Edge, Kepware, Node-RED),
declared as a `sparkplug` source: its own group, edge node and device ids, its own metric names and
value codes. The edge node is the tests' own (tests/foreign_edge.py: payloads built with the
protobuf module directly); the context service is driven message by message, without a broker (over
Mosquitto, with the edge node logged in as its own user: tests/integration/test_foreign_edge.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.context.app import ContextService
from services.context.foreign import ForeignMetrics
from services.context.record import RecordStore
from services.context.state import MachineState
from tests.foreign_edge import BOOLEAN, DOUBLE, INT32, INT64, STRING, ForeignNode, Message
from tests.services.test_foreign_edge import T0, Clock
from uns.broker import edge_node_users, render_acl
from uns.mqtt import BrokerAddress
from uns.site import SiteConfigError, SparkplugSource, parse_site
from uns.sparkplug.payload import DataType, Metric, Quality

S = MachineState
MIN = 60_000
SOURCE = """\
                source:
                  protocol: sparkplug
                  group: plant-b
                  edge_node: ignition-edge-1
                  device: Haas_VF2_SN1234
                  signals:
                    execution: Status/Execution
                    mode: Status/Mode
                    program: Program/Name
                    part_count: Counters/PartsMade
                    alarm_code: Alarms/ActiveCode
                    estop: Safety/EStop
                    spindle_load: Spindle/LoadPct
                  values:
                    execution: {0: READY, 1: ACTIVE, 2: INTERRUPTED, 3: STOPPED, 4: FEED_HOLD}
                    mode: {AUTO: AUTOMATIC, MAN: MANUAL, MDI: MDI}
"""
SITE = f"""\
enterprise: acme
site: dayton
sparkplug: {{group_id: dayton, edge_node_id: edge1, host_id: test-host}}
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
                  signals: {{execution: a, mode: b, program: p, part_count: c, alarm_code: d, estop: e}}
              - id: haas-01
{SOURCE}"""
TYPES = {
    "Status/Execution": INT32,
    "Status/Mode": STRING,
    "Program/Name": STRING,
    "Counters/PartsMade": INT64,
    "Alarms/ActiveCode": INT32,
    "Safety/EStop": BOOLEAN,
    "Spindle/LoadPct": DOUBLE,
    "Spindle/TempC": DOUBLE,  # the edge's own: not in the site model
}
READY: dict[str, bool | int | float | str] = {
    "Status/Execution": 0,
    "Status/Mode": "AUTO",
    "Program/Name": "O1001",
    "Counters/PartsMade": 5000,
    "Alarms/ActiveCode": 0,
    "Safety/EStop": False,
    "Spindle/LoadPct": 0.0,
    "Spindle/TempC": 31.5,
}
DEVICE = "Haas_VF2_SN1234"


class Plant:
    def __init__(self, tmp_path: Path) -> None:
        self.site = parse_site(SITE)
        self.store = RecordStore(tmp_path / "record.db")
        self.clock = Clock()
        self.service = ContextService(self.site, self.store, BrokerAddress("127.0.0.1", 1), self.clock)
        self.edge = ForeignNode("plant-b", "ignition-edge-1", {DEVICE: READY}, bdseq=7, types=TYPES)

    def feed(self, minutes: float, *messages: Message | list[Message]) -> None:
        self.clock.now = at(minutes)
        for m in messages:
            for topic, payload in m if isinstance(m, list) else [m]:
                self.service.on_message(topic, payload)
        self.service.flush()

    def data(self, minutes: float, values: dict[str, bool | int | float | str]) -> None:
        """A DDATA of these metrics (by the edge's names) at `minutes`."""
        self.feed(minutes, self.edge.data(DEVICE, at(minutes), **values))


def at(minutes: float) -> int:
    return T0 + int(minutes * MIN)


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    p = Plant(tmp_path)
    yield p
    p.store.close()


def test_the_record_is_what_the_foreign_edge_node_sent(
    plant: Plant, caplog: pytest.LogCaptureFixture
) -> None:
    plant.feed(0, plant.edge.births(at(0)))
    plant.data(1, {"Status/Execution": 1})  # ACTIVE
    plant.data(4, {"Status/Execution": 0, "Counters/PartsMade": 5001})
    plant.data(5, {"Status/Execution": 1, "Spindle/TempC": 40.0})
    plant.data(8, {"Status/Execution": 0, "Counters/PartsMade": 5002})
    plant.data(9, {"Status/Mode": "MAN"})
    plant.data(12, {"Alarms/ActiveCode": 1010, "Status/Execution": 3})
    with caplog.at_level(logging.WARNING, logger="services.context.foreign"):
        # a code the site model does not map: refused and named; the rest of the message goes on
        plant.data(15, {"Status/Execution": 9, "Alarms/ActiveCode": 0, "Status/Mode": "AUTO"})
        plant.data(16, {"Status/Execution": 9})  # said once
    plant.data(20, {"Status/Execution": 1})
    plant.feed(21)
    record = [
        (i.state, (i.start_ms - T0) / MIN, (i.end_ms - T0) / MIN)
        for i in plant.store.intervals("haas-01", 0, at(30))
    ]
    assert record == [
        (S.IDLE, 0, 1),
        (S.RUNNING, 1, 4),
        (S.IDLE, 4, 5),
        (S.RUNNING, 5, 8),
        (S.IDLE, 8, 9),
        (S.SETUP, 9, 12),  # manual mode, not running
        (S.DOWN, 12, 15),  # the alarm
        (S.IDLE, 15, 20),  # alarm cleared, back in automatic; execution still STOPPED (9 refused)
    ]
    assert plant.service.trackers["haas-01"].state is S.RUNNING
    parts = plant.store.parts("haas-01", 0, at(30))
    assert [(p.delta, p.counter, (p.timestamp - T0) / MIN) for p in parts] == [(1, 5001, 4), (1, 5002, 8)]
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert "machine haas-01" in refused[0]
    assert "'Status/Execution'" in refused[0]
    assert "ignition-edge-1" in refused[0]
    assert "9 is not in values.execution" in refused[0]
    state = plant.service.state_json(plant.site.machine("haas-01"))
    assert (state["program"], state["mode"]) == ("O1001", "AUTOMATIC")
    # the OPC UA machine beside it is untouched, and the foreign device is no unknown device
    assert plant.service.host.counters["unknown_devices"] == 0


def test_a_death_of_the_foreign_edge_node_ends_the_machines_data(plant: Plant) -> None:
    plant.feed(0, plant.edge.births(at(0)))
    plant.data(1, {"Status/Execution": 1})
    plant.feed(3, plant.edge.will(at(0)))
    assert plant.service.trackers["haas-01"].state is S.COMMS_LOSS


def test_bridges_leave_foreign_machines_alone_and_the_acl_lets_the_edge_node_publish_as_itself() -> None:
    site = parse_site(SITE)
    assert {m.id for ms in site.edge_nodes().values() for m in ms} == {"vf2-01"}
    assert site.foreign_edge_nodes() == [("plant-b", "ignition-edge-1")]
    assert site.machine("haas-01").edge_node == "ignition-edge-1"
    assert site.sparkplug_key(site.machine("haas-01")) == ("plant-b", "ignition-edge-1", DEVICE)
    assert [u.user for u in edge_node_users(site)] == ["dayton.edge1", "plant-b.ignition-edge-1"]
    acl = render_acl(site)
    assert "user plant-b.ignition-edge-1\n" in acl
    assert "topic write spBv1.0/plant-b/DDATA/ignition-edge-1/+\n" in acl


def test_the_device_defaults_to_the_machine_id_and_the_group_to_the_sites() -> None:
    text = SITE.replace("                  group: plant-b\n", "").replace(
        f"                  device: {DEVICE}\n", ""
    )
    site = parse_site(text)
    assert site.sparkplug_key(site.machine("haas-01")) == ("dayton", "ignition-edge-1", "haas-01")
    source = site.machine("haas-01").source
    assert isinstance(source, SparkplugSource)
    assert source.values["execution"]["1"] == "ACTIVE"  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("                    estop: Safety/EStop\n", ""), "missing required signals: estop"),
        (("execution: Status/Execution", "execution: Status/Mode"), "both name the metric 'Status/Mode'"),
        (("3: STOPPED", "3: RUNNING"), "values.execution: RUNNING is not one of ACTIVE"),
        (("    mode: {AUTO", "    single_block: {1: true}\n                    mode: {AUTO"), "single_block"),
        (("                  edge_node: ignition-edge-1\n", ""), "edge_node"),
        (
            ("              - id: haas-01\n", "              - id: haas-01\n                edge_node: e2\n"),
            "names its edge node itself",
        ),
        (("group: plant-b", "group: plant/b"), "group id"),
        (
            (
                "group: plant-b\n                  edge_node: ignition-edge-1\n"
                "                  device: Haas_VF2_SN1234",
                "group: dayton\n                  edge_node: edge1\n                  device: vf2-01",
            ),
            "which machine 'vf2-01' takes already",
        ),
        (
            (
                "group: plant-b\n                  edge_node: ignition-edge-1",
                "group: dayton\n                  edge_node: edge1",
            ),
            "is one of our bridges' edge nodes",
        ),
    ],
)
def test_a_bad_sparkplug_source_is_refused_naming_what_and_where(
    change: tuple[str, str], message: str
) -> None:
    text = SITE.replace(*change)
    assert text != SITE
    with pytest.raises(SiteConfigError) as refused:
        parse_site(text)
    said = str(refused.value)
    assert message in said
    assert "haas-01" in said or "machines.1" in said or "areas" in said


def test_bad_quality_is_unknown_counters_may_be_int64_and_refusals_are_counted(plant: Plant) -> None:
    """The edge's tag went bad: Ignition sends a default (-1) with quality BAD. It is unknown (the
    machine is comms_loss while execution is unknown), not a refused code that leaves the machine
    as it was. A counter past UInt32 (an Int64 on the edge) counts. Refused values are counted in
    the host's `foreign_values_refused` (on /metrics)."""
    machine = plant.site.machine("haas-01")
    source = machine.source
    assert isinstance(source, SparkplugSource)
    foreign = ForeignMetrics("haas-01", source, plant.service.host.counters)
    [bad] = foreign.translate([Metric("Status/Execution", None, T0, DataType.INT32, -1, quality=Quality.BAD)])
    assert (bad.name, bad.value, bad.quality) == ("execution", -1, Quality.BAD)
    [count] = foreign.translate([Metric("Counters/PartsMade", None, T0, DataType.INT64, 5_000_000_000)])
    assert (count.name, count.value) == ("part_count", 5_000_000_000)
    assert foreign.translate([Metric("Counters/PartsMade", None, T0, DataType.INT64, -3)]) == []
    assert foreign.translate([Metric("Status/Execution", None, T0, DataType.INT32, 9)]) == []
    assert plant.service.host.counters["foreign_values_refused"] == 2
    # and through the service: the births say the machine is connected (no bridge of ours tells)
    plant.feed(0, plant.edge.births(at(0)))
    plant.data(1, {"Status/Execution": 1})
    assert plant.service._health["machine/haas-01"]["connected"] is True
    plant.feed(2, plant.edge.will(at(0)))
    assert plant.service._health["machine/haas-01"]["connected"] is False
