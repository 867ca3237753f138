"""Pages a person opens in a browser, with the key of their link instead of a bearer header
(deps.page_caller): the live floor view for a wall display, and the operator's stop-reason screen for
a tablet at the cell (docs/floor-view.md).

- `GET /floor?key=`: one tile per machine, grouped by area and cell (services/api/static/floor.html);
  `GET /floor/state?key=` the same as JSON; `GET /floor/events?key=` server-sent events: a snapshot,
  then each tile whenever it changes, a clock now and then, and heartbeat comments.
- `GET /operator/{machine}?key=<operator token>`: the machine's unclassified stops and the site's
  reasons (services/api/static/operator.html); the page writes through the API
  (`POST /api/v1/machines/{id}/reasons`) with its key as the bearer token.

The floor view follows the record that the context service writes from the UNS: one poller per app
(`FloorFeed`, started by the first open view and stopped when the last one closes) reads the
machines' current states about once a second, and fans the tiles that changed out to every open
view through a bounded queue each; a view that cannot keep up is dropped (its browser reconnects
and starts again from a snapshot), never buffered without end.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import html
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, FastAPI, Query, Request, status
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from services.api import tokens
from services.api.deps import PageCaller, Settings, acting_on, page_caller
from services.api.errors import ApiError
from services.context.jobs import Operation
from services.context.reasons import Reason
from services.context.record import CurrentState, RecordReader
from services.context.shifts import ShiftCalendar
from services.context.state import MachineState
from services.oee.engine import Definition
from services.oee.observed import ObservedCycles
from services.oee.report import oee

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)  # pages, not API: they hold no bearer token
STATIC = Path(__file__).resolve().parent / "static"

# The state colours of the Grafana dashboards (grafana/generate.py STATES: green, yellow, blue, red
# and #8e8e8e), as the hex values Grafana's dark theme gives those names.
STATE_COLOURS: dict[str, str] = {
    MachineState.RUNNING: "#73BF69",
    MachineState.IDLE: "#FADE2A",
    MachineState.SETUP: "#5794F2",
    MachineState.DOWN: "#F2495C",
    MachineState.COMMS_LOSS: "#8e8e8e",
}
SETS_REASONS = ("operator", "quality", "admin")  # who may open the operator screen (as POST .../reasons)
POLL_S = 1.0  # how often the floor feed reads the record
HEARTBEAT_S = 15.0  # a comment on a quiet stream, so that proxies keep it open
CLOCK_S = 10.0  # the server's time (and shift) on every stream: the views tick on it
# A stream ends after this (`event: reconnect`: the view opens a new one at once, with a fresh
# snapshot): its link is checked again each time, so a revoked or expired display link goes dark
# within it, and a server that shuts down waits no longer than this for its open views.
STREAM_S = 60.0
QUEUE_SIZE = 256  # messages waiting for one view; more and it is dropped
OPERATIONS_EVERY_S = 5.0  # good counts: read again at most this often when parts were counted
OEE_EVERY_S = 30.0  # the shift's OEE of each machine: computed again this often

_bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Key = Annotated[str | None, Query(description="the link's key: a display token or any API token")]


class TileOut(BaseModel):
    """One machine on the floor view."""

    id: str
    name: str
    area: str
    line: str
    cell: str
    state: MachineState
    since_ms: int | None  # in this state since (UTC ms): the view ticks the time in state from it
    job: str | None
    operation: str | None
    good: int | None  # good parts of the operation (made less scrap and rework)
    quantity: int | None  # of the operation's quantity
    reason: str | None  # why it stands now (None while running)
    reason_name: str | None
    reason_source: str | None
    alarm: str | None  # the alarm or emergency stop, when down
    hold: str | None
    operator: str | None
    oee: float | None  # of the current shift (else of the production day so far)
    oee_note: str | None  # why there is no OEE


class FloorOut(BaseModel):
    site: str
    timezone: str
    now_ms: int
    shift: str | None  # the shift going on now, None between shifts or without a calendar
    oee_from_ms: int  # the tiles' OEE is from here to now
    oee_version: str
    colours: dict[str, str]
    tiles: list[TileOut]


def _where(path: str) -> tuple[str, str, str]:
    parts = path.split("/")
    area, line, cell = [*parts[2:5], "", "", ""][:3]
    return area, line, cell


class FloorBoard:
    """The floor view's tiles from the record; the expensive parts (good counts, OEE) are kept and
    read again only when they can have changed. Thread-safe (snapshots are made off the event loop)."""

    def __init__(self, app: FastAPI, monotonic: Callable[[], float] = time.monotonic) -> None:
        state = app.state
        self.store: RecordReader = state.store
        self.calendar: ShiftCalendar | None = state.calendar
        self.reasons: dict[str, Reason] = state.reasons
        self.definition: Definition = state.oee
        self.timezone: str = state.timezone
        self.clock: Callable[[], int] = state.clock
        self.app = app
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._ops: dict[tuple[str, str], Operation] = {}
        self._ops_marks: tuple[int, ...] | None = None
        self._ops_shown: frozenset[tuple[str, str]] = frozenset()
        self._ops_at = -1e18
        self._oee: dict[str, tuple[float | None, str | None]] = {}
        self._oee_at = -1e18
        self._oee_from: int | None = None

    def snapshot(self) -> FloorOut:
        with self._lock:
            states = self.store.current_states()
            latest = max((c.updated_ms or 0 for c in states), default=0)
            now = max(self.clock(), latest)  # a standing machine stands until now
            shift = self.calendar.shift_at(now) if self.calendar is not None else None
            start = self._shift_start(now)
            self._read_operations(states)
            self._read_oee(start, now)
            site = "/".join(states[0].path.split("/")[:2]) if states else ""
            return FloorOut(
                site=site,
                timezone=self.timezone,
                now_ms=now,
                shift=shift.name if shift is not None else None,
                oee_from_ms=start,
                oee_version=self.definition.version,
                colours=dict(STATE_COLOURS),
                tiles=[self._tile(c) for c in states],
            )

    def _shift_start(self, now: int) -> int:
        """Where the tiles' OEE begins, as the OEE report's default window (services/api/when.py):
        the current shift, else (between shifts, without a calendar) the production day, from local
        midnight."""
        shift = self.calendar.shift_at(now - 1) if self.calendar is not None else None
        if shift is not None:
            return shift.start_ms
        zone = ZoneInfo(self.timezone)
        day = datetime.fromtimestamp((now - 1) / 1000, zone).date()
        start = int(datetime.combine(day, dtime(0), zone).timestamp() * 1000)
        return start if start < now else now - 1

    def _read_operations(self, states: list[CurrentState]) -> None:
        """The good counts of the operations the tiles show (those of the machines' open pieces),
        read again when parts were counted or the dispatch changed, at most every few seconds, or
        at once when another operation is shown."""
        shown = frozenset(
            (c.piece["job"], c.piece["operation"])
            for c in states
            if c.piece and c.piece.get("job") and c.piece.get("operation")
        )
        marks = (*self.store.change_marks(), self.store.dispatch_version())
        age = self.monotonic() - self._ops_at
        if (
            shown != self._ops_shown
            or (marks != self._ops_marks and age >= OPERATIONS_EVERY_S)
            or age >= 60 * OPERATIONS_EVERY_S
        ):
            self._ops = {o.key: o for o in self.store.operations(keys=shown)}
            self._ops_marks, self._ops_at, self._ops_shown = marks, self.monotonic(), shown

    def _read_oee(self, start: int, now: int) -> None:
        if start == self._oee_from and self.monotonic() - self._oee_at < OEE_EVERY_S:
            return
        self._oee_from, self._oee_at = start, self.monotonic()
        try:
            tallies = oee(
                self.store,
                self.calendar,
                self.definition,
                start,
                now,
                ("machine",),
                timezone=self.timezone,
                now_ms=now,
                cycles=self._cycles(),
            )
        except Exception:  # the tiles without OEE rather than no tiles
            logger.exception("floor view: the shift's OEE could not be computed")
            return
        self._oee = {
            str(dict(k)["machine"]): (
                (round(t.oee, 3), None)
                if t.oee is not None
                else (None, t.performance_missing or "no planned production time in it yet")
            )
            for k, t in tallies.items()
        }

    def _cycles(self) -> ObservedCycles:
        """The operations' observed cycles, shared with the OEE routes (services/api/oee.py)."""
        kept: ObservedCycles | None = getattr(self.app.state, "oee_cycles", None)
        if kept is None or kept.store is not self.store:
            kept = self.app.state.oee_cycles = ObservedCycles(self.store)
        return kept

    def _tile(self, c: CurrentState) -> TileOut:
        area, line, cell = _where(c.path)
        piece = c.piece or {}
        job, operation = piece.get("job"), piece.get("operation")
        op = self._ops.get((job, operation)) if job and operation else None
        stands = c.state not in (MachineState.RUNNING, MachineState.COMMS_LOSS)
        reason = piece.get("reason") if stands else None
        alarm = None
        if c.state is MachineState.DOWN:
            alarm = (c.story.alarm if c.story is not None else None) or piece.get("reason_evidence")
        oee_value, oee_note = self._oee.get(c.machine_id, (None, "no planned time in the shift yet"))
        return TileOut(
            id=c.machine_id,
            name=c.name,
            area=area,
            line=line,
            cell=cell,
            state=c.state,
            since_ms=c.since_ms,
            job=job,
            operation=operation,
            good=op.good if op is not None else None,
            quantity=op.quantity if op is not None else None,
            reason=reason,
            reason_name=self.reasons[reason].name if reason in self.reasons else reason,
            reason_source=piece.get("reason_source") if stands else None,
            alarm=alarm,
            hold=piece.get("hold"),
            operator=piece.get("operator"),
            oee=oee_value,
            oee_note=oee_note,
        )


@dataclass(eq=False)
class _Viewer:
    """One open floor view: what waits to be sent to it."""

    queue: asyncio.Queue[str]
    primed: bool = False  # it has had its snapshot
    dropped: bool = False  # it could not keep up: its stream ends


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class FloorFeed:
    """One poller per app for every open floor view: started with the first, stopped with the last."""

    def __init__(self, board: FloorBoard, poll_s: float = POLL_S, queue_size: int = QUEUE_SIZE) -> None:
        self.board = board
        self.poll_s = poll_s
        self.queue_size = queue_size
        self.viewers: set[_Viewer] = set()
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0  # views dropped for being too slow
        self._last: FloorOut | None = None
        self._tiles: dict[str, TileOut] = {}
        self._clock_at = 0.0

    def subscribe(self) -> _Viewer:
        viewer = _Viewer(asyncio.Queue(self.queue_size))
        if self._last is not None:  # the poller runs: start from what it last sent
            viewer.queue.put_nowait(_event("snapshot", self._last.model_dump(mode="json")))
            viewer.primed = True
        self.viewers.add(viewer)
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._run(), name="api.floor.poll")
        return viewer

    def unsubscribe(self, viewer: _Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers and self.task is not None:
            self.task.cancel()
            self.task = None
            self._last, self._tiles = None, {}

    async def _run(self) -> None:
        while True:
            try:
                snapshot = await asyncio.to_thread(self.board.snapshot)
            except Exception:  # the record could not be read this time: keep the views, try again
                logger.exception("floor view: the record could not be read")
            else:
                self.publish(snapshot)
            await asyncio.sleep(self.poll_s)

    def publish(self, snapshot: FloorOut) -> None:
        """Send each view what changed since the last snapshot (a new view: all of it)."""
        tiles = {t.id: t for t in snapshot.tiles}
        whole = self._last is None or tiles.keys() != self._tiles.keys()
        full = _event("snapshot", snapshot.model_dump(mode="json"))
        changed = [
            _event("tile", {"now_ms": snapshot.now_ms, "tile": t.model_dump(mode="json")})
            for machine, t in tiles.items()
            if self._tiles.get(machine) != t
        ]
        clock: list[str] = []
        shift_changed = self._last is not None and self._last.shift != snapshot.shift
        if shift_changed or time.monotonic() - self._clock_at >= CLOCK_S:
            self._clock_at = time.monotonic()
            clock = [_event("clock", {"now_ms": snapshot.now_ms, "shift": snapshot.shift})]
        for viewer in list(self.viewers):
            if whole or not viewer.primed:
                self._send(viewer, [full])
                viewer.primed = True
            else:
                self._send(viewer, changed + clock)
        self._last, self._tiles = snapshot, tiles

    def _send(self, viewer: _Viewer, messages: list[str]) -> None:
        for message in messages:
            try:
                viewer.queue.put_nowait(message)
            except asyncio.QueueFull:
                viewer.dropped = True
                self.viewers.discard(viewer)
                self.dropped += 1
                logger.warning("floor view dropped: it took more than %d updates behind", self.queue_size)
                return


def floor_feed(app: FastAPI) -> FloorFeed:
    """The app's one floor feed (made the first time it is asked for)."""
    feed: FloorFeed | None = getattr(app.state, "floor_feed", None)
    if feed is None:
        feed = app.state.floor_feed = FloorFeed(FloorBoard(app))
    return feed


# -- the pages ------------------------------------------------------------------------------------
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@functools.cache
def _template(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _page(template: str, status_code: int = 200, **values: str) -> HTMLResponse:
    """A page of services/api/static/ with `{{name}}` filled in (escaped; never inside its script),
    under a content security policy that runs its own inline script and style and nothing else."""
    text = _template(template)
    for field, value in values.items():
        text = text.replace("{{" + field + "}}", html.escape(value, quote=True))
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(text):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    scripts, styles = (" ".join(hashes[kind]) or "'none'" for kind in ("script", "style"))
    policy = (
        "default-src 'none'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none';"
        f" frame-ancestors 'none'; script-src {scripts}; style-src {styles}"
    )
    headers = {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",  # the key is in the link: never pass it on
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(text, status_code=status_code, headers=headers)


def _refused(exc: ApiError) -> HTMLResponse:
    """A page's refusal, readable on the screen it was opened on: what, and which field."""
    where = ".".join(str(x) for p in exc.problems for x in p.loc[:2]) if exc.problems else ""
    return _page(
        "refused.html",
        exc.status_code,
        status=str(exc.status_code),
        detail=str(exc.detail),
        where=f"field: {where}" if where else "",
    )


def _colours() -> str:
    return json.dumps(STATE_COLOURS)


@router.get("/floor", response_class=HTMLResponse)
def floor_page(request: Request, settings: Settings, credentials: Bearer, key: Key = None) -> HTMLResponse:
    """The floor view: any valid key opens it (a display link, or any API token)."""
    try:
        page_caller(request, settings, credentials, key)
    except ApiError as exc:
        return _refused(exc)
    return _page("floor.html", colours=_colours())


@router.get("/floor/state", response_model=FloorOut)
def floor_state(request: Request, _: PageCaller) -> FloorOut:
    """What the floor view shows, now."""
    return floor_feed(request.app).board.snapshot()


@router.get("/floor/events")
async def floor_events(request: Request, _: PageCaller) -> StreamingResponse:
    """Server-sent events: `snapshot` (every tile) first, then `tile` whenever a machine's tile
    changes, `clock` every few seconds, a comment as heartbeat on a quiet stream, and `reconnect`
    when the stream has run its time (STREAM_S)."""
    feed = floor_feed(request.app)
    lifetime_s: float = getattr(request.app.state, "floor_stream_s", STREAM_S)

    async def stream() -> AsyncIterator[str]:
        viewer = feed.subscribe()
        ends = time.monotonic() + lifetime_s
        try:
            yield "retry: 3000\n\n"
            while not viewer.dropped:
                left = ends - time.monotonic()
                if left <= 0:
                    yield _event("reconnect", {})  # the view opens a new stream (its link checked again)
                    break
                try:
                    message = await asyncio.wait_for(viewer.queue.get(), min(HEARTBEAT_S, left))
                except TimeoutError:
                    message = ": heartbeat\n\n"
                if not viewer.dropped:
                    yield message
        finally:
            feed.unsubscribe(viewer)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},  # nginx: do not buffer it
    )


@router.get("/operator/{machine_id}", response_class=HTMLResponse)
def operator_page(
    request: Request, machine_id: str, settings: Settings, credentials: Bearer, key: Key = None
) -> HTMLResponse:
    """The operator's stop-reason screen of one machine: for the roles that may set reasons (an
    operator limited to cells: on those only). A display link is refused."""
    store: RecordReader = request.app.state.store
    try:
        caller = page_caller(request, settings, credentials, key)
        if caller.role == tokens.DISPLAY:
            raise ApiError(
                status.HTTP_403_FORBIDDEN,
                "a display link opens the floor view only (/floor?key=...), not the operator screen",
                ["query", "key"],
            )
        if caller.role not in SETS_REASONS:
            raise ApiError(
                status.HTTP_403_FORBIDDEN,
                f"the {caller.role} role may not set reasons (allowed: {', '.join(SETS_REASONS)})",
                ["query", "key"],
            )
        current = store.current_state(machine_id)
        if current is None:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                f"no machine {machine_id!r} in the site model",
                ["path", "machine_id"],
            )
        acting_on(store, caller, machine_id)
    except ApiError as exc:
        return _refused(exc)
    return _page(
        "operator.html",
        machine=machine_id,
        name=current.name,
        who=caller.name if caller.token_id is not None else f"api:{caller.role}",  # as deps.author
        colours=_colours(),
    )
