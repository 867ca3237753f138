"""`/api/v1/losses`: stopped time by reason with a Pareto, and the six big losses (docs/oee.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from services.api.coalesce import shared
from services.api.deps import Calendar, OeeDefinition, Reasons, Settings, Store
from services.api.errors import responses
from services.api.oee import END, START, Group, head, observed_cycles, ordered, window
from services.api.when import Range, When, hm, sent
from services.oee.engine import Tally
from services.oee.losses import BIG_LOSSES, OTHER, big_loss
from services.oee.report import oee

router = APIRouter(prefix="/api/v1/losses", tags=["oee"])


class ReasonLoss(BaseModel):
    reason: str
    name: str
    seconds: float
    hm: str = Field(description="seconds as h:mm", examples=["1:05"])
    share: float = Field(description="of the group's stopped time (planned stops left out)")
    cumulative: float = Field(description="Pareto: this and the reasons above it")
    big_loss: str | None = Field(description="which of the six big losses (None: planned)")


class LossRow(BaseModel):
    group: dict[str, str | None] = Field(examples=[{"machine": "vf2-01", "shift": "2026-11-18/second"}])
    reasons: list[ReasonLoss] = Field(description="largest first (a Pareto)")
    planned_stops_s: float
    big_losses: dict[str, float | int | None] = Field(
        description="seconds (rejects: parts); reduced_speed None without ideal cycle times;"
        " startup_rejects: scrap and rework of an operation's first parts (the site's"
        " oee.startup_rejects.first_parts), or before it made a good one; production_rejects: the rest",
        examples=[{"breakdowns": 1860.0, "setup_adjustments": 2400.0, "small_stops": 310.0}],
    )


class LossesOut(BaseModel):
    start: str
    end: str
    timezone: str
    range: Range = Field(description="the window in UTC and local time, and what was filled in")
    definition_version: str
    group_by: list[str]
    rows: list[LossRow]
    total: LossRow


@router.get(
    "",
    response_model=LossesOut,
    summary="Stopped time by reason (Pareto) and the six big losses",
    responses=responses(404, 422),
)
@shared
def get_losses(
    request: Request,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    definition: OeeDefinition,
    taxonomy: Reasons,
    start: Annotated[When | None, START] = None,
    end: Annotated[When | None, END] = None,
    group_by: Annotated[
        list[Group] | None, Query(description="group by these (repeatable); default: machine")
    ] = None,
    machine: Annotated[list[str] | None, Query(description="only these machines (repeatable)")] = None,
) -> Response:
    """The same time and counts as `/api/v1/oee`, by reason: shift against shift is `group_by=shift`."""
    w = window(request, store, settings, calendar, start, end, machine)
    start_ms, end_ms, now_ms, zone = w.start_ms, w.end_ms, w.now_ms, w.zone
    by = tuple(dict.fromkeys(group_by or ["machine"]))
    cycles = observed_cycles(request, store)
    tallies = oee(
        store,
        calendar,
        definition,
        start_ms,
        end_ms,
        by,
        machine,
        zone,
        now_ms,
        by_reason=True,
        cycles=cycles,
    )

    def row(group: dict[str, str | None], t: Tally) -> LossRow:
        losses = {
            code: s
            for code, s in (t.stops_s or {}).items()
            if big_loss(code, taxonomy, definition) is not None
        }
        stopped = sum(losses.values())
        cumulative = 0.0
        reasons = []
        for code, seconds in sorted(losses.items(), key=lambda kv: (-kv[1], kv[0])):  # ties by code
            cumulative += seconds
            reasons.append(
                ReasonLoss(
                    reason=code,
                    name=taxonomy[code].name if code in taxonomy else code,
                    seconds=round(seconds, 3),
                    hm=hm(seconds),
                    share=round(seconds / stopped, 4) if stopped else 0.0,
                    cumulative=round(cumulative / stopped, 4) if stopped else 0.0,
                    big_loss=big_loss(code, taxonomy, definition),
                )
            )
        big: dict[str, float | int | None] = dict.fromkeys((*BIG_LOSSES, OTHER), 0.0)
        for code, seconds in losses.items():
            kind = big_loss(code, taxonomy, definition)
            if kind is not None:
                big[kind] = round(float(big[kind] or 0.0) + seconds, 3)
        speed = t.reduced_speed_s
        big["reduced_speed"] = None if speed is None else round(speed, 3)
        big["startup_rejects"] = t.startup_rejected
        big["production_rejects"] = t.production_rejected
        planned = sum(
            s for code, s in (t.stops_s or {}).items() if big_loss(code, taxonomy, definition) is None
        )
        return LossRow(group=group, reasons=reasons, planned_stops_s=round(planned, 3), big_losses=big)

    rows = [row(group, t) for group, t in ordered(tallies)]
    return sent(
        LossesOut(**head(w, definition, by), rows=rows, total=row({}, sum(tallies.values(), Tally())))
    )
