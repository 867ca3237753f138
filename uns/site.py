"""The site model: a YAML file that names the enterprise, site, areas, lines, cells and machines,
and where each machine's signals come from.

`load_site(path)` validates it; every problem is reported as `file:line: field: what is wrong`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from uns.paths import Isa95Path, check_segment
from uns.sparkplug.topic import check_id


class SiteConfigError(ValueError):
    """A site file that cannot be used; `problems` are `file:line: field: message` lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid site model:\n  " + "\n  ".join(self.problems))


class Signal(enum.StrEnum):
    """The signals a CNC controller gives, by our own names (also the Sparkplug metric names)."""

    EXECUTION = "execution"  # ACTIVE / READY / INTERRUPTED / FEED_HOLD / STOPPED
    MODE = "mode"  # AUTOMATIC / MANUAL / MDI / EDIT
    PROGRAM = "program"
    PART_COUNT = "part_count"
    ALARM_CODE = "alarm_code"  # 0 = no alarm
    ALARM_TEXT = "alarm_text"
    ESTOP = "estop"  # True = emergency stop pressed
    SPINDLE_SPEED = "spindle_speed"  # rpm
    SPINDLE_LOAD = "spindle_load"  # percent
    FEED_OVERRIDE = "feed_override"  # percent
    SINGLE_BLOCK = "single_block"  # True = single block on (optional: where the controller reports it)
    OPTIONAL_STOP = "optional_stop"  # True = optional stop (M01) on (optional)


REQUIRED_SIGNALS = frozenset(
    {Signal.EXECUTION, Signal.MODE, Signal.PART_COUNT, Signal.ALARM_CODE, Signal.ESTOP}
)
EXECUTION_VALUES = frozenset({"ACTIVE", "READY", "INTERRUPTED", "FEED_HOLD", "STOPPED"})
MODE_VALUES = frozenset({"AUTOMATIC", "MANUAL", "MDI", "EDIT"})


def _signal_keys(value: Any) -> Any:
    """Signal names as `Signal`s, so a dict keyed by them validates in strict mode (others fail there)."""
    if isinstance(value, dict):
        return {Signal(k) if k in Signal._value2member_map_ else k: v for k, v in value.items()}
    return value


def _require(signals: set[Signal]) -> None:
    missing = sorted(s.value for s in REQUIRED_SIGNALS - signals)
    if missing:
        raise ValueError(f"missing required signals: {', '.join(missing)}")


def _check_port(endpoint: str) -> str:
    """An endpoint URL whose port, if given, is one a server can listen on."""
    try:
        port = urlsplit(endpoint).port
    except ValueError:
        raise ValueError(f"endpoint {endpoint!r}: the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"endpoint {endpoint!r}: the port must be a number from 1 to 65535")
    return endpoint


def _segment(level: str) -> AfterValidator:
    def check(value: str) -> str:
        check_segment(level, value)
        return value

    return AfterValidator(check)


def _sparkplug_id(kind: str) -> AfterValidator:
    def check(value: str) -> str:
        check_id(kind, value)
        return value

    return AfterValidator(check)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class OpcUaSecurity(_Strict):
    """Basic256Sha256 with our application instance certificate; paths relative to the site file."""

    policy: Literal["Basic256Sha256"] = "Basic256Sha256"
    mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: Path
    private_key: Path
    server_certificate: Path | None = None  # None: take it from the server's endpoint description

    @field_validator("certificate", "private_key", "server_certificate", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        return Path(value) if isinstance(value, str) else value


class OpcUaSource(_Strict):
    protocol: Literal["opcua"]
    endpoint: Annotated[str, Field(pattern=r"^opc\.tcp://[^\s/]+(/.*)?$")]
    signals: dict[Signal, Annotated[str, Field(min_length=1)]]
    publishing_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 100
    username: str | None = None
    # the name of the environment variable that holds the password: secrets never go in the file
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    security: OpcUaSecurity | None = None

    _port = field_validator("endpoint")(staticmethod(_check_port))

    @model_validator(mode="after")
    def _credentials(self) -> OpcUaSource:
        if (self.username is None) != (self.password_env is None):
            raise ValueError(
                "username and password_env go together (the password is read from that variable)"
            )
        return self

    _signal_names = field_validator("signals", mode="before")(staticmethod(_signal_keys))

    @field_validator("signals")
    @classmethod
    def _required(cls, value: dict[Signal, str]) -> dict[Signal, str]:
        _require(set(value))
        return value


class Table(enum.StrEnum):
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)


class RegisterType(enum.StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def words(self) -> int:
        return {"int32": 2, "uint32": 2, "float32": 2, "float64": 4}.get(self.value, 1)


_TEXT_SIGNALS = frozenset({Signal.EXECUTION, Signal.MODE, Signal.PROGRAM, Signal.ALARM_TEXT})
_NUMBER_SIGNALS = frozenset(
    {Signal.PART_COUNT, Signal.ALARM_CODE, Signal.SPINDLE_SPEED, Signal.SPINDLE_LOAD, Signal.FEED_OVERRIDE}
)
_PROTOCOLS = frozenset({"opcua", "modbus", "mtconnect"})


class ModbusSignal(BaseModel):
    """Where one signal lives in a Modbus device, and how its raw value becomes the signal's value.

    value = map[raw] if `map` is given, else format.format(raw * scale + offset) for text signals,
    else raw * scale + offset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: Table
    address: Annotated[int, Field(ge=0, le=65535)]
    type: RegisterType | None = None  # bool for coils and discrete inputs, uint16 for registers
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0
    map: dict[int, str] | None = None
    format: str | None = None
    deadband: Annotated[float, Field(ge=0)] = 0.0
    rollover: Annotated[int, Field(ge=2)] | None = None  # a counter's modulus, e.g. 65536

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in RegisterType._value2member_map_:
            raise ValueError(f"unknown type {value!r}: use one of {', '.join(t.value for t in RegisterType)}")
        return value

    @property
    def register_type(self) -> RegisterType:
        if self.type is not None:
            return self.type
        return RegisterType.BOOL if self.table.is_bits or self.bit is not None else RegisterType.UINT16

    @property
    def span(self) -> tuple[int, int]:
        """First and last address this signal reads."""
        return self.address, self.address + self.register_type.words - 1

    @model_validator(mode="after")
    def _consistent(self) -> ModbusSignal:
        kind = self.register_type
        if self.table.is_bits:
            if kind is not RegisterType.BOOL:
                raise ValueError(f"a {self.table} is one bit: its type is bool, not {kind}")
            if self.bit is not None:
                raise ValueError(f"'bit' is for registers; a {self.table} is already one bit")
        elif kind is RegisterType.BOOL and self.bit is None:
            raise ValueError("a bool out of a register needs 'bit' (0-15)")
        elif self.bit is not None and kind is not RegisterType.BOOL:
            raise ValueError(f"'bit' picks a bool out of a register; it does not go with type {kind}")
        if self.span[1] > 65535:
            raise ValueError(f"{kind} at address {self.address} runs past register 65535")
        if self.format is not None:
            try:
                self.format.format(0)
            except (IndexError, KeyError, ValueError) as exc:
                raise ValueError(f"format {self.format!r} must take one value, like 'O{{}}': {exc}") from None
        return self


class PollGroup(_Strict):
    interval_ms: Annotated[int, Field(ge=20, le=3_600_000)]
    signals: dict[Signal, ModbusSignal]

    _signal_names = field_validator("signals", mode="before")(staticmethod(_signal_keys))


class ModbusSource(_Strict):
    protocol: Literal["modbus"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    device_id: Annotated[int, Field(ge=0, le=247)] = 1
    timeout_ms: Annotated[int, Field(ge=50, le=60_000)] = 1000
    poll_groups: Annotated[dict[str, PollGroup], Field(min_length=1)]

    @property
    def signals(self) -> dict[Signal, ModbusSignal]:
        return {s: spec for group in self.poll_groups.values() for s, spec in group.signals.items()}

    @model_validator(mode="after")
    def _whole_map(self) -> ModbusSource:
        seen: dict[Signal, str] = {}
        for name, group in self.poll_groups.items():
            for signal in group.signals:
                if signal in seen:
                    raise ValueError(f"signal {signal} is in poll groups {seen[signal]!r} and {name!r}")
                seen[signal] = name
        _require(set(seen))
        signals = self.signals
        for signal in (Signal.EXECUTION, Signal.MODE):
            if signal in signals and signals[signal].map is None:
                raise ValueError(f"{signal} needs a 'map' from register values to {signal} names")
        for signal, spec in signals.items():
            if signal in _TEXT_SIGNALS and spec.map is None and spec.format is None:
                raise ValueError(f"{signal} is text: give a 'map' or a 'format' for the register value")
            if signal in _NUMBER_SIGNALS and spec.register_type is RegisterType.BOOL and spec.map is None:
                raise ValueError(f"{signal} is a number: a single bit does not hold it")
        _check_overlaps(signals)
        return self


def _check_overlaps(signals: dict[Signal, ModbusSignal]) -> None:
    """Two signals may share a register only as different bits of it."""
    # coils and discrete inputs are separate tables; holding and input registers too
    taken: dict[tuple[Table, int], list[tuple[Signal, int | None]]] = {}
    for signal, spec in signals.items():
        first, last = spec.span
        for address in range(first, last + 1):
            for other, other_bit in taken.get((spec.table, address), []):
                if spec.bit is None or other_bit is None or spec.bit == other_bit:
                    same_bit = spec.bit is not None and spec.bit == other_bit
                    where = f"{spec.table} {address}" + (f" bit {spec.bit}" if same_bit else "")
                    raise ValueError(f"signals {other} and {signal} overlap at {where}")
            taken.setdefault((spec.table, address), []).append((signal, spec.bit))


# The signals an MTConnect source reports unless it lists its own: every one the bridge finds by data
# item type (docs/mtconnect.md); single_block and optional_stop (CONTROLLER_MODE_OVERRIDE) when listed.
MTCONNECT_SIGNALS = (
    Signal.EXECUTION,
    Signal.MODE,
    Signal.PROGRAM,
    Signal.PART_COUNT,
    Signal.ALARM_CODE,
    Signal.ALARM_TEXT,
    Signal.ESTOP,
    Signal.SPINDLE_SPEED,
    Signal.SPINDLE_LOAD,
    Signal.FEED_OVERRIDE,
)


class MtConnectSource(_Strict):
    """An MTConnect agent's REST interface (probe, current, sample), read by bridge/mtconnect.py.

    Signals are found in the agent's probe by data item type and sub-type; `data_items` names the
    data item of a signal by its id instead (for alarm_code: one or more CONDITION data items, whose
    faults give alarm_code and alarm_text)."""

    protocol: Literal["mtconnect"]
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")]
    device: Annotated[str, Field(min_length=1)] | None = None  # name or uuid; None: the agent's only one
    signals: Annotated[list[Signal], Field(min_length=1)] = Field(
        default_factory=lambda: list(MTCONNECT_SIGNALS)
    )
    data_items: dict[
        Signal, Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]]
    ] = {}
    format: Literal["xml", "json"] = "xml"
    stream: bool = True  # one long `sample` request the agent streams (interval), or polls
    interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 100  # streaming interval, or poll period
    heartbeat_ms: Annotated[int, Field(ge=100, le=60_000)] = 1000  # the agent's heartbeat while quiet
    count: Annotated[int, Field(ge=1, le=100_000)] = 1000  # observations per sample document at most
    timeout_ms: Annotated[int, Field(ge=100, le=60_000)] = 5000

    @field_validator("signals", mode="before")
    @classmethod
    def _signal_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Signal(v) if v in Signal._value2member_map_ else v for v in value]
        return value

    _signal_names = field_validator("data_items", mode="before")(staticmethod(_signal_keys))

    _port = field_validator("endpoint")(staticmethod(_check_port))

    @model_validator(mode="after")
    def _consistent(self) -> MtConnectSource:
        twice = sorted({s.value for s in self.signals if self.signals.count(s) > 1})
        if twice:
            raise ValueError(f"signals listed twice: {', '.join(twice)}")
        _require(set(self.signals))
        unlisted = sorted(s.value for s in self.data_items if s not in self.signals)
        if unlisted:
            raise ValueError(f"data_items for signals that are not in 'signals': {', '.join(unlisted)}")
        if Signal.ALARM_TEXT in self.data_items:
            raise ValueError(
                "data_items: alarm_text comes with alarm_code's CONDITION data items (their text):"
                " map alarm_code"
            )
        for signal, ids in self.data_items.items():
            if isinstance(ids, list) and signal is not Signal.ALARM_CODE:
                raise ValueError(f"data_items.{signal}: one data item id (only alarm_code takes a list)")
            if isinstance(ids, list) and not ids:
                raise ValueError(f"data_items.{signal}: give at least one data item id")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""


ForeignValue = str | int | float | bool


def value_key(value: object) -> str:
    """How a value of an edge node's metric is looked up in a `values` map: its text, a whole
    number as an integer (so 1, 1.0 and "1" are the same key), true and false as `true`/`false`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class SparkplugSource(_Strict):
    """A machine that a Sparkplug B edge node of someone else's publishes (Ignition Edge, Kepware,
    Node-RED, a PLC's own): no bridge of ours reads it, the context service takes its device's
    metrics as they come.

    `signals` names the edge's metric for each of our signals; `values` maps the edge's values of a
    signal to ours (numeric execution codes to ACTIVE, READY...): a value the map does not name is
    refused and logged."""

    protocol: Literal["sparkplug"]
    group: Annotated[str, _sparkplug_id("group id")] | None = None  # None: the site's sparkplug.group_id
    edge_node: Annotated[str, _sparkplug_id("edge node id")]
    device: Annotated[str, _sparkplug_id("device id")] | None = None  # None: the machine's id
    signals: dict[Signal, Annotated[str, Field(min_length=1)]]
    values: dict[Signal, dict[str, ForeignValue]] = {}

    _signal_names = field_validator("signals", "values", mode="before")(staticmethod(_signal_keys))

    @field_validator("values", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: {value_key(v): t for v, t in m.items()} if isinstance(m, dict) else m
                for k, m in value.items()
            }
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SparkplugSource:
        _require(set(self.signals))
        names: dict[str, Signal] = {}
        for signal, metric in self.signals.items():
            other = names.setdefault(metric, signal)
            if other is not signal:
                raise ValueError(f"signals {other} and {signal} both name the metric {metric!r}")
        unlisted = sorted(s.value for s in self.values if s not in self.signals)
        if unlisted:
            raise ValueError(f"values for signals that are not in 'signals': {', '.join(unlisted)}")
        allowed = {Signal.EXECUTION: EXECUTION_VALUES, Signal.MODE: MODE_VALUES}
        for signal, mapping in self.values.items():
            if signal in allowed:
                wrong = sorted(str(t) for t in mapping.values() if str(t).upper() not in allowed[signal])
                if wrong:
                    raise ValueError(
                        f"values.{signal}: {', '.join(wrong)} is not one of"
                        f" {', '.join(sorted(allowed[signal]))}"
                    )
        return self

    def key(self, site_group: str, machine_id: str) -> tuple[str, str, str]:
        """(group, edge node, device) that the machine's data comes under."""
        return (self.group or site_group, self.edge_node, self.device or machine_id)


Source = OpcUaSource | ModbusSource | MtConnectSource | SparkplugSource


class MachineConfig(_Strict):
    id: Annotated[str, _segment("machine id")]
    name: str = ""
    edge_node: Annotated[str, _sparkplug_id("edge node id")] | None = None
    source: Annotated[Source, Field(discriminator="protocol")]

    @model_validator(mode="after")
    def _one_edge_node(self) -> MachineConfig:
        if isinstance(self.source, SparkplugSource) and self.edge_node is not None:
            raise ValueError("edge_node: a sparkplug source names its edge node itself (source.edge_node)")
        return self


class CellConfig(_Strict):
    name: Annotated[str, _segment("cell")]
    machines: list[MachineConfig]


class LineConfig(_Strict):
    name: Annotated[str, _segment("line")]
    cells: list[CellConfig]


class AreaConfig(_Strict):
    name: Annotated[str, _segment("area")]
    lines: list[LineConfig]


class SparkplugConfig(_Strict):
    group_id: Annotated[str, _sparkplug_id("group id")]
    edge_node_id: Annotated[str, _sparkplug_id("edge node id")] = "edge1"
    host_id: Annotated[str, _sparkplug_id("host id")] = "uns-host"
    # the Sparkplug type our edge nodes publish part counters as: UInt32 (in `int_value`, as the
    # specification's type table has it) or Int64 (in `long_value`), for consumers that read UInt32
    # wrongly (Eclipse Tahu's JavaScript codec reads it as null: docs/topics.md)
    part_count_type: Literal["UInt32", "Int64"] = "UInt32"


_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _time(text: str) -> dt.time:
    return dt.time(int(text[:2]), int(text[3:]))


class BreakConfig(_Strict):
    name: str
    start: Annotated[str, Field(pattern=_HHMM)]
    end: Annotated[str, Field(pattern=_HHMM)]


class ShiftConfig(_Strict):
    name: Annotated[str, _segment("shift")]
    start: Annotated[str, Field(pattern=_HHMM)]  # local wall time, "HH:MM"
    end: Annotated[str, Field(pattern=_HHMM)]  # at or before start: the next day
    days: Annotated[list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]], Field(min_length=1)]
    breaks: list[BreakConfig] = []


class OvertimeConfig(_Strict):
    name: Annotated[str, _segment("shift")]
    start: dt.datetime  # local wall time
    end: dt.datetime

    @field_validator("start", "end", mode="before")
    @classmethod
    def _local(cls, value: Any) -> Any:
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _order(self) -> OvertimeConfig:
        if self.end <= self.start:
            raise ValueError("overtime must end after it starts")
        return self


class ShiftsConfig(_Strict):
    pattern: Annotated[list[ShiftConfig], Field(min_length=1)]
    holidays: list[dt.date] = []
    overtime: list[OvertimeConfig] = []

    @field_validator("holidays", mode="before")
    @classmethod
    def _dates(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [dt.date.fromisoformat(v) if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _no_overlap(self) -> ShiftsConfig:
        # minutes of the week each shift covers; two shifts may not cover the same minute
        week = 7 * 24 * 60
        taken: dict[int, str] = {}
        for s in self.pattern:
            start, end = _time(s.start), _time(s.end)
            length = (end.hour * 60 + end.minute - start.hour * 60 - start.minute) % (24 * 60) or 24 * 60
            for day in s.days:
                first = _DAYS.index(day) * 24 * 60 + start.hour * 60 + start.minute
                for minute in range(first, first + length):
                    other = taken.setdefault(minute % week, s.name)
                    if other != s.name:
                        raise ValueError(f"shifts {other!r} and {s.name!r} overlap on {day}")
        return self


class ReasonConfig(_Strict):
    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    name: Annotated[str, Field(min_length=1)]
    planned: bool = False
    loss: Literal["availability", "performance", "quality", "planned"] = "availability"
    parent: Annotated[str | None, Field(pattern=r"^[a-z][a-z0-9_]*$")] = None  # a group in the tree


def _r(code: str, name: str, parent: str | None = None, loss: str = "availability") -> ReasonConfig:
    planned = loss == "planned"
    return ReasonConfig.model_validate(
        {"code": code, "name": name, "planned": planned, "loss": loss, "parent": parent}
    )


# The default downtime taxonomy (a tree: groups have no parent); services/context/reasons.py uses it,
# and a site model's `downtime.reasons` add to it or change it.
DEFAULT_REASONS: tuple[ReasonConfig, ...] = (
    # groups
    _r("changeover", "Changeover"),
    _r("quality", "Quality"),
    _r("flow", "Material and people"),
    _r("equipment", "Equipment"),
    _r("planned_stop", "Planned stop", loss="planned"),
    _r("speed", "Speed loss", loss="performance"),
    # reasons
    _r("setup", "Setup / changeover", "changeover"),
    _r("program_prove_out", "Program prove-out", "changeover"),
    _r("waiting_inspection", "Waiting on inspection / first article", "quality"),
    _r("quality_hold", "Quality hold", "quality"),
    _r("blocked", "Blocked (downstream full)", "flow"),
    _r("starved", "Starved (no material)", "flow"),
    _r("no_operator", "No operator", "flow"),
    _r("no_work", "No work dispatched", "flow"),
    _r("tooling", "Tooling", "equipment"),
    _r("maintenance_unplanned", "Unplanned maintenance", "equipment"),
    _r("machine_fault", "Machine fault (alarm or emergency stop)", "equipment"),
    _r("fault_recovery", "Recovery after a fault (reset, tool change)", "equipment"),
    _r("maintenance_planned", "Planned maintenance", "planned_stop", loss="planned"),
    _r("planned_break", "Planned break", "planned_stop", loss="planned"),
    _r("micro_stop", "Micro-stop", "speed", loss="performance"),
    _r("unclassified", "Not yet classified"),
)

_Code = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class RuleConfig(_Strict):
    """One classification rule: on or off, and the reason code it gives (default: its own name)."""

    enabled: bool = True
    reason: _Code | None = None


class ProveOutRule(RuleConfig):
    """A stop while the first part after a program change is run at reduced feed override, with feed
    holds, or with single block or optional stop on."""

    feed_override_below: Annotated[float, Field(gt=0, le=200)] = 100.0  # percent
    # the signals it looks at besides feed holds; None: whichever the machine reports. Listed
    # signals must be reported by every machine (`signals:` of its source).
    signals: list[Literal["feed_override", "single_block", "optional_stop"]] | None = None


class WaitingInspectionRule(RuleConfig):
    """The wait after the first part of a new program until the next cycle or an inspection verdict."""

    min_minutes: Annotated[float, Field(ge=0, le=24 * 60)] = 2.0  # shorter waits are load/unload


class RulesConfig(_Strict):
    """The rules that classify a stop from its story (services/context/reasons.py, docs/reasons.md)."""

    machine_fault: RuleConfig = RuleConfig()
    fault_recovery: RuleConfig = RuleConfig()
    setup: RuleConfig = RuleConfig()
    program_prove_out: ProveOutRule = ProveOutRule()
    waiting_inspection: WaitingInspectionRule = WaitingInspectionRule()
    planned_break: RuleConfig = RuleConfig()
    no_work: RuleConfig = RuleConfig()
    micro_stop: RuleConfig = RuleConfig()


class DowntimeConfig(_Strict):
    """Additions to (or changes of) the default downtime taxonomy, the micro-stop limit, how long
    after a stop operators may still set or correct its reason, and the classification rules."""

    micro_stop_minutes: Annotated[float, Field(gt=0, le=120)] = 5.0
    reason_window_hours: Annotated[float, Field(gt=0, le=24 * 31)] = 72.0
    reasons: list[ReasonConfig] = []
    rules: RulesConfig = RulesConfig()

    @model_validator(mode="after")
    def _unique(self) -> DowntimeConfig:
        codes = [r.code for r in self.reasons]
        twice = sorted({c for c in codes if codes.count(c) > 1})
        if twice:
            raise ValueError(f"reason codes given twice: {', '.join(twice)}")
        return self


class PartConfig(_Strict):
    """A part master entry: the ideal cycle time of a part number (when the dispatch list has none)."""

    part_number: Annotated[str, Field(min_length=1, max_length=128)]
    ideal_cycle_s: Annotated[float, Field(gt=0, le=7 * 86400)]


class IdealCycleConfig(_Strict):
    """The third source of the ideal cycle time, after the dispatch list and the part master: the
    best cycle the machine showed on the same part (and operation) over a window (docs/oee.md)."""

    best_observed_days: Annotated[float, Field(ge=0, le=366)] = 30.0  # 0: off
    best_observed_percentile: Annotated[float, Field(ge=0, le=50)] = 10.0  # of the cycles (0: the fastest)
    best_observed_min_cycles: Annotated[int, Field(ge=1, le=100_000)] = 5  # fewer: no ideal


class StartupRejectsConfig(_Strict):
    """Which rejects are startup rejects (six big losses): those reported while the operation had
    made no more than `first_parts` parts, or before it had made a good one (docs/oee.md)."""

    first_parts: Annotated[int, Field(ge=0, le=100_000)] = 1


class OeeConfig(_Strict):
    """How OEE is computed here (services/oee/, docs/oee.md); every result names `version`."""

    version: Annotated[str, Field(min_length=1, max_length=32)] = "1"
    setup: Literal["availability", "planned"] = "availability"  # setup time: a loss, or planned
    micro_stops: Literal["performance", "availability"] = "performance"
    planned: list[_Code] = []  # more reason codes out of planned production time (besides the tree's)
    parts: list[PartConfig] = []
    ideal_cycle: IdealCycleConfig = IdealCycleConfig()
    startup_rejects: StartupRejectsConfig = StartupRejectsConfig()

    @model_validator(mode="after")
    def _one_ideal_a_part(self) -> OeeConfig:
        numbers = [p.part_number for p in self.parts]
        twice = sorted({n for n in numbers if numbers.count(n) > 1})
        if twice:
            raise ValueError(f"part numbers given twice in oee.parts: {', '.join(twice)}")
        return self


class WorkerConfig(_Strict):
    """One context worker's partition: the edge nodes it keeps (`edge_node`, or `group/edge_node` for
    an edge node of another group) and the Sparkplug groups it keeps whole."""

    edge_nodes: list[Annotated[str, Field(min_length=1)]] = []
    groups: list[Annotated[str, _sparkplug_id("group id")]] = []
    host_id: Annotated[str, _sparkplug_id("host id")] | None = None  # None: <sparkplug.host_id>-<name>

    @model_validator(mode="after")
    def _owns_something(self) -> WorkerConfig:
        if not self.edge_nodes and not self.groups:
            raise ValueError("a worker keeps at least one edge node or group (edge_nodes, groups)")
        return self


class ContextConfig(_Strict):
    """How the context service is split into workers (docs/operations.md, 'Several context
    workers'). Without `workers`, one context service keeps every machine."""

    workers: dict[Annotated[str, _sparkplug_id("worker name")], WorkerConfig] = {}


class SiteConfig(_Strict):
    enterprise: Annotated[str, _segment("enterprise")]
    site: Annotated[str, _segment("site")]
    timezone: str = "UTC"
    sparkplug: SparkplugConfig
    areas: Annotated[list[AreaConfig], Field(min_length=1)]
    shifts: ShiftsConfig | None = None
    downtime: DowntimeConfig = DowntimeConfig()
    oee: OeeConfig = OeeConfig()
    context: ContextConfig = ContextConfig()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like America/Chicago)") from None
        return value


@dataclass(frozen=True, slots=True)
class Machine:
    id: str
    name: str
    path: Isa95Path
    edge_node: str
    source: Source

    @property
    def foreign(self) -> bool:
        """Published by an edge node of someone else's (no bridge of ours reads it)."""
        return isinstance(self.source, SparkplugSource)

    @property
    def where(self) -> str:
        """Where the machine's signals are read from, for logs and listings."""
        s = self.source
        if isinstance(s, SparkplugSource):
            return f"sparkplug {s.group or '(site group)'}/{s.edge_node}/{s.device or self.id}"
        if isinstance(s, MtConnectSource):
            return s.endpoint + (f" (device {s.device})" if s.device else "")
        return s.endpoint if isinstance(s, OpcUaSource) else f"modbus://{s.host}:{s.port}/{s.device_id}"

    @property
    def counter_rollover(self) -> int | None:
        """The modulus of the machine's part counter, if it rolls over (a 16-bit PLC register)."""
        if isinstance(self.source, ModbusSource):
            return self.source.signals[Signal.PART_COUNT].rollover
        return None


EdgeKey = tuple[str, str]  # (Sparkplug group, edge node id)


@dataclass(frozen=True, slots=True)
class Partition:
    """What one context worker keeps: its name ("" when the site has one context service), the
    Sparkplug host id it runs as, and the edge nodes whose machines it keeps."""

    name: str
    host_id: str
    edge_nodes: frozenset[EdgeKey]

    def __str__(self) -> str:
        nodes = ", ".join("/".join(k) for k in sorted(self.edge_nodes))
        who = f"context worker {self.name!r}" if self.name else "the context service"
        return f"{who} (host id {self.host_id}; edge nodes {nodes})"


def _edge_key(text: str, site_group: str) -> EdgeKey:
    """`edge_node` (of the site's group) or `group/edge_node` as (group, edge node)."""
    group, slash, edge = text.rpartition("/")
    return (group if slash else site_group, edge)


def _edge_keys(config: SiteConfig) -> list[EdgeKey]:
    """Every (group, edge node) the site's machines come under, in the order of the file."""
    group = config.sparkplug.group_id
    keys = [
        m.source.key(group, m.id)[:2] if isinstance(m.source, SparkplugSource) else (group, m.edge_node)
        for _, m in _machine_locs(config)
    ]
    return list(dict.fromkeys(keys))


@dataclass(frozen=True, slots=True)
class Site:
    config: SiteConfig
    machines: tuple[Machine, ...]
    source_file: Path | None = None
    _by_id: dict[str, Machine] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # `machine` is on the context service's per-message path: a lookup, not a scan
        by_id: dict[str, Machine] = {}
        for m in self.machines:
            by_id.setdefault(m.id, m)  # (the first of a repeated id, as a scan finds it)
        object.__setattr__(self, "_by_id", by_id)

    @property
    def group_id(self) -> str:
        return self.config.sparkplug.group_id

    @property
    def host_id(self) -> str:
        return self.config.sparkplug.host_id

    @property
    def partitioned(self) -> bool:
        """Whether the context service runs as several workers (`context.workers`)."""
        return bool(self.config.context.workers)

    def partitions(self) -> tuple[Partition, ...]:
        """The context workers, in the order of the file (the first is the lead: it answers the
        commands that no worker's machines settle); one that keeps everything without `context.workers`."""
        keys = _edge_keys(self.config)
        workers = self.config.context.workers
        if not workers:
            return (Partition("", self.host_id, frozenset(keys)),)
        return tuple(
            Partition(
                name,
                w.host_id or f"{self.host_id}-{name}",
                frozenset(k for k in keys if k[0] in w.groups)
                | frozenset(_edge_key(e, self.group_id) for e in w.edge_nodes),
            )
            for name, w in workers.items()
        )

    def partition(self, worker: str | None) -> Partition:
        """The partition of `worker` (None: the only one). ValueError names the workers there are."""
        parts = self.partitions()
        names = ", ".join(p.name for p in parts)
        if worker is None:
            if self.partitioned:
                raise ValueError(
                    f"the site model splits the context service into workers ({names}):"
                    " say which one this is (uns context --worker NAME)"
                )
            return parts[0]
        for p in parts:
            if p.name == worker:
                return p
        if not self.partitioned:
            raise ValueError(
                f"worker {worker!r}: the site model has no context.workers (one context service"
                " keeps every machine): leave out --worker"
            )
        raise ValueError(f"no context worker {worker!r} in the site model (its workers: {names})")

    def edge_key(self, machine: Machine) -> EdgeKey:
        """(group, edge node) that a machine's data comes under."""
        return self.sparkplug_key(machine)[:2]

    def owner(self, machine: Machine) -> Partition:
        """The partition that keeps a machine."""
        key = self.edge_key(machine)
        return next(p for p in self.partitions() if key in p.edge_nodes)

    def primary_host(self, edge_node_id: str) -> str:
        """The host id that one of our bridges' edge nodes takes as its primary host."""
        key = (self.group_id, edge_node_id)
        return next((p.host_id for p in self.partitions() if key in p.edge_nodes), self.host_id)

    def machine(self, machine_id: str) -> Machine:
        return self._by_id[machine_id]

    def edge_nodes(self) -> dict[str, list[Machine]]:
        """Our bridges' edge nodes and their machines (not the machines of foreign edge nodes)."""
        nodes: dict[str, list[Machine]] = {}
        for m in self.machines:
            if not m.foreign:
                nodes.setdefault(m.edge_node, []).append(m)
        return nodes

    def foreign_edge_nodes(self) -> list[tuple[str, str]]:
        """(group, edge node) of every edge node of someone else's that publishes a machine."""
        found = [
            m.source.key(self.group_id, m.id)[:2]
            for m in self.machines
            if isinstance(m.source, SparkplugSource)
        ]
        return list(dict.fromkeys(found))

    def sparkplug_key(self, machine: Machine) -> tuple[str, str, str]:
        """(group, edge node, device) that a machine's data comes under."""
        if isinstance(machine.source, SparkplugSource):
            return machine.source.key(self.group_id, machine.id)
        return (self.group_id, machine.edge_node, machine.id)

    def with_ports(self, ports: dict[str, int]) -> Site:
        """The same site with some machines on other loopback ports (the demo and tests pick free ones)."""

        def moved(m: Machine) -> Source:
            if m.id not in ports or isinstance(m.source, SparkplugSource):
                return m.source
            if isinstance(m.source, MtConnectSource):
                path = urlsplit(m.source.endpoint).path.rstrip("/")
                return m.source.model_copy(update={"endpoint": f"http://127.0.0.1:{ports[m.id]}{path}"})
            if isinstance(m.source, ModbusSource):
                return m.source.model_copy(update={"host": "127.0.0.1", "port": ports[m.id]})
            return m.source.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{ports[m.id]}/uns/{m.id}"})

        machines = tuple(Machine(m.id, m.name, m.path, m.edge_node, moved(m)) for m in self.machines)
        return Site(self.config, machines, self.source_file)

    def only(self, machine_ids: Iterable[str]) -> Site:
        """The same site with only these machines."""
        wanted = set(machine_ids)
        return Site(self.config, tuple(m for m in self.machines if m.id in wanted), self.source_file)


# -- loading ------------------------------------------------------------------------------------
Loc = tuple[str | int, ...]


def _machine_locs(config: SiteConfig) -> Iterator[tuple[Loc, Machine]]:
    for a, area in enumerate(config.areas):
        for li, line in enumerate(area.lines):
            for c, cell in enumerate(line.cells):
                for m, mc in enumerate(cell.machines):
                    path = Isa95Path(config.enterprise, config.site, area.name, line.name, cell.name, mc.id)
                    edge = (
                        mc.source.edge_node
                        if isinstance(mc.source, SparkplugSource)
                        else mc.edge_node or config.sparkplug.edge_node_id
                    )
                    loc: Loc = ("areas", a, "lines", li, "cells", c, "machines", m)
                    yield loc, Machine(mc.id, mc.name or mc.id, path, edge, mc.source)


def _line_of(root: yaml.Node | None, loc: Loc) -> int:
    """The 1-based line of the YAML node at `loc`, or of its nearest parent that exists."""
    node = root
    line = (root.start_mark.line + 1) if root is not None else 1
    for key in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    child = v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _duplicate_keys(node: yaml.Node | None, where: Loc = ()) -> Iterator[tuple[int, str]]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value)
            if key in seen:
                dotted = ".".join(str(p) for p in (*where, key))
                yield k.start_mark.line + 1, f"{dotted}: duplicate key {key!r}"
            seen.add(key)
            yield from _duplicate_keys(v, (*where, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            yield from _duplicate_keys(v, (*where, i))


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


MAX_NODES = 200_000  # a site model of a few hundred machines is a few tens of thousands


def _expanded_size(node: yaml.Node | None, seen: dict[int, int]) -> int:
    """How many nodes the document has once its aliases are expanded (computed without expanding:
    an alias bomb, a few lines that expand to billions, is caught before anything walks it)."""
    if node is None:
        return 0
    known = seen.get(id(node))
    if known is not None:
        return known
    seen[id(node)] = 1  # a node that contains itself (a recursive alias) counts once
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(v, seen) for v in node.value)
    seen[id(node)] = min(size, 10 * MAX_NODES)
    return seen[id(node)]


def parse_site(text: str, filename: str = "<site>") -> Site:
    """Validate a site model given as YAML text; errors name `filename`, the line and the field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if _expanded_size(root, {}) > MAX_NODES:
            raise SiteConfigError(
                [
                    f"{filename}:1: the site model expands to more than {MAX_NODES:,} values through its"
                    " aliases (*name): refused (is it an alias bomb?)"
                ]
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise SiteConfigError([f"{filename}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    problems = [f"{filename}:{line}: {msg}" for line, msg in _duplicate_keys(root)]
    if problems:
        raise SiteConfigError(problems)
    if not isinstance(data, dict):
        raise SiteConfigError([f"{filename}:1: the site model must be a mapping (enterprise, site, ...)"])
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(
                p
                for i, p in enumerate(err["loc"])
                if not (isinstance(p, str) and p.startswith("function-"))
                # the tag pydantic adds for the source's protocol is not a key in the file
                and not (p in _PROTOCOLS and i > 0 and err["loc"][i - 1] == "source")
            )
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (a typo?)"
            problems.append(f"{filename}:{_line_of(root, loc)}: {_dotted(loc)}: {msg}")
        raise SiteConfigError(problems) from exc
    problems += [f"{filename}:{_line_of(root, loc)}: {msg}" for loc, msg in _rule_problems(config)]
    machines: list[Machine] = []
    first_seen: dict[str, int] = {}
    for loc, machine in _machine_locs(config):
        line = _line_of(root, (*loc, "id"))
        if machine.id in first_seen:
            problems.append(
                f"{filename}:{line}: {_dotted((*loc, 'id'))}: duplicate machine id {machine.id!r} "
                f"(first at line {first_seen[machine.id]})"
            )
        else:
            first_seen[machine.id] = line
        machines.append(machine)
    problems += _sparkplug_key_problems(config, root, filename)
    problems += [f"{filename}:{_line_of(root, loc)}: {msg}" for loc, msg in _worker_problems(config)]
    if problems:
        raise SiteConfigError(problems)
    return Site(config, tuple(machines))


def _sparkplug_key_problems(config: SiteConfig, root: yaml.Node | None, filename: str) -> list[str]:
    """Two machines whose data would come under one (group, edge node, device), and a foreign edge
    node with the id of one of our bridges' in its group: the host could not tell them apart."""
    group = config.sparkplug.group_id
    ours = {
        (group, m.edge_node) for _, m in _machine_locs(config) if not isinstance(m.source, SparkplugSource)
    }
    seen: dict[tuple[str, str, str], str] = {}
    problems = []
    for loc, m in _machine_locs(config):
        foreign = isinstance(m.source, SparkplugSource)
        key = (
            m.source.key(group, m.id) if isinstance(m.source, SparkplugSource) else (group, m.edge_node, m.id)
        )
        line = _line_of(root, (*loc, "source") if foreign else (*loc, "id"))
        where = f"{filename}:{line}: {_dotted(loc)}"
        other = seen.setdefault(key, m.id)
        if other != m.id:
            problems.append(
                f"{where}: machine {m.id!r} would take the data of {'/'.join(key)}, which machine"
                f" {other!r} takes already (give the source another device or edge_node)"
            )
        if foreign and key[:2] in ours:
            problems.append(
                f"{where}: source.edge_node {key[1]!r} of group {key[0]!r} is one of our bridges' edge"
                " nodes: a foreign edge node needs an id of its own"
            )
    return problems


def _worker_problems(config: SiteConfig) -> Iterator[tuple[Loc, str]]:
    """Context workers that name an edge node or group the site does not have, edge nodes kept by
    two workers or by none, and two workers with one host id."""
    workers = config.context.workers
    if not workers:
        return
    keys = _edge_keys(config)
    groups = list(dict.fromkeys(g for g, _ in keys))
    group = config.sparkplug.group_id
    kept: dict[EdgeKey, list[str]] = {}
    hosts: dict[str, str] = {}
    for name, w in workers.items():
        where: Loc = ("context", "workers", name)
        for n, text in enumerate(w.edge_nodes):
            key = _edge_key(text, group)
            if "/" in key[0] or not key[0] or not key[1] or key not in keys:
                known = ", ".join(e if g == group else f"{g}/{e}" for g, e in keys)
                yield (
                    (*where, "edge_nodes", n),
                    f"context.workers.{name}.edge_nodes[{n}]: no edge node {text!r} in the site model"
                    f" (its edge nodes: {known}; one of another group as group/edge_node)",
                )
                continue
            if name not in kept.setdefault(key, []):
                kept[key].append(name)
        for n, g in enumerate(w.groups):
            if g not in groups:
                yield (
                    (*where, "groups", n),
                    f"context.workers.{name}.groups[{n}]: no machine of the site model comes under"
                    f" group {g!r} (its groups: {', '.join(groups)})",
                )
            for key in keys:
                if key[0] == g and name not in kept.setdefault(key, []):
                    kept[key].append(name)
        host = w.host_id or f"{config.sparkplug.host_id}-{name}"
        other = hosts.setdefault(host, name)
        if other != name:
            yield (
                (*where, "host_id"),
                f"context.workers.{name}: host id {host!r} is worker {other!r}'s already"
                " (each worker is a Sparkplug host of its own)",
            )
    for key in keys:
        owners = kept.get(key, [])
        if len(owners) > 1:
            yield (
                ("context", "workers", owners[1]),
                f"context.workers: edge node {'/'.join(key)} is kept by workers"
                f" {' and '.join(repr(o) for o in owners)}: each edge node belongs to exactly one",
            )
    unkept = ["/".join(k) for k in keys if k not in kept]
    if unkept:
        yield (
            ("context", "workers"),
            f"context.workers: edge nodes {', '.join(unkept)} are kept by no worker"
            " (add each to one worker's edge_nodes)",
        )


def _rule_problems(config: SiteConfig) -> Iterator[tuple[Loc, str]]:
    """Rules that give a reason the taxonomy does not have, or look at a signal a machine does not report."""
    downtime = config.downtime
    known = {r.code for r in DEFAULT_REASONS} | {r.code for r in downtime.reasons}
    rules = downtime.rules
    for name in RulesConfig.model_fields:
        rule: RuleConfig = getattr(rules, name)
        if rule.reason is not None and rule.reason not in known:
            yield (
                ("downtime", "rules", name, "reason"),
                f"downtime.rules.{name}.reason: unknown reason code {rule.reason!r}"
                " (add it under downtime.reasons, or use one of the defaults)",
            )
    for n, code in enumerate(config.oee.planned):
        if code not in known:
            yield (("oee", "planned", n), f"oee.planned[{n}]: unknown reason code {code!r}")
    if rules.program_prove_out.enabled:
        for signal in rules.program_prove_out.signals or []:
            lacking = [(loc, m) for loc, m in _machine_locs(config) if signal not in m.source.signals]
            if lacking:
                loc, machine = lacking[0]
                more = f" and {len(lacking) - 1} more do" if len(lacking) > 1 else " does"
                yield (
                    ("downtime", "rules", "program_prove_out", "signals"),
                    f"downtime.rules.program_prove_out.signals: machine {machine.id!r} ({_dotted(loc)}){more}"
                    f" not report {signal} (map it in the machine's source signals, or leave it out)",
                )


def load_site(path: str | Path) -> Site:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SiteConfigError([f"{path}: cannot read the site model: {exc.strerror}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SiteConfigError(
            [f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}): save the site model as UTF-8"]
        ) from exc
    site = parse_site(text, str(path))
    return Site(site.config, tuple(_relative_to(m, path.parent) for m in site.machines), path)


def _relative_to(machine: Machine, base: Path) -> Machine:
    """Certificate paths in the file are relative to the file."""
    source = machine.source
    if not isinstance(source, OpcUaSource) or source.security is None:
        return machine
    sec = source.security
    paths = {
        name: base / p
        for name in ("certificate", "private_key", "server_certificate")
        if (p := getattr(sec, name)) is not None and not p.is_absolute()
    }
    source = source.model_copy(update={"security": sec.model_copy(update=paths)})
    return Machine(machine.id, machine.name, machine.path, machine.edge_node, source)
