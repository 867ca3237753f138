"""OEE arithmetic (services/oee/engine.py) against a published worked example and hand-computed cases,
and `/api/v1/oee` on a record the context service wrote (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.context.reasons import DEFAULT_REASONS
from services.context.state import Interval, MachineState
from services.oee.engine import Definition, Tally, parts_of, time_of
from tests.services.test_jobshop import MIN, T0, Shop, op, when
from tests.uns.test_site import GOOD
from uns.site import OeeConfig, SiteConfigError, parse_site

S = MachineState
DEFAULT = Definition.from_config(OeeConfig(), DEFAULT_REASONS)


def piece(minutes: float, state: MachineState, reason: str | None = None) -> Interval:
    return Interval("m", 0, round(minutes * MIN), state, reason)


def shift(*pieces: Interval, definition: Definition = DEFAULT) -> Tally:
    return sum((time_of(p, definition, in_shift=True) for p in pieces), Tally())


def test_the_worked_example() -> None:
    """A 480 min shift with 60 min of planned breaks and 47 min of stops; ideal cycle 1.0 s; 19,271
    parts of which 423 rejected: availability 0.8881, performance 0.8611, quality 0.9780, OEE 0.7479."""
    t = shift(
        piece(373, S.RUNNING), piece(60, S.IDLE, "planned_break"), piece(47, S.DOWN, "machine_fault")
    ) + parts_of(19_271, 1000, rejected=423)
    assert (t.planned_s, t.run_s) == (420 * 60, 373 * 60)
    assert t.availability == pytest.approx(0.8881, abs=5e-5)
    assert t.performance == pytest.approx(0.8611, abs=5e-5)
    assert t.quality == pytest.approx(0.9780, abs=5e-5)
    assert t.oee == pytest.approx(0.7479, abs=5e-5)
    # OEE is also fully productive time (the good parts at the ideal rate) over planned production time
    assert t.oee == pytest.approx(t.good * 1.0 / t.planned_s)
    assert not t.performance_above_100


def test_setup_counts_as_a_loss_or_as_planned_as_the_site_says() -> None:
    day = (piece(360, S.RUNNING), piece(60, S.SETUP, "setup"))
    loss = shift(*day) + parts_of(300, 60_000)
    planned = Definition.from_config(OeeConfig(setup="planned"), DEFAULT_REASONS)
    out = shift(*day, definition=planned) + parts_of(300, 60_000)
    assert loss.availability == pytest.approx(360 / 420)
    assert out.availability == 1.0
    assert loss.performance == out.performance == pytest.approx(300 / 360)


def test_micro_stops_stay_in_run_time_unless_the_site_counts_them_as_availability() -> None:
    day = (piece(400, S.RUNNING), piece(20, S.IDLE, "micro_stop"))
    assert shift(*day).availability == 1.0
    assert shift(*day).performance_stop_s == 1200
    strict = Definition.from_config(OeeConfig(micro_stops="availability"), DEFAULT_REASONS)
    assert shift(*day, definition=strict).availability == pytest.approx(400 / 420)


def test_a_performance_above_100_percent_is_flagged_not_capped_and_missing_says_why() -> None:
    fast = shift(piece(60, S.RUNNING)) + parts_of(90, 60_000)  # 90 one-minute parts in an hour
    assert fast.performance == pytest.approx(1.5)
    assert fast.performance_above_100
    unknown = shift(piece(60, S.RUNNING)) + parts_of(40, None) + parts_of(10, 60_000)
    assert (unknown.performance, unknown.oee) == (None, None)
    assert unknown.availability == 1.0
    assert unknown.quality == 1.0
    assert unknown.performance_missing is not None
    assert unknown.performance_missing.startswith("40 of 50 parts have no ideal cycle time")


def test_groups_roll_up_by_summing_times_and_counts_never_by_averaging() -> None:
    a = shift(piece(100, S.RUNNING), piece(100, S.DOWN, "machine_fault")) + parts_of(100, 60_000)
    b = shift(piece(600, S.RUNNING)) + parts_of(600, 60_000)
    both = a + b
    assert both.availability == pytest.approx(700 / 800)  # not (0.5 + 1.0) / 2
    assert both.oee == pytest.approx(700 / 800)


def test_stops_outside_every_shift_and_comms_loss_are_not_planned_production() -> None:
    t = (
        time_of(piece(30, S.IDLE, "unclassified"), DEFAULT, in_shift=False)
        + time_of(piece(30, S.RUNNING), DEFAULT, in_shift=False)  # it made parts: that counts
        + time_of(piece(10, S.COMMS_LOSS), DEFAULT, in_shift=True)
    )
    assert (t.planned_s, t.unknown_s) == (30 * 60, 10 * 60)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "oee:\n  planned: [lunch_and_learn]\n",
            r"<site>:\d+: oee.planned\[0\]: unknown reason code 'lunch_and_learn'",
        ),
        (
            "oee:\n  parts: [{part_number: P-1, ideal_cycle_s: -4}]\n",
            r"<site>:\d+: oee.parts\[0\].ideal_cycle_s: Input should be greater than 0",
        ),
        ("oee: {setup: sometimes}\n", r"<site>:\d+: oee.setup: Input should be 'availability' or 'planned'"),
    ],
)
def test_bad_oee_definitions_name_file_line_and_field(extra: str, message: str) -> None:
    with pytest.raises(SiteConfigError, match=message):
        parse_site(GOOD + extra)


def first_five_parts(tmp_path: Path) -> Shop:
    """vf2-01 sets up J1 (ideal 60 s a part) from 08:01 to 08:03, makes five parts by 08:13 and
    waits 20 min for the first article; at 08:33 it runs again."""
    shop = Shop(tmp_path)
    shop.ok("dispatch", machine="vf2-01", operations=[{**op("J1", "O1", 10), "ideal_cycle_s": 60}])
    shop.online()
    shop.at(1, mode="MANUAL", program="O1")
    shop.at(3, mode="AUTOMATIC", execution="ACTIVE")
    shop.at(13, execution="READY", parts=5)
    shop.at(33, execution="ACTIVE")
    return shop


def api(shop: Shop) -> FastAPI:
    """The API on the shop's record, with its OEE definition, time zone and clock."""
    return create_app(
        ApiSettings(api_token=SecretStr("t" * 24)),
        shop.store,
        shop.service.calendar,
        shop.service.taxonomy,
        None,
        Definition.from_config(shop.site.config.oee, shop.service.taxonomy),
        "America/New_York",
        shop.clock.now_ms,
    )


def test_the_oee_api_on_a_record_the_context_service_wrote(tmp_path: Path) -> None:
    """First shift in Dayton (06:00-14:00): vf2-01 sets up J1 (ideal 60 s a part) from 08:01 to 08:03,
    makes 10 parts by 08:43, with a 20 min wait after the first five; one is scrapped; it then has no
    work for 2 min and runs on. An operator says the wait was planned maintenance: only vf2-01's
    figures change."""
    shop = first_five_parts(tmp_path)
    shop.at(43, execution="READY", parts=5)
    shop.ok("parts", machine="vf2-01", result="scrap", quantity=1, at=when(44))
    shop.at(45, execution="ACTIVE")
    shop.at(60, execution="READY")
    shop.service._refresh_stops()  # as every 10 s: vf2-02, idle since 08:00, is no micro-stop any more
    shop.service.flush()
    app = api(shop)
    auth = {"Authorization": "Bearer " + "t" * 24}
    window = {"start": when(0), "end": when(60)}
    with TestClient(app) as client:
        body = client.get("/api/v1/oee", params=window, headers=auth).json()
        rows = {r["group"]["machine"]: r for r in body["rows"]}
        vf2 = rows["vf2-01"]
        # 60 min planned: setup 2, waiting on inspection 20 and no work 2 are availability losses; the
        # 1 min micro-stop at 08:00 stays in the 36 min of run time
        assert (vf2["planned_s"], vf2["run_s"], vf2["performance_stop_s"]) == (3600, 36 * 60, 60)
        assert (vf2["made"], vf2["good"], vf2["rejected"]) == (10, 9, 1)
        assert vf2["availability"] == pytest.approx(36 / 60, abs=1e-4)
        assert vf2["performance"] == pytest.approx(10 / 36, abs=1e-4)
        assert vf2["quality"] == pytest.approx(0.9)
        assert vf2["oee"] == pytest.approx(9 / 60, abs=1e-4)
        assert body["definition_version"] == "1"
        assert body["timezone"] == "America/New_York"
        other = rows["vf2-02"]
        assert other["performance_missing"] == "no run time"
        # by shift and operation
        by = client.get(
            "/api/v1/oee",
            params={**window, "group_by": ["machine", "operation"], "machine": "vf2-01"},
            headers=auth,
        ).json()
        assert {tuple(r["group"].values()) for r in by["rows"]} >= {("vf2-01", "J1/10")}
        # the stop was planned maintenance, says the lead: it leaves planned production time
        shop.ok("reason", machine="vf2-01", stop_at=when(20), reason="maintenance_planned", by="lead")
        again = {
            r["group"]["machine"]: r
            for r in client.get("/api/v1/oee", params=window, headers=auth).json()["rows"]
        }
        assert again["vf2-01"]["planned_s"] == 40 * 60
        assert again["vf2-01"]["availability"] == pytest.approx(36 / 40, abs=1e-4)
        assert again["vf2-02"] == other
        # without a window: the current shift, up to the record's latest event
        current = client.get("/api/v1/oee", headers=auth).json()
        assert current["start"] == "2026-11-18T11:00:00.000Z"  # 06:00 in Dayton
        assert client.get("/api/v1/oee", params={"machine": "nope"}, headers=auth).status_code == 404
        too_long = client.get("/api/v1/oee", params={"start": "2000-01-01T00:00:00Z"}, headers=auth)
        assert too_long.status_code == 422
        # vf2-02 has stood since 08:00 without a word from it; at 12:10 lunch (11:30-12:00) is planned
        shop.clock.now = T0 + 250 * MIN
        shop.service._refresh_stops()
        shop.service.flush()
        quiet = client.get(
            "/api/v1/oee", params={"start": when(0), "end": when(250), "machine": "vf2-02"}, headers=auth
        ).json()["rows"][0]
        assert (quiet["planned_stop_s"], quiet["availability_loss_s"]) == (30 * 60, 220 * 60)
    shop.store.close()


def test_the_oee_example_in_the_docs_is_a_valid_site_model() -> None:
    text = (Path(__file__).parents[2] / "docs" / "oee.md").read_text()
    example = text.split("## The site's definition", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_site(GOOD + example).config.oee
    definition = Definition.from_config(config, DEFAULT_REASONS)
    assert definition.version == "2026-11"
    assert {"setup", "maintenance_unplanned", "planned_break"} <= definition.planned
    assert definition.part_cycles_ms == {"P-4711": 92_500}


def test_losses_by_reason_as_a_pareto_and_the_six_big_losses(tmp_path: Path) -> None:
    """vf2-01 sets up J1 (2 min), waits 20 min for the first article, then an alarm stops it for
    10 min and the reset takes 1 min: the Pareto puts the wait first, the six big losses split the
    alarm and its recovery (breakdowns) from the setup, and the wait is an availability loss of its own."""
    shop = first_five_parts(tmp_path)
    shop.at(40, alarm_code=2105, execution="INTERRUPTED")
    shop.at(50, alarm_code=0, execution="READY")
    shop.at(51, execution="ACTIVE")
    shop.at(60, execution="READY", parts=3)
    shop.ok("parts", machine="vf2-01", result="rework", quantity=1, at=when(60))
    app = api(shop)
    auth = {"Authorization": "Bearer " + "t" * 24}
    with TestClient(app) as client:
        body = client.get(
            "/api/v1/losses", params={"start": when(0), "end": when(61), "machine": "vf2-01"}, headers=auth
        ).json()
    [row] = body["rows"]
    assert [(r["reason"], r["seconds"], r["big_loss"]) for r in row["reasons"]] == [
        ("waiting_inspection", 1200, "other_stops"),
        ("machine_fault", 600, "breakdowns"),
        ("setup", 120, "setup_adjustments"),
        ("micro_stop", 60, "small_stops"),
        ("fault_recovery", 60, "breakdowns"),
    ]
    assert row["reasons"][-1]["cumulative"] == 1.0
    big = row["big_losses"]
    assert (big["breakdowns"], big["setup_adjustments"], big["small_stops"], big["other_stops"]) == (
        660,
        120,
        60,
        1200,
    )
    # up to now (09:00): run 3-13, 33-40 and 51-60 (26 min) plus the 1 min micro-stop; 8 parts at the
    # ideal 1 min: 18 min slower than ideal
    assert big["reduced_speed"] == 18 * 60
    assert (big["production_rejects"], big["startup_rejects"]) == (1, None)
    assert body["total"]["big_losses"] == big
