"""`uns probe <endpoint>`: connect to a machine, report what it offers, and print a site-model
snippet for the signals it recognises.

One function per protocol (`PROBES`, by the endpoint's scheme): `opc.tcp://` browses an OPC UA
server's Objects folder; `modbus://host:port[?unit=N]` (or `modbus+tcp://`) reads a range of a
Modbus device's four tables; `http://` reads an MTConnect agent's probe. The output is YAML:
the report as `#` comments, then one machine entry to put under a cell's `machines:`. Exit codes:
0 a complete entry, 1 connected but not every required signal was recognised (the entry says
which), 2 could not connect (with the cause, in the bridge's own words) or a bad endpoint.

The recognising is pure (`recognise_opcua`, `recognise_modbus`, bridge/mtconnect.py's `recognise`);
bridge/opcua.py, bridge/modbus.py and bridge/mtconnect.py do the talking.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import parse_qs, urlsplit

from bridge.modbus import EXECUTION_CODES, MODE_CODES, TableDump, read_tables
from bridge.mtconnect import AgentError, DocumentError, read_probe, recognise
from bridge.opcua import BrowsedServer, BrowsedVariable, OpcUaAccess, browse_server
from bridge.opcua import explain as explain_opcua
from bridge.reader import explain
from uns.paths import PathError, check_segment
from uns.signals import SIGNAL_TYPES, coerce
from uns.site import MTCONNECT_SIGNALS, REQUIRED_SIGNALS, MtConnectSource, OpcUaSecurity, Signal, Table
from uns.sparkplug.payload import DataType

DEFAULT_TIMEOUT_S = 4.0


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    endpoint: str
    machine_id: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    # OPC UA, as in the site model's source
    username: str | None = None
    password_env: str | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    depth: int = 5
    max_nodes: int = 2000
    # Modbus
    unit: int | None = None  # None: the endpoint's ?unit=, else 1
    start: int = 0
    count: int = 16
    # MTConnect
    device: str | None = None  # the agent's device to make the entry for (None: its first)


class ProbeError(Exception):
    """The endpoint cannot be probed: the message says why (exit code 2)."""


Probe = Callable[[ProbeOptions, TextIO, TextIO], Awaitable[int]]  # (options, stdout, stderr)


def _yaml(text: str) -> str:
    """A YAML scalar for any text (a JSON string is a YAML double-quoted one)."""
    return json.dumps(text, ensure_ascii=False)


def _machine_id(wanted: str | None, candidates: Sequence[str]) -> str:
    """The machine id for the snippet: the one asked for, else a valid one made from the names seen."""
    if wanted is not None:
        try:
            return check_segment("machine id", wanted)
        except PathError as exc:
            raise ProbeError(str(exc)) from None
    for name in candidates:
        made = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._")[:64]
        try:
            return check_segment("machine id", made)
        except PathError:
            continue
    return "machine-1"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- OPC UA -----------------------------------------------------------------------------------------
# browse names (lower case, letters and digits only) each signal goes by, best first
ALIASES: dict[Signal, tuple[str, ...]] = {
    Signal.EXECUTION: (
        "execution",
        "executionstate",
        "executionstatus",
        "execstate",
        "runstate",
        "runstatus",
    ),
    Signal.MODE: ("controllermode", "mode", "operationmode", "operatingmode", "opmode", "cncmode"),
    Signal.PROGRAM: ("program", "programname", "activeprogram", "activeprogramname", "mainprogram"),
    Signal.PART_COUNT: (
        "partcount",
        "partcounter",
        "partscount",
        "partscounter",
        "partsproduced",
        "producedparts",
        "workpiececount",
        "workpiececounter",
        "piececount",
        "parts",
    ),
    Signal.ALARM_CODE: ("alarmcode", "alarmnumber", "alarmno", "alarmid", "errorcode", "errornumber"),
    Signal.ALARM_TEXT: ("alarmtext", "alarmmessage", "alarmmsg", "errortext", "errormessage"),
    Signal.ESTOP: ("emergencystop", "estop", "emgstop", "emergencystopactive", "estopactive", "emergency"),
    Signal.SPINDLE_SPEED: ("spindlespeed", "spindlerpm", "spindlevelocity", "sspeed"),
    Signal.SPINDLE_LOAD: ("spindleload", "spindleloadpercent", "spindlepower"),
    Signal.FEED_OVERRIDE: ("feedoverride", "feedrateoverride", "feedovr", "feedoverridepercent"),
    Signal.SINGLE_BLOCK: ("singleblock", "singleblockactive"),
    Signal.OPTIONAL_STOP: ("optionalstop", "optionalstopactive", "m01"),
}
_PREFIXES = ("actual", "act", "current", "cur")
_SUFFIXES = ("actual", "act", "value", "pv")
_INTEGERS = frozenset({"SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"})
_TYPES: dict[DataType, frozenset[str]] = {
    DataType.STRING: frozenset({"String"}),
    DataType.UINT32: _INTEGERS,
    DataType.INT32: _INTEGERS,
    DataType.BOOLEAN: frozenset({"Boolean"}),
    DataType.DOUBLE: _INTEGERS | {"Float", "Double"},
}


def _names(browse_name: str) -> list[str]:
    """The browse name, normalised, with and without the usual "actual"/"value" decorations."""
    base = re.sub(r"[^a-z0-9]", "", browse_name.lower())
    names = [base]
    for prefix in _PREFIXES:
        if base.startswith(prefix) and len(base) > len(prefix):
            names.append(base[len(prefix) :])
    for name in list(names):
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                names.append(name[: -len(suffix)])
    return names


def _misfit(signal: Signal, var: BrowsedVariable) -> str | None:
    """Why the variable cannot be the signal (its type or its value), or None if it can."""
    if var.data_type not in _TYPES[SIGNAL_TYPES[signal]]:
        return f"its type {var.data_type} does not hold {SIGNAL_TYPES[signal].name.lower()}"
    if var.value is not None and var.status is None:
        try:
            coerce(signal, var.value)
        except ValueError as exc:
            return f"its value does not fit: {exc}"
    return None


@dataclass(frozen=True, slots=True)
class OpcUaRecognition:
    found: dict[Signal, BrowsedVariable]
    also: dict[Signal, list[BrowsedVariable]]  # more variables that fit, not taken
    misfits: list[tuple[Signal, BrowsedVariable, str]]  # named like a signal, but cannot be it

    @property
    def missing(self) -> list[Signal]:
        return [s for s in Signal if s not in self.found]

    @property
    def complete(self) -> bool:
        return set(self.found) >= REQUIRED_SIGNALS


def recognise_opcua(variables: Sequence[BrowsedVariable]) -> OpcUaRecognition:
    """Which variable is which signal, by browse name, checked against type and value."""
    candidates: dict[Signal, list[tuple[tuple[bool, int], int, BrowsedVariable]]] = {}
    misfits: list[tuple[Signal, BrowsedVariable, str]] = []
    for order, var in enumerate(variables):
        if not var.path:
            continue
        names = _names(var.path[-1])
        for signal, aliases in ALIASES.items():
            # the name as it is before a decorated one ("ActSpindleSpeed"), then the aliases' order
            rank = min(((n != names[0], aliases.index(n)) for n in names if n in aliases), default=None)
            if rank is None:
                continue
            why = _misfit(signal, var)
            if why is not None:
                misfits.append((signal, var, why))
            else:
                candidates.setdefault(signal, []).append((rank, order, var))
    found: dict[Signal, BrowsedVariable] = {}
    also: dict[Signal, list[BrowsedVariable]] = {}
    taken: set[str] = set()
    for signal in Signal:
        ranked = [
            c for c in sorted(candidates.get(signal, []), key=lambda c: c[:2]) if c[2].node_id not in taken
        ]
        if ranked:
            found[signal] = ranked[0][2]
            taken.add(ranked[0][2].node_id)
            if len(ranked) > 1:
                also[signal] = [c[2] for c in ranked[1:]]
    return OpcUaRecognition(found, also, misfits)


def opcua_snippet(
    opts: ProbeOptions, browsed: BrowsedServer, rec: OpcUaRecognition, access: OpcUaAccess
) -> list[str]:
    """The report, as comments, and the machine entry."""
    lines = [f"# uns probe {opts.endpoint}"]
    lines.append("# namespaces: " + ", ".join(f"{i} {uri}" for i, uri in enumerate(browsed.namespaces)))
    limit = " (stopped at the depth or node limit: --depth, --max-nodes)" if browsed.truncated else ""
    lines.append(
        f"# {len(browsed.variables)} variables under Objects, {browsed.visited} nodes browsed{limit}:"
    )
    signal_of = {var.node_id: signal for signal, var in rec.found.items()}
    rows = [
        (
            var.node_id,
            "/".join(var.path),
            var.data_type,
            var.status if var.status is not None else _show(var.value),
            f"-> {signal_of[var.node_id]}" if var.node_id in signal_of else "",
        )
        for var in browsed.variables
    ]
    widths = [*(max((len(row[i]) for row in rows), default=0) for i in range(4)), 0]
    for row in rows:
        lines.append("#   " + "  ".join(f"{c:{w}}" for c, w in zip(row, widths, strict=True)).rstrip())
    for signal, var, why in rec.misfits:
        lines.append(f"# not {signal}: {var.node_id} ({why})")
    for signal, others in rec.also.items():
        lines.append(f"# {signal}: also {', '.join(v.node_id for v in others)} (the first one is taken)")
    required = sorted(s.value for s in REQUIRED_SIGNALS - set(rec.found))
    if required:
        lines.append(
            f"# NOT recognised, and required: {', '.join(required)}: pick their node ids from the list"
            " above (any node id form works: nsu=..., ns=..., i=...)"
        )
    parents = [var.path[-2] for var in rec.found.values() if len(var.path) >= 2]
    machine_id = _machine_id(opts.machine_id, sorted(set(parents), key=parents.count, reverse=True))
    lines += [
        f"- id: {machine_id}",
        f"  name: {_yaml(machine_id)}",
        "  source:",
        "    protocol: opcua",
        f"    endpoint: {_yaml(opts.endpoint)}",
    ]
    if access.username is not None:
        lines += [f"    username: {_yaml(access.username)}", f"    password_env: {access.password_env}"]
    if access.security is not None:
        sec = access.security
        lines += [
            "    security:  # paths are relative to the site file",
            f"      mode: {sec.mode}",
            f"      certificate: {_yaml(str(sec.certificate))}",
            f"      private_key: {_yaml(str(sec.private_key))}",
        ]
        if sec.server_certificate is not None:
            lines.append(f"      server_certificate: {_yaml(str(sec.server_certificate))}")
    lines.append("    signals:")
    for signal in Signal:
        if signal in rec.found:
            lines.append(f"      {signal}: {_yaml(rec.found[signal].node_id)}")
        else:
            need = "required" if signal in REQUIRED_SIGNALS else "optional"
            lines.append(f"      # {signal}: <node id>  ({need}; not recognised)")
    return lines


def _access(opts: ProbeOptions) -> OpcUaAccess:
    if (opts.username is None) != (opts.password_env is None):
        raise ProbeError(
            "--username and --password-env go together (the password is read from that variable)"
        )
    if (opts.certificate is None) != (opts.private_key is None):
        raise ProbeError("--certificate and --private-key go together")
    security = None
    if opts.certificate is not None and opts.private_key is not None:
        security = OpcUaSecurity(
            mode=opts.mode,
            certificate=opts.certificate,
            private_key=opts.private_key,
            server_certificate=opts.server_certificate,
        )
    return OpcUaAccess(opts.endpoint, opts.username, opts.password_env, security)


async def probe_opcua(opts: ProbeOptions, out: TextIO, err: TextIO) -> int:
    access = _access(opts)
    try:
        browsed = await browse_server(
            access, depth=opts.depth, max_nodes=opts.max_nodes, timeout_s=opts.timeout_s
        )
    except Exception as exc:  # every failure to connect or browse, told in the reader's words
        raise ProbeError(
            f"{opts.endpoint}: connecting: {explain_opcua(exc, access, opts.timeout_s)}"
        ) from exc
    rec = recognise_opcua(browsed.variables)
    print("\n".join(opcua_snippet(opts, browsed, rec, access)), file=out)
    return 0 if rec.complete else 1


# -- Modbus -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModbusTarget:
    host: str
    port: int
    unit: int


def modbus_target(opts: ProbeOptions) -> ModbusTarget:
    url = urlsplit(opts.endpoint)
    try:
        port = url.port or 502
    except ValueError:
        raise ProbeError(f"{opts.endpoint}: the port must be a number from 1 to 65535") from None
    if not url.hostname:
        raise ProbeError(f"{opts.endpoint}: no host (modbus://host:port[?unit=N])")
    unit = opts.unit
    if unit is None:
        given = parse_qs(url.query).get("unit")
        try:
            unit = int(given[0]) if given else 1
        except ValueError:
            raise ProbeError(f"{opts.endpoint}: unit must be a number from 0 to 247") from None
    if not 0 <= unit <= 247:
        raise ProbeError(f"{opts.endpoint}: unit must be a number from 0 to 247, not {unit}")
    return ModbusTarget(url.hostname, port, unit)


# The layout of docs/modbus.md (the simulator's legacy machine): register offsets from its base.
LAYOUT_REGISTERS = 10


def _float32(hi: int, lo: int) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
    return value


def fits_layout(registers: dict[int, int], base: int) -> bool:
    """Whether the 10 registers from `base` look like docs/modbus.md's layout: the status bits
    agree with the execution code and the alarm, the mode and execution codes are known ones,
    the spindle speed is a finite float and the load and override are plausible percentages."""
    try:
        status, mode, alarm, _count, _program, hi, lo, load, override, execution = (
            registers[base + i] for i in range(LAYOUT_REGISTERS)
        )
    except KeyError:
        return False
    speed = _float32(hi, lo)
    return (
        status & ~0xF == 0
        and mode in MODE_CODES.values()
        and execution in EXECUTION_CODES.values()
        and bool(status & 1) == (execution == EXECUTION_CODES["ACTIVE"])
        and bool(status & 2) == (execution == EXECUTION_CODES["FEED_HOLD"])
        and bool(status & 4) == (alarm != 0)
        and math.isfinite(speed)
        and 0 <= speed < 200_000
        and load <= 5000
        and override <= 300
    )


@dataclass(frozen=True, slots=True)
class ModbusRecognition:
    base: int | None  # where the layout starts, None when no known layout was found
    table: Table  # holding, or input where holding could not be read
    mirrored: bool  # the input registers are the holding registers (as on many small PLCs)


def recognise_modbus(dump: TableDump, start: int, count: int) -> ModbusRecognition:
    table = Table.HOLDING if dump.holding else Table.INPUT
    registers = dump.holding or dump.input
    base = next(
        (b for b in range(start, start + count - LAYOUT_REGISTERS + 1) if fits_layout(registers, b)), None
    )
    mirrored = bool(dump.holding) and dump.input == dump.holding
    return ModbusRecognition(base, table, mirrored)


def _map(codes: dict[str, int]) -> str:
    return "{" + ", ".join(f"{v}: {k}" for k, v in sorted(codes.items(), key=lambda kv: kv[1])) + "}"


def modbus_snippet(
    opts: ProbeOptions, target: ModbusTarget, dump: TableDump, rec: ModbusRecognition
) -> list[str]:
    last = opts.start + opts.count - 1
    lines = [f"# uns probe {opts.endpoint}: unit {target.unit}, addresses {opts.start}..{last}"]
    tables: list[tuple[str, dict[int, int] | dict[int, bool]]] = [
        ("holding", dump.holding),
        ("input", dump.input),
        ("coil", dump.coil),
        ("discrete_input", dump.discrete_input),
    ]
    for name, values in tables:
        if values:
            shown = "  ".join(f"{a}={int(v)}" for a, v in sorted(values.items()))
            lines.append(f"#   {name:15} {shown}")
        else:
            lines.append(f"#   {name:15} (nothing read)")
    for table, error in dump.errors.items():
        lines.append(f"#   {table}: {error}")
    machine_id = _machine_id(opts.machine_id, [])
    # the site's default unless the device needed more patience than that here
    timeout_ms = 1000 if opts.timeout_s == DEFAULT_TIMEOUT_S else round(opts.timeout_s * 1000)
    timeout_ms = max(50, min(60_000, timeout_ms))
    head = [
        f"- id: {machine_id}",
        f"  name: {_yaml(machine_id)}",
        "  source:",
        "    protocol: modbus",
        f"    host: {_yaml(target.host)}",
        f"    port: {target.port}",
        f"    device_id: {target.unit}",
        f"    timeout_ms: {timeout_ms}",
        "    poll_groups:",
        "      fast:  # what decides the machine's state",
        "        interval_ms: 100",
        "        signals:",
    ]
    if rec.base is None:
        lines.append(
            "# no known register layout found: fill in the template from the PLC's register list"
            " (docs/modbus.md explains each key); the signals below are placeholders"
        )
        return [
            *lines,
            *head,
            f"          # execution: {{table: holding, address: <n>, map: {_map(EXECUTION_CODES)}}}",
            f"          # mode: {{table: holding, address: <n>, map: {_map(MODE_CODES)}}}",
            "          # alarm_code: {table: holding, address: <n>, type: int16}",
            "          # estop: {table: holding, address: <n>, bit: <0-15>}",
            "          # part_count: {table: holding, address: <n>, type: uint16, rollover: 65536}",
            "      slow:  # process values, reported when they move past their deadband",
            "        interval_ms: 1000",
            "        signals:",
            '          # program: {table: holding, address: <n>, format: "O{}"}',
            "          # spindle_speed: {table: holding, address: <n>, type: float32, deadband: 5}",
            "          # spindle_load: {table: holding, address: <n>, scale: 0.1, deadband: 1}",
            "          # feed_override: {table: holding, address: <n>}",
        ]
    b = rec.base
    lines.append(
        f"# registers {b}..{b + LAYOUT_REGISTERS - 1} ({rec.table}) fit the layout of docs/modbus.md"
        " (status bits, mode, alarm, part counter, program, spindle speed, load, feed override, execution)"
    )
    if rec.mirrored:
        lines.append("# the input registers mirror the holding registers: either table will do")
    reg = rec.table
    return [
        *lines,
        *head,
        f"          execution: {{table: {reg}, address: {b + 9}, map: {_map(EXECUTION_CODES)}}}",
        f"          mode: {{table: {reg}, address: {b + 1}, map: {_map(MODE_CODES)}}}",
        f"          alarm_code: {{table: {reg}, address: {b + 2}, type: int16}}",
        f"          estop: {{table: {reg}, address: {b}, bit: 3}}",
        f"          part_count: {{table: {reg}, address: {b + 3}, type: uint16, rollover: 65536}}",
        "      slow:  # process values, reported when they move past their deadband",
        "        interval_ms: 1000",
        "        signals:",
        f'          program: {{table: {reg}, address: {b + 4}, format: "O{{}}"}}',
        f"          spindle_speed: {{table: {reg}, address: {b + 5}, type: float32, deadband: 5}}",
        f"          spindle_load: {{table: {reg}, address: {b + 7}, scale: 0.1, deadband: 1}}",
        f"          feed_override: {{table: {reg}, address: {b + 8}}}",
    ]


async def probe_modbus(opts: ProbeOptions, out: TextIO, err: TextIO) -> int:
    target = modbus_target(opts)
    if not 0 <= opts.start <= 65535 or not 1 <= opts.count <= 2000 or opts.start + opts.count > 65536:
        raise ProbeError("--start 0-65535 and --count 1-2000 must stay within the 65536 addresses")
    where = f"modbus://{target.host}:{target.port}/{target.unit}"
    try:
        dump = await read_tables(
            target.host, target.port, target.unit, opts.start, opts.count, opts.timeout_s
        )
    except Exception as exc:  # every failure to connect, told in the reader's words
        raise ProbeError(f"{where}: connecting: {explain(exc, opts.timeout_s)}") from exc
    if not (dump.holding or dump.input or dump.coil or dump.discrete_input):
        answers = sorted({e.split(": ", 1)[-1] for e in dump.errors.values()})
        raise ProbeError(
            f"{where}: reading: the device refused every read ({'; '.join(answers)}):"
            " check the unit id (--unit) and the address range (--start, --count)"
        )
    rec = recognise_modbus(dump, opts.start, opts.count)
    print("\n".join(modbus_snippet(opts, target, dump, rec)), file=out)
    return 0 if rec.base is not None else 1


# -- MTConnect --------------------------------------------------------------------------------------
async def probe_mtconnect(opts: ProbeOptions, out: TextIO, err: TextIO) -> int:
    endpoint = opts.endpoint.rstrip("/")
    try:
        base = MtConnectSource(protocol="mtconnect", endpoint=endpoint)
    except ValueError as exc:
        raise ProbeError(
            f"{opts.endpoint}: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}"
        ) from None
    try:
        doc, format_ = await read_probe(endpoint, opts.timeout_s)
    except DocumentError as exc:
        raise ProbeError(f"{endpoint}/probe: the answer is not an MTConnect devices document: {exc}") from exc
    except AgentError as exc:
        raise ProbeError(f"{endpoint}/probe: the agent answered with errors: {exc}") from exc
    except Exception as exc:  # every failure to connect, told in the reader's words
        raise ProbeError(f"{endpoint}: connecting: {explain(exc, opts.timeout_s)}") from exc
    devices = [d for d in doc.devices if d.kind != "Agent"]
    if not devices:
        raise ProbeError(f"{endpoint}/probe: the agent describes no device")
    if opts.device is None:
        device = devices[0]
    else:
        found = [d for d in devices if opts.device in (d.name, d.uuid)]
        if not found:
            names = ", ".join(repr(d.name) for d in devices)
            raise ProbeError(f"{endpoint}: the agent has no device {opts.device!r} (its devices: {names})")
        device = found[0]
    source = base.model_copy(update={"device": device.name if len(devices) > 1 else None})
    chosen, conditions, unmapped = recognise(device, source)
    lines = [f"# uns probe {opts.endpoint}"]
    h = doc.header
    lines.append(
        f"# agent instance {h.instance_id}, buffer {h.buffer_size if h.buffer_size is not None else '?'}"
        f" observations, {format_.upper()};"
        f" {len(devices)} device{'s' if len(devices) != 1 else ''}: "
        + ", ".join(f"{d.name} ({d.uuid})" for d in devices)
    )
    signal_of = {item.id: signal for signal, item in chosen.items()}
    lines.append(f"# device {device.name}: {len(device.data_items)} data items:")
    rows = [
        (
            item.id,
            item.type,
            item.sub_type or "-",
            item.category,
            "/".join(item.path) or "Device",
            f"-> {signal_of[item.id]}"
            if item.id in signal_of
            else "-> alarm_code, alarm_text"
            if item.id in conditions
            else "",
        )
        for item in device.data_items
    ]
    widths = [*(max((len(row[i]) for row in rows), default=0) for i in range(5)), 0]
    for row in rows:
        lines.append("#   " + "  ".join(f"{c:{w}}" for c, w in zip(row, widths, strict=True)).rstrip())
    if len(devices) > 1:
        lines.append(f"# the entry is for {device.name!r}; --device <name> makes it for another one")
    found_signals = [
        s
        for s in MTCONNECT_SIGNALS
        if s in chosen or (s in (Signal.ALARM_CODE, Signal.ALARM_TEXT) and conditions)
    ]
    required = sorted(s.value for s in REQUIRED_SIGNALS - set(found_signals))
    for signal in unmapped:
        if signal.value not in required:
            lines.append(f"# no data item for {signal} (optional): left out")
    if required:
        lines.append(
            f"# not recognised: {', '.join(required)}: name their data items under data_items"
            " (alarm_code: CONDITION data items), from the list above"
        )
    machine_id = _machine_id(opts.machine_id, [device.name, device.uuid])
    signals = [s.value for s in MTCONNECT_SIGNALS if s in found_signals or s.value in required]
    lines += [
        f"- id: {machine_id}",
        f"  name: {_yaml(device.name)}",
        "  source:",
        "    protocol: mtconnect",
        f"    endpoint: {_yaml(endpoint)}",
    ]
    if source.device is not None:
        lines.append(f"    device: {_yaml(source.device)}")
    if format_ == "json":
        lines.append("    format: json")
    lines.append(f"    signals: [{', '.join(signals)}]")
    if required:
        lines.append("    data_items:")
        lines += [f"      # {s}: <data item id>" for s in required]
    print("\n".join(lines), file=out)
    return 1 if required else 0


PROBES: dict[str, Probe] = {
    "opc.tcp": probe_opcua,
    "modbus": probe_modbus,
    "modbus+tcp": probe_modbus,
    "http": probe_mtconnect,
    "https": probe_mtconnect,
}


async def probe(opts: ProbeOptions, out: TextIO, err: TextIO) -> int:
    """Probe the endpoint with its protocol's function; the exit code (see the module's doc)."""
    scheme = opts.endpoint.split("://", 1)[0].lower() if "://" in opts.endpoint else ""
    run = PROBES.get(scheme)
    if run is None:
        print(
            f"uns probe: {opts.endpoint!r}: unknown kind of endpoint: use opc.tcp://host:port[/path],"
            " modbus://host:port[?unit=N] (or modbus+tcp://) or http://agent:port (MTConnect)",
            file=err,
        )
        return 2
    try:
        return await run(opts, out, err)
    except ProbeError as exc:
        print(f"uns probe: {exc}", file=err)
        return 2


def main(opts: ProbeOptions) -> int:
    """`uns probe` (unscli/cli.py)."""
    return asyncio.run(probe(opts, sys.stdout, sys.stderr))
