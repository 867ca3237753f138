"""The downtime taxonomy and the rules that classify a stop from the machine's own signals. Pure.

Every reason says whether it is planned and which OEE loss it counts against. Rules give a first
classification when an interval closes; operators (and quality holds) will override it, with
precedence operator > quality hold > rule > default (issue #4: the overrides are not built yet).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.context.state import MachineState, Value
from uns.site import DowntimeConfig


class Loss(enum.StrEnum):
    AVAILABILITY = "availability"
    PERFORMANCE = "performance"
    QUALITY = "quality"
    PLANNED = "planned"  # planned downtime: not counted against OEE


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    name: str
    planned: bool
    loss: Loss


DEFAULT_REASONS: dict[str, Reason] = {
    r.code: r
    for r in (
        Reason("setup", "Setup / changeover", False, Loss.AVAILABILITY),
        Reason("program_prove_out", "Program prove-out", False, Loss.AVAILABILITY),
        Reason("waiting_inspection", "Waiting on inspection / first article", False, Loss.AVAILABILITY),
        Reason("blocked", "Blocked (downstream full)", False, Loss.AVAILABILITY),
        Reason("starved", "Starved (no material)", False, Loss.AVAILABILITY),
        Reason("quality_hold", "Quality hold", False, Loss.AVAILABILITY),
        Reason("tooling", "Tooling", False, Loss.AVAILABILITY),
        Reason("maintenance_planned", "Planned maintenance", True, Loss.PLANNED),
        Reason("maintenance_unplanned", "Unplanned maintenance", False, Loss.AVAILABILITY),
        Reason("machine_fault", "Machine fault (alarm or emergency stop)", False, Loss.AVAILABILITY),
        Reason("no_operator", "No operator", False, Loss.AVAILABILITY),
        Reason("planned_break", "Planned break", True, Loss.PLANNED),
        Reason("micro_stop", "Micro-stop", False, Loss.PERFORMANCE),
        Reason("unclassified", "Not yet classified", False, Loss.AVAILABILITY),
    )
}

MICRO_STOP_MS = 5 * 60_000  # idle stops shorter than this are micro-stops (a performance loss)

Classifier = Callable[[MachineState, int, int, Mapping[str, Value]], str | None]


def rules(
    *, micro_stop_ms: int = MICRO_STOP_MS, in_break: Callable[[int, int], bool] | None = None
) -> Classifier:
    """The rule classifier: (state, start, end, signals when the interval began) -> reason code.

    down                          machine_fault (an alarm or the emergency stop)
    setup                         setup (MANUAL, MDI or EDIT mode)
    idle inside a planned break   planned_break
    idle shorter than the limit   micro_stop
    idle otherwise                unclassified (for an operator to say)
    running, comms_loss           none: not a stop, or nothing known
    """

    def classify(state: MachineState, start_ms: int, end_ms: int, signals: Mapping[str, Value]) -> str | None:
        if state is MachineState.DOWN:
            return "machine_fault"
        if state is MachineState.SETUP:
            return "setup"
        if state is MachineState.IDLE:
            if in_break is not None and in_break(start_ms, end_ms):
                return "planned_break"
            return "micro_stop" if end_ms - start_ms < micro_stop_ms else "unclassified"
        return None

    return classify


def taxonomy(config: DowntimeConfig) -> dict[str, Reason]:
    """The default reasons with the site model's additions and changes."""
    reasons = dict(DEFAULT_REASONS)
    for r in config.reasons:
        reasons[r.code] = Reason(r.code, r.name, r.planned, Loss(r.loss))
    return reasons
