"""What the write endpoints answer: the context service's account of what it applied (the `detail`
of its command result, services/context/intake.py), typed so the OpenAPI document says it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, JsonValue


def _example(**fields: JsonValue) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [fields]})


class DispatchAnswer(BaseModel):
    """A dispatch list taken: its new version, how many operations it holds, and the planned
    operations it replaced that had not started (`job/operation`)."""

    model_config = _example(version=12, operations=3, dropped=["J1001/20"])
    version: int
    operations: int
    dropped: list[str]


class DispatchUpdateAnswer(BaseModel):
    model_config = _example(version=13, cancelled=False)
    version: int
    cancelled: bool


class OperationEvent(BaseModel):
    job: str
    operation: str
    action: str  # start, pause, resume, complete (a confirm may complete it too)
    at: str  # UTC, ISO-8601


class OperationAnswer(BaseModel):
    """The operation events the action made (a confirm of a finished count also completes it)."""

    model_config = _example(
        events=[{"job": "J1001", "operation": "10", "action": "start", "at": "2026-11-18T11:02:00.000Z"}]
    )
    events: list[OperationEvent]


class OperatorAnswer(BaseModel):
    model_config = _example(machine="vf2-01", operator="Ann Smith", previous=None)
    machine: str
    operator: str | None  # who is logged in now (None after a logout)
    previous: str | None


class ReasonAnswer(BaseModel):
    """The stop that got the reason (its start) and the reason it had before."""

    model_config = _example(
        machine="vf2-01", stop_start="2026-11-18T13:40:12.000Z", old="unclassified", new="waiting_material"
    )
    machine: str
    stop_start: str
    old: str | None
    new: str


class HoldAnswer(BaseModel):
    model_config = _example(hold="QH-2211", machines=["vf2-01"])
    hold: str
    machines: list[str]  # the machines the hold covers


class PartsAnswer(BaseModel):
    """Where the parts were booked: the operation they count against and the shift."""

    model_config = _example(machine="vf2-01", job="J1001", operation="10", shift="2026-11-18/day")
    machine: str
    job: str | None
    operation: str | None
    shift: str | None
