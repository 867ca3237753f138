"""`/api/v1/machines/{id}/stops`: a machine's stops whose reason can still be set (the site's reason
window), whole (one stop however many record pieces cut it), longest first; with `unclassified=true`
only those no rule, hold or operator explained: what the operator screen (/operator/{id}) lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field

from services.api.deps import Settings, Store
from services.api.errors import ApiError, responses
from services.context.reasons import DEFAULT_REASON, Reason
from services.context.record import CurrentState, RecordReader
from services.context.state import MachineState
from uns.clock import iso, parse_iso
from uns.site import DowntimeConfig

router = APIRouter(prefix="/api/v1/machines", tags=["downtime"])

# The site model's downtime.reason_window_hours, when the app was not told it (app.state.reason_window_hours)
DEFAULT_WINDOW_HOURS: float = DowntimeConfig.model_fields["reason_window_hours"].default
_NOT_STOPS = (MachineState.RUNNING, MachineState.COMMS_LOSS)  # comms_loss is not known: no stop of its own


class StopOut(BaseModel):
    start: str = Field(description="when the machine stopped (UTC): send it as `stop_at` to set the reason")
    start_local: str = Field(description="the same in the site's time zone, ISO-8601 with offset")
    end: str | None = Field(description="when it ran again; None: it is going on")
    duration_s: float = Field(description="from the stop to the restart (to now while it goes on)")
    unclassified_s: float = Field(description="of it: stopped time with no reason but `unclassified`")
    states: list[MachineState] = Field(description="the states it went through, in order")
    reason: str | None = Field(description="the reason its latest piece has")
    reason_name: str | None
    reason_source: str | None = Field(description="operator, hold, rule or default")
    job: str | None
    operation: str | None
    operator: str | None = Field(description="who was logged in on the machine when it stopped")
    reason_until: str | None = Field(description="until when its reason can be set (None: going on)")


class StopsOut(BaseModel):
    machine: str
    name: str
    state: MachineState
    operator: str | None = Field(description="who is logged in on the machine now")
    now: str
    timezone: str
    window_hours: float = Field(description="reasons can be set this long after a stop ended")
    stops: list[StopOut]


@dataclass
class _Stop:
    start_ms: int
    last_ms: int = 0  # the end of its latest closed piece
    going_on: bool = False  # the machine still stands in it
    unclassified_ms: int = 0
    states: list[MachineState] = field(default_factory=list)
    reason: str | None = None
    source: str | None = None
    by_operator: bool = False
    job: str | None = None
    operation: str | None = None
    operator: str | None = None

    def add(
        self,
        state: MachineState,
        start: int,
        end: int | None,
        now: int,
        reason: str | None,
        source: str | None,
        context: tuple[str | None, str | None, str | None],
    ) -> None:
        if not self.states or self.states[-1] is not state:
            self.states.append(state)
        if reason in (None, DEFAULT_REASON) and source != "operator":
            self.unclassified_ms += (now if end is None else end) - start
        self.reason, self.source = reason or DEFAULT_REASON, source or "default"
        self.by_operator = self.by_operator or source == "operator"
        job, operation, operator = context
        self.job, self.operation = self.job or job, self.operation or operation
        self.operator = self.operator or operator
        if end is None:
            self.going_on = True
        else:
            self.last_ms = max(self.last_ms, end)

    @property
    def end_ms(self) -> int | None:
        """When the machine ran again; None: it is going on."""
        return None if self.going_on else self.last_ms


def stops_of(
    store: RecordReader,
    current: CurrentState,
    now_ms: int,
    window_ms: int,
    max_days: int,
) -> list[_Stop]:
    """The machine's stops that ended within `window_ms` of now (or go on), each whole, in time order."""
    machine_id = current.machine_id
    since = now_ms - window_ms
    pieces = store.intervals(machine_id, since, now_ms + 1)
    earliest = min((i.stop_of for i in pieces if i.state not in _NOT_STOPS), default=since)
    if earliest < since:  # a stop that began before the window: all of it
        pieces = store.intervals(machine_id, max(earliest, now_ms - max_days * 86_400_000), now_ms + 1)
    stops: dict[int, _Stop] = {}
    for i in pieces:
        if i.state in _NOT_STOPS:
            continue
        k = i.stop_of
        stop = stops.setdefault(k, _Stop(k))
        stop.add(i.state, i.start_ms, i.end_ms, now_ms, i.reason, i.source, (i.job, i.operation, i.operator))
    if current.state not in _NOT_STOPS and current.since_ms is not None:  # the open interval
        piece = current.piece or {}
        text = piece.get("stop_start")
        k = parse_iso(text) if isinstance(text, str) else current.since_ms
        stop = stops.setdefault(k, _Stop(k))
        context = (piece.get("job"), piece.get("operation"), piece.get("operator"))
        stop.add(
            current.state,
            current.since_ms,
            None,
            now_ms,
            piece.get("reason"),
            piece.get("reason_source"),
            context,
        )
    return [s for _, s in sorted(stops.items()) if s.end_ms is None or now_ms - s.end_ms <= window_ms]


def window_hours(request: Request) -> float:
    """The site's reason window (app.state.reason_window_hours, else the site model's default)."""
    hours = getattr(request.app.state, "reason_window_hours", None)
    return float(hours) if isinstance(hours, int | float) else DEFAULT_WINDOW_HOURS


def _local(ms: int, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone).isoformat(timespec="seconds")


@router.get(
    "/{machine_id}/stops",
    response_model=StopsOut,
    summary="Stops whose reason can still be set, longest first",
    responses=responses(404, 422),
)
def machine_stops(
    request: Request,
    machine_id: str,
    store: Store,
    settings: Settings,
    unclassified: Annotated[
        bool, Query(description="only stops (partly) without a reason: no rule, hold or operator said why")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many, the longest")] = 50,
) -> StopsOut:
    """Stops that ended within the site's reason window (`downtime.reason_window_hours`) or go on,
    each from the moment the machine stopped until it ran again (comms_loss time is not a stop).
    With `unclassified=true`, those with stopped time that has no reason but `unclassified` and no
    operator's reason yet."""
    current = store.current_state(machine_id)
    if current is None:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"no machine {machine_id!r} in the site model", ["path", "machine_id"]
        )
    hours = window_hours(request)
    window_ms = int(hours * 3_600_000)
    now_ms = max(request.app.state.clock(), current.updated_ms or 0)
    zone_name: str = request.app.state.timezone
    zone = ZoneInfo(zone_name)
    taxonomy: dict[str, Reason] = request.app.state.reasons
    found = stops_of(store, current, now_ms, window_ms, settings.max_interval_days)
    if unclassified:
        found = [s for s in found if s.unclassified_ms > 0 and not s.by_operator]

    def duration(s: _Stop) -> int:
        return (now_ms if s.end_ms is None else s.end_ms) - s.start_ms

    found.sort(key=lambda s: (-duration(s), s.start_ms))
    piece = current.piece or {}
    return StopsOut(
        machine=machine_id,
        name=current.name,
        state=current.state,
        operator=piece.get("operator"),
        now=iso(now_ms),
        timezone=zone_name,
        window_hours=hours,
        stops=[
            StopOut(
                start=iso(s.start_ms),
                start_local=_local(s.start_ms, zone),
                end=iso(s.end_ms) if s.end_ms is not None else None,
                duration_s=duration(s) / 1000,
                unclassified_s=s.unclassified_ms / 1000,
                states=s.states,
                reason=s.reason,
                reason_name=taxonomy[s.reason].name if s.reason in taxonomy else None,
                reason_source=s.source,
                job=s.job,
                operation=s.operation,
                operator=s.operator,
                reason_until=iso(s.end_ms + window_ms) if s.end_ms is not None else None,
            )
            for s in found[:limit]
        ],
    )
