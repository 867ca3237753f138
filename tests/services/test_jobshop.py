"""Job-shop context in the context service, driven message by message without a broker: operations
from program changes and counts, confirmations, operators, quality holds, operators' reasons with
their audit trail and window, scrap, and a rebuild from stored events that gives the same record.
(The same over a real Mosquitto, the API and simulated machines: tests/integration/test_jobshop.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.context.app import ContextService
from services.context.commands import CommandResult
from services.context.record import RecordStore
from services.context.state import Interval, MachineState
from uns.clock import iso, parse_iso
from uns.mqtt import BrokerAddress
from uns.signals import metric_defs
from uns.site import Signal, parse_site
from uns.sparkplug.edge import EdgeSession, Sample

S = MachineState
MIN = 60_000
T0 = parse_iso("2026-11-18T13:00:00.000Z")  # 08:00 in Dayton: the first shift
SIGNALS = metric_defs(
    (Signal.EXECUTION, Signal.MODE, Signal.PROGRAM, Signal.PART_COUNT, Signal.ALARM_CODE, Signal.ESTOP)
)
SITE = """\
enterprise: acme
site: dayton
timezone: America/New_York
sparkplug: {group_id: dayton, edge_node_id: edge1, host_id: test-host}
shifts:
  pattern:
    - name: first
      start: "06:00"
      end: "14:00"
      days: [mon, tue, wed, thu, fri, sat, sun]
      breaks: [{name: lunch, start: "11:30", end: "12:00"}]
    - {name: second, start: "14:00", end: "22:00", days: [mon, tue, wed, thu, fri, sat, sun]}
downtime: {reason_window_hours: 72}
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - id: vf2-01
                source: &src
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {execution: a, mode: b, program: p, part_count: c, alarm_code: d, estop: e}
              - id: vf2-02
                source: *src
"""


class Clock:
    speed = 1.0

    def __init__(self, now: int) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now


class Shop:
    """The context service with two machines on one edge node, and ways to drive it."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = RecordStore(tmp_path / "record.db")
        self.clock = Clock(T0)
        self.site = parse_site(SITE)
        self.service = ContextService(self.site, self.store, BrokerAddress("127.0.0.1", 1), self.clock)
        self.edge = EdgeSession("dayton", "edge1", {"vf2-01": SIGNALS, "vf2-02": SIGNALS})
        self.edge.new_connection(0)
        self.counter = {"vf2-01": 100, "vf2-02": 500}

    def online(self, t: int = T0, program: str = "") -> None:
        for m in ("vf2-01", "vf2-02"):
            self.edge.device_online(m, t, self._ready(m, t, program))
        for message in self.edge.births(t):
            self.service.on_message(*message)
        self.service.flush()

    def _ready(self, m: str, t: int, program: str) -> list[Sample]:
        return [
            Sample("execution", "READY", t),
            Sample("mode", "AUTOMATIC", t),
            Sample("program", program, t),
            Sample("part_count", self.counter[m], t),
            Sample("alarm_code", 0, t),
            Sample("estop", False, t),
        ]

    def at(self, minutes: float, machine: str = "vf2-01", **values: Any) -> None:
        t = T0 + int(minutes * MIN)
        self.clock.now = max(self.clock.now, t)
        if "parts" in values:
            self.counter[machine] += values.pop("parts")
            values["part_count"] = self.counter[machine]
        message = self.edge.data(machine, [Sample(k, v, t) for k, v in values.items()], t)
        assert message is not None
        self.service.on_message(*message)
        self.service.flush()

    def command(self, kind: str, **body: Any) -> CommandResult:
        if "at" in body:
            self.clock.now = max(self.clock.now, parse_iso(body["at"]))
        result = self.service.command(kind, json.dumps(body).encode(), via="test")
        self.service.flush()
        return result

    def ok(self, kind: str, **body: Any) -> dict[str, Any]:
        result = self.command(kind, **body)
        assert result.ok, result.error
        return result.detail

    def intervals(self, machine: str = "vf2-01") -> list[Interval]:
        return self.store.intervals(machine, 0, T0 + 100 * 3_600_000)


def when(minutes: float) -> str:
    return iso(T0 + int(minutes * MIN))


def op(job: str, program: str, quantity: int = 2, machine: str = "vf2-01", seq: int = 0) -> dict[str, Any]:
    return {
        "job": job,
        "operation": "10",
        "machine": machine,
        "program": program,
        "quantity": quantity,
        "sequence": seq,
    }


def row(i: Interval) -> tuple[Any, ...]:
    return (
        (i.start_ms - T0) / MIN,
        (i.end_ms - T0) / MIN,
        i.state.value,
        i.reason,
        i.source,
        i.job,
        i.operator,
    )


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    s = Shop(tmp_path)
    yield s
    s.store.close()


def test_program_changes_and_counts_start_and_complete_operations(shop: Shop) -> None:
    shop.ok(
        "dispatch",
        machine="vf2-01",
        operations=[op("24173", "O1000", 2, seq=1), op("24174", "O2000", 1, seq=2)],
    )
    shop.online()
    shop.ok("operator", action="login", machine="vf2-01", operator="ann", at=when(0.5))
    shop.at(1, mode="MANUAL", program="O1000")  # setup for the first job
    shop.at(3, mode="AUTOMATIC", execution="ACTIVE")
    shop.at(5, execution="READY", parts=1)
    shop.at(6, execution="ACTIVE")
    shop.at(8, execution="READY", parts=1)  # the quantity: 24173/10 completes
    shop.at(10, mode="MANUAL", program="O2000")  # the next job's setup: 24174/10 starts
    shop.at(12, mode="AUTOMATIC")
    ops = {o.job: o for o in shop.store.operations("vf2-01")}
    assert (ops["24173"].status, ops["24173"].actual_start_ms, ops["24173"].actual_end_ms) == (
        "complete",
        T0 + MIN,
        T0 + 8 * MIN,
    )
    assert (ops["24173"].made, ops["24173"].good) == (2, 2)
    assert (ops["24174"].status, ops["24174"].actual_start_ms) == ("active", T0 + 10 * MIN)
    assert [row(i) for i in shop.intervals()] == [
        (0, 0.5, "idle", "micro_stop", "rule", None, None),
        (0.5, 1, "idle", "micro_stop", "rule", None, "ann"),
        (1, 3, "setup", "setup", "rule", "24173", "ann"),
        (3, 5, "running", None, None, "24173", "ann"),
        (5, 6, "idle", "micro_stop", "rule", "24173", "ann"),
        (6, 8, "running", None, None, "24173", "ann"),
        (8, 10, "idle", "micro_stop", "rule", None, "ann"),
        (10, 12, "setup", "setup", "rule", "24174", "ann"),
    ]
    assert {i.shift for i in shop.intervals()} == {"2026-11-18/first"}
    parts = shop.store.parts("vf2-01", 0, T0 + 60 * MIN)
    assert [(p.job, p.operation, p.shift) for p in parts] == [("24173", "10", "2026-11-18/first")] * 2
    job = shop.service.job_json(shop.site.machine("vf2-01"))
    assert job["operation"]["job"] == "24174"
    assert job["confirmation_needed"] is None
    state = shop.service.state_json(shop.site.machine("vf2-01"))
    assert (state["job"], state["operation"], state["operator"], state["shift"]) == (
        "24174",
        "10",
        "ann",
        "2026-11-18/first",
    )


def test_two_queued_operations_on_one_program_wait_for_a_confirmation(shop: Shop) -> None:
    shop.ok(
        "dispatch", cell="machining/mills/cell-1", operations=[op("A1", "O7"), op("B2", "O7"), op("C3", "O8")]
    )
    shop.online()
    shop.at(1, mode="MANUAL", program="O7")
    job = shop.service.job_json(shop.site.machine("vf2-01"))
    assert job["operation"] is None
    assert job["confirmation_needed"] == {
        "since": when(1),
        "program": "O7",
        "candidates": [{"job": "A1", "operation": "10"}, {"job": "B2", "operation": "10"}],
    }
    shop.at(4, mode="AUTOMATIC", execution="ACTIVE")
    assert shop.store.pending("vf2-01") is not None
    refused = shop.command("operation", action="confirm", machine="vf2-01", job="C3", operation="10")
    assert (refused.ok, refused.status) == (False, 409)
    assert "nothing to confirm (A1/10, B2/10)" in (refused.error or "")
    shop.ok("operation", action="confirm", machine="vf2-01", job="B2", operation="10", by="ann")
    # it began at the program change: the record from then on is B2's
    assert [(row(i)[0], row(i)[5]) for i in shop.intervals()] == [(0, None), (1, "B2")]
    assert shop.service.current("vf2-01") is not None
    assert shop.service.current("vf2-01").job == "B2"  # type: ignore[union-attr]
    assert shop.store.pending("vf2-01") is None
    # manual pause and resume are interruptions of the operation
    shop.ok("operation", action="pause", machine="vf2-01", job="B2", operation="10", at=when(6))
    shop.at(7, execution="READY")
    shop.ok("operation", action="resume", machine="vf2-01", job="B2", operation="10", at=when(8))
    shop.at(9, execution="ACTIVE")
    assert [(row(i)[0], row(i)[2], row(i)[5]) for i in shop.intervals()][2:] == [
        (4, "running", "B2"),
        (6, "running", None),
        (7, "idle", None),
        (8, "idle", "B2"),
    ]


def test_stops_under_a_quality_hold_are_quality_hold_and_show_what_they_blocked(shop: Shop) -> None:
    shop.ok("dispatch", machine="vf2-01", operations=[op("24180", "O5", 50)])
    shop.online()
    shop.at(1, program="O5", execution="ACTIVE")
    shop.ok(
        "hold", action="open", hold="NCR-17", job="24180", note="bore out of tolerance", at=when(5), by="qms"
    )
    shop.at(6, execution="READY")
    shop.at(7, alarm_code=1021)  # an alarm while held: still the hold's stop
    shop.at(8, alarm_code=0)
    shop.at(20, execution="ACTIVE")
    shop.ok("hold", action="close", hold="NCR-17", at=when(21), by="qms")
    shop.at(22, execution="READY")
    shop.at(23, execution="ACTIVE")
    rows = [row(i)[:5] for i in shop.intervals()]
    assert rows == [
        (0, 1, "idle", "micro_stop", "rule"),
        (1, 5, "running", None, None),
        (5, 6, "running", None, None),
        (6, 7, "idle", "quality_hold", "hold"),
        (7, 8, "down", "quality_hold", "hold"),
        (8, 20, "idle", "quality_hold", "hold"),
        (20, 21, "running", None, None),
        (21, 22, "running", None, None),
        (22, 23, "idle", "micro_stop", "rule"),
    ]
    machines, jobs = shop.store.held("NCR-17")
    assert machines == {"vf2-01": 14 * 60.0}
    assert jobs == ["24180/10"]
    # a hold opened late, with the time it really began: the past is recomputed
    shop.ok("hold", action="open", hold="NCR-18", machine="vf2-01", at=when(22), by="qms")
    assert row(shop.intervals()[-1])[3:5] == ("quality_hold", "hold")


def test_an_operator_sets_and_corrects_a_reason_and_every_change_is_kept(shop: Shop) -> None:
    shop.online()
    shop.at(1, execution="ACTIVE")
    shop.at(10, execution="READY")
    shop.at(40, execution="ACTIVE")
    assert row(shop.intervals()[-1])[2:5] == ("idle", "unclassified", "default")
    shop.ok("reason", machine="vf2-01", stop_at=when(25), reason="waiting_inspection", by="ann", note="FAI")
    shop.ok("reason", machine="vf2-01", stop_at=when(12), reason="starved", by="bob")
    assert row(shop.intervals()[-1])[2:5] == ("idle", "starved", "operator")
    assert [a[1:5] for a in shop.store.reason_audit("vf2-01")] == [
        ("unclassified", "waiting_inspection", "ann", "test"),
        ("waiting_inspection", "starved", "bob", "test"),
    ]
    # the open stop can take a reason too; the state topic shows it at once, the record when it closes
    shop.at(45, execution="READY")
    shop.ok("reason", machine="vf2-01", stop_at=when(46), reason="tooling", by="ann")
    state = shop.service.state_json(shop.site.machine("vf2-01"))
    assert (state["reason"], state["reason_source"]) == ("tooling", "operator")
    shop.at(50, execution="ACTIVE")
    assert row(shop.intervals()[-1])[2:5] == ("idle", "tooling", "operator")


def test_reasons_outside_the_window_or_for_running_time_or_unknown_are_refused(shop: Shop) -> None:
    shop.online()
    shop.at(1, execution="ACTIVE")
    shop.at(10, execution="READY")
    shop.at(40, execution="ACTIVE")
    before = [row(i) for i in shop.intervals()]
    shop.clock.now = T0 + 40 * MIN + 73 * 3_600_000
    late = shop.command("reason", machine="vf2-01", stop_at=when(20), reason="starved", by="ann")
    assert (late.ok, late.status) == (False, 422)
    assert late.error == (
        f"reason: the stop of vf2-01 at {when(20)} ended 73.0 h ago; reasons can be set up to 72 h after a "
        "stop (site model: downtime.reason_window_hours)"
    )
    shop.clock.now = T0 + 41 * MIN
    running = shop.command("reason", machine="vf2-01", stop_at=when(5), reason="starved", by="ann")
    assert (running.status, running.error) == (
        409,
        f"reason: vf2-01 was running at {when(5)}; only stops take a reason",
    )
    ahead = shop.command("reason", machine="vf2-01", stop_at=when(50), reason="starved", by="ann")
    assert (ahead.status, ahead.error) == (
        422,
        f"reason: stop_at {when(50)} is in the future (now {when(41)}); give a moment of the stop",
    )
    unknown = shop.command("reason", machine="vf2-01", stop_at=when(20), reason="coffee", by="ann")
    assert unknown.status == 404
    assert (unknown.error or "").startswith("reason: unknown reason code 'coffee' (known: blocked, ")
    nobody = shop.command("reason", machine="vf2-99", stop_at=when(20), reason="starved", by="ann")
    assert (nobody.status, nobody.error) == (404, "reason: no machine 'vf2-99' in the site model")
    no_job = shop.command("hold", action="open", hold="H1", job="99999")
    assert (no_job.status, no_job.error) == (404, "hold open H1: no job '99999' in the dispatch list")
    bad = shop.command("dispatch", machine="vf2-01", operations=[{**op("1", "O1"), "quantity": -3}])
    assert bad.status == 422
    assert bad.error == "dispatch: operations.0.quantity: Input should be greater than 0"
    other = shop.command("dispatch", machine="vf2-01", operations=[op("1", "O1", machine="vf2-02")])
    assert other.error == "dispatch operations[0] (1/10): machine 'vf2-02' is not in machine vf2-01"
    for kind, payload in (("reason", b"{not json"), ("reason", b"[1]"), ("launch", b"{}")):
        refused = shop.service.command(kind, payload, via="test")
        assert not refused.ok
        assert refused.error
    assert shop.service.host.counters["commands_refused"] == 11
    # nothing else was lost: the record is as it was, and the next good command works
    assert [row(i) for i in shop.intervals()] == before
    shop.ok("reason", machine="vf2-01", stop_at=when(20), reason="starved", by="ann")


def test_scrap_rework_and_good_per_operation_and_shift(shop: Shop) -> None:
    shop.ok("dispatch", machine="vf2-01", operations=[op("24190", "O9", 3)])
    shop.online()
    shop.at(1, program="O9", execution="ACTIVE")
    shop.at(5, parts=1)
    shop.ok("parts", machine="vf2-01", result="fail", by="vision-3", at=when(5.1))  # the vision system
    shop.at(9, parts=1)
    shop.ok("parts", machine="vf2-01", result="rework", by="ann")
    shop.at(13, parts=1)
    shop.at(17, parts=1)
    shop.at(21, parts=1)  # three good: complete
    [o] = shop.store.operations("vf2-01")
    assert (o.status, o.made, o.scrap, o.rework, o.good) == ("complete", 5, 1, 1, 3)
    counts = shop.store.counts(T0, T0 + 60 * MIN)
    assert counts == [
        ("vf2-01", "2026-11-18/first", "24190", "10", "made", 5),
        ("vf2-01", "2026-11-18/first", "24190", "10", "rework", 1),
        ("vf2-01", "2026-11-18/first", "24190", "10", "scrap", 1),
    ]
    unknown = shop.command("parts", machine="vf2-01", result="scrap", job="24190", operation="99")
    assert (unknown.status, unknown.error) == (404, "parts: no operation 24190/99 is dispatched to vf2-01")


def test_a_rebuild_from_the_stored_events_gives_the_same_record(shop: Shop, tmp_path: Path) -> None:
    shop.ok("dispatch", machine="vf2-01", operations=[op("1", "O1", 2), op("2", "O1", 2), op("3", "O3", 1)])
    shop.online()
    shop.ok("operator", action="login", machine="vf2-01", operator="ann", at=when(0.2))
    shop.at(1, mode="MANUAL", program="O1")
    shop.ok("operation", action="confirm", machine="vf2-01", job="2", operation="10")
    shop.at(3, mode="AUTOMATIC", execution="ACTIVE")
    shop.ok("hold", action="open", hold="H", machine="vf2-01", at=when(4))
    shop.at(5, execution="READY", parts=1)
    shop.ok("hold", action="close", hold="H", at=when(30))
    shop.at(31, execution="ACTIVE")
    shop.at(35, execution="READY", parts=1)
    shop.ok("reason", machine="vf2-01", stop_at=when(36), reason="starved", by="ann")
    shop.ok("operator", action="logout", machine="vf2-01", operator="ann", at=when(37))
    shop.at(40, mode="MANUAL", program="O3")
    shop.at(44, mode="AUTOMATIC", execution="ACTIVE")

    def record() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        intervals = [
            (
                i.start_ms,
                i.end_ms,
                i.state,
                i.reason,
                i.source,
                i.job,
                i.operation,
                i.shift,
                i.operator,
                i.hold,
                i.evidence,
                i.stop_start_ms,
            )
            for i in shop.intervals()
        ]
        parts = [(p.timestamp, p.delta, p.job, p.shift) for p in shop.store.parts("vf2-01", 0, T0 + 99 * MIN)]
        return intervals, parts

    live = record()
    assert len(live[0]) > 8
    shop.service.rebuild("vf2-01", T0)
    assert record() == live
    # and a new service on the same record (a restart) rebuilds it the same way
    again = ContextService(shop.site, shop.store, BrokerAddress("127.0.0.1", 1), shop.clock)
    again.rebuild("vf2-01", T0)
    assert record() == live


def test_a_question_lapses_when_another_program_is_loaded(shop: Shop) -> None:
    shop.ok("dispatch", machine="vf2-01", operations=[op("A1", "O7"), op("B2", "O7")])
    shop.online()
    shop.at(1, mode="MANUAL", program="O7")
    assert shop.store.pending("vf2-01") is not None
    shop.at(2, program="O9")  # not on the list: the question about O7 no longer stands
    assert shop.store.pending("vf2-01") is None
    refused = shop.command("operation", action="confirm", machine="vf2-01", job="A1", operation="10")
    assert (refused.status, refused.error) == (
        409,
        "operation A1/10 on vf2-01: nothing to confirm (none pending)",
    )


def test_one_stop_cut_by_a_hold_a_login_a_break_and_a_shift_change_counts_once(shop: Shop) -> None:
    """A stop from 11:00 to 14:10 (Dayton): a hold opens at 11:20, the operator logs in at 11:35, lunch
    is 11:30-12:00, the hold closes at 13:50, second shift starts at 14:00. One stop in the downtime
    summary; the hold's reason to the restart; an operator's reason given later covers every piece."""
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from services.api.app import create_app
    from services.api.settings import ApiSettings

    shop.ok("dispatch", machine="vf2-01", operations=[op("J1", "O1", 10)])
    shop.online()
    shop.at(1, mode="MANUAL", program="O1")
    shop.at(3, mode="AUTOMATIC", execution="ACTIVE")
    shop.at(180, execution="READY", parts=1)  # 11:00
    shop.ok("hold", action="open", hold="NCR-9", machine="vf2-01", note="burr", at=when(200))
    shop.ok("operator", action="login", machine="vf2-01", operator="maria", at=when(215))
    shop.ok("hold", action="close", hold="NCR-9", at=when(350))
    shop.at(370, execution="ACTIVE")  # 14:10: runs again
    stop = [i for i in shop.intervals() if T0 + 180 * MIN <= i.start_ms < T0 + 370 * MIN]
    assert len(stop) >= 5  # cut at the hold's open and close, the login, the break, the shift change
    assert {i.stop_start_ms for i in stop} == {T0 + 180 * MIN}
    assert [row(i)[3:5] for i in stop if i.start_ms >= T0 + 200 * MIN] == [("quality_hold", "hold")] * (
        len(stop) - 1
    )
    app = create_app(ApiSettings(api_token=SecretStr("t" * 24)), shop.store, shop.service.calendar)
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer " + "t" * 24}
        window = {"start": when(100), "end": when(400), "machine": "vf2-01"}
        rows = client.get("/api/v1/downtime", params=window, headers=auth).json()["rows"]
        assert sum(r["stops"] for r in rows) == 1
        assert {r["shift"] for r in rows} == {"2026-11-18/first", "2026-11-18/second"}
        # the night lead says what it really was, pointing at its last piece
        shop.ok(
            "reason", machine="vf2-01", stop_at=when(365), reason="starved", by="lead", note="no bar stock"
        )
        stop = [i for i in shop.intervals() if T0 + 180 * MIN <= i.start_ms < T0 + 370 * MIN]
        assert {(i.reason, i.source) for i in stop} == {("starved", "operator")}
        assert {i.evidence for i in stop} == {f"lead via test at {when(370)}: no bar stock"}
        rows = client.get("/api/v1/downtime", params=window, headers=auth).json()["rows"]
        assert [(r["reason"], r["stops"]) for r in rows if r["stops"]] == [("starved", 1)]
        # the open interval carries its context in the API like the closed ones
        intervals = client.get(
            "/api/v1/machines/vf2-01/intervals", params={"start": when(0), "end": when(400)}, headers=auth
        ).json()["intervals"]
        assert intervals[-1]["end"] is None
        assert (intervals[-1]["job"], intervals[-1]["operator"]) == ("J1", "maria")
        closed = next(i for i in intervals if i["start"] == when(200))
        assert closed["stop_start"] == when(180)
        assert closed["reason_evidence"].startswith("lead via test")


def test_work_taken_off_the_list_later_was_still_there_when_the_record_is_recomputed(shop: Shop) -> None:
    """Idle with J1 queued is not `no_work`, also after J1 is dropped from the list and the record
    of that time is recomputed (a late login here)."""
    shop.ok("dispatch", machine="vf2-01", operations=[op("J0", "O1", 1)])
    shop.online()
    shop.at(1, mode="MANUAL", program="O1")
    shop.at(2, mode="AUTOMATIC", execution="ACTIVE")
    shop.at(3, execution="READY", parts=1)  # J0 complete
    shop.ok("dispatch_update", operation=op("J1", "O2", 1), at=when(10))
    shop.at(30, execution="ACTIVE")
    shop.ok("dispatch", machine="vf2-01", operations=[], at=when(31))  # J1 taken off
    shop.at(32, execution="READY")
    shop.at(40, execution="ACTIVE")

    def idle() -> list[tuple[Any, ...]]:
        return [
            row(i)[:5]
            for i in shop.intervals()
            if T0 + 3 * MIN <= i.start_ms < T0 + 40 * MIN and i.state is S.IDLE
        ]

    live = idle()
    assert live[:2] == [
        (3.0, 10.0, "idle", "no_work", "rule"),
        (10.0, 30.0, "idle", "unclassified", "default"),
    ]
    assert live[2][3] == "no_work"  # 32-40: nothing on the list any more
    shop.ok("operator", action="login", machine="vf2-01", operator="ann", at=when(5))
    assert idle() == [(3.0, 5.0, *live[0][2:]), (5.0, *live[0][1:]), *live[1:]]


def test_a_release_that_arrives_after_the_program_change_it_was_for_starts_the_operation(shop: Shop) -> None:
    """The ERP released J2 at minute 9; the operator loaded its program at 10; the ERP's message came
    at 14. J2 starts at the program change, J1 completes there, and the parts since are J2's: the
    record is what it would be had the messages arrived in order."""
    shop.ok("dispatch", machine="vf2-01", operations=[op("J1", "O1", 5)])
    shop.online()
    shop.at(1, mode="MANUAL", program="O1")
    shop.at(2, mode="AUTOMATIC", execution="ACTIVE")
    shop.at(4, execution="READY", parts=1)
    shop.at(10, mode="MANUAL", program="O2")  # J2's setup, before the list knows J2
    shop.at(12, mode="AUTOMATIC", execution="ACTIVE")
    shop.at(13, execution="READY", parts=1)
    assert shop.service.books["vf2-01"].active.job == "J1"  # type: ignore[union-attr]
    shop.clock.now = T0 + 14 * MIN
    shop.ok("dispatch_update", operation=op("J2", "O2", 3), at=when(9))
    ops = {o.job: o for o in shop.store.operations("vf2-01")}
    assert (ops["J1"].status, ops["J1"].actual_end_ms, ops["J1"].made) == ("complete", T0 + 10 * MIN, 1)
    assert (ops["J2"].status, ops["J2"].actual_start_ms, ops["J2"].made) == ("active", T0 + 10 * MIN, 1)
    assert [(row(i)[0], row(i)[2], row(i)[5]) for i in shop.intervals()][-3:] == [
        (9, "idle", "J1"),  # waiting for J1's first article; cut where J2 was released
        (10, "setup", "J2"),  # J1's until the release came in
        (12, "running", "J2"),
    ]
    assert [p.job for p in shop.store.parts("vf2-01", 0, T0 + 60 * MIN)] == ["J1", "J2"]
    shop.at(15, execution="ACTIVE")
    shop.at(16, execution="READY", parts=2)  # J2's quantity, counted on its book
    assert {o.job: o.status for o in shop.store.operations("vf2-01")}["J2"] == "complete"


def test_a_release_after_the_program_was_loaded_does_not_start_it(shop: Shop) -> None:
    """Released (at 11) after its program was loaded (at 10): whether the operator was setting up this
    job is not known, and nothing starts until a program change or a person says so."""
    shop.ok("dispatch", machine="vf2-01", operations=[])
    shop.online(program="O1")
    shop.at(10, mode="MANUAL", program="O2")
    shop.at(12, mode="AUTOMATIC", execution="ACTIVE")
    shop.ok("dispatch_update", operation=op("J2", "O2", 3), at=when(11))
    shop.ok("dispatch_update", operation=op("J3", "O2", 3))  # no `at`: released now
    assert {o.job: o.status for o in shop.store.operations("vf2-01")} == {"J2": "planned", "J3": "planned"}


def test_a_late_release_leaves_decisions_made_since_and_work_released_after_the_change(shop: Shop) -> None:
    """J1 completed by hand after the program change: the late J2 does not start (the record keeps
    J1's time as it was). And a late release of other work does not start J3, released after O3
    was loaded."""
    shop.ok("dispatch", machine="vf2-01", operations=[op("J1", "O1", 5)])
    shop.online(program="O0")
    shop.at(1, mode="MANUAL", program="O1")  # J1 starts
    shop.at(2, mode="AUTOMATIC", execution="ACTIVE")
    shop.at(10, mode="MANUAL", program="O2", execution="READY")
    shop.ok("operation", action="complete", machine="vf2-01", job="J1", operation="10", at=when(13))
    shop.at(14, mode="AUTOMATIC", execution="ACTIVE")
    shop.clock.now = T0 + 15 * MIN
    shop.ok("dispatch_update", operation=op("J2", "O2", 3), at=when(9))
    assert {o.job: o.status for o in shop.store.operations("vf2-01")} == {"J1": "complete", "J2": "planned"}
    shop.at(20, mode="MANUAL", program="O3", execution="READY")
    shop.ok("dispatch_update", operation=op("J3", "O3", 3), at=when(21))  # released after O3 was loaded
    shop.ok("dispatch_update", operation=op("J9", "O9", 3), at=when(19))  # other work, released before
    status = {o.job: o.status for o in shop.store.operations("vf2-01")}
    assert (status["J3"], status["J9"]) == ("planned", "planned")


def test_a_late_release_of_two_operations_on_one_program_asks_which(shop: Shop) -> None:
    shop.ok("dispatch", machine="vf2-01", operations=[])
    shop.online(program="O1")
    shop.at(10, mode="MANUAL", program="O7")
    shop.at(12, mode="AUTOMATIC", execution="ACTIVE")
    shop.ok("dispatch", machine="vf2-01", operations=[op("A1", "O7"), op("B2", "O7")], at=when(9))
    job = shop.service.job_json(shop.site.machine("vf2-01"))
    assert job["confirmation_needed"]["since"] == when(10)
    assert shop.store.pending("vf2-01") is not None
    shop.ok("operation", action="confirm", machine="vf2-01", job="B2", operation="10")
    assert [(row(i)[0], row(i)[5]) for i in shop.intervals()][-2:] == [(9, None), (10, "B2")]


def test_a_standing_machines_reason_in_the_record_follows_the_clock(shop: Shop) -> None:
    """The open interval's reason changes with time alone (a micro-stop grows into a long stop): the
    service rewrites it without waiting for new data."""
    shop.online(program="O1")
    shop.at(1, execution="ACTIVE")
    shop.at(2, execution="READY")
    current = shop.store.current_state("vf2-01")
    assert current is not None
    assert current.piece is not None
    assert current.piece["reason"] == "micro_stop"
    shop.clock.now = T0 + 180 * MIN  # three hours later, nothing new from the machine
    shop.service._refresh_stops()
    shop.service.flush()
    current = shop.store.current_state("vf2-01")
    assert current is not None
    assert current.piece is not None
    assert (current.piece["reason"], current.piece["stop_start"]) == ("unclassified", when(2))
