"""The downtime taxonomy (a tree) and the rules that classify a stop from the machine's own signals. Pure.

Every reason says whether it is planned, which OEE loss it counts against and which group it belongs
to. Rules give a first classification when an interval closes; a quality hold and then an operator
override it: precedence operator > quality hold > rule > default (services/context/timeline.py).
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
    parent: str | None = None  # the group it belongs to; groups are reasons too (parent None)


_A, _P = Loss.AVAILABILITY, Loss.PLANNED
DEFAULT_REASONS: dict[str, Reason] = {
    r.code: r
    for r in (
        # groups
        Reason("changeover", "Changeover", False, _A),
        Reason("quality", "Quality", False, _A),
        Reason("flow", "Material and people", False, _A),
        Reason("equipment", "Equipment", False, _A),
        Reason("planned_stop", "Planned stop", True, _P),
        Reason("speed", "Speed loss", False, Loss.PERFORMANCE),
        # reasons
        Reason("setup", "Setup / changeover", False, _A, "changeover"),
        Reason("program_prove_out", "Program prove-out", False, _A, "changeover"),
        Reason("waiting_inspection", "Waiting on inspection / first article", False, _A, "quality"),
        Reason("quality_hold", "Quality hold", False, _A, "quality"),
        Reason("blocked", "Blocked (downstream full)", False, _A, "flow"),
        Reason("starved", "Starved (no material)", False, _A, "flow"),
        Reason("no_operator", "No operator", False, _A, "flow"),
        Reason("tooling", "Tooling", False, _A, "equipment"),
        Reason("maintenance_unplanned", "Unplanned maintenance", False, _A, "equipment"),
        Reason("machine_fault", "Machine fault (alarm or emergency stop)", False, _A, "equipment"),
        Reason("maintenance_planned", "Planned maintenance", True, _P, "planned_stop"),
        Reason("planned_break", "Planned break", True, _P, "planned_stop"),
        Reason("micro_stop", "Micro-stop", False, Loss.PERFORMANCE, "speed"),
        Reason("unclassified", "Not yet classified", False, _A),
    )
}
DEFAULT_REASON = "unclassified"  # what a stop is when no rule, hold or operator says otherwise

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


class TaxonomyError(ValueError):
    """A site model's reason tree that does not hold together; the message names the reason."""


def taxonomy(config: DowntimeConfig) -> dict[str, Reason]:
    """The default reasons with the site model's additions and changes; parents must exist, no cycles."""
    reasons = dict(DEFAULT_REASONS)
    for r in config.reasons:
        reasons[r.code] = Reason(r.code, r.name, r.planned, Loss(r.loss), r.parent)
    for code, reason in reasons.items():
        seen = [code]
        parent = reason.parent
        while parent is not None:
            if parent not in reasons:
                raise TaxonomyError(f"downtime reason {code!r}: parent {parent!r} is not a reason")
            if parent in seen:
                raise TaxonomyError(f"downtime reason {code!r}: parents go round in a circle ({parent!r})")
            seen.append(parent)
            parent = reasons[parent].parent
    return reasons


def path(reasons: Mapping[str, Reason], code: str) -> list[str]:
    """The codes from the top of the tree down to `code`."""
    out = [code]
    while (parent := reasons[out[0]].parent) is not None:
        out.insert(0, parent)
    return out
