"""What happens at a machine, from people and inspection systems: operations started, paused and
completed by hand or confirmed, operators logging in and out, reasons for stops (with their audit
trail), and scrap, rework and good parts. Each write goes to the context service as a command."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field

from services.api.answers import OperationAnswer, OperatorAnswer, PartsAnswer, ReasonAnswer
from services.api.deps import Commands, Store, Who, acting_on, allow, author
from services.api.errors import WRITE, ApiError, responses
from services.api.sender import forward
from services.api.when import When
from services.context.commands import Code, Person
from uns.clock import iso

router = APIRouter(prefix="/api/v1/machines", tags=["shop floor"])


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: Person | None = None
    at: When | None = None  # when it happened; default: now


class OperationActionIn(_In):
    action: Literal["start", "pause", "resume", "complete", "confirm"]
    job: Code
    operation: Code


class OperatorIn(_In):
    action: Literal["login", "logout"]
    operator: Person


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stop_at: When = Field(description="any moment of the stop")
    reason: Code
    by: Person
    note: Annotated[str, Field(max_length=500)] = ""


class PartsIn(_In):
    result: Literal["scrap", "rework", "good", "pass", "fail"]
    quantity: Annotated[int, Field(gt=0, le=100_000)] = 1
    job: Code | None = None
    operation: Code | None = None


def _body(store: Store, who: Who, machine_id: str, model: BaseModel) -> dict[str, Any]:
    """The command for the context service, after the operator's cells are checked; `by` names the
    token's user (deps.author)."""
    acting_on(store, who, machine_id)
    body = model.model_dump(mode="json", exclude_none=True)
    body["by"] = author(who, body.get("by"))
    return {**body, "machine": machine_id}


@router.post(
    "/{machine_id}/operation",
    summary="Start, pause, resume, complete or confirm an operation",
    response_model=OperationAnswer,
    responses=responses(*WRITE),
    dependencies=[Depends(allow("operator", "planner"))],
)
async def operation(
    machine_id: str, body: OperationActionIn, store: Store, who: Who, commands: Commands
) -> dict[str, Any]:
    return await forward(commands, "operation", _body(store, who, machine_id, body))


@router.post(
    "/{machine_id}/operator",
    summary="An operator logs in or out",
    response_model=OperatorAnswer,
    responses=responses(*WRITE),
    dependencies=[Depends(allow("operator"))],
)
async def operator(
    machine_id: str, body: OperatorIn, store: Store, who: Who, commands: Commands
) -> dict[str, Any]:
    return await forward(commands, "operator", _body(store, who, machine_id, body))


@router.post(
    "/{machine_id}/reasons",
    summary="Set or correct why a machine stood",
    response_model=ReasonAnswer,
    responses=responses(*WRITE),
    dependencies=[Depends(allow("operator", "quality"))],
)
async def reason(
    machine_id: str, body: ReasonIn, store: Store, who: Who, commands: Commands
) -> dict[str, Any]:
    """The stop going on at `stop_at` (all of it) gets the reason, within the site's window after the
    stop ended (downtime.reason_window_hours); the change is kept with who, when, old and new. With a
    named token the audit names its user (`by` adds whom it was for)."""
    return await forward(commands, "reason", _body(store, who, machine_id, body))


@router.post(
    "/{machine_id}/parts",
    summary="Report scrap, rework or good parts",
    response_model=PartsAnswer,
    responses=responses(403, 404, 413, 422, 503),  # nothing about parts conflicts (no 409)
    dependencies=[Depends(allow("operator", "quality"))],
)
async def parts(machine_id: str, body: PartsIn, store: Store, who: Who, commands: Commands) -> dict[str, Any]:
    return await forward(commands, "parts", _body(store, who, machine_id, body))


class AuditOut(BaseModel):
    stop_start: str
    old: str | None
    new: str
    by: str | None
    via: str
    changed: str
    note: str


@router.get(
    "/{machine_id}/reasons/audit",
    response_model=list[AuditOut],
    summary="Every reason change",
    responses=responses(404),
)
def audit(
    machine_id: str,
    store: Store,
    _: Annotated[str, Depends(allow("viewer", "operator", "planner", "quality"))],
) -> list[AuditOut]:
    if store.current_state(machine_id) is None:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"no machine {machine_id!r} in the site model", ["path", "machine_id"]
        )
    return [
        AuditOut(stop_start=iso(run), old=old, new=new, by=by, via=via, changed=iso(changed), note=note)
        for run, old, new, by, via, changed, note in store.reason_audit(machine_id)
    ]
