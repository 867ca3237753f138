"""The morning review (`/api/v1/review` and the printable `/review`) on a record written by hand, with
every figure worked out here: Wednesday 18 November 2026 in Dayton (America/New_York), first shift
06:00-14:00 with lunch 11:30-12:00, second 14:00-22:00; the review read at 07:00 the next morning.

vf2-01: J1/10 (quantity 20) sets up 06:00-07:00, runs 07:00-09:00 (a part every 10 min), stands on a
machine fault 09:00-10:30, runs 10:30-11:30 and is completed by hand at 11:30 with 16 made and one
scrapped (short by 5, 30 min after its planned end); lunch 11:30-12:00; unclassified 12:00-12:40;
J2/10 (quantity 100, due 08:00 the next day) runs 12:40-16:00, stands unclassified 16:00-16:45 (one
stop in two pieces: an operator logged in at 16:20), runs on to 22:00. J3/10 (10 parts at 60 s) is
queued after it, due 12:00 the next day.
vf2-02: J5/10 (quantity 167) runs 06:00-13:00 (a part every 5 min), waits 45 min on inspection, runs
13:45-18:00, stands on a machine fault 18:00-19:00 and runs until it completes at 22:00, two hours
after its planned end. J4/10 is queued, due 10:00 the next day, and can make it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Page
from pydantic import SecretStr

from services.api import tokens
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.context.jobs import ACTIVE, COMPLETE, PLANNED, Operation
from services.context.record import RecordStore
from services.context.shifts import BreakDef, ShiftCalendar, ShiftDef
from services.context.state import Interval, MachineState, PartsMade
from tests.browser import browser, page, screenshot  # noqa: F401 (fixtures)

S = MachineState
ZONE = ZoneInfo("America/New_York")
TOKEN = "r" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIN = 60_000


def at(hh: int, mm: int = 0, day: int = 18) -> int:
    """UTC ms of a local time in Dayton in November 2026."""
    return int(datetime(2026, 11, day, hh, mm, tzinfo=ZONE).timestamp() * 1000)


NOW = at(7, 0, day=19)
WEEK = frozenset(range(7))
CALENDAR = ShiftCalendar(
    "America/New_York",
    [
        ShiftDef("first", time(6), time(14), WEEK, (BreakDef("lunch", time(11, 30), time(12)),)),
        ShiftDef("second", time(14), time(22), WEEK),
    ],
)


@dataclass
class Day:
    """The record of the day, and what was written into it."""

    store: RecordStore
    counter: dict[str, int]

    def run(self, m: str, a: int, b: int, job: str, every_min: int) -> list[PartsMade]:
        """Running [a, b) on `job`/10, a part every `every_min` minutes (strictly inside it)."""
        parts = []
        t = a + every_min * MIN
        while t < b:
            self.counter[m] += 1
            shift = CALENDAR.shift_at(t)
            parts.append(PartsMade(m, t, 1, self.counter[m], job, "10", shift.key if shift else None))
            t += every_min * MIN
        return parts


def piece(
    m: str, a: int, b: int, state: S, reason: str | None = None, job: str | None = None, **kw: Any
) -> Interval:
    shift = CALENDAR.shift_at(a)
    return Interval(
        m,
        a,
        b,
        state,
        reason,
        "rule" if reason else None,
        job,
        "10" if job else None,
        shift.key if shift else None,
        **kw,
    )


def write_day(store: RecordStore) -> Day:
    store.register_machines(
        [
            ("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2 (1)"),
            ("vf2-02", "acme/dayton/machining/mills/cell-1/vf2-02", "Haas VF-2 (2)"),
        ]
    )
    day = Day(store, {"vf2-01": 1000, "vf2-02": 65530})
    one = "vf2-01"
    intervals = [
        piece(one, at(6), at(7), S.SETUP, "setup", "J1"),
        piece(one, at(7), at(9), S.RUNNING, None, "J1"),
        piece(one, at(9), at(10, 30), S.DOWN, "machine_fault", "J1"),
        piece(one, at(10, 30), at(11, 30), S.RUNNING, None, "J1"),
        piece(one, at(11, 30), at(12), S.IDLE, "planned_break"),
        piece(one, at(12), at(12, 40), S.IDLE, "unclassified", stop_start_ms=at(11, 30)),
        piece(one, at(12, 40), at(14), S.RUNNING, None, "J2"),
        piece(one, at(14), at(16), S.RUNNING, None, "J2"),
        piece(one, at(16), at(16, 20), S.IDLE, "unclassified", "J2", stop_start_ms=at(16)),
        piece(
            one, at(16, 20), at(16, 45), S.IDLE, "unclassified", "J2", operator="ann", stop_start_ms=at(16)
        ),
        piece(one, at(16, 45), at(22), S.RUNNING, None, "J2"),
    ]
    parts = [
        *day.run(one, at(7), at(9), "J1", 10),
        *day.run(one, at(10, 30), at(11, 30), "J1", 10),
        *day.run(one, at(12, 40), at(14), "J2", 10),
        *day.run(one, at(14), at(16), "J2", 10),
        *day.run(one, at(16, 45), at(22), "J2", 10),
    ]
    two = "vf2-02"
    intervals += [
        piece(two, at(6), at(13), S.RUNNING, None, "J5"),
        piece(two, at(13), at(13, 45), S.IDLE, "waiting_inspection", "J5"),
        piece(two, at(13, 45), at(14), S.RUNNING, None, "J5"),
        piece(two, at(14), at(18), S.RUNNING, None, "J5"),
        piece(two, at(18), at(19), S.DOWN, "machine_fault", "J5"),
        piece(two, at(19), at(22), S.RUNNING, None, "J5"),
    ]
    parts += [
        *day.run(two, at(6), at(13), "J5", 5),
        *day.run(two, at(13, 45), at(14), "J5", 5),
        *day.run(two, at(14), at(18), "J5", 5),
        *day.run(two, at(19), at(22), "J5", 5),
    ]
    current = [
        (one, S.IDLE, at(22), at(22), day.counter[one]),
        (two, S.IDLE, at(22), at(22), day.counter[two]),
    ]
    store.write(intervals, parts, current)
    ops = [
        Operation("J1", "10", one, "O1", 20, 1, "P-1", 540_000, at(6), at(11), COMPLETE, at(6), at(11, 30)),
        Operation("J2", "10", one, "O2", 100, 2, "P-2", 540_000, at(12), at(8, day=19), ACTIVE, at(12, 40)),
        Operation("J3", "10", one, "O3", 10, 3, "P-3", 60_000, at(9, day=19), at(12, day=19), PLANNED),
        Operation("J5", "10", two, "O5", 167, 1, "P-5", 270_000, at(6), at(20), COMPLETE, at(6), at(22)),
        Operation("J4", "10", two, "O4", 10, 2, "P-4", 60_000, at(7, 30, day=19), at(10, day=19), PLANNED),
    ]
    store.save_dispatch("cell", "erp", "test", at(5), "{}", ops, [])
    store.add_quality(one, at(11, 25), ("J1", "10"), "2026-11-18/first", "scrap", 1, "qc", "test")
    return day


def app_for(store: RecordStore, now: int = NOW) -> Any:
    return create_app(
        ApiSettings(api_token=SecretStr(TOKEN)),
        store,
        CALENDAR,
        timezone="America/New_York",
        clock=lambda: now,
    )


@pytest.fixture
def client(make_record: Callable[..., RecordStore], tmp_path: Path) -> Iterator[TestClient]:
    store = make_record("record")
    write_day(store)
    with TestClient(app_for(store)) as c:
        yield c
    store.close()


def test_the_review_of_yesterday_by_shift(client: TestClient) -> None:
    answer = client.get("/api/v1/review", headers=AUTH)
    assert answer.status_code == 200, answer.text
    r = answer.json()
    assert r["day"] == "2026-11-18"  # yesterday in Dayton at 07:00
    assert r["range"] == {
        "start": "2026-11-18T05:00:00.000Z",
        "end": "2026-11-19T05:00:00.000Z",
        "start_local": "2026-11-18T00:00:00-05:00",
        "end_local": "2026-11-19T00:00:00-05:00",
        "timezone": "America/New_York",
        "default": "yesterday",
    }
    assert (r["as_of_local"], r["today"]) == ("2026-11-19T07:00:00-05:00", "2026-11-19")

    # the biggest losses by machine and reason: 340 min lost in all
    assert r["lost_hm"] == "5:40"
    assert [(x["machine"], x["reason"], x["hm"], x["share"]) for x in r["top_losses"]] == [
        ("vf2-01", "machine_fault", "1:30", round(90 / 340, 4)),
        ("vf2-01", "unclassified", "1:25", round(85 / 340, 4)),
        ("vf2-01", "setup", "1:00", round(60 / 340, 4)),
        ("vf2-02", "machine_fault", "1:00", round(60 / 340, 4)),
        ("vf2-02", "waiting_inspection", "0:45", round(45 / 340, 4)),
    ]
    assert r["top_losses"][1]["by_shift"] == {"2026-11-18/first": "0:40", "2026-11-18/second": "0:45"}
    assert r["top_losses"][0]["big_loss"] == "breakdowns"

    # shift against shift, summed from times and counts
    first, second = r["shifts"]
    assert (first["shift"], first["start_local"], first["end_local"]) == (
        "2026-11-18/first",
        "2026-11-18T06:00:00-05:00",
        "2026-11-18T14:00:00-05:00",
    )
    # first: vf2-01 450 min planned (lunch out), 190 lost; vf2-02 480 planned, 45 lost
    assert (first["planned_hm"], first["run_hm"], first["downtime_hm"], first["planned_stops_hm"]) == (
        "15:30",
        "11:35",
        "3:55",
        "0:30",
    )
    # parts: vf2-01 11 + 5 of J1 and 7 of J2, vf2-02 83 + 2 of J5; one of J1 scrapped
    assert (first["made"], first["good"], first["rejected"]) == (108, 107, 1)
    ideal_first = (16 + 7) * 540 + 85 * 270
    assert first["availability"] == pytest.approx(695 / 930, abs=1e-4)
    assert first["performance"] == pytest.approx(ideal_first / (695 * 60), abs=1e-4)
    assert first["oee"] == pytest.approx(ideal_first * 107 / 108 / (930 * 60), abs=1e-4)
    # second: vf2-01 45 lost, vf2-02 60 lost; parts 11 + 31 and 47 + 35
    assert (second["planned_hm"], second["run_hm"], second["downtime_hm"]) == ("16:00", "14:15", "1:45")
    assert (second["made"], second["good"]) == (124, 124)
    assert second["oee"] == pytest.approx((42 * 540 + 82 * 270) / (960 * 60), abs=1e-4)
    assert {m["machine"]: m["downtime_hm"] for m in second["machines"]} == {
        "vf2-01": "0:45",
        "vf2-02": "1:00",
    }
    assert r["total"]["made"] == 232
    assert r["total"]["planned_hm"] == "31:30"

    # completed that day short or late
    assert [
        (
            o["job"],
            o["good"],
            o["quantity"],
            o["short_by"],
            o["actual_end_local"],
            o["late_by_hm"],
            o["short"],
        )
        for o in r["completed_short_or_late"]
    ] == [
        ("J1", 15, 20, 5, "2026-11-18T11:30:00-05:00", "0:30", True),
        ("J5", 167, 167, 0, "2026-11-18T22:00:00-05:00", "2:00", False),
    ]

    # at risk today: J2 has 51 parts to go at its 10 min cycle, from 07:00: 15:30, due 08:00; J3 after
    # it (10 at 60 s), due 12:00; J4 on vf2-02 (10 at 60 s from 07:30) makes its 10:00
    risks = {x["job"]: x for x in r["at_risk_today"]}
    assert set(risks) == {"J2", "J3"}
    j2 = risks["J2"]
    assert (j2["remaining"], j2["cycle_s"], j2["cycle_source"], j2["remaining_hm"]) == (
        51,
        600,
        "observed",
        "8:30",
    )
    assert (j2["projected_end_local"], j2["late_by_hm"], j2["overdue"]) == (
        "2026-11-19T15:30:00-05:00",
        "7:30",
        False,
    )
    j3 = risks["J3"]
    assert (j3["cycle_source"], j3["projected_end_local"], j3["late_by_hm"]) == (
        "dispatch",
        "2026-11-19T15:40:00-05:00",
        "3:40",
    )

    # the stops still unclassified: one row a stop, with its local start
    assert [(s["machine"], s["start_local"], s["hm"], s["shift"]) for s in r["unclassified"]] == [
        ("vf2-01", "2026-11-18T11:30:00-05:00", "0:40", "2026-11-18/first"),  # after lunch: 40 min of it
        ("vf2-01", "2026-11-18T16:00:00-05:00", "0:45", "2026-11-18/second"),
    ]
    assert r["unclassified_hm"] == "1:25"


def test_asked_on_the_day_itself_the_open_stop_counts_up_to_now(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> None:
    """At 16:30, for vf2-01 only: it ran 14:00-16:00 and has stood since, unclassified (its open
    interval): the stop is in the list, going on, and is the day's loss so far."""
    store = make_record("record")
    write_day(store)
    fresh = make_record("today")
    fresh.register_machines([("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2 (1)")])
    now = {"reason": "unclassified", "stop_start": "2026-11-18T21:00:00.000Z", "job": "J2", "operation": "10"}
    fresh.write(
        [piece("vf2-01", at(14), at(16), S.RUNNING, None, "J2")],
        [],
        [("vf2-01", S.IDLE, at(16), at(16, 30), 2000, None, None, now)],
    )
    with TestClient(app_for(fresh, at(16, 30))) as c:
        r = c.get("/api/v1/review", params={"day": "2026-11-18", "machine": "vf2-01"}, headers=AUTH).json()
    assert r["range"]["default"] is None
    assert [(s["start_local"], s["end"], s["hm"], s["job"]) for s in r["unclassified"]] == [
        ("2026-11-18T16:00:00-05:00", None, "0:30", "J2")
    ]
    assert [(x["reason"], x["hm"]) for x in r["top_losses"]] == [("unclassified", "0:30")]
    assert r["shifts"][1]["downtime_hm"] == "0:30"
    store.close()
    fresh.close()


def test_without_a_shift_calendar_the_day_is_the_local_date(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> None:
    store = make_record("record")
    write_day(store)
    app = create_app(
        ApiSettings(api_token=SecretStr(TOKEN)), store, timezone="America/New_York", clock=lambda: NOW
    )
    with TestClient(app) as c:
        r = c.get("/api/v1/review", headers=AUTH).json()
        page_text = c.get("/review", params={"key": TOKEN}).text
    assert (r["day"], r["shifts"], r["total"]["made"]) == ("2026-11-18", [], 232)
    # without a calendar all time is planned: the evening's idle from 22:00 to midnight too
    top = r["top_losses"][0]
    assert (top["machine"], top["reason"], top["hm"], top["by_shift"]["day"]) == (
        "vf2-01",
        "unclassified",
        "3:25",
        "2:00",
    )
    assert "Each machine" in page_text
    store.close()


def test_the_page_lists_the_worst_twenty_of_a_long_list(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> None:
    """30 unclassified stops of 2 to 31 minutes: the JSON has them all, the page the 20 longest."""
    store = make_record("record")
    store.register_machines([("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2 (1)")])
    stops = [
        piece("vf2-01", at(6) + n * 32 * MIN, at(6) + n * 32 * MIN + (2 + n) * MIN, S.IDLE, "unclassified")
        for n in range(30)
    ]
    store.write(stops, [], [("vf2-01", S.IDLE, at(22), at(22), 0)])
    with TestClient(app_for(store)) as c:
        assert len(c.get("/api/v1/review", headers=AUTH).json()["unclassified"]) == 30
        text = c.get("/review", params={"key": TOKEN}).text
    listed = text.split("Stops still unclassified")[1]
    assert "The 20 of 30 stops, the longest first" in listed
    assert "<b>0:31</b>" in listed  # the longest is there
    assert "<b>0:12</b>" in listed  # the twentieth
    assert "<b>0:11</b>" not in listed
    store.close()


@pytest.mark.parametrize(
    ("params", "code", "words", "where"),
    [
        ({"day": "2026-11-31"}, 422, "day", ["query", "day"]),
        ({"day": "18.11.2026"}, 422, "expected a date YYYY-MM-DD", ["query", "day"]),
        ({"day": "0001-01-01"}, 422, "expected a year from 1970 to 2999", ["query", "day"]),
        ({"day": "2026-11-20"}, 422, "2026-11-20 has not begun", ["query", "day"]),
        ({"machine": "nope"}, 404, "no machines ['nope']", ["query", "machine"]),
        ({"top": "0"}, 422, "top", ["query", "top"]),
    ],
)
def test_bad_requests_name_the_field_and_change_nothing(
    client: TestClient, params: dict[str, str], code: int, words: str, where: list[str]
) -> None:
    before = client.get("/api/v1/review", headers=AUTH).json()
    answer = client.get("/api/v1/review", params=params, headers=AUTH)
    assert answer.status_code == code, answer.text
    assert words in answer.json()["detail"]
    assert answer.json()["errors"][0]["loc"] == where
    assert client.get("/api/v1/review", headers=AUTH).json() == before


def test_the_review_needs_a_token_and_the_page_a_key(client: TestClient) -> None:
    assert client.get("/api/v1/review").status_code == 401
    assert client.get("/api/v1/review", params={"key": TOKEN}).status_code == 401  # the API: a header
    page_answer = client.get("/review")
    assert page_answer.status_code == 401
    assert page_answer.json()["errors"][0]["loc"] == ["query", "key"]
    assert client.get("/review", params={"key": "wrong" * 8}).status_code == 401
    shown = client.get("/review", params={"key": TOKEN, "day": "2026-11-18"})
    assert shown.status_code == 200
    assert shown.headers["content-type"].startswith("text/html")
    assert "<script" not in shown.text
    assert "http" not in shown.text  # nothing from elsewhere
    assert shown.headers["referrer-policy"] == "no-referrer"  # the key is in the link
    assert shown.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in shown.headers["content-security-policy"]
    # a viewer's named token opens it; a display link opens the floor view only
    store: RecordStore = client.app.state.store  # type: ignore[attr-defined]
    viewer = tokens.issue(store, "lead", "viewer", NOW)[1]
    display = tokens.issue(store, "hall TV", "display", NOW)[1]
    assert client.get("/review", params={"key": viewer}).status_code == 200
    refused = client.get("/review", params={"key": display})
    assert refused.status_code == 403
    assert refused.json()["errors"][0]["loc"] == ["query", "key"]


def test_the_openapi_document_has_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    review = spec["paths"]["/api/v1/review"]["get"]
    day = next(p for p in review["parameters"] if p["name"] == "day")
    assert day["schema"]["examples"] == ["2026-11-18"] or day.get("examples")
    assert {"200", "401", "404", "422"} <= set(review["responses"])
    assert spec["paths"]["/review"]["get"]["responses"]["200"]["content"].keys() == {"text/html"}


def test_the_printable_review_in_chromium(client: TestClient, page: Page) -> None:  # noqa: F811
    shown = client.get("/review", params={"key": TOKEN, "day": "2026-11-18"})
    page.set_viewport_size({"width": 900, "height": 1200})  # about A4 at 96 dpi, for the screenshot
    # served as the API serves it, headers and all: its content security policy lets its style through
    page.route(
        "http://uns.test/**",
        lambda route: route.fulfill(status=200, headers=dict(shown.headers), body=shown.content),
    )
    page.goto("http://uns.test/review?day=2026-11-18")
    assert page.eval_on_selector("th", "e => getComputedStyle(e).backgroundColor") == "rgb(238, 238, 238)"
    text = page.inner_text("body")
    for words in (
        "Morning review: Wednesday 18 November 2026",
        "Biggest losses",
        "Machine fault",
        "Shift against shift",
        "Operations completed short or late",
        "J1/10",
        "5 short",
        "Jobs at risk today",
        "J2/10",
        "Stops still unclassified",
        "16:00",
    ):
        assert words in text, words
    shot = screenshot(page, "review")
    assert shot.stat().st_size > 10_000
    pdf = page.pdf(format="A4")  # it prints: A4 (and Letter) in a page or two
    assert pdf.startswith(b"%PDF")
    assert pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages") <= 2
