"""The MTConnect reader against the simulator's MTConnect agent over real HTTP (XML streamed, JSON of
both C++-agent versions polled): values mapped with the agent's timestamps, alarms from conditions,
UNAVAILABLE as unknown, malformed and cut-off documents refused while the reader keeps going, a lost
agent resumed at the next sequence, a buffer wrap and an agent restart said and recorded as a gap; and
through the whole stack (bridge, Mosquitto, context service, record) against the scenario's truth.

No independent MTConnect agent installs from the package registries here: the C++ reference agent
(cppagent) is not packaged in Debian, npm has none, and PyPI's `mtconnect` 0.3.3 (2023) cannot load a
device file on Python 3.9 or later (it calls Element.getchildren()). So the reader's parsing of the C++
agent's JSON forms is also checked on documents written as that agent's own tests describe them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.mtconnect import (
    AgentError,
    DocumentError,
    MtConnectReader,
    StreamsDocument,
    parse_document,
    timestamp_ms,
)
from bridge.runner import run_bridge
from bridge.sim.cnc import drive
from bridge.sim.mtconnect_agent import MtConnectAgent
from bridge.sim.scenario import MachineScenario
from services.context.app import ContextService
from services.context.record import RecordStore
from tests.helpers import address, track
from uns.broker import Mosquitto, free_port
from uns.clock import ScaledClock
from uns.site import Machine, MtConnectSource, SiteConfigError, load_site, parse_site
from uns.sparkplug.edge import Sample
from uns.sparkplug.payload import Quality

SITE = Path(__file__).with_name("mtconnect_site.yaml")
INITIAL: dict[str, bool | int | float | str] = {
    "execution": "READY",
    "mode": "AUTOMATIC",
    "program": "O1234",
    "part_count": 10,
    "alarm_code": 0,
    "alarm_text": "",
    "estop": False,
    "spindle_speed": 0.0,
    "spindle_load": 0.0,
    "feed_override": 100.0,
}
T0 = 1_795_300_000_000


def machine(machine_id: str = "mtc-01", **changes: object) -> Machine:
    m = load_site(SITE).with_ports({machine_id: free_port()}).machine(machine_id)
    assert isinstance(m.source, MtConnectSource)
    if changes:
        m = Machine(m.id, m.name, m.path, m.edge_node, m.source.model_copy(update=changes))
    return m


def port(m: Machine) -> int:
    assert isinstance(m.source, MtConnectSource)
    return int(m.source.endpoint.rsplit(":", 1)[1])


class Seen:
    def __init__(self) -> None:
        self.online: list[list[Sample]] = []
        self.samples: list[Sample] = []
        self.offline = 0

    def reader(self, m: Machine) -> MtConnectReader:
        assert isinstance(m.source, MtConnectSource)
        return MtConnectReader(
            m,
            m.source,
            on_online=self.online.append,
            on_samples=self.samples.extend,
            on_offline=self._off,
            now_ms=lambda: 7,
            max_backoff_s=0.5,
        )

    def _off(self) -> None:
        self.offline += 1

    def of(self, name: str) -> list[tuple[object, int, int | None]]:
        return [(s.value, s.timestamp, s.quality) for s in self.samples if s.name == name]


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@dataclass
class Running:
    agent: MtConnectAgent
    reader: MtConnectReader
    seen: Seen
    task: asyncio.Task[None]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.agent.stop()


async def running(m: Machine, *, buffer_size: int = 4096, json_version: int = 2) -> Running:
    agent = MtConnectAgent(m.id, "127.0.0.1", port(m), buffer_size=buffer_size, json_version=json_version)
    await agent.start(INITIAL, T0)
    seen = Seen()
    reader = seen.reader(m)
    task = asyncio.create_task(reader.run())
    await until(lambda: bool(seen.online))
    return Running(agent, reader, seen, task)


# -- the site model ----------------------------------------------------------------------------------
SITE_TEXT = """\
enterprise: acme
site: dayton
sparkplug:
  group_id: dayton
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - id: mtc-01
                source:
                  protocol: mtconnect
                  endpoint: http://10.0.0.5:5000
"""


WHERE = "plant.yaml:13: areas[0].lines[0].cells[0].machines[0].source"


def problems(text: str) -> list[str]:
    with pytest.raises(SiteConfigError) as err:
        parse_site(text, "plant.yaml")
    return err.value.problems


def test_an_mtconnect_source_loads_with_defaults() -> None:
    [m] = parse_site(SITE_TEXT).machines
    assert isinstance(m.source, MtConnectSource)
    assert m.source.signals[:3] == ["execution", "mode", "program"]
    assert (m.source.format, m.source.stream, m.source.device) == ("xml", True, None)
    assert m.where == "http://10.0.0.5:5000"
    assert m.source.host == "10.0.0.5"
    moved = parse_site(SITE_TEXT).with_ports({"mtc-01": 6000}).machine("mtc-01").source
    assert isinstance(moved, MtConnectSource)
    assert moved.endpoint == "http://127.0.0.1:6000"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "                  signals: [execution, mode, part_count, estop]\n",
            f"{WHERE}: missing required signals: alarm_code",
        ),
        (
            "                  data_items: {alarm_text: msg}\n",
            f"{WHERE}: data_items: alarm_text comes with"
            " alarm_code's CONDITION data items (their text): map alarm_code",
        ),
        (
            "                  data_items: {program: [a, b]}\n",
            f"{WHERE}: data_items.program: one data item id (only alarm_code takes a list)",
        ),
        (
            "                  interval_ms: 1\n",
            "plant.yaml:16: areas[0].lines[0].cells[0].machines[0].source.interval_ms: Input should be"
            " greater than or equal to 10",
        ),
        (
            "                  formt: json\n",
            "plant.yaml:16: areas[0].lines[0].cells[0].machines[0].source.formt: unknown field (a typo?)",
        ),
    ],
)
def test_a_bad_mtconnect_source_names_file_line_and_field(extra: str, expected: str) -> None:
    assert problems(SITE_TEXT + extra) == [expected]


def test_an_endpoint_that_is_not_http_is_refused() -> None:
    [p] = problems(SITE_TEXT.replace("http://10.0.0.5:5000", "opc.tcp://10.0.0.5:5000"))
    assert p.startswith(
        "plant.yaml:15: areas[0].lines[0].cells[0].machines[0].source.endpoint: String should"
    )


# -- documents ---------------------------------------------------------------------------------------
def test_timestamps_are_utc_milliseconds() -> None:
    assert timestamp_ms("2026-11-22T06:00:00.123456Z") == 1_795_327_200_123
    assert timestamp_ms("2026-11-22T06:00:00Z") == 1_795_327_200_000
    assert timestamp_ms("2026-11-22T07:00:00.5+01:00") == 1_795_327_200_500
    with pytest.raises(DocumentError, match="not an ISO 8601 time"):
        timestamp_ms("yesterday")


HEADER = {"instanceId": 123, "bufferSize": 131072, "firstSequence": 5, "lastSequence": 9, "nextSequence": 10}


def test_both_json_forms_of_the_c_agent_read_the_same() -> None:
    """The shapes of the C++ agent's JSON (its test_package/json_printer_stream_test.cpp): version 1
    wraps each element in a one-key object in a list, version 2 groups elements by name."""
    mode = {"dataItemId": "mode", "timestamp": "2026-11-22T06:00:00Z", "sequence": 7, "value": "AUTOMATIC"}
    fault = {
        "dataItemId": "system",
        "timestamp": "2026-11-22T06:00:01Z",
        "sequence": 8,
        "nativeCode": "2105",
        "type": "SYSTEM",
        "value": "TOOL BREAKAGE",
    }
    v1 = {
        "MTConnectStreams": {
            "Header": HEADER,
            "Streams": [
                {
                    "DeviceStream": {
                        "name": "m",
                        "uuid": "u",
                        "ComponentStreams": [
                            {"ComponentStream": {"componentId": "c", "Events": [{"ControllerMode": mode}]}},
                            {"ComponentStream": {"componentId": "c", "Condition": [{"Fault": fault}]}},
                        ],
                    }
                }
            ],
        }
    }
    v2 = {
        "MTConnectStreams": {
            "jsonVersion": 2,
            "Header": HEADER,
            "Streams": {
                "DeviceStream": [
                    {
                        "name": "m",
                        "uuid": "u",
                        "ComponentStream": [
                            {"componentId": "c", "Events": {"ControllerMode": [mode]}},
                            {"componentId": "c", "Condition": {"Fault": [fault]}},
                        ],
                    }
                ]
            },
        }
    }
    import json

    docs = [parse_document(json.dumps(d).encode(), "u") for d in (v1, v2)]
    assert isinstance(docs[0], StreamsDocument)
    assert docs[0] == docs[1]
    assert docs[0].header.instance_id == "123"
    assert (docs[0].header.first, docs[0].header.next) == (5, 10)
    [m, f] = docs[0].observations
    assert (m.item, m.sequence, m.value) == ("mode", 7, "AUTOMATIC")
    assert (f.level, f.native_code, f.value) == ("FAULT", "2105", "TOOL BREAKAGE")
    other = parse_document(json.dumps(v1).encode(), "another-device")
    assert isinstance(other, StreamsDocument)
    assert other.observations == ()


def test_bad_documents_are_refused_with_what_and_where() -> None:
    with pytest.raises(DocumentError, match=r"not well-formed XML \(.*line 1, column"):
        parse_document(
            b'<MTConnectStreams xmlns="urn:mtconnect.org:MTConnectStreams:2.2"><Header instanceId="1"'
        )
    with pytest.raises(DocumentError, match="not valid JSON"):
        parse_document(b'{"MTConnectStreams": {"Header": ')
    with pytest.raises(DocumentError, match="without a Header"):
        parse_document(b"<MTConnectStreams><Streams/></MTConnectStreams>")
    with pytest.raises(DocumentError, match="without sequence"):
        parse_document(
            b'<MTConnectStreams><Header instanceId="1"/><Streams><DeviceStream name="m"><ComponentStream>'
            b'<Events><Execution dataItemId="e" timestamp="2026-11-22T06:00:00Z">ACTIVE</Execution>'
            b"</Events></ComponentStream></DeviceStream></Streams></MTConnectStreams>"
        )
    with pytest.raises(DocumentError, match="neither XML nor JSON"):
        parse_document(b"HTTP/1.1 502 Bad Gateway")
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b'<MTConnectStreams><Header instanceId="&lol2;"/></MTConnectStreams>'
    )
    with pytest.raises(DocumentError, match="DTD"):
        parse_document(bomb)
    with pytest.raises(AgentError) as err:
        parse_document(
            b'<MTConnectError><Header instanceId="1"/><Errors><Error errorCode="OUT_OF_RANGE">'
            b"'from' must be greater than 5</Error></Errors></MTConnectError>"
        )
    assert err.value.has("OUT_OF_RANGE")


# -- the reader against the simulator's agent ----------------------------------------------------------
@pytest.mark.parametrize(
    ("machine_id", "json_version"),
    [("mtc-01", 2), ("mtc-02", 2), ("mtc-02", 1)],
    ids=["xml-streamed", "json2-polled", "json1-polled"],
)
async def test_values_alarms_and_timestamps_follow_the_agent(machine_id: str, json_version: int) -> None:
    run = await running(machine(machine_id), json_version=json_version)
    agent, seen = run.agent, run.seen
    try:
        first = {s.name: (s.value, s.timestamp) for s in seen.online[0]}
        assert first == {k: (v, T0) for k, v in INITIAL.items()}
        await agent.write({"execution": "ACTIVE", "part_count": 11, "spindle_speed": 8000.0}, T0 + 1000)
        await agent.write({"spindle_load": 42.5, "feed_override": 80.0}, T0 + 1500)
        await agent.write({"mode": "MDI"}, T0 + 1700)  # MANUAL_DATA_INPUT on the wire
        await agent.write(
            {"execution": "INTERRUPTED", "alarm_code": 2105, "alarm_text": "TOOL BREAKAGE"}, T0 + 2000
        )
        await agent.write({"estop": True, "alarm_code": 0, "alarm_text": ""}, T0 + 3000)
        await until(lambda: len(seen.of("estop")) == 1)
        assert [(s.name, s.value, s.timestamp) for s in seen.samples] == [
            ("execution", "ACTIVE", T0 + 1000),
            ("part_count", 11, T0 + 1000),
            ("spindle_speed", 8000.0, T0 + 1000),
            ("spindle_load", 42.5, T0 + 1500),  # the spindle's LOAD, not the X axis's
            ("feed_override", 80.0, T0 + 1500),  # PROGRAMMED, not RAPID
            ("mode", "MDI", T0 + 1700),
            ("execution", "INTERRUPTED", T0 + 2000),
            ("alarm_code", 2105, T0 + 2000),  # a Fault of the SYSTEM condition, with its nativeCode
            ("alarm_text", "TOOL BREAKAGE", T0 + 2000),
            ("estop", True, T0 + 3000),
            ("alarm_code", 0, T0 + 3000),  # Normal again
            ("alarm_text", "", T0 + 3000),
        ]
        assert run.reader.counters["bad_reads"] == run.reader.counters["bad_values"] == 0
    finally:
        await run.close()


async def test_unavailable_is_unknown_and_values_come_back() -> None:
    run = await running(machine())
    agent, seen = run.agent, run.seen
    try:
        agent.unavailable(T0 + 5000)  # the adapter lost the controller
        await until(lambda: bool(seen.of("execution")))
        assert {s.name for s in seen.samples} == set(INITIAL)
        assert {(s.value, s.timestamp, s.quality) for s in seen.samples} == {(None, T0 + 5000, Quality.BAD)}
        await agent.available(T0 + 6000)
        await until(lambda: len(seen.of("execution")) == 2)
        assert seen.of("execution")[-1] == ("READY", T0 + 6000, None)
        assert seen.offline == 0  # the agent answers: the machine's data is unknown, not the agent lost
    finally:
        await run.close()


@pytest.mark.parametrize("machine_id", ["mtc-01", "mtc-02"], ids=["streamed", "polled"])
async def test_malformed_and_cut_off_documents_are_refused_and_the_reader_goes_on(machine_id: str) -> None:
    run = await running(machine(machine_id))
    agent, seen, reader = run.agent, run.seen, run.reader
    try:
        for n, fault in enumerate(("truncate", "garbage", "json_garbage")):
            agent.faults.append(fault)
            await agent.write({"part_count": 11 + n}, T0 + 1000 * (n + 1))
            await until(lambda n=n: len(seen.of("part_count")) == n + 1)  # type: ignore[misc]
        assert seen.of("part_count") == [(11, T0 + 1000, None), (12, T0 + 2000, None), (13, T0 + 3000, None)]
        assert reader.counters["bad_reads"] >= 3
        assert seen.offline == 0
        assert reader.online
    finally:
        await run.close()


async def test_a_lost_agent_goes_offline_and_reading_resumes_where_it_stopped() -> None:
    run = await running(machine())
    agent, seen, reader = run.agent, run.seen, run.reader
    try:
        await agent.go_away()
        await until(lambda: seen.offline == 1)
        await agent.write({"execution": "ACTIVE"}, T0 + 1000)  # while nobody reads it: in its buffer
        await agent.write({"part_count": 11}, T0 + 2000)
        await agent.come_back()
        await until(lambda: len(seen.online) == 2)
        await until(lambda: len(seen.of("part_count")) == 1)
        assert seen.of("execution") == [("ACTIVE", T0 + 1000, None)]
        assert seen.of("part_count") == [(11, T0 + 2000, None)]
        assert (reader.counters["gaps"], reader.counters["restarts"]) == (0, 0)
    finally:
        await run.close()


async def test_a_buffer_that_wrapped_while_we_were_away_is_a_gap_said_and_counted() -> None:
    run = await running(machine(), buffer_size=40)
    agent, seen, reader = run.agent, run.seen, run.reader
    try:
        await agent.go_away()
        await until(lambda: seen.offline == 1)
        for n in range(60):  # more than the buffer holds
            await agent.write({"spindle_load": float(n), "part_count": 11 + n // 10}, T0 + 1000 * (n + 1))
        await agent.come_back()
        await until(lambda: len(seen.online) == 2)
        assert reader.counters["gaps"] == 1
        assert reader.counters["observations_lost"] > 0
        birth = {s.name: (s.value, s.timestamp) for s in seen.online[1]}
        assert birth["part_count"] == (16, T0 + 51_000)  # the agent's current value, with its timestamp
        assert seen.samples == []  # nothing from the middle of the gap, nothing twice
    finally:
        await run.close()


async def test_an_agent_restart_between_polls_is_a_gap_said_and_recorded() -> None:
    run = await running(machine("mtc-02"))
    agent, seen, reader = run.agent, run.seen, run.reader
    try:
        await agent.write({"execution": "ACTIVE"}, T0 + 1000)
        await until(lambda: len(seen.of("execution")) == 1)
        await agent.restart(T0 + 9000)  # a new instance: sequences start over
        await agent.write({"part_count": 12}, T0 + 9500)
        await until(lambda: reader.counters["restarts"] == 1 and len(seen.of("part_count")) >= 1)
        await until(lambda: seen.of("part_count")[-1][0] == 12)
        # unknown from the last moment known (the agent's clock: its latest observation) until the
        # new instance's values say what the machine does again
        assert seen.of("execution")[1:] == [(None, T0 + 1000, Quality.BAD), ("ACTIVE", T0 + 9000, None)]
        assert [v for v, _, q in seen.of("part_count") if q is None] in ([12], [10, 12])
        assert seen.offline == 0
    finally:
        await run.close()


async def test_a_reader_that_falls_behind_while_polling_says_so_and_loses_no_count() -> None:
    m = machine("mtc-02", interval_ms=300, count=10)
    run = await running(m, buffer_size=30)
    agent, seen, reader = run.agent, run.seen, run.reader
    try:
        for n in range(1, 81):  # 80 changes at once: the buffer of 30 wraps before the next polls
            await agent.write({"spindle_load": float(n), "part_count": 10 + n}, T0 + 100 * n)
        await until(lambda: [v for v, _, q in seen.of("part_count") if q is None][-1:] == [90])
        assert reader.counters["gaps"] >= 1
        counts = [int(str(v)) for v, _, q in seen.of("part_count") if q is None]
        assert counts == sorted(counts)  # in order, each at most once
        assert len(counts) == len(set(counts))
        assert seen.offline == 0
    finally:
        await run.close()


# -- through the whole stack ---------------------------------------------------------------------------
SPEED = 1800.0
HORIZON_MS = 3 * 3600 * 1000


async def test_an_mtconnect_machine_through_to_the_record(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The scenario's machine behind the simulator's agent (XML, streamed) through bridge, Mosquitto and
    the context service: the record equals the ground truth to the millisecond (the agent's timestamps
    are kept), with every part; then an agent restart and a buffer that wraps while the agent is out of
    reach: each is a comms_loss interval in the record, and no part is lost or counted twice."""
    site = load_site(SITE).with_ports({"mtc-01": free_port()}).only(["mtc-01"])
    [m] = site.machines
    clock = ScaledClock(T0, SPEED)
    scenario = MachineScenario(m.id, seed=7, origin_ms=T0)
    changes = scenario.changes()
    first = next(changes)
    agent = MtConnectAgent(m.id, "127.0.0.1", port(m), buffer_size=64, now_ms=clock.now_ms)
    await agent.start(first.values, first.t_ms)
    store = RecordStore(tmp_path / "record.db")
    context = ContextService(site, store, address(mosquitto, "services"), clock)
    context.start(asyncio.get_running_loop())
    track(context._client)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(site, address(mosquitto, "bridge"), clock, stop))
    try:
        deadline = time.monotonic() + 30
        while context.trackers[m.id].since_ms is None:
            assert time.monotonic() < deadline, "the machine never came online"
            await asyncio.sleep(0.05)
        clock.restart()
        end_ms = T0 + HORIZON_MS
        await drive(agent, changes, clock, until_ms=end_ms)
        await asyncio.sleep(1.0)
        truth = scenario.truth(end_ms)
        recorded = store.intervals(m.id, T0, end_ms + 1)
        assert [(i.start_ms, i.end_ms, i.state) for i in recorded] == [
            (i.start_ms, i.end_ms, i.state) for i in truth[:-1]
        ]
        made = sum(p.delta for p in store.parts(m.id, T0, end_ms + 1))
        assert made == scenario.parts_until(end_ms) > 0

        # the agent restarts: the machine's data is unknown from the last the agent said until the
        # new instance says it again (the reader stays online: the agent answers)
        restart_at = clock.now_ms()
        await agent.restart(restart_at)
        await asyncio.sleep(1.0)
        # out of reach while the machine makes more changes than the agent's buffer holds
        await agent.go_away()
        gone_at = clock.now_ms()
        end2 = gone_at + 2 * 3600 * 1000
        await drive(agent, changes, clock, until_ms=end2)
        await agent.come_back()
        deadline = time.monotonic() + 15  # the reader's backoff is at most 5 s
        while context.trackers[m.id].state == "comms_loss":
            assert time.monotonic() < deadline, "the reader did not come back"
            await asyncio.sleep(0.05)
        await drive(agent, changes, clock, until_ms=end2 + 1800 * 1000)
        await asyncio.sleep(1.0)
        later = store.intervals(m.id, end_ms, clock.now_ms())
        losses = [i for i in later if i.state == "comms_loss"]
        assert len(losses) == 2, later
        assert losses[0].start_ms < restart_at <= losses[0].end_ms  # the restart's gap
        assert losses[1].start_ms >= gone_at  # the wrap's gap: from when the agent was lost ...
        assert losses[1].end_ms > losses[1].start_ms  # ... until the agent's values said again
        reader_end = end2 + 1800 * 1000
        made = sum(p.delta for p in store.parts(m.id, T0, clock.now_ms() + 1))
        assert made == scenario.parts_until(reader_end)  # nothing lost, nothing twice
    finally:
        stop.set()
        await bridge
        await context.stop()
        await agent.stop()
        store.close()
    assert context.host.counters["seq_gaps"] == 0
    assert context.host.counters["malformed"] == 0


async def test_an_agent_restart_that_keeps_its_instance_id_is_still_a_restart() -> None:
    """An agent that takes its instanceId from its start time in seconds keeps it across a restart
    within that second: the sequences going back say it restarted (not a gap with a negative loss)."""
    run = await running(machine("mtc-02"))
    agent, seen, reader = run.agent, run.seen, run.reader
    try:
        for n in range(1, 30):
            await agent.write({"spindle_load": float(n)}, T0 + 1000 * n)
        await until(lambda: len(seen.of("spindle_load")) >= 29)
        kept = agent.instance_id
        await agent.restart(T0 + 40_000)
        agent._instance = kept  # the same instanceId as before
        await agent.write({"part_count": 12}, T0 + 41_000)
        await until(lambda: reader.counters["restarts"] == 1)
        await until(lambda: seen.of("part_count")[-1][0] == 12)
        assert reader.counters["observations_lost"] == 0
        assert reader.counters["gaps"] == 0
    finally:
        await run.close()
