"""Exports (services/api/exports.py) against a real SQLite record generated into a RecordStore: every
interval of a range exactly once (CSV and JSON Lines parsed back), pieces across the range's edges
whole, local times across a daylight-saving change, part counts, operations and the reason audit,
bad requests named, and a large export streamed in bounded memory (tracemalloc, driving the ASGI app
directly: the TestClient gathers the whole body before it answers)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import tracemalloc
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api.app import create_app
from services.api.exports import Times
from services.api.settings import ApiSettings
from services.context.jobs import Operation
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar, ShiftDef
from services.context.state import Interval, MachineState, PartsMade, Story
from uns.clock import iso, parse_iso

TOKEN = "e" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ZONE = "America/New_York"
T0 = parse_iso("2026-10-31T00:00:00Z")  # the clocks go back on 2026-11-01 at 06:00Z
MINUTE = 60_000
MACHINES = [f"m{n:02d}" for n in range(12)]
STOPS = (MachineState.IDLE, MachineState.DOWN, MachineState.SETUP)
REASONS = ("tooling", "machine_fault", "setup", "micro_stop", "unclassified")
TRICKY = ('operator said "chip, jam"', "line one\nline two", "Größe ✓; comma, quote \"'", "")


@dataclass
class Generated:
    """What was written, to check the export against."""

    intervals: list[Interval] = field(default_factory=list)
    parts: list[PartsMade] = field(default_factory=list)
    reports: list[tuple[str, int, str, int]] = field(default_factory=list)  # machine, ts, result, qty
    operations: list[Operation] = field(default_factory=list)
    audit: list[tuple[str, int, str, int]] = field(default_factory=list)  # machine, stop, new, changed


def generate(
    store: RecordStore, machines: list[str], count: int, *, seed: int = 7, people: bool = True
) -> Generated:
    """`count` intervals a machine from T0: running and stops (of one to three pieces that share
    their stop's start), each 1 to 25 minutes, with job, operation, shift, operator, reason and
    evidence; a part count at the end of each running interval; some scrap reports; one operation a
    job; some operators' reasons (with their audit rows). Without `people`: the machines' intervals
    and counts only, with plain evidence (a large record, quickly)."""
    rng = random.Random(seed)
    out = Generated()
    store.register_machines((m, f"acme/dayton/a/l/c/{m}", m.upper()) for m in machines)
    for m in machines:
        t, counter, made = T0 + rng.randrange(0, 10 * MINUTE), 0, 0
        batch: list[Interval] = []
        parts: list[PartsMade] = []
        stop_start: int | None = None
        job_start = t
        n = 0
        while n < count:
            job = f"J{m}-{n // 40}"
            running = n % 4 == 0
            if n % 40 == 0:
                job_start = t
            end = t + rng.randrange(1, 25) * MINUTE + rng.randrange(0, 1000)
            shift = f"{datetime.fromtimestamp(t / 1000, UTC).date()}/{'first' if n % 2 else 'second'}"
            evidence = rng.choice(TRICKY) if people else "rule: feed hold"
            if running:
                stop_start = None
                story = Story(program="O1001", parts=made, execution="ACTIVE")
                batch.append(
                    Interval(
                        *(m, t, end, MachineState.RUNNING, None, None, job, "10", shift, "ann"),
                        *(None, t, None, None, story),
                    )
                )
                counter += 1
                made += 1
                parts.append(PartsMade(m, end, 1, counter, job, "10", shift))
            else:
                stop_start = t if stop_start is None else stop_start
                state = STOPS[n % 3]
                reason = REASONS[n % len(REASONS)]
                batch.append(
                    Interval(
                        *(m, t, end, state, reason, "rule", job, "10", shift, "ann", None),
                        *(t, evidence or None, stop_start),
                    )
                )
            if n % 40 == 39:
                op = Operation(job, "10", m, "O1001", 40, n // 40, "P-1", 90_000, job_start, end)
                op.status, op.actual_start_ms, op.actual_end_ms = "complete", job_start, end
                out.operations.append(op)
            t = end
            n += 1
            if len(batch) >= 5000:
                store.write(batch, parts)
                out.intervals += batch
                out.parts += parts
                batch, parts = [], []
        store.write(batch, parts)
        out.intervals += batch
        out.parts += parts
    if not people:
        return out
    for op in out.operations[::3]:
        store.add_quality(
            op.machine_id, op.actual_start_ms or 0, (op.job, "10"), None, "scrap", 2, "qa", "api"
        )
        out.reports.append((op.machine_id, op.actual_start_ms or 0, "scrap", 2))
    if out.operations:
        store.save_dispatch("test", "planner", "api", T0, "{}", out.operations, [])
    stops = [i for i in out.intervals if i.stop_start_ms == i.start_ms][::7]
    for i in stops:
        changed = i.end_ms + 5 * MINUTE
        store.set_reason(
            i.machine_id, i.start_ms, i.reason, "tooling", "maria", "api", changed, "chipped, again"
        )
        out.audit.append((i.machine_id, i.start_ms, "tooling", changed))
    return out


def app_of(store: RecordStore, calendar: ShiftCalendar | None = None, now_ms: int | None = None) -> FastAPI:
    return create_app(
        ApiSettings(api_token=SecretStr(TOKEN)),
        store,
        calendar,
        timezone=ZONE,
        clock=(lambda: now_ms) if now_ms is not None else None,
    )


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecordStore, Generated]]:
    store = RecordStore(tmp_path_factory.mktemp("exports") / "record.db")
    generated = generate(store, MACHINES, 1500)  # 18 000 intervals over about a week
    yield store, generated
    store.close()


@pytest.fixture
def client(record: tuple[RecordStore, Generated]) -> Iterator[TestClient]:
    with TestClient(app_of(record[0])) as c:
        yield c


def get(client: TestClient, kind: str, **params: Any) -> Any:
    response = client.get(f"/api/v1/export/{kind}", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return response


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def jsonl_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# -- intervals ------------------------------------------------------------------------------------
RANGE = (T0 + 17 * 3_600_000 + 12_345, T0 + 3 * 86_400_000 + 7 * MINUTE)  # across the DST change


def test_every_interval_in_the_range_once_in_csv_and_jsonl(
    client: TestClient, record: tuple[RecordStore, Generated]
) -> None:
    _, generated = record
    start_ms, end_ms = RANGE
    expected = {
        (i.machine_id, i.start_ms): i
        for i in generated.intervals
        if i.end_ms > start_ms and i.start_ms < end_ms
    }
    assert len(expected) > 2000
    params = {"start": iso(start_ms), "end": iso(end_ms)}
    as_csv = csv_rows(get(client, "intervals", **params).text)
    as_jsonl = jsonl_rows(get(client, "intervals", format="jsonl", **params).text)
    for rows in (as_csv, as_jsonl):
        keys = [(r["machine"], parse_iso(r["start"])) for r in rows]
        assert len(keys) == len(set(keys)) == len(expected)  # each once
        assert set(keys) == set(expected)
        assert keys == sorted(keys)  # by machine, then start
    for r, j in zip(as_csv, as_jsonl, strict=True):
        i = expected[(j["machine"], parse_iso(j["start"]))]
        assert parse_iso(j["end"]) == i.end_ms  # whole, with its true end
        assert j["duration_s"] == (i.end_ms - i.start_ms) / 1000
        assert j["state"] == i.state.value
        assert j["job"] == i.job
        assert j["shift"] == i.shift
        assert j["operator"] == "ann"
        assert j["stop_start"] == (iso(i.stop_start_ms) if i.stop_start_ms is not None else None)
        assert parse_iso(j["start_local"]) == i.start_ms
        assert parse_iso(j["end_local"]) == i.end_ms
        # the CSV says the same, as text (null is an empty field; quotes, commas, newlines survive)
        for column, value in j.items():
            text = "" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            if isinstance(value, str):
                text = value
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, float):
                text = repr(value)
            assert r[column] == text, (column, r[column], text)
    stops = [j for j in as_jsonl if j["state"] != "running"]
    assert {j["reason_evidence"] for j in stops} >= {t for t in TRICKY if t}
    assert any(j["reason_source"] == "operator" and j["reason"] == "tooling" for j in stops)
    assert all(j["story"] is None or j["story"]["program"] == "O1001" for j in as_jsonl)
    assert any(j["story"] is not None for j in as_jsonl if j["state"] == "running")


def test_pieces_across_the_edges_are_whole_and_in_both_ranges(
    client: TestClient, record: tuple[RecordStore, Generated]
) -> None:
    _, generated = record
    ms = [i for i in generated.intervals if i.machine_id == "m03"]
    crossing = ms[200]  # the range boundary falls inside it
    middle = (crossing.start_ms + crossing.end_ms) // 2
    a = jsonl_rows(
        get(client, "intervals", format="jsonl", machine="m03", start=iso(T0), end=iso(middle)).text
    )
    b = jsonl_rows(
        get(
            client, "intervals", format="jsonl", machine="m03", start=iso(middle), end=iso(ms[400].end_ms)
        ).text
    )
    assert a[-1]["start"] == b[0]["start"] == iso(crossing.start_ms)  # in both, whole
    assert a[-1]["end"] == b[0]["end"] == iso(crossing.end_ms)
    assert a[-1]["in_range_s"] + b[0]["in_range_s"] == a[-1]["duration_s"]
    assert len(a) + len(b) - 1 == 401
    # a range that begins exactly where an interval ends does not hold that interval
    exact = jsonl_rows(
        get(
            client,
            "intervals",
            format="jsonl",
            machine="m03",
            start=iso(ms[10].end_ms),
            end=iso(ms[20].start_ms),
        ).text
    )
    assert [r["start"] for r in exact] == [iso(i.start_ms) for i in ms[11:20]]
    assert all(r["in_range_s"] == r["duration_s"] for r in exact)


def test_local_times_carry_their_offset_across_the_clock_change() -> None:
    times = Times(ZONE)
    rng = random.Random(3)
    change = parse_iso("2026-11-01T06:00:00Z")
    samples = [change + d for d in (-1, 0, 1, -3_600_000, 3_599_999)] + [
        change + rng.randrange(-86_400_000 * 40, 86_400_000 * 40) for _ in range(2000)
    ]
    for ms in samples:
        local = datetime.fromtimestamp(ms / 1000, times.tz).isoformat(timespec="milliseconds")
        assert times.local(ms) == local
        assert times.utc(ms) == iso(ms)
    assert times.local(change - 1) == "2026-11-01T01:59:59.999-04:00"
    assert times.local(change) == "2026-11-01T01:00:00.000-05:00"
    assert Times("Asia/Kolkata").local(0) == "1970-01-01T05:30:00.000+05:30"


def test_machine_filter_repeatable(client: TestClient, record: tuple[RecordStore, Generated]) -> None:
    rows = csv_rows(
        client.get(
            "/api/v1/export/intervals",
            params=[
                ("machine", "m05"),
                ("machine", "m01"),
                ("machine", "m05"),
                ("start", iso(RANGE[0])),
                ("end", iso(RANGE[1])),
            ],
            headers=AUTH,
        ).text
    )
    assert {r["machine"] for r in rows} == {"m01", "m05"}
    assert rows[0]["machine"] == "m01"  # by machine id
    assert rows[0]["path"] == "acme/dayton/a/l/c/m01"


# -- parts, operations, reasons ---------------------------------------------------------------------
def test_parts_are_counts_and_reports(client: TestClient, record: tuple[RecordStore, Generated]) -> None:
    _, generated = record
    start_ms, end_ms = RANGE
    rows = jsonl_rows(get(client, "parts", format="jsonl", start=iso(start_ms), end=iso(end_ms)).text)
    made = [r for r in rows if r["kind"] == "made"]
    assert {(r["machine"], parse_iso(r["time"]), r["counter"]) for r in made} == {
        (p.machine_id, p.timestamp, p.counter) for p in generated.parts if start_ms <= p.timestamp < end_ms
    }
    reports = [r for r in rows if r["kind"] != "made"]
    assert {(r["machine"], parse_iso(r["time"]), r["kind"], r["quantity"]) for r in reports} == {
        r for r in generated.reports if start_ms <= r[1] < end_ms
    }
    assert reports
    assert all(r["by"] == "qa" and r["via"] == "api" and r["counter"] is None for r in reports)
    keys = [(r["machine"], r["time"]) for r in rows]
    assert keys == sorted(keys)
    text = get(client, "parts", start=iso(start_ms), end=iso(end_ms)).text
    assert text.startswith(
        "machine,path,time,time_local,kind,quantity,counter,job,operation,shift,by,via\r\n"
    )
    assert len(csv_rows(text)) == len(rows)


def test_operations_with_plan_actuals_and_counts(
    client: TestClient, record: tuple[RecordStore, Generated]
) -> None:
    _, generated = record
    start_ms, end_ms = RANGE
    rows = jsonl_rows(get(client, "operations", format="jsonl", start=iso(start_ms), end=iso(end_ms)).text)
    ran = {
        (o.job, o.operation): o
        for o in generated.operations
        if (o.actual_start_ms or 0) < end_ms and (o.actual_end_ms or 0) > start_ms
    }
    assert {(r["job"], r["operation"]) for r in rows} == set(ran)
    for r in rows:
        o = ran[(r["job"], r["operation"])]
        parts = [p for p in generated.parts if p.job == o.job]
        assert r["made"] == len(parts)
        assert r["made_in_range"] == len([p for p in parts if start_ms <= p.timestamp < end_ms])
        assert r["actual_start"] == iso(o.actual_start_ms or 0)
        assert r["status"] == "complete"
        assert r["ideal_cycle_s"] == 90.0
        assert r["part_number"] == "P-1"
        assert r["scrap"] == sum(
            q for m, ts, _, q in generated.reports if (m, ts) == (o.machine_id, o.actual_start_ms)
        )
    assert [(r["job"], r["operation"]) for r in rows] == sorted((r["job"], r["operation"]) for r in rows)


def test_reasons_are_the_audit_of_changes_made_in_the_range(
    client: TestClient, record: tuple[RecordStore, Generated]
) -> None:
    _, generated = record
    start_ms, end_ms = RANGE
    rows = csv_rows(get(client, "reasons", start=iso(start_ms), end=iso(end_ms)).text)
    assert {
        (r["machine"], parse_iso(r["stop_start"]), r["new_reason"], parse_iso(r["changed"])) for r in rows
    } == {a for a in generated.audit if start_ms <= a[3] < end_ms}
    assert all(r["by"] == "maria" and r["via"] == "api" and r["note"] == "chipped, again" for r in rows)
    assert all(r["new_reason_name"] and r["old_reason"] for r in rows)
    assert [int(r["seq"]) for r in rows] == sorted(int(r["seq"]) for r in rows)


# -- the range, the file, bad requests --------------------------------------------------------------
def test_without_a_range_the_last_production_day_or_the_last_24_hours(
    record: tuple[RecordStore, Generated],
) -> None:
    store, _ = record
    now = parse_iso("2026-11-04T15:00:00Z")  # a Wednesday, 10:00 in Dayton
    week = frozenset(range(5))
    calendar = ShiftCalendar(
        ZONE, [ShiftDef("first", time(6), time(14), week), ShiftDef("night", time(22), time(6), week)]
    )
    with TestClient(app_of(store, calendar, now)) as c:
        answer = get(c, "intervals")
        assert answer.headers["x-export-default"] == "last production day"
        # Tuesday 2026-11-03: from local midnight to the end of its night shift on Wednesday 06:00
        assert answer.headers["x-export-start"] == "2026-11-03T05:00:00.000Z"
        assert answer.headers["x-export-end"] == "2026-11-04T11:00:00.000Z"
        assert answer.headers["content-disposition"] == (
            'attachment; filename="intervals_2026-11-03_2026-11-04T0600.csv"'
        )
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        monday = parse_iso("2026-11-02T15:00:00Z")
    with TestClient(app_of(store, calendar, monday)) as c:  # the weekend had no shifts: Friday
        assert get(c, "parts").headers["x-export-start"] == "2026-10-30T04:00:00.000Z"
    with TestClient(app_of(store, None, now)) as c:
        answer = get(c, "reasons", format="jsonl")
        assert answer.headers["x-export-default"] == "last 24 h"
        assert answer.headers["x-export-start"] == "2026-11-03T15:00:00.000Z"
        assert answer.headers["content-type"] == "application/x-ndjson"
        assert answer.headers["content-disposition"].endswith('_2026-11-03T1000_2026-11-04T1000.jsonl"')
        given = get(c, "intervals", start="2026-11-01T00:00:00-04:00", end="2026-11-02T00:00:00-05:00")
        assert "x-export-default" not in given.headers
        assert (
            given.headers["content-disposition"]
            == 'attachment; filename="intervals_2026-11-01_2026-11-02.csv"'
        )


@pytest.mark.parametrize(
    ("path", "params", "status", "where", "words"),
    [
        (
            "intervals",
            {"start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"},
            422,
            ["query", "end"],
            "end must be after start",
        ),
        (
            "intervals",
            {"start": "2016-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            422,
            ["query", "start"],
            "longer than 366 days",
        ),
        ("parts", {"machine": ["m01", "nope"]}, 404, ["query", "machine"], "no machines ['nope']"),
        ("everything", {}, 422, ["path", "kind"], "'intervals', 'parts', 'operations' or 'reasons'"),
        ("intervals", {"format": "xlsx"}, 422, ["query", "format"], "'csv' or 'jsonl'"),
        ("intervals", {"start": "2026-11-01T00:00:00"}, 422, ["query", "start"], "timezone"),
    ],
)
def test_bad_requests_name_the_field_and_the_next_request_is_answered(
    client: TestClient, path: str, params: dict[str, Any], status: int, where: list[str], words: str
) -> None:
    answer = client.get(f"/api/v1/export/{path}", params=params, headers=AUTH)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["errors"][0]["loc"] == where
    assert words in body["detail"]
    year = {"start": "2026-01-01T00:00:00-05:00", "end": "2027-01-01T00:00:00-05:00"}  # a year is fine
    assert len(csv_rows(get(client, "intervals", machine="m00", **year).text)) == 1500


def test_an_export_reads_one_record_while_the_context_service_writes(tmp_path: Path) -> None:
    """The export reads a snapshot of its own (a read-only connection, one read transaction): what
    is written while it runs is neither half in it nor blocked by it."""
    store = RecordStore(tmp_path / "record.db")
    generated = generate(store, ["w1", "w2"], 600, people=False)
    pages = store.export_intervals(["w1", "w2"], T0, T0 + 30 * 86_400_000, page=100)
    first = next(pages)
    last = max(i.end_ms for i in generated.intervals if i.machine_id == "w2")
    store.write([Interval("w2", last, last + MINUTE, MachineState.RUNNING)])  # not blocked
    store.replace_from(  # a rebuild of w1 from its 50th interval on, while the export is on page 1
        "w1",
        store.rebuild_start("w1", generated.intervals[50].start_ms),
        [
            Interval(
                "w1",
                generated.intervals[50].start_ms,
                generated.intervals[50].start_ms + 1,
                MachineState.IDLE,
            )
        ],
        [],
        (MachineState.IDLE, generated.intervals[50].start_ms + 1, generated.intervals[50].start_ms + 1, 0),
    )
    rest = [i for page in pages for i in page]
    assert [(i.machine_id, i.start_ms) for i in first + rest] == [
        (i.machine_id, i.start_ms) for i in generated.intervals
    ]  # the record as it was when the export began
    after = {
        (i.machine_id, i.start_ms, i.end_ms)
        for page in store.export_intervals(["w1", "w2"], T0, last * 2)
        for i in page
    }
    cut = generated.intervals[50].start_ms
    assert ("w1", cut, cut + 1) in after  # the next export has what was written
    assert ("w2", last, last + MINUTE) in after
    assert not any(m == "w1" and a > cut for m, a, _ in after)
    store.close()


def test_the_document_declares_the_files_and_the_errors(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/api/v1/export/{kind}"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/csv", "application/x-ndjson"}
    assert "Content-Disposition" in operation["responses"]["200"]["headers"]
    assert set(operation["responses"]) == {"200", "401", "404", "422"}
    for parameter in operation["parameters"]:
        assert parameter["schema"].get("examples"), parameter["name"]


# -- a large export in bounded memory -------------------------------------------------------------
@dataclass
class Streamed:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0  # body bytes
    lines: int = 0  # line ends (CRLF for a CSV)
    chunks: int = 0
    largest: int = 0  # the largest chunk


async def stream(app: FastAPI, path: str, query: str) -> Streamed:
    """GET over ASGI, keeping only counts of what came."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"test"), (b"authorization", f"Bearer {TOKEN}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    asked = False
    got = Streamed()
    end = b"\r\n" if "format=csv" in query else b"\n"

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays until the body is done
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got.status = message["status"]
            got.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            got.size += len(chunk)
            got.lines += chunk.count(end)
            got.chunks += 1 if chunk else 0
            got.largest = max(got.largest, len(chunk))

    await app(scope, receive, send)
    return got


LARGE_MACHINES = 6  # 60 000 intervals (24 MB of CSV, 40 MB of JSON Lines): tracemalloc makes it slow


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, int]]:
    store = RecordStore(tmp_path_factory.mktemp("large") / "record.db")
    generated = generate(store, [f"big{n:02d}" for n in range(LARGE_MACHINES)], 10_000, people=False)
    yield app_of(store), len(generated.intervals)
    store.close()


@pytest.mark.timeout(300)  # tracemalloc makes every allocation several times slower
@pytest.mark.parametrize("format_", ["csv", "jsonl"])
def test_a_large_export_streams_in_bounded_memory(large: tuple[FastAPI, int], format_: str) -> None:
    app, count = large
    assert count == LARGE_MACHINES * 10_000
    query = f"format={format_}&start=2026-10-01T00:00:00Z&end=2027-09-01T00:00:00Z"
    day = f"format={format_}&start=2026-10-31T00:00:00Z&end=2026-11-01T00:00:00Z"
    assert (
        asyncio.run(stream(app, "/api/v1/export/intervals", day)).status == 200
    )  # imports, first-call caches
    tracemalloc.start()
    try:
        got = asyncio.run(stream(app, "/api/v1/export/intervals", query))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.status == 200
    assert got.headers["content-disposition"].startswith('attachment; filename="intervals_')
    assert got.lines == count + (1 if format_ == "csv" else 0)  # every interval once (and the header row)
    assert got.size > 20_000_000
    assert got.chunks >= count // 1000  # sent as it was read, a few hundred rows a chunk
    assert got.largest < 1_000_000
    assert peak < got.size / 4, f"peak {peak / 1e6:.1f} MB for a body of {got.size / 1e6:.1f} MB"
