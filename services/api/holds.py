"""`/api/v1/holds`: quality holds from the QMS, and what they block (machines, jobs, stopped time)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from services.api.answers import HoldAnswer
from services.api.deps import Commands, Store, Who, allow, author
from services.api.errors import WRITE, responses
from services.api.sender import forward
from services.api.when import When
from services.context.commands import Code, Person
from uns.clock import iso

router = APIRouter(prefix="/api/v1/holds", tags=["quality"])


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["open", "close"]
    hold: Code
    machine: Code | None = None
    job: Code | None = None
    operation: Code | None = None
    note: Annotated[str, Field(max_length=500)] = ""
    by: Person | None = None
    at: When | None = None


@router.post(
    "",
    summary="Open or close a quality hold on a machine, a job or one operation",
    response_model=HoldAnswer,
    responses=responses(*WRITE),
    dependencies=[Depends(allow("quality"))],
)
async def hold(body: HoldIn, who: Who, commands: Commands) -> dict[str, Any]:
    payload = body.model_dump(mode="json", exclude_none=True)
    payload["by"] = author(who, payload.get("by"))
    return await forward(commands, "hold", payload)


class HoldOut(BaseModel):
    hold: str
    machine: str | None
    job: str | None
    operation: str | None
    note: str
    opened: str
    closed: str | None
    machines_blocked: dict[str, float]  # machine -> seconds stopped under this hold
    jobs_blocked: list[str]  # "job/operation" the held machines were on while stopped


@router.get("", response_model=list[HoldOut], summary="Holds and what they blocked", responses=responses(422))
def holds(
    store: Store,
    _: Annotated[str, Depends(allow("viewer", "operator", "planner", "quality"))],
    open_only: Annotated[bool, Query(description="only holds still open")] = False,
) -> list[HoldOut]:
    """Stops under a hold are `quality_hold`, not machine down: this says which machines and jobs a
    disposition held up, and for how long (closed record intervals)."""
    out = []
    for h in store.holds():
        if open_only and h.closed_ms is not None:
            continue
        machines, jobs = store.held(h.hold_id)
        out.append(
            HoldOut(
                hold=h.hold_id,
                machine=h.machine_id,
                job=h.job,
                operation=h.operation,
                note=h.note,
                opened=iso(h.opened_ms),
                closed=iso(h.closed_ms) if h.closed_ms is not None else None,
                machines_blocked=machines,
                jobs_blocked=jobs,
            )
        )
    return out
