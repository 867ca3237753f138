"""The site model: a YAML file that names the enterprise, site, areas, lines, cells and machines,
and where each machine's signals come from.

`load_site(path)` validates it; every problem is reported as `file:line: field: what is wrong`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

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


REQUIRED_SIGNALS = frozenset(
    {Signal.EXECUTION, Signal.MODE, Signal.PART_COUNT, Signal.ALARM_CODE, Signal.ESTOP}
)


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


class OpcUaSource(_Strict):
    protocol: Literal["opcua"]
    endpoint: Annotated[str, Field(pattern=r"^opc\.tcp://[^\s/]+(/.*)?$")]
    signals: dict[Signal, Annotated[str, Field(min_length=1)]]
    publishing_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 100

    @field_validator("signals", mode="before")
    @classmethod
    def _signal_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {Signal(k) if k in Signal._value2member_map_ else k: v for k, v in value.items()}
        return value

    @field_validator("signals")
    @classmethod
    def _required(cls, value: dict[Signal, str]) -> dict[Signal, str]:
        missing = sorted(s.value for s in REQUIRED_SIGNALS - set(value))
        if missing:
            raise ValueError(f"missing required signals: {', '.join(missing)}")
        return value


class MachineConfig(_Strict):
    id: Annotated[str, _segment("machine id")]
    name: str = ""
    edge_node: Annotated[str, _sparkplug_id("edge node id")] | None = None
    source: OpcUaSource


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


class SiteConfig(_Strict):
    enterprise: Annotated[str, _segment("enterprise")]
    site: Annotated[str, _segment("site")]
    timezone: str = "UTC"
    sparkplug: SparkplugConfig
    areas: Annotated[list[AreaConfig], Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class Machine:
    id: str
    name: str
    path: Isa95Path
    edge_node: str
    source: OpcUaSource


@dataclass(frozen=True, slots=True)
class Site:
    config: SiteConfig
    machines: tuple[Machine, ...]
    source_file: Path | None = None

    @property
    def group_id(self) -> str:
        return self.config.sparkplug.group_id

    @property
    def host_id(self) -> str:
        return self.config.sparkplug.host_id

    def machine(self, machine_id: str) -> Machine:
        for m in self.machines:
            if m.id == machine_id:
                return m
        raise KeyError(machine_id)

    def edge_nodes(self) -> dict[str, list[Machine]]:
        nodes: dict[str, list[Machine]] = {}
        for m in self.machines:
            nodes.setdefault(m.edge_node, []).append(m)
        return nodes

    def with_endpoints(self, endpoints: dict[str, str]) -> Site:
        """The same site with some machines' OPC UA endpoints replaced (the demo picks free ports)."""
        machines = tuple(
            Machine(
                m.id,
                m.name,
                m.path,
                m.edge_node,
                m.source.model_copy(update={"endpoint": endpoints[m.id]}) if m.id in endpoints else m.source,
            )
            for m in self.machines
        )
        return Site(self.config, machines, self.source_file)


# -- loading ------------------------------------------------------------------------------------
Loc = tuple[str | int, ...]


def _machine_locs(config: SiteConfig) -> Iterator[tuple[Loc, Machine]]:
    for a, area in enumerate(config.areas):
        for li, line in enumerate(area.lines):
            for c, cell in enumerate(line.cells):
                for m, mc in enumerate(cell.machines):
                    path = Isa95Path(config.enterprise, config.site, area.name, line.name, cell.name, mc.id)
                    edge = mc.edge_node or config.sparkplug.edge_node_id
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


def parse_site(text: str, filename: str = "<site>") -> Site:
    """Validate a site model given as YAML text; errors name `filename`, the line and the field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (a typo?)"
            problems.append(f"{filename}:{_line_of(root, loc)}: {_dotted(loc)}: {msg}")
        raise SiteConfigError(problems) from exc
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
    if problems:
        raise SiteConfigError(problems)
    return Site(config, tuple(machines))


def load_site(path: str | Path) -> Site:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteConfigError([f"{path}: cannot read the site model: {exc.strerror}"]) from exc
    site = parse_site(text, str(path))
    return Site(site.config, site.machines, path)
