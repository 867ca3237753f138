"""The simulated job shop's ERP: a dispatch list that matches the seeded scenarios (one operation per
simulated job, with its program, quantity and ideal cycle time), for the demo and the tests."""

from __future__ import annotations

from typing import Any

from bridge.sim.scenario import MachineScenario
from uns.clock import iso


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
