"""OEE end to end: simulated CNC controllers (real OPC UA servers) -> bridge -> Mosquitto -> context
service -> record -> `GET /api/v1/oee` and `/api/v1/losses`, against figures computed here from the
scenarios' own ground truth (their segments, the reason a supervisor would give each stop, the parts
they count and the dispatch list's ideal cycle times), without the OEE engine.

Wednesday 18 November 2026, 17:00 to midnight in Dayton: second shift (its dinner break 18:00-18:30)
and the first two hours of third shift, two machines, the ERP releasing each job just before its
setup (as tests/integration/test_reasons.py). Quality reports a scrapped first article (a startup
reject) and a scrapped part later in the same job (a production reject), after the fact.

Tolerance: interval boundaries are the controllers' own timestamps (1 ms), so time differs only where
the record's reason for a stop differs from the supervisor's: the seconds between the ERP's release of
a job and its setup (no work, or a micro-stop, or unclassified), at most `RELEASE_S` a job. Times must
agree to `TIME_TOLERANCE_S`, ratios to `RATIO_TOLERANCE`; counts exactly.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.sim.erp import dispatch_list, job_number, release, releases
from bridge.sim.scenario import PHASE_REASONS, RUNNING, MachineScenario
from services.context.shifts import ShiftCalendar
from tests.integration.test_end_to_end import Stack, start_stack
from tests.integration.test_jobshop import PLANNER, QUALITY, SECOND_SHIFT_MS, api_for
from uns.broker import Mosquitto
from uns.clock import iso

pytestmark = pytest.mark.integration

MACHINES = ("vf2-01", "st20-01")
SEED = 23
ORIGIN_MS = SECOND_SHIFT_MS + 3 * 3_600_000  # 17:00 in Dayton
END_MS = ORIGIN_MS + 7 * 3_600_000  # midnight: two hours into third shift
SPEED = 900.0  # 7 h of shop time in 28 s
# the ERP's release goes out this much earlier (saying when); one that still arrives after the setup it
# was for began is applied as of its `at` all the same (docs/jobs.md)
AHEAD_MS = 55_000
# the machines go on past the window, as real ones do: a stop that straddles its end closes when
# it really closes, so its reason in the record is the one its whole length gives (a micro-stop
# cut off at the end would otherwise stand on, and be a long stop by the time it is asked)
PAST_END_MS = 15 * 60_000
RELEASE_S = 10  # bridge/sim/erp.py RELEASE_LEAD_MS
TIME_TOLERANCE_S = 60.0
RATIO_TOLERANCE = 0.005
PLANNED = {"planned_break", "maintenance_planned"}
SMALL = {"micro_stop"}  # performance losses: inside run time
CHANGEOVER = {"setup", "program_prove_out"}
EQUIPMENT = {"machine_fault", "fault_recovery", "tooling", "maintenance_unplanned"}


@dataclass
class Expected:
    """One machine's figures in one shift, from the scenario's truth."""

    planned_s: float = 0.0
    run_s: float = 0.0
    made: int = 0
    ideal_s: float = 0.0
    rejected: int = 0
    startup_rejected: int = 0
    losses: dict[str, float] = field(default_factory=dict)  # big loss -> seconds

    def __iadd__(self, other: Expected) -> Expected:
        self.planned_s += other.planned_s
        self.run_s += other.run_s
        self.made += other.made
        self.ideal_s += other.ideal_s
        self.rejected += other.rejected
        self.startup_rejected += other.startup_rejected
        for k, v in other.losses.items():
            self.losses[k] = self.losses.get(k, 0.0) + v
        return self

    def ratios(self) -> tuple[float, float, float, float]:
        a, p = self.run_s / self.planned_s, self.ideal_s / self.run_s
        q = (self.made - self.rejected) / self.made
        return a, p, q, a * p * q


def truth(
    scenario: MachineScenario, index: int, calendar: ShiftCalendar, ideal_ms: dict[str, int], start_ms: int
) -> dict[str, Expected]:
    """From `start_ms` to the end, by shift: planned production time (shift time less idle time in
    planned breaks), run time (less the stops whose supervisor's reason is an availability loss: all
    but micro-stops), parts counted (each at the end of its cycle) at their job's ideal cycle, and the
    six big losses."""
    out: dict[str, Expected] = {}
    for seg in scenario.segments():
        if seg.start_ms >= END_MS:
            break
        a, b = max(seg.start_ms, start_ms), min(seg.end_ms, END_MS)
        for p0, p1, shift in calendar.split(a, b) if b > a else []:
            assert shift is not None, "the window is all in shifts"
            mine = out.setdefault(shift.key, Expected())
            cuts = sorted({p0, p1} | {t for _, b0, b1 in shift.breaks for t in (b0, b1) if p0 < t < p1})
            for c0, c1 in itertools.pairwise(cuts):
                seconds = (c1 - c0) / 1000
                in_break = any(b0 <= c0 and c1 <= b1 for _, b0, b1 in shift.breaks)
                reason = None if seg.state == RUNNING else PHASE_REASONS[seg.phase]
                if seg.state == "idle" and in_break:
                    reason = "planned_break"
                if reason in PLANNED:
                    continue
                mine.planned_s += seconds
                if reason is None or reason in SMALL:
                    mine.run_s += seconds
                if reason is not None:
                    kind = (
                        "small_stops"
                        if reason in SMALL
                        else "setup_adjustments"
                        if reason in CHANGEOVER
                        else "breakdowns"
                        if reason in EQUIPMENT
                        else "other_stops"
                    )
                    mine.losses[kind] = mine.losses.get(kind, 0.0) + seconds
        if seg.parts_at_end and start_ms <= seg.end_ms < END_MS:
            shift = calendar.shift_at(seg.end_ms)
            assert shift is not None
            mine = out.setdefault(shift.key, Expected())
            mine.made += seg.parts_at_end
            mine.ideal_s += seg.parts_at_end * ideal_ms[job_number(index, seg.job)] / 1000
    return out


async def test_oee_through_the_api_matches_the_scenarios_truth(mosquitto: Mosquitto, tmp_path: Path) -> None:
    # at 900x the ERP's release, sent 55 s of shop time ahead, has 60 ms of wall time to reach the
    # context service: a full garbage collection can take longer, so what is loaded so far is kept
    # out of the collections while the shop runs (as in test_review.py)
    gc.freeze()
    stack = await start_stack(mosquitto, tmp_path, MACHINES, seed=SEED, speed=SPEED, origin_ms=ORIGIN_MS)
    scenarios = [stack.scenarios[m.id] for m in stack.site.machines]
    planned = dispatch_list(scenarios, END_MS)
    ideal_ms = {o["job"]: int(o["ideal_cycle_s"] * 1000) for o in planned}
    calendar = stack.context.calendar
    assert calendar is not None
    # from each machine's second job on: the first one's program was loaded before the context service
    # saw the machine, so it has no prove-out or first-article wait of its own (docs/reasons.md)
    starts = {sc.machine_id: sc.jobs(END_MS)[1].start_ms for sc in scenarios}
    try:
        async with api_for(mosquitto, stack) as call:

            async def send(body: dict[str, Any]) -> None:
                sent = await call("POST", "/api/v1/dispatch/operations", PLANNER, json=body)
                assert sent.status_code == 200, sent.text

            plan = releases(scenarios, END_MS)
            # each machine's first job was loaded before its release came: the operator starts it
            for machine in (m.id for m in stack.site.machines):
                at, first = next((at, o) for at, o in plan if o["machine"] == machine)
                plan.remove((at, first))
                await send({"operation": first, "by": "erp-sim", "at": iso(ORIGIN_MS)})
                action = {"action": "start", "job": first["job"], "operation": first["operation"]}
                started = await call(
                    "POST", f"/api/v1/machines/{machine}/operation", json={**action, "at": iso(ORIGIN_MS)}
                )
                assert started.status_code == 200, started.text
            erp = asyncio.create_task(release(send, plan, stack.clock, AHEAD_MS))
            await stack.drive(END_MS + PAST_END_MS)
            await asyncio.sleep(1.0)
            erp.cancel()
            rejects = await scrap_reports(call, stack)
            asked: dict[str, tuple[Any, Any, Any]] = {}
            for machine, start in starts.items():
                window = {"start": iso(start), "end": iso(END_MS), "machine": machine}
                by = {"group_by": ["machine", "shift"]}
                asked[machine] = (
                    (await call("GET", "/api/v1/oee", params={**window, **by})).json()["rows"],
                    (await call("GET", "/api/v1/oee", params=window)).json()["rows"],
                    (await call("GET", "/api/v1/losses", params=window)).json()["rows"],
                )
    finally:
        await stack.close()
        gc.unfreeze()

    for index, scenario in enumerate(scenarios):
        machine = scenario.machine_id
        expected = truth(scenario, index, calendar, ideal_ms, starts[machine])
        for m, shift, startup in rejects:
            if m == machine:
                expected[shift].rejected += 1
                expected[shift].startup_rejected += int(startup)
        by_shift, by_machine, losses = asked[machine]
        rows = {r["group"]["shift"]: r for r in by_shift}
        assert set(rows) == set(expected) == {"2026-11-18/second", "2026-11-18/third"}
        whole = Expected()
        for shift, e in sorted(expected.items()):
            compare(rows[shift], e, f"{machine} {shift}")
            whole += e
        [row] = by_machine
        compare(row, whole, machine)
        [loss] = losses
        big = loss["big_losses"]
        for kind in ("setup_adjustments", "breakdowns", "small_stops"):
            assert big[kind] == pytest.approx(whole.losses.get(kind, 0.0), abs=TIME_TOLERANCE_S), (
                machine,
                kind,
            )
        assert (big["startup_rejects"], big["production_rejects"]) == (
            whole.startup_rejected,
            whole.rejected - whole.startup_rejected,
        )
        print(f"{machine}: OEE {row['oee']:.4f} (truth {whole.ratios()[3]:.4f})")


def compare(row: dict[str, Any], e: Expected, where: str) -> None:
    print(
        f"\n{where}: planned {row['planned_s']:.0f} s (truth {e.planned_s:.0f}),"
        f" run {row['run_s']:.0f} s (truth {e.run_s:.0f}), made {row['made']} ({e.made})"
    )
    assert row["planned_s"] == pytest.approx(e.planned_s, abs=TIME_TOLERANCE_S), where
    assert row["run_s"] == pytest.approx(e.run_s, abs=TIME_TOLERANCE_S), where
    assert (row["made"], row["rejected"], row["startup_rejected"]) == (e.made, e.rejected, e.startup_rejected)
    assert row["ideal_s"] == pytest.approx(e.ideal_s, abs=0.01 * e.made), where
    assert row["ideal_sources"]["dispatch"] == e.made, where
    assert not row["performance_above_100"]
    got = (row["availability"], row["performance"], row["quality"], row["oee"])
    assert got == pytest.approx(e.ratios(), abs=RATIO_TOLERANCE), where


async def scrap_reports(call: Any, stack: Stack) -> list[tuple[str, str, bool]]:
    """Quality scraps vf2-01's second job's first article (at the moment its wait for the verdict
    ended: a startup reject) and its last part (a production reject), after the fact. Returns
    (machine, shift, startup) of each."""
    scenario = stack.scenarios["vf2-01"]
    second = scenario.jobs(END_MS)[1]
    segments = [
        s
        for s in itertools.takewhile(lambda s: s.start_ms < END_MS, scenario.segments())
        if s.job == second.number
    ]
    verdict = next(s for s in segments if s.phase == "first_article").end_ms
    last = max(s.end_ms for s in segments if s.parts_at_end)
    assert verdict < last < END_MS
    job = job_number(0, second.number)
    out = []
    for at, startup in ((verdict, True), (last, False)):
        body = {"result": "scrap", "job": job, "operation": "20", "at": iso(at)}
        answer = await call("POST", "/api/v1/machines/vf2-01/parts", QUALITY, json=body)
        assert answer.status_code == 200, answer.text
        calendar = stack.context.calendar
        assert calendar is not None
        shift = calendar.shift_at(at)
        assert shift is not None
        out.append(("vf2-01", shift.key, startup))
    await asyncio.sleep(0.5)
    return out
