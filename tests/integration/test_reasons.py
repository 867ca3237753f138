"""Downtime truth end to end: a simulated CNC controller (a real OPC UA server) -> bridge -> Mosquitto ->
context service -> record -> API, over a seeded scenario with every kind of stop (setup, prove-out,
first-article inspection, load/unload, micro-stops, alarms with a tool change, an e-stop, their
resets, no work between jobs, a planned break), the ERP releasing each job through the API just
before it begins. The share of stopped time whose reason is the one a supervisor would write (the
scenario's truth) is printed, and must be at least 0.95. (The same without a broker, and its
rebuild: tests/services/test_reason_fidelity.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bridge.sim.erp import release, releases
from bridge.sim.scenario import PHASE_REASONS
from services.context.state import Interval, MachineState
from tests.helpers import reason_fidelity
from tests.integration.test_end_to_end import start_stack
from tests.integration.test_jobshop import PLANNER, SECOND_SHIFT_MS, api_for
from uns.broker import Mosquitto
from uns.clock import iso, parse_iso

MACHINE = "vf2-01"
SEED = 55  # every kind of stop after the first job, within three and a half hours
HOURS = 5  # 14:00 to 19:00 in Dayton: through the dinner break
SPEED = 600.0
AHEAD_MS = 55_000  # the ERP's release goes out this much earlier (saying when), a tenth of a second


async def test_stops_get_the_reason_a_supervisor_would_write(mosquitto: Mosquitto, tmp_path: Path) -> None:
    stack = await start_stack(
        mosquitto, tmp_path, (MACHINE,), seed=SEED, speed=SPEED, origin_ms=SECOND_SHIFT_MS
    )
    end_ms = SECOND_SHIFT_MS + HOURS * 3_600_000
    scenario = stack.scenarios[MACHINE]
    try:
        async with api_for(mosquitto, stack) as call:

            async def send(body: dict[str, Any]) -> None:
                sent = await call("POST", "/api/v1/dispatch/operations", PLANNER, json=body)
                assert sent.status_code == 200, sent.text

            plan = releases([scenario], end_ms)
            # the first job's program was loaded before its release came: the operator starts it
            first_at, first = plan.pop(0)
            await send({"operation": first, "by": "erp-sim", "at": iso(first_at)})
            start_first = {"action": "start", "job": first["job"], "operation": first["operation"]}
            started = await call(
                "POST",
                f"/api/v1/machines/{MACHINE}/operation",
                json={**start_first, "at": iso(SECOND_SHIFT_MS)},
            )
            assert started.status_code == 200, started.text
            erp = asyncio.create_task(release(send, plan, stack.clock, AHEAD_MS))
            await stack.drive(end_ms)
            await asyncio.sleep(1.0)
            erp.cancel()
            got = (
                await call(
                    "GET",
                    f"/api/v1/machines/{MACHINE}/intervals",
                    params={"start": iso(SECOND_SHIFT_MS), "end": iso(end_ms)},
                )
            ).json()["intervals"]
            downtime = (
                await call(
                    "GET",
                    "/api/v1/downtime",
                    params={"start": iso(SECOND_SHIFT_MS), "end": iso(end_ms), "machine": MACHINE},
                )
            ).json()["rows"]
        closed = [i for i in got if i["end"] is not None]
        record = [
            Interval(
                MACHINE,
                parse_iso(i["start"]),
                parse_iso(i["end"]),
                MachineState(i["state"]),
                i["reason"],
                i["reason_source"],
            )
            for i in closed
        ]
        phases = {p for t in scenario.truth(end_ms) if t.state != "running" for p in t.phases}
        assert phases == set(PHASE_REASONS)  # every kind of stop the scenario has
        start = scenario.jobs(end_ms)[1].start_ms  # the first job's setup began before the stack did
        stop = record[-1].end_ms
        share, stopped, wrong = reason_fidelity(
            scenario.reasons(stop), record, stack.context.calendar, start, stop
        )
        print(
            f"\nreason fidelity end to end: {share:.3f} of {stopped / 3600:.1f} h stopped; differing: {wrong}"
        )
        assert share >= 0.95, wrong
        # every stop explains itself in the API, and a stop counts once however it is cut
        stops = [i for i in closed if i["state"] != "running" and parse_iso(i["start"]) >= start]
        assert all(i["reason_evidence"] and i["stop_start"] for i in stops)
        assert sum(r["stops"] for r in downtime) == len(
            {i["stop_start"] for i in closed if i["state"] != "running"}
        )
        assert {i["reason"] for i in stops} >= {
            "setup",
            "program_prove_out",
            "waiting_inspection",
            "machine_fault",
            "fault_recovery",
            "micro_stop",
            "no_work",
            "planned_break",
        }
        # the open interval carries its context, as the closed ones do
        assert got[-1]["end"] is None
        assert got[-1]["job"] is not None or got[-1]["reason"] == "no_work"
    finally:
        await stack.close()
