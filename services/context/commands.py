"""What the ERP, the QMS, operators and inspection systems tell the context service: the commands.

One set of models for both ways in: JSON on `<enterprise>/<site>/_command/<kind>` (any MQTT client)
and the API's write endpoints (which send the same JSON over MQTT and wait for the answer). Every
command may carry `id` and `reply_to` (a topic under `<enterprise>/<site>/_reply/`); the context
service answers there with a `CommandResult`. `at` is when it happened (event time); without it, the
moment the service receives the command.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
Person = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Command(_Strict):
    id: Annotated[str | None, Field(max_length=128)] = None
    reply_to: Annotated[str | None, Field(max_length=256)] = None
    by: Person | None = None  # who: an operator's badge, a planner, "qms", "vision-3"
    at: AwareDatetime | None = None


class PlannedOperation(_Strict):
    """One line of the ERP's dispatch list."""

    job: Code
    operation: Code
    machine: Code
    program: Annotated[str, Field(min_length=1, max_length=128)]
    quantity: Annotated[int, Field(gt=0, le=10_000_000)]
    part_number: Annotated[str, Field(max_length=128)] = ""
    ideal_cycle_s: Annotated[float | None, Field(gt=0, le=7 * 86400)] = None
    planned_start: AwareDatetime | None = None
    planned_end: AwareDatetime | None = None
    sequence: Annotated[int, Field(ge=0)] = 0


class Dispatch(_Command):
    """The full planned list for one machine or one cell (`area/line/cell`): it replaces what was
    planned there; operations already started keep their actuals."""

    kind: Literal["dispatch"] = "dispatch"
    machine: Code | None = None
    cell: Annotated[str | None, Field(pattern=r"^[^/]+/[^/]+/[^/]+$")] = None
    operations: Annotated[list[PlannedOperation], Field(max_length=10_000)]


class DispatchUpdate(_Command):
    """Add or change one planned operation (`cancel: true` takes a not yet started one off the list)."""

    kind: Literal["dispatch_update"] = "dispatch_update"
    operation: PlannedOperation
    cancel: bool = False


class OperationCommand(_Command):
    """Start, pause, resume or complete an operation by hand, or confirm which one a program change began."""

    kind: Literal["operation"] = "operation"
    action: Literal["start", "pause", "resume", "complete", "confirm"]
    machine: Code
    job: Code
    operation: Code


class OperatorCommand(_Command):
    kind: Literal["operator"] = "operator"
    action: Literal["login", "logout"]
    machine: Code
    operator: Person


class ReasonCommand(_Command):
    """Set or correct why a machine stood: the stop that was going on at `stop_at` gets `reason`."""

    kind: Literal["reason"] = "reason"
    machine: Code
    stop_at: AwareDatetime
    reason: Code
    note: Annotated[str, Field(max_length=500)] = ""


class HoldCommand(_Command):
    """A quality hold from the QMS, on a machine or a job (optionally one operation of it)."""

    kind: Literal["hold"] = "hold"
    action: Literal["open", "close"]
    hold: Code
    machine: Code | None = None
    job: Code | None = None
    operation: Code | None = None
    note: Annotated[str, Field(max_length=500)] = ""


class PartsCommand(_Command):
    """Scrap, rework (or a good part confirmed) from an operator, the QMS or an inspection system. A
    vision system may send `result: pass` / `fail` per part. Without job and operation: the machine's
    current operation."""

    kind: Literal["parts"] = "parts"
    machine: Code
    result: Literal["scrap", "rework", "good", "pass", "fail"]
    quantity: Annotated[int, Field(gt=0, le=100_000)] = 1
    job: Code | None = None
    operation: Code | None = None


Command = Annotated[
    Dispatch
    | DispatchUpdate
    | OperationCommand
    | OperatorCommand
    | ReasonCommand
    | HoldCommand
    | PartsCommand,
    Field(discriminator="kind"),
]
KINDS = ("dispatch", "dispatch_update", "operation", "operator", "reason", "hold", "parts")
_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


class CommandError(ValueError):
    """A command that is refused. `status` follows HTTP: 404 unknown thing, 409 conflict, 422 invalid."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class CommandResult(_Strict):
    id: str | None = None
    ok: bool
    status: int = 200
    error: str | None = None
    detail: dict[str, Any] = {}


MAX_BYTES = 1_048_576  # what the broker takes in one message
MAX_DEPTH = 32  # a command is a few levels deep; a parser's recursion is bounded before it starts
_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"\\')


def shape_problem(payload: bytes) -> str | None:
    """Why a payload is not even to be parsed (too big, nested too deep), or None."""
    if len(payload) > MAX_BYTES:
        return f"payload is {len(payload)} bytes, more than {MAX_BYTES}"
    depth, in_text, escaped = 0, False, False
    for c in payload.translate(None, _STRUCTURE):  # only brackets, quotes and backslashes are left
        if in_text:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # quote
                in_text = False
        elif c == 0x22:
            in_text = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                return f"payload is nested more than {MAX_DEPTH} levels deep"
        elif c in (0x5D, 0x7D):
            depth -= 1
    return None


def parse(kind: str, payload: bytes) -> Command:
    """A command from an MQTT payload for `_command/<kind>`; CommandError names what is wrong."""
    if kind not in KINDS:
        raise CommandError(f"unknown command {kind!r}: expected one of {', '.join(KINDS)}", 404)
    problem = shape_problem(payload)
    if problem is not None:
        raise CommandError(f"{kind}: {problem}", 413 if len(payload) > MAX_BYTES else 422)
    try:
        return _ADAPTER.validate_json(_with_kind(payload, kind))
    except ValidationError as exc:
        raise CommandError(f"{kind}: {describe(exc)}") from exc


def _with_kind(payload: bytes, kind: str) -> bytes:
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise CommandError(f"{kind}: payload is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise CommandError(f"{kind}: payload must be a JSON object")
    if doc.setdefault("kind", kind) != kind:
        raise CommandError(f"{kind}: payload says kind {doc['kind']!r}, the topic says {kind!r}")
    return json.dumps(doc).encode()


def describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line: `field.path: message; ...`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1:] if p != 'kind') or 'payload'}: {e['msg']}"
        if e["loc"] and e["loc"][0] in KINDS
        else f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
        for e in exc.errors()
    )


CSV_COLUMNS = (
    "job",
    "operation",
    "machine",
    "program",
    "quantity",
    "part_number",
    "ideal_cycle_s",
    "planned_start",
    "planned_end",
    "sequence",
)


def operations_from_csv(text: str) -> list[PlannedOperation]:
    """A dispatch list as CSV (a header row with the CSV_COLUMNS; empty cells are left out).
    Errors name the line and the column."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in ("job", "operation", "machine", "program", "quantity") if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if missing or unknown:
        raise CommandError(
            "dispatch CSV, line 1: "
            + "; ".join(
                ([f"missing columns {', '.join(missing)}"] if missing else [])
                + ([f"unknown columns {', '.join(unknown)}"] if unknown else [])
            )
        )
    out: list[PlannedOperation] = []
    for row in reader:
        cells = {k: v.strip() for k, v in row.items() if k is not None and v is not None and v.strip()}
        try:
            out.append(PlannedOperation.model_validate(cells))
        except ValidationError as exc:
            raise CommandError(f"dispatch CSV, line {reader.line_num}: {describe(exc)}") from exc
    return out


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)
