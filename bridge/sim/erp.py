"""The simulated job shop's ERP: a dispatch list that matches the seeded scenarios (one operation per
simulated job, with its program, quantity and ideal cycle time), for the demo and the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.sim.scenario import MachineScenario
from uns.clock import ScaledClock, iso, parse_iso


def job_number(machine_index: int, job: int) -> str:
    return str(24000 + 100 * machine_index + job)


def dispatch_list(
    scenarios: list[MachineScenario], end_ms: int, operation: str = "20"
) -> list[dict[str, Any]]:
    """Every job the scenarios begin before `end_ms`, as `PlannedOperation` JSON, in order per machine."""
    out: list[dict[str, Any]] = []
    for index, scenario in enumerate(scenarios):
        for job in scenario.jobs(end_ms):
            out.append(
                {
                    "job": job_number(index, job.number),
                    "operation": operation,
                    "machine": scenario.machine_id,
                    "program": job.program,
                    "quantity": job.quantity,
                    "part_number": f"P-{job.program[1:]}",
                    "ideal_cycle_s": round(job.cycle_ms / 1000 * 0.95, 1) if job.cycle_ms else None,
                    "planned_start": iso(job.start_ms),
                    "planned_end": iso(job.work_end_ms),
                    "sequence": job.number,
                }
            )
    return [{k: v for k, v in o.items() if v is not None} for o in out]


RELEASE_LEAD_MS = 10_000  # the simulated ERP releases a job this long before its setup begins


def releases(
    scenarios: list[MachineScenario], end_ms: int, operation: str = "20", lead_ms: int = RELEASE_LEAD_MS
) -> list[tuple[int, dict[str, Any]]]:
    """The jobs of `dispatch_list`, each released (sent as a `dispatch_update`) just before its setup
    begins, as a job shop's ERP releases work to the floor: (when, PlannedOperation JSON), in time
    order. Until then the machine has no work, which is what the scenario's idle time between jobs is
    (`PHASE_REASONS["idle"]`)."""
    out: list[tuple[int, dict[str, Any]]] = []
    for op in dispatch_list(scenarios, end_ms, operation):
        out.append((parse_iso(op["planned_start"]) - lead_ms, op))
    return sorted(out, key=lambda r: (r[0], r[1]["machine"]))


async def release(
    send: Callable[[dict[str, Any]], Awaitable[object]],
    plan: list[tuple[int, dict[str, Any]]],
    clock: ScaledClock,
    ahead_ms: int = 0,
) -> None:
    """Send each release when event time reaches it (`send` takes the `dispatch_update` body). With
    `ahead_ms`, send it that much earlier, saying when it is released (`at`), so that a fast clock
    does not outrun the command (at most a minute ahead: the context service refuses more)."""
    for at, op in plan:
        delay = clock.wall_seconds_until(at - ahead_ms)
        if delay > 0:
            await asyncio.sleep(delay)
        body: dict[str, Any] = {"operation": op, "by": "erp-sim"}
        if ahead_ms:
            body["at"] = iso(at)
        await send(body)
