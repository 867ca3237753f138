"""`/api/v1/dispatch` (the ERP's planned work in) and `/api/v1/operations` (planned against actual)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from services.api import csv_import
from services.api.answers import DispatchAnswer, DispatchUpdateAnswer
from services.api.deps import Commands, Settings, Store, Who, allow, author
from services.api.errors import WRITE, ApiError, responses
from services.api.sender import forward
from services.api.when import When
from services.context.commands import Person, PlannedOperation
from uns.clock import iso

router = APIRouter(tags=["dispatch"])
_PLANNERS = Depends(allow("planner"))


_RELEASED = "when the work was released to the floor (default: now); the record's `no_work` follows it"


class DispatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operations: list[PlannedOperation]
    by: Person | None = None
    at: Annotated[When | None, Field(description=_RELEASED)] = None


class OperationUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operation: PlannedOperation
    cancel: bool = False
    by: Person | None = None
    at: Annotated[When | None, Field(description=_RELEASED)] = None


def _body(model: BaseModel, who: Who) -> dict[str, Any]:
    body = model.model_dump(mode="json", exclude_none=True)
    body["by"] = author(who, body.get("by"))
    return body


def _check_rows(count: int, max_rows: int) -> None:
    if count > max_rows:
        raise ApiError(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the list has {count} operations; at most {max_rows} per request (UNS_MAX_ROWS): "
            "send the dispatch list of one machine or cell at a time",
            ["body", "operations"],
        )


@router.put(
    "/api/v1/dispatch/machines/{machine_id}",
    summary="Replace the planned work of one machine",
    response_model=DispatchAnswer,
    responses=responses(*WRITE),
    dependencies=[_PLANNERS],
)
async def dispatch_machine(
    machine_id: str, body: DispatchIn, settings: Settings, who: Who, commands: Commands
) -> dict[str, Any]:
    """Operations on the list that are not started yet are replaced; started ones keep their actuals.
    Answers with the new dispatch version. At most UNS_MAX_ROWS operations (413 beyond)."""
    _check_rows(len(body.operations), settings.max_rows)
    return await forward(commands, "dispatch", {**_body(body, who), "machine": machine_id})


@router.put(
    "/api/v1/dispatch/cells/{area}/{line}/{cell}",
    summary="Replace the planned work of one cell",
    response_model=DispatchAnswer,
    responses=responses(*WRITE),
    dependencies=[_PLANNERS],
)
async def dispatch_cell(
    area: str, line: str, cell: str, body: DispatchIn, settings: Settings, who: Who, commands: Commands
) -> dict[str, Any]:
    _check_rows(len(body.operations), settings.max_rows)
    return await forward(commands, "dispatch", {**_body(body, who), "cell": f"{area}/{line}/{cell}"})


@router.post(
    "/api/v1/dispatch/operations",
    summary="Add, change or cancel one planned operation",
    response_model=DispatchUpdateAnswer,
    responses=responses(*WRITE),
    dependencies=[_PLANNERS],
)
async def dispatch_operation(body: OperationUpdateIn, who: Who, commands: Commands) -> dict[str, Any]:
    return await forward(commands, "dispatch_update", _body(body, who))


@router.post(
    "/api/v1/dispatch/csv",
    summary="Replace the planned work of a machine or cell from a CSV file",
    response_model=DispatchAnswer,
    responses=responses(*WRITE, 415),
    dependencies=[_PLANNERS],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "UTF-8 (a byte order mark is dropped), or the charset the Content-Type"
            " declares (`text/csv; charset=windows-1252`); lines end in LF, CR LF or CR",
        }
    },
)
async def dispatch_csv(
    request: Request,
    settings: Settings,
    who: Who,
    commands: Commands,
    machine: Annotated[str | None, Query()] = None,
    cell: Annotated[str | None, Query(description="area/line/cell")] = None,
    by: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Columns: job, operation, machine, program, quantity (required), part_number, ideal_cycle_s,
    planned_start, planned_end, sequence. Errors name the CSV line and column (every bad line, up to
    20); at most UNS_MAX_ROWS operations (413 beyond). services/api/csv_import.py has the rules."""
    text = csv_import.decode(await request.body(), request.headers.get("content-type"))
    operations = csv_import.operations(text, settings.max_rows)
    body: dict[str, Any] = {
        "operations": [o.model_dump(mode="json", exclude_none=True) for o in operations],
        "by": author(who, by),
    }
    if machine is not None:
        body["machine"] = machine
    if cell is not None:
        body["cell"] = cell
    return await forward(commands, "dispatch", body)


class OperationOut(BaseModel):
    job: str
    operation: str
    machine: str
    part_number: str
    program: str
    sequence: int
    status: str
    quantity: int
    made: int
    good: int
    scrap: int
    rework: int
    ideal_cycle_s: float | None
    planned_start: str | None
    planned_end: str | None
    actual_start: str | None
    actual_end: str | None
    seconds_by_state: dict[str, float]  # record time while this operation ran, by state
    seconds_by_reason: dict[str, float]  # stopped time while it ran, by reason
    interruptions: int  # stops (not running) while it ran, and pauses


@router.get(
    "/api/v1/operations",
    response_model=list[OperationOut],
    summary="Planned against actual",
    responses=responses(404),
)
def operations(
    store: Store,
    _: Annotated[str, Depends(allow("viewer", "operator", "planner", "quality"))],
    machine: Annotated[str | None, Query()] = None,
    job: Annotated[str | None, Query()] = None,
) -> list[OperationOut]:
    """Every dispatched operation (of a machine, of a job) with its status, actual start and end, parts
    made, good, scrap and rework, and where its time went."""
    if machine is not None and store.current_state(machine) is None:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"no machine {machine!r} in the site model", ["query", "machine"]
        )
    found = store.operations(machine, job)
    if job is not None and not found:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"no job {job!r} in the dispatch list", ["query", "job"])
    out = []
    for o in found:
        by_state, by_reason, stops = store.operation_time(o.job, o.operation)
        out.append(
            OperationOut(
                job=o.job,
                operation=o.operation,
                machine=o.machine_id,
                part_number=o.part_number,
                program=o.program,
                sequence=o.sequence,
                status=o.status,
                quantity=o.quantity,
                made=o.made,
                good=o.good,
                scrap=o.scrap,
                rework=o.rework,
                ideal_cycle_s=o.ideal_cycle_ms / 1000 if o.ideal_cycle_ms else None,
                planned_start=iso(o.planned_start_ms) if o.planned_start_ms is not None else None,
                planned_end=iso(o.planned_end_ms) if o.planned_end_ms is not None else None,
                actual_start=iso(o.actual_start_ms) if o.actual_start_ms is not None else None,
                actual_end=iso(o.actual_end_ms) if o.actual_end_ms is not None else None,
                seconds_by_state=by_state,
                seconds_by_reason=by_reason,
                interruptions=stops,
            )
        )
    return out
