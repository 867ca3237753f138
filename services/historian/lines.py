"""The record as InfluxDB line protocol (docs/historian.md has the schema). Pure.

Built by hand rather than with influxdb-client's Point objects: the schema is fixed, the tags of a
machine are encoded once, and a line is one f-string (influxdb-client's points cost several times
more per line; bench/historian.py measures both).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.context.reasons import Reason, path
from services.context.state import Interval, MachineState, PartsMade
from services.oee.engine import Definition, Tally
from services.oee.losses import big_loss
from uns.paths import LEVELS, Isa95Path

STATE_CODES: Mapping[MachineState, int] = {
    MachineState.COMMS_LOSS: 0,
    MachineState.RUNNING: 1,
    MachineState.IDLE: 2,
    MachineState.SETUP: 3,
    MachineState.DOWN: 4,
}
RETRACTED = -1  # the code of a point a correction took back (its duration is 0)

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " ", "\r": " "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": " ", "\r": " "})
_TEXT_ESCAPES = str.maketrans({'"': r"\"", "\\": "\\\\", "\n": " ", "\r": " "})

FieldValue = bool | int | float | str


def tag(value: str) -> str:
    text = value.translate(_TAG_ESCAPES)
    return text[:-1] + "_" if text.endswith("\\") else text  # a trailing backslash would eat the comma


def text(value: str) -> str:
    return '"' + value.translate(_TEXT_ESCAPES) + '"'


def field_value(value: FieldValue) -> str | None:
    """A field value in line protocol (None: not writable, e.g. NaN)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return text(value)


def line(
    measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, FieldValue | None], ts_ms: int
) -> str | None:
    """One point; tags without a value are left out, so are fields (None: no field to write)."""
    head = series(measurement, tags)
    body = ",".join(
        f"{tag(k)}={v}"
        for k, raw in sorted(fields.items())
        if raw is not None and (v := field_value(raw)) is not None
    )
    return f"{head} {body} {ts_ms}" if body else None


def series(measurement: str, tags: Mapping[str, str | None]) -> str:
    """The series key: measurement and sorted tags (what InfluxDB overwrites a point by, with time)."""
    parts = [measurement.translate(_MEASUREMENT_ESCAPES)]
    parts += [f"{tag(k)}={tag(v)}" for k, v in sorted(tags.items()) if v]
    return ",".join(parts)


def machine_tags(machine_path: str | Isa95Path) -> dict[str, str]:
    """enterprise, site, area, line, cell and machine of a machine's ISA-95 path."""
    levels = str(machine_path).split("/")
    return dict(zip(LEVELS, levels, strict=True))


@dataclass(frozen=True, slots=True)
class Encoder:
    """Lines for one site: the reason tree and the OEE definition name what a stop counts as."""

    taxonomy: Mapping[str, Reason]
    definition: Definition
    _prefixes: dict[tuple[str, str], str] = field(default_factory=dict, compare=False, repr=False)

    def signals(self, where: Mapping[str, str], rows: Iterable[tuple[int, str, object]]) -> list[str]:
        """Signal values of one machine, as `signal` would write them: the series of each machine and
        signal is encoded once (the historian's hot path: most points are signal values)."""
        machine = where["machine"]
        prefixes = self._prefixes
        out = []
        for ts, name, value in rows:
            prefix = prefixes.get((machine, name))
            if prefix is None:
                prefix = prefixes[(machine, name)] = series("signal", {**where, "signal": name})
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
                if math.isfinite(number):
                    out.append(f"{prefix} value={number!r} {ts}")
            elif isinstance(value, bool):
                out.append(f"{prefix} value={float(value)!r} {ts}")
            elif isinstance(value, str):
                out.append(f"{prefix} text={text(value)} {ts}")
        return out

    def group(self, code: str | None) -> str | None:
        if code is None or code not in self.taxonomy:
            return None
        return path(self.taxonomy, code)[0]

    def interval_tags(self, where: Mapping[str, str], i: Interval) -> dict[str, str | None]:
        stopped = i.state is not MachineState.RUNNING and i.state is not MachineState.COMMS_LOSS
        reason = (i.reason or "unclassified") if stopped else None
        return {
            **where,
            "state": i.state.value,
            "reason": reason,
            "reason_group": self.group(reason),
            "planned": None if reason is None else str(reason in self.definition.planned).lower(),
            "shift": i.shift,
            "shift_name": i.shift.rpartition("/")[2] if i.shift else None,
            "job": i.job,
            "operation": i.operation,
            "operator": i.operator,
        }

    def interval(self, where: Mapping[str, str], i: Interval) -> list[tuple[str, str, int]]:
        """A closed record piece: its `state_interval` and `machine_state` points, as
        (series, line, timestamp)."""
        code = STATE_CODES[i.state]
        tags = self.interval_tags(where, i)
        fields: dict[str, FieldValue | None] = {
            "code": code,
            "duration_s": (i.end_ms - i.start_ms) / 1000,
            "source": i.source,
            "evidence": i.evidence,
        }
        return [
            _point("state_interval", tags, fields, i.start_ms),
            self.state(where, i.state, i.start_ms, i.reason, i.job, i.operation),
        ]

    def state(
        self,
        where: Mapping[str, str],
        state: MachineState,
        ts_ms: int,
        reason: str | None,
        job: str | None,
        operation: str | None,
    ) -> tuple[str, str, int]:
        tags = {**where, "state": state.value}
        fields: dict[str, FieldValue | None] = {
            "code": STATE_CODES[state],
            "reason": reason,
            "job": job,
            "operation": operation,
        }
        return _point("machine_state", tags, fields, ts_ms)

    @staticmethod
    def part(where: Mapping[str, str], p: PartsMade) -> tuple[str, str, int]:
        tags = {**where, "job": p.job, "operation": p.operation, "shift": p.shift}
        return _point("part_count", tags, {"delta": p.delta, "counter": p.counter}, p.timestamp)

    @staticmethod
    def signal(where: Mapping[str, str], ts_ms: int, name: str, value: object) -> str | None:
        """A signal value: numbers (and booleans as 1/0) in `value`, text in `text`; null is left out."""
        tags = {**where, "signal": name}
        if isinstance(value, bool):
            return line("signal", tags, {"value": float(value)}, ts_ms)
        if isinstance(value, int | float):
            return line("signal", tags, {"value": float(value)}, ts_ms)
        if isinstance(value, str):
            return line("signal", tags, {"text": value}, ts_ms)
        return None

    def oee(self, where: Mapping[str, str], shift: str, start_ms: int, t: Tally) -> str | None:
        tags = {**where, "shift": shift, "shift_name": shift.rpartition("/")[2]}
        fields: dict[str, FieldValue | None] = {
            "availability": t.availability,
            "performance": t.performance,
            "quality": t.quality,
            "oee": t.oee,
            "planned_s": t.planned_s,
            "run_s": t.run_s,
            "stop_s": t.planned_stop_s + t.availability_loss_s + t.performance_stop_s,
            "ideal_s": t.ideal_s,
            "total": t.made,
            "good": t.good,
            "scrap": t.rejected,
            "performance_over_100": int(t.performance_above_100),
            "definition": self.definition.version,
        }
        return line("oee", tags, fields, start_ms)

    def losses(self, where: Mapping[str, str], shift: str, start_ms: int, t: Tally) -> list[str]:
        """Stopped seconds of the shift by reason: every reason of the tree that a stop can have,
        zero where there was none (so a recomputed shift overwrites every reason it had before)."""
        stops = t.stops_s or {}
        codes = sorted({*self.leaves(), *stops})
        out = []
        for code in codes:
            planned = code in self.definition.planned
            tags = {
                **where,
                "shift": shift,
                "shift_name": shift.rpartition("/")[2],
                "reason": code,
                "reason_group": self.group(code),
                "big_loss": big_loss(code, self.taxonomy, self.definition) or "planned",
                "planned": str(planned).lower(),
            }
            found = line("loss", tags, {"seconds": float(stops.get(code, 0.0))}, start_ms)
            if found is not None:
                out.append(found)
        return out

    def leaves(self) -> list[str]:
        """The codes a stop can carry: reasons that are no other reason's group, and `unclassified`."""
        parents = {r.parent for r in self.taxonomy.values() if r.parent is not None}
        return sorted({c for c in self.taxonomy if c not in parents} | {"unclassified"})


def _point(
    measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, FieldValue | None], ts_ms: int
) -> tuple[str, str, int]:
    key = series(measurement, tags)
    found = line(measurement, tags, fields, ts_ms)
    assert found is not None  # every point of these measurements has its code
    return key, found, ts_ms


def retraction(key: str, ts_ms: int) -> str:
    """Take back a point written before under a series key that a correction no longer gives it:
    same series and time, code -1 and no duration (sums stay right; state panels ask code >= 0)."""
    measurement = key.split(",", 1)[0]
    if measurement == "part_count":
        return f"{key} delta=0i {ts_ms}"
    if measurement == "state_interval":
        return f"{key} code={RETRACTED}i,duration_s=0.0 {ts_ms}"
    return f"{key} code={RETRACTED}i {ts_ms}"
