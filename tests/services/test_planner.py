"""The planner's and the ERP's API (`/api/v1/planner/jobs`, `/api/v1/planner/utilisation`) and what
every report has now: a default range (the current shift or production day) said in the answer, the
site's time zone and local times beside UTC, durations as h:mm, parts made next to the controller's
raw counter, examples in the OpenAPI document, and bad windows refused naming the field. On the day
of tests/services/test_review.py (Wednesday 18 November 2026 in Dayton), read at 07:00 the next
morning unless said otherwise."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.context.record import RecordStore
from tests.services.test_review import AUTH, app_for, at, write_day


@pytest.fixture
def store(make_record: Callable[..., RecordStore], tmp_path: Path) -> Iterator[RecordStore]:
    s = make_record("record")
    write_day(s)
    yield s
    s.close()


@pytest.fixture
def client(store: RecordStore) -> Iterator[TestClient]:
    with TestClient(app_for(store)) as c:
        yield c


YESTERDAY = {"start": "2026-11-18T00:00:00-05:00", "end": "2026-11-19T00:00:00-05:00"}


def test_jobs_planned_against_actual_with_variance_remaining_time_and_flags(client: TestClient) -> None:
    body = client.get("/api/v1/planner/jobs", params=YESTERDAY, headers=AUTH).json()
    assert body["timezone"] == "America/New_York"
    assert (body["as_of"], body["as_of_local"]) == ("2026-11-19T12:00:00.000Z", "2026-11-19T07:00:00-05:00")
    ops = {o["job"]: o for j in body["jobs"] for o in j["operations"]}
    assert set(ops) == {"J1", "J2", "J3", "J4", "J5"}
    j1 = ops["J1"]  # completed by hand at 11:30, planned to end at 11:00, 15 good of 20
    assert (j1["status"], j1["made"], j1["good"], j1["scrap"], j1["quantity_variance"]) == (
        "complete",
        16,
        15,
        1,
        -5,
    )
    assert (j1["planned_start_local"], j1["planned_end_local"], j1["actual_end_local"]) == (
        "2026-11-18T06:00:00-05:00",
        "2026-11-18T11:00:00-05:00",
        "2026-11-18T11:30:00-05:00",
    )
    assert (j1["planned_hm"], j1["actual_hm"], j1["start_variance_hm"], j1["end_variance_hm"]) == (
        "5:00",
        "5:30",
        "0:00",
        "0:30",
    )
    assert (j1["late"], j1["short"], j1["at_risk"], j1["remaining"], j1["projected_end"]) == (
        True,
        True,
        False,
        0,
        None,
    )
    j2 = ops["J2"]  # running since 12:40 (40 min after its planned start), 49 of 100, a part every 10 min
    assert (j2["status"], j2["good"], j2["remaining"], j2["cycle_s"], j2["cycle_source"]) == (
        "active",
        49,
        51,
        600,
        "observed",
    )
    assert j2["cycles_observed"] == 48  # every count but the first is a cycle
    assert (j2["start_variance_hm"], j2["actual_hm"], j2["remaining_hm"]) == ("0:40", "18:20", "8:30")
    assert (j2["projected_end_local"], j2["end_variance_hm"], j2["at_risk"]) == (
        "2026-11-19T15:30:00-05:00",
        "7:30",
        True,
    )
    # queued after J2 on vf2-01: from 15:30, 10 parts at the dispatch list's 60 s
    j3 = ops["J3"]
    assert (j3["cycle_source"], j3["projected_end_local"], j3["at_risk"]) == (
        "dispatch",
        "2026-11-19T15:40:00-05:00",
        True,
    )
    # vf2-02 stands: J4 starts at its planned 07:30 and ends 07:40, in time for 10:00
    j4 = ops["J4"]
    assert (j4["projected_end_local"], j4["at_risk"], j4["end_variance_hm"]) == (
        "2026-11-19T07:40:00-05:00",
        False,
        "-2:20",
    )
    j5 = ops["J5"]
    assert (j5["late"], j5["short"], j5["end_variance_hm"]) == (True, False, "2:00")
    jobs = {j["job"]: j for j in body["jobs"]}
    assert (jobs["J2"]["at_risk"], jobs["J2"]["end_local"]) == (True, "2026-11-19T15:30:00-05:00")
    assert (jobs["J1"]["short"], jobs["J1"]["late"], jobs["J4"]["at_risk"]) == (True, True, False)


def test_jobs_default_to_the_production_day_and_filter(client: TestClient) -> None:
    body = client.get("/api/v1/planner/jobs", headers=AUTH).json()
    assert body["range"]["default"] == "production day"
    assert (body["range"]["start_local"], body["range"]["end_local"]) == (
        "2026-11-19T00:00:00-05:00",
        "2026-11-19T07:00:00-05:00",
    )
    assert [j["job"] for j in body["jobs"]] == ["J2", "J3", "J4"]  # the open ones: nothing else today
    only = client.get("/api/v1/planner/jobs", params={**YESTERDAY, "machine": "vf2-02"}, headers=AUTH).json()
    assert [j["job"] for j in only["jobs"]] == ["J4", "J5"]
    one = client.get("/api/v1/planner/jobs", params={**YESTERDAY, "job": "J1"}, headers=AUTH).json()
    assert [j["job"] for j in one["jobs"]] == ["J1"]


def test_utilisation_by_machine_and_shift(client: TestClient) -> None:
    body = client.get("/api/v1/planner/utilisation", params=YESTERDAY, headers=AUTH).json()
    rows = {(r["machine"], r["shift"]): r for r in body["rows"]}
    assert set(rows) == {(m, f"2026-11-18/{s}") for m in ("vf2-01", "vf2-02") for s in ("first", "second")}
    first = rows[("vf2-01", "2026-11-18/first")]
    # 8 h in the shift, lunch planned: 7:30 planned, it ran 4:20
    assert (first["start_local"], first["end_local"], first["available_hm"]) == (
        "2026-11-18T06:00:00-05:00",
        "2026-11-18T14:00:00-05:00",
        "8:00",
    )
    assert (first["recorded_s"], first["planned_hm"], first["running_hm"]) == (8 * 3600, "7:30", "4:20")
    assert first["utilisation"] == pytest.approx(260 / 480, abs=1e-4)
    assert first["of_planned"] == pytest.approx(260 / 450, abs=1e-4)
    assert rows[("vf2-02", "2026-11-18/second")]["running_hm"] == "7:00"
    # by default the production day so far: the first hour of Thursday's first shift, both standing
    today = client.get("/api/v1/planner/utilisation", headers=AUTH).json()
    assert today["range"]["default"] == "production day"
    assert [(r["machine"], r["shift"], r["available_hm"], r["running_hm"]) for r in today["rows"]] == [
        ("vf2-01", "2026-11-19/first", "1:00", "0:00"),
        ("vf2-02", "2026-11-19/first", "1:00", "0:00"),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/downtime",
        "/api/v1/oee",
        "/api/v1/losses",
        "/api/v1/counts",
        "/api/v1/machines/vf2-01/intervals",
    ],
)
def test_every_report_defaults_to_the_current_shift_and_says_so(store: RecordStore, path: str) -> None:
    with TestClient(app_for(store)) as c:  # 07:00: in Thursday's first shift
        now = c.get(path, headers=AUTH).json()
        assert now["timezone"] == "America/New_York"
        assert now["range"] == {
            "start": "2026-11-19T11:00:00.000Z",
            "end": "2026-11-19T12:00:00.000Z",
            "start_local": "2026-11-19T06:00:00-05:00",
            "end_local": "2026-11-19T07:00:00-05:00",
            "timezone": "America/New_York",
            "default": "current shift",
        }
        assert (now["start"], now["end"]) == (now["range"]["start"], now["range"]["end"])  # as before
        since = c.get(path, params={"start": "2026-11-19T05:00:00-05:00"}, headers=AUTH).json()
        assert (since["range"]["start_local"], since["range"]["default"]) == (
            "2026-11-19T05:00:00-05:00",
            "to now",
        )
        until = c.get(path, params={"end": "2026-11-18T15:00:00-05:00"}, headers=AUTH).json()
        assert (until["range"]["start_local"], until["range"]["default"]) == (
            "2026-11-18T14:00:00-05:00",
            "shift",
        )
    with TestClient(app_for(store, at(23))) as c:  # 23:00 on Wednesday: between shifts
        late = c.get(path, headers=AUTH).json()
        assert (late["range"]["start_local"], late["range"]["end_local"], late["range"]["default"]) == (
            "2026-11-18T00:00:00-05:00",
            "2026-11-18T23:00:00-05:00",
            "production day",
        )


def test_local_times_and_h_mm_beside_utc(client: TestClient) -> None:
    intervals = client.get("/api/v1/machines/vf2-01/intervals", params=YESTERDAY, headers=AUTH).json()
    fault = next(i for i in intervals["intervals"] if i["reason"] == "machine_fault")
    assert (fault["start"], fault["start_local"], fault["end_local"], fault["duration_hm"]) == (
        "2026-11-18T14:00:00.000Z",
        "2026-11-18T09:00:00-05:00",
        "2026-11-18T10:30:00-05:00",
        "1:30",
    )
    assert intervals["intervals"][-1]["start_local"] == "2026-11-18T22:00:00-05:00"  # the open one
    rows = client.get("/api/v1/downtime", params=YESTERDAY, headers=AUTH).json()["rows"]
    assert {(r["machine"], r["reason"], r["duration_hm"]) for r in rows} >= {
        ("vf2-01", "machine_fault", "1:30")
    }
    oee = client.get("/api/v1/oee", params=YESTERDAY, headers=AUTH).json()
    assert {r["group"]["machine"]: r["planned_hm"] for r in oee["rows"]} == {
        "vf2-01": "15:30",
        "vf2-02": "16:00",
    }
    losses = client.get("/api/v1/losses", params=YESTERDAY, headers=AUTH).json()
    assert losses["total"]["reasons"][0]["hm"] == "2:30"  # machine faults on both


def test_the_machines_list_shows_parts_made_and_the_counter_apart(store: RecordStore) -> None:
    with TestClient(app_for(store, at(23))) as c:  # between shifts: the production day so far
        machines = {m["id"]: m for m in c.get("/api/v1/machines", headers=AUTH).json()}
    one = machines["vf2-01"]
    assert (one["shift"], one["parts_since_local"]) == (None, "2026-11-18T00:00:00-05:00")
    assert (one["parts_made"], one["parts_good"]) == (16 + 7 + 11 + 31, 16 + 7 + 11 + 31 - 1)
    assert one["controller_counter"] == 1000 + 16 + 7 + 11 + 31  # raw, as the controller shows it
    assert "part_count" not in one
    assert machines["vf2-02"]["since_local"] == "2026-11-18T22:00:00-05:00"
    with TestClient(app_for(store)) as c:  # 07:00 next morning: first shift, nothing made yet
        now = {m["id"]: m for m in c.get("/api/v1/machines", headers=AUTH).json()}
    assert (now["vf2-01"]["shift"], now["vf2-01"]["parts_made"]) == ("2026-11-19/first", 0)


BAD = [
    (
        {"start": "2026-11-18T12:00:00-05:00", "end": "2026-11-18T06:00:00-05:00"},
        "end must be after start",
        "end",
    ),
    (
        {"start": "2016-11-18T00:00:00-05:00", "end": "2026-11-18T00:00:00-05:00"},
        "longer than 31 days",
        "start",
    ),
    ({"start": "2999-01-01T00:00:00Z"}, "start must be before now", "start"),
]
REPORTS = [
    "/api/v1/planner/jobs",
    "/api/v1/planner/utilisation",
    "/api/v1/downtime",
    "/api/v1/oee",
    "/api/v1/losses",
    "/api/v1/counts",
    "/api/v1/machines/vf2-01/intervals",
]


@pytest.mark.parametrize("path", REPORTS)
def test_bad_input_is_a_clear_4xx_naming_the_field_and_nothing_else_changes(
    client: TestClient, path: str
) -> None:
    def ask(params: dict[str, Any]) -> Any:
        return client.get(path, params=params, headers=AUTH)

    before = ask(YESTERDAY).json()
    for params, words, field in BAD:
        answer = ask(params)
        assert answer.status_code == 422, (params, answer.text)
        problem = answer.json()
        assert (problem["error"], problem["errors"][0]["loc"]) == ("invalid", ["query", field])
        assert words in problem["detail"]
    if "{" not in path and "intervals" not in path and "counts" not in path:
        unknown = ask({**YESTERDAY, "machine": ["vf2-01", "nope"]})
        assert unknown.status_code == 404
        assert unknown.json()["errors"][0]["loc"] == ["query", "machine"]
        assert "nope" in unknown.json()["detail"]
    assert ask(YESTERDAY).json() == before


def test_an_unknown_job_or_machine_path_is_a_404(client: TestClient) -> None:
    job = client.get("/api/v1/planner/jobs", params={"job": "J99"}, headers=AUTH)
    assert (job.status_code, job.json()["errors"][0]["loc"]) == (404, ["query", "job"])
    path = client.get("/api/v1/machines/nope/intervals", headers=AUTH)
    assert (path.status_code, path.json()["errors"][0]["loc"]) == (404, ["path", "machine_id"])


def test_the_openapi_document_has_examples_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/api/v1/planner/jobs", "/api/v1/planner/utilisation"):
        get = spec["paths"][path]["get"]
        assert {"200", "401", "404", "422"} <= set(get["responses"]), path
        start = next(p for p in get["parameters"] if p["name"] == "start")
        assert start["schema"]["examples"] or start.get("examples"), path
    schemas = spec["components"]["schemas"]
    assert schemas["OperationPlan"]["examples"][0]["cycle_source"] == "observed"
    assert schemas["UtilisationRow"]["examples"][0]["shift"] == "2026-11-18/second"
    assert schemas["MachineOut"]["examples"][0]["controller_counter"] == 48211
    assert schemas["Range"]["properties"]["default"]["examples"] == ["current shift"]
