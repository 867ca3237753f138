"""The API against a real SQLite record: token required, machines, intervals, bad requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.context.record import RecordStore
from services.context.state import Interval, MachineState, PartsMade

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_795_300_000_000  # 2026-11-21T22:26:40Z


@pytest.fixture
def client(make_record: Callable[..., RecordStore], tmp_path: Path) -> Iterator[TestClient]:
    store = make_record("record")
    store.register_machines(
        [
            ("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2"),
            ("st20-01", "acme/dayton/machining/lathes/cell-3/st20-01", "Haas ST-20"),
        ]
    )
    store.write(
        [
            Interval("vf2-01", T0, T0 + 60_000, MachineState.SETUP),
            Interval("vf2-01", T0 + 60_000, T0 + 120_000, MachineState.RUNNING),
        ],
        [PartsMade("vf2-01", T0 + 120_000, 1, 11)],
        [("vf2-01", MachineState.IDLE, T0 + 120_000, T0 + 125_000, 11)],
    )
    with TestClient(create_app(ApiSettings(api_token=SecretStr(TOKEN)), store)) as c:
        yield c
    store.close()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/machines",
        "/metrics",
        "/api/v1/machines/vf2-01/intervals?start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z",
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
def test_every_route_needs_the_token(client: TestClient, path: str, headers: dict[str, str]) -> None:
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert "bearer token" in response.json()["detail"]


def test_the_document_and_swagger_ui_need_no_token(client: TestClient) -> None:
    """A newcomer opens /docs in a browser: the API's description holds no data."""
    assert client.get("/openapi.json").json()["info"]["title"] == "Shop-floor UNS API"
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text


def test_machines_with_state_and_since(client: TestClient) -> None:
    response = client.get("/api/v1/machines", headers=AUTH)
    assert response.status_code == 200
    by_id = {m["id"]: m for m in response.json()}
    assert by_id["vf2-01"]["state"] == "idle"
    assert by_id["vf2-01"]["since"] == "2026-11-21T22:28:40.000Z"
    assert by_id["vf2-01"]["path"] == "acme/dayton/machining/mills/cell-1/vf2-01"
    assert by_id["st20-01"]["state"] == "comms_loss"  # never heard from
    assert by_id["st20-01"]["since"] is None


def test_intervals_in_a_window_with_the_open_one_last(client: TestClient) -> None:
    response = client.get(
        "/api/v1/machines/vf2-01/intervals",
        params={"start": "2026-11-21T22:20:00Z", "end": "2026-11-21T23:00:00+00:00"},
        headers=AUTH,
    )
    assert response.status_code == 200
    body = response.json()
    assert [(i["state"], i["duration_s"]) for i in body["intervals"]] == [
        ("setup", 60.0),
        ("running", 60.0),
        ("idle", None),
    ]
    assert body["intervals"][-1]["end"] is None


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"start": "2026-11-22T04:00:00Z", "end": "2026-11-22T03:00:00Z"}, 422, "end must be after start"),
        ({"start": "2026-11-22T03:00:00", "end": "2026-11-22T04:00:00Z"}, 422, "timezone"),
        ({"start": "yesterday", "end": "2026-11-22T04:00:00Z"}, 422, "datetime"),
        ({"start": "2999-01-01T00:00:00Z"}, 422, "start must be before now"),  # no end: up to now
        ({"start": "2026-01-01T00:00:00Z", "end": "2026-11-22T04:00:00Z"}, 422, "longer than 31 days"),
    ],
)
def test_bad_windows_are_rejected_clearly(
    client: TestClient, params: dict[str, str], status: int, detail: str
) -> None:
    response = client.get("/api/v1/machines/vf2-01/intervals", params=params, headers=AUTH)
    assert response.status_code == status
    assert detail in str(response.json()["detail"])


def test_unknown_machine_is_404(client: TestClient) -> None:
    response = client.get(
        "/api/v1/machines/nope/intervals",
        params={"start": "2026-11-22T03:00:00Z", "end": "2026-11-22T04:00:00Z"},
        headers=AUTH,
    )
    assert response.status_code == 404
    assert "no machine 'nope'" in response.json()["detail"]


def test_openapi_describes_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert {"/api/v1/machines", "/api/v1/machines/{machine_id}/intervals"} <= set(spec["paths"])


def test_a_short_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="api_token"):
        ApiSettings(api_token=SecretStr("short"))


def test_prometheus_metrics(client: TestClient, tmp_path: Path) -> None:
    store: RecordStore = client.app.state.store  # type: ignore[attr-defined]
    store.write_health(
        [
            ("edge/edge-1", "buffer_depth", 12.0, T0),
            ("machine/vf2-01", "samples_per_s", 3.5, T0),
            ("edge/edge-2", "buffer_depth", 0.0, T0),
        ]
    )
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    text = response.text
    assert 'uns_machine_state{machine="vf2-01",state="idle"} 1' in text
    assert 'uns_machine_state{machine="vf2-01",state="running"} 0' in text
    assert 'uns_machine_part_counter{machine="vf2-01"} 11' in text
    depths = 'uns_edge_buffer_depth{edge_node="edge-1"} 12.0\nuns_edge_buffer_depth{edge_node="edge-2"} 0.0'
    assert depths in text
    assert 'uns_machine_samples_per_second{machine="vf2-01"} 3.5' in text


def test_intervals_are_cut_at_shift_boundaries_when_the_site_has_shifts(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> None:
    from datetime import time

    from services.context.shifts import ShiftCalendar, ShiftDef

    store = make_record("shifts")
    store.register_machines([("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2")])
    # 2026-11-23 13:00 to 15:00 New York time, running across the 14:00 change of shift
    midnight = 1_795_410_000_000  # 2026-11-23T00:00:00-05:00
    start, end = midnight + 13 * 3_600_000, midnight + 15 * 3_600_000
    store.write(
        [Interval("vf2-01", start, end, MachineState.RUNNING)],
        [],
        [("vf2-01", MachineState.IDLE, end, end, None)],
    )
    week = frozenset(range(7))
    calendar = ShiftCalendar(
        "America/New_York",
        [ShiftDef("first", time(6), time(14), week), ShiftDef("second", time(14), time(22), week)],
    )
    with TestClient(create_app(ApiSettings(api_token=SecretStr(TOKEN)), store, calendar)) as c:
        body = c.get(
            "/api/v1/machines/vf2-01/intervals",
            headers=AUTH,
            params={"start": "2026-11-23T00:00:00-05:00", "end": "2026-11-24T00:00:00-05:00"},
        ).json()
    assert all(i["reason"] is None for i in body["intervals"])  # running: no stop to explain
    assert [(i["state"], i["duration_s"], i["shift"]) for i in body["intervals"]] == [
        ("running", 3600.0, "2026-11-23/first"),
        ("running", 3600.0, "2026-11-23/second"),
        ("idle", None, "2026-11-23/second"),
    ]
    store.close()


def test_downtime_by_shift_and_reason(make_record: Callable[..., RecordStore], tmp_path: Path) -> None:
    from datetime import time

    from services.context.shifts import BreakDef, ShiftCalendar, ShiftDef

    store = make_record("downtime")
    store.register_machines(
        [
            ("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2"),
            ("st20-01", "acme/dayton/machining/lathes/cell-3/st20-01", "Haas ST-20"),
        ]
    )
    midnight = 1_795_410_000_000  # 2026-11-23T00:00:00-05:00
    h, m = 3_600_000, 60_000
    store.write(
        [
            Interval(
                "vf2-01", midnight + 13 * h, midnight + 13 * h + 40 * m, MachineState.DOWN, "machine_fault"
            ),
            Interval("vf2-01", midnight + 13 * h + 40 * m, midnight + 13 * h + 50 * m, MachineState.RUNNING),
            # an idle stop across the change of shift: 10 min in the first, 20 in the second
            Interval(
                "vf2-01",
                midnight + 13 * h + 50 * m,
                midnight + 14 * h + 20 * m,
                MachineState.IDLE,
                "unclassified",
            ),
            Interval(
                "st20-01", midnight + 18 * h, midnight + 18 * h + 30 * m, MachineState.IDLE, "planned_break"
            ),
        ],
        [],
        [],
    )
    week = frozenset(range(7))
    calendar = ShiftCalendar(
        "America/New_York",
        [
            ShiftDef("first", time(6), time(14), week),
            ShiftDef("second", time(14), time(22), week, (BreakDef("dinner", time(18), time(18, 30)),)),
        ],
    )
    window = {"start": "2026-11-23T00:00:00-05:00", "end": "2026-11-24T00:00:00-05:00"}
    with TestClient(create_app(ApiSettings(api_token=SecretStr(TOKEN)), store, calendar)) as c:
        rows = c.get("/api/v1/downtime", headers=AUTH, params=window).json()["rows"]
        assert [
            (r["machine"], r["shift"], r["reason"], r["duration_s"], r["stops"], r["planned"]) for r in rows
        ] == [
            ("st20-01", "2026-11-23/second", "planned_break", 1800.0, 1, True),
            ("vf2-01", "2026-11-23/first", "machine_fault", 2400.0, 1, False),
            ("vf2-01", "2026-11-23/first", "unclassified", 600.0, 1, False),
            ("vf2-01", "2026-11-23/second", "unclassified", 1200.0, 0, False),
        ]
        only = c.get("/api/v1/downtime", headers=AUTH, params={**window, "machine": "st20-01"}).json()["rows"]
        assert {r["machine"] for r in only} == {"st20-01"}
        unknown = c.get("/api/v1/downtime", headers=AUTH, params={**window, "machine": "nope"})
        assert unknown.status_code == 404
        assert "no machines ['nope']" in unknown.json()["detail"]
        assert c.get("/api/v1/downtime", params=window).status_code == 401
    store.close()
