"""Where the time went: stopped time by reason, a Pareto, and the six big losses. Pure.

Each reason of the site's tree maps to one of the six big losses by where it stands in the tree:
changeover reasons (setup, prove-out) are setup and adjustments; equipment reasons (faults, the
recovery after them, tooling, unplanned maintenance) are breakdowns; performance-loss reasons
(micro-stops) are small stops; planned reasons are no loss. Other stops (waiting on inspection,
quality holds, material, people, no work, unclassified) are availability losses outside the six:
`other_stops`. Reduced speed comes from the OEE arithmetic (run time less micro-stops less the ideal
time of the parts); the rejects are the scrap and rework reported, startup rejects those of an
operation's first parts (`Tally.startup_rejected`: services/oee/report.py tells them apart), the rest
production rejects.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.context.reasons import Loss, Reason, path
from services.oee.engine import Definition

BIG_LOSSES = (
    "breakdowns",
    "setup_adjustments",
    "small_stops",
    "reduced_speed",
    "startup_rejects",
    "production_rejects",
)
OTHER = "other_stops"


def big_loss(code: str, taxonomy: Mapping[str, Reason], definition: Definition) -> str | None:
    """The big loss a reason's time counts as (None: planned, not a loss)."""
    if code in definition.planned:
        return None
    if code in definition.performance:
        return "small_stops"
    reason = taxonomy.get(code)
    if reason is None:
        return OTHER
    groups = path(taxonomy, code)
    if "changeover" in groups:
        return "setup_adjustments"
    if "equipment" in groups:
        return "breakdowns"
    if reason.loss is Loss.PERFORMANCE:
        return "small_stops"
    return OTHER
