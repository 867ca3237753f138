"""MTConnect: the machine reader for an MTConnect agent's REST interface (docs/mtconnect.md).

This is the only module that talks to an MTConnect agent, and the only one that imports httpx.

`MtConnectReader` reads `probe` (which data items the device has), `current` (every data item's latest
observation) and then `sample` from the next sequence number, streamed by the agent (`interval`,
`heartbeat`) or polled, in XML or in either JSON form the C++ agent 2.x serves. Data items become the
project's signals by type and sub-type, or by id from the site model; values keep the agent's
timestamps; `UNAVAILABLE` becomes unknown (bad quality). An agent restart (its `instanceId` changes)
and a sequence gap (its buffer wrapped before we read it) are logged, counted and recorded as what
they are: the signals are unknown from the last moment we knew them until the agent's current values
say again what the machine is doing; nothing is counted twice, since every observation is delivered
once and counts are the controller's own counter. After a lost connection to the same agent
instance, reading resumes at the next sequence number, so what the agent buffered meanwhile is kept.
A malformed or cut-off document is refused with a message naming what and where, and the same request
is made again (the agent still has the data); the reader goes offline only when the agent cannot be
reached or keeps answering nonsense.

Parsing is pure (`parse_document`, `find_routes`, `Mapper`); the reader wraps it with HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn, Unpack
from urllib.parse import quote

import httpx

from bridge.reader import MachineReader, ReaderOptions
from uns.signals import coerce
from uns.site import Machine, MtConnectSource, Signal
from uns.sparkplug.edge import Sample
from uns.sparkplug.payload import Quality

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_BAD_IN_A_ROW = 5  # bad documents in a row before the agent counts as lost
STATE_SIGNALS = (Signal.EXECUTION, Signal.MODE, Signal.ALARM_CODE, Signal.ESTOP)  # what decides the state


class DocumentError(ValueError):
    """A document that is not a usable MTConnect document (malformed, cut off, of the wrong kind)."""


class AgentError(Exception):
    """The agent answered with an MTConnectError document."""

    def __init__(self, codes: list[tuple[str, str]]) -> None:
        self.codes = codes
        super().__init__("; ".join(f"{code}: {text}" if text else code for code, text in codes) or "error")

    def has(self, code: str) -> bool:
        return any(c == code for c, _ in self.codes)


# -- documents -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Header:
    instance_id: str
    creation_ms: int | None = None
    buffer_size: int | None = None
    first: int | None = None  # firstSequence: the oldest observation the agent still has
    last: int | None = None  # lastSequence
    next: int | None = None  # nextSequence: where the next request starts


@dataclass(frozen=True, slots=True)
class DataItem:
    id: str
    type: str
    sub_type: str | None
    category: str
    component: str  # the type of the component it belongs to ("Device" for the device's own)
    component_id: str
    path: tuple[str, ...]  # component types from the device down to its component


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    uuid: str
    kind: str  # "Device", or "Agent" (the 2.x agent describes itself as a device too)
    data_items: tuple[DataItem, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    item: str  # dataItemId
    sequence: int
    timestamp: int  # UTC ms, the agent's
    value: str | int | float | None  # None: UNAVAILABLE
    level: str | None = None  # a condition's: NORMAL, WARNING, FAULT, UNAVAILABLE
    native_code: str | None = None


@dataclass(frozen=True, slots=True)
class DevicesDocument:
    header: Header
    devices: tuple[Device, ...]


@dataclass(frozen=True, slots=True)
class StreamsDocument:
    header: Header
    observations: tuple[Observation, ...]  # of the device asked for, in sequence order


_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?$")
_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=64)
def _day_ms(year: int, month: int, day: int) -> int:
    return (dt.date(year, month, day).toordinal() - _EPOCH_DAY) * 86_400_000


@functools.lru_cache(maxsize=4096)
def _second_ms(text: str) -> int | None:
    """`YYYY-MM-DDTHH:MM:SS` in UTC ms (the observations of a burst share their second: cached)."""
    m = _TIME.match(text + "Z")
    return None if m is None else _parse_time(text + "Z", m)


def timestamp_ms(text: str) -> int:
    """UTC milliseconds of an MTConnect timestamp (ISO 8601, UTC unless it says otherwise)."""
    # the usual form, 2026-11-22T06:00:00.123456Z, without the regular expression
    if len(text) >= 20 and text[-1] == "Z" and text[10] == "T" and (len(text) == 20 or text[19] == "."):
        second = _second_ms(text[:19])
        frac = text[20:-1]
        if second is not None and (not frac or frac.isdigit()):
            return second + (int((frac + "00")[:3]) if frac else 0)
    m = _TIME.match(text.strip())
    if m is None:
        raise DocumentError(f"timestamp {text!r} is not an ISO 8601 time")
    return _parse_time(text, m)


def _parse_time(text: str, m: re.Match[str]) -> int:
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        ms = _day_ms(int(year), int(month), int(day))
    except ValueError as exc:
        raise DocumentError(f"timestamp {text!r}: {exc}") from None
    ms += ((int(hour) * 60 + int(minute)) * 60 + int(second)) * 1000
    if frac:
        ms += int((frac + "00")[:3])
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        ms -= sign * (int(digits[:2]) * 60 + int(digits[2:])) * 60_000
    return ms


def _int(value: object, what: str) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        raise DocumentError(f"{what} is not a whole number: {value!r}") from None


def _header(attrs: Mapping[str, Any], where: str) -> Header:
    if "instanceId" not in attrs:
        raise DocumentError(f"{where}: the Header has no instanceId")

    def number(name: str) -> int | None:
        value = attrs.get(name)
        return None if value is None else _int(value, f"{where}: Header {name}")

    created = attrs.get("creationTime")
    return Header(
        str(attrs["instanceId"]),
        timestamp_ms(str(created)) if created else None,
        number("bufferSize"),
        number("firstSequence"),
        number("lastSequence"),
        number("nextSequence"),
    )


def parse_document(body: bytes, device: str | None = None) -> DevicesDocument | StreamsDocument:
    """A probe (MTConnectDevices) or current/sample (MTConnectStreams) answer, in XML or JSON (either
    of the C++ agent's JSON versions). Streams are kept for `device` (name or uuid) only, if given.

    Raises AgentError for an MTConnectError document, DocumentError for anything unusable."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"a document of {len(body):,} bytes: more than {MAX_DOCUMENT_BYTES:,}")
    start = body.lstrip()[:1]
    if start == b"<":
        return _parse_xml(body, device)
    if start in (b"{", b"["):
        return _parse_json(body, device)
    if not start:
        raise DocumentError("an empty document")
    raise DocumentError(f"neither XML nor JSON (it begins {body[:40]!r})")


async def read_probe(endpoint: str, timeout_s: float) -> tuple[DevicesDocument, str]:
    """An agent's probe (for `uns probe`) and the format it answered in ("xml" or "json"). Raises
    httpx's errors for a failed connection, AgentError and DocumentError as `parse_document`."""
    async with httpx.AsyncClient(
        timeout=timeout_s, headers={"Accept": "application/xml, text/xml"}
    ) as client:
        response = await client.get(endpoint.rstrip("/") + "/probe")
    try:
        doc = parse_document(response.content)
    except DocumentError as exc:
        if response.status_code != 200:
            raise DocumentError(f"HTTP {response.status_code}, and {exc}") from None
        raise
    if not isinstance(doc, DevicesDocument):
        raise DocumentError("a streams document, not the devices document a probe answers with")
    return doc, "json" if response.content.lstrip()[:1] in (b"{", b"[") else "xml"


# XML ------------------------------------------------------------------------------------------------
def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _parse_xml(body: bytes, device: str | None) -> DevicesDocument | StreamsDocument:
    # MTConnect documents have no DTD: one that has one is refused before any parser sees it (an entity
    # bomb does no harm then; expat >= 2.4.1 would stop the billion laughs too, and ElementTree never
    # fetches external entities).
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise DocumentError("the document declares a DTD or entities (<!DOCTYPE>, <!ENTITY>): refused")
    try:
        root = ET.fromstring(body)  # noqa: S314 (no DTD, checked above)
    except ET.ParseError as exc:
        raise DocumentError(f"not well-formed XML ({exc}; {len(body):,} bytes)") from None
    kind = _local(root.tag)
    header = next((c for c in root if _local(c.tag) == "Header"), None)
    if kind == "MTConnectError":
        raise AgentError(list(_xml_errors(root)))
    if header is None:
        raise DocumentError(f"{kind} without a Header")
    if kind == "MTConnectDevices":
        return DevicesDocument(_header(header.attrib, kind), tuple(_xml_devices(root)))
    if kind == "MTConnectStreams":
        return StreamsDocument(_header(header.attrib, kind), _sorted(_xml_observations(root, device)))
    raise DocumentError(f"not an MTConnect document: the root element is {kind}")


def _xml_errors(root: ET.Element) -> Iterator[tuple[str, str]]:
    for errors in root:
        if _local(errors.tag) != "Errors":
            continue
        for error in errors:
            code = error.get("errorCode") or _local(error.tag)
            text = (error.text or "").strip()
            message = next((c for c in error.iter() if _local(c.tag) == "ErrorMessage"), None)
            if message is not None:
                text = (message.text or "").strip()
            yield code, text


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def _xml_devices(root: ET.Element) -> Iterator[Device]:
    devices = _child(root, "Devices")
    for element in devices if devices is not None else ():
        kind = _local(element.tag)
        items: list[DataItem] = []
        _xml_component(element, "Device", (), items)
        yield Device(element.get("name", ""), element.get("uuid", ""), kind, tuple(items))


def _xml_component(element: ET.Element, kind: str, path: tuple[str, ...], out: list[DataItem]) -> None:
    component_id = element.get("id", "")
    items = _child(element, "DataItems")
    for item in items if items is not None else ():
        if _local(item.tag) != "DataItem":
            continue
        out.append(_data_item(item.attrib, kind, component_id, path))
    components = _child(element, "Components")
    for child in components if components is not None else ():
        sub = _local(child.tag)
        _xml_component(child, sub, (*path, sub), out)


def _data_item(attrs: Mapping[str, Any], kind: str, component_id: str, path: tuple[str, ...]) -> DataItem:
    if not attrs.get("id") or not attrs.get("type"):
        raise DocumentError(f"a DataItem of {kind} {component_id!r} without an id or a type")
    sub = attrs.get("subType")
    return DataItem(
        str(attrs["id"]),
        str(attrs["type"]),
        str(sub) if sub else None,
        str(attrs.get("category", "")),
        kind,
        component_id,
        path,
    )


def _wanted(name: str | None, uuid: str | None, device: str | None) -> bool:
    return device is None or device in (name, uuid)


def _xml_observations(root: ET.Element, device: str | None) -> Iterator[Observation]:
    streams = _child(root, "Streams")
    for stream in streams if streams is not None else ():
        if not _wanted(stream.get("name"), stream.get("uuid"), device):
            continue
        for component in stream:
            for group in component:
                condition = _local(group.tag) == "Condition"
                for element in group:
                    yield _observation(element.attrib, _local(element.tag), element.text, condition)


def _observation(attrs: Mapping[str, Any], tag: str, text: object, condition: bool) -> Observation:
    item, seq, stamp = attrs.get("dataItemId"), attrs.get("sequence"), attrs.get("timestamp")
    if item is None or seq is None or stamp is None:
        missing = [n for n, v in (("dataItemId", item), ("sequence", seq), ("timestamp", stamp)) if v is None]
        raise DocumentError(f"a {tag} observation without {', '.join(missing)}")
    value: str | int | float | None
    if isinstance(text, str):
        value = text.strip()
    elif isinstance(text, int | float) and not isinstance(text, bool):
        value = text
    elif text is None:
        value = ""
    else:
        value = json.dumps(text)  # a data set, table or vector: kept as text
    level = None
    if condition:
        level = tag.upper()
        if level == "UNAVAILABLE":
            value = None
    elif value == "UNAVAILABLE":
        value = None
    code = attrs.get("nativeCode")
    return Observation(
        str(item),
        _int(seq, f"{tag} {item}: sequence"),
        timestamp_ms(str(stamp)),
        value,
        level,
        None if code is None else str(code),
    )


def _sorted(observations: Iterator[Observation]) -> tuple[Observation, ...]:
    return tuple(sorted(observations, key=lambda o: o.sequence))


# JSON -----------------------------------------------------------------------------------------------
def _members(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(element name, object) of a JSON container in either of the C++ agent's forms: a list of
    one-key objects (JSON version 1: [{"Execution": {...}}, ...]) or an object of element name to a
    list of objects (version 2: {"Execution": [{...}, ...]})."""
    if isinstance(node, list):
        for entry in node:
            if isinstance(entry, dict):
                for name, value in entry.items():
                    yield from _each(name, value)
    elif isinstance(node, dict):
        for name, value in node.items():
            yield from _each(name, value)


def _each(name: str, value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(value, dict):
        yield name, value
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict):
                yield name, v


def _parse_json(body: bytes, device: str | None) -> DevicesDocument | StreamsDocument:
    try:
        doc = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DocumentError(f"not valid JSON ({exc}; {len(body):,} bytes)") from None
    if not isinstance(doc, dict) or not doc:
        raise DocumentError("not an MTConnect document: a JSON document without a root object")
    kinds = [k for k in doc if k.startswith("MTConnect")]
    if not kinds or not isinstance(doc[kinds[0]], dict):
        raise DocumentError(f"not an MTConnect document: JSON with {', '.join(list(doc)[:3])}")
    kind, root = kinds[0], doc[kinds[0]]
    if kind == "MTConnectError":
        raise AgentError(list(_json_errors(root.get("Errors"))))
    header = root.get("Header")
    if not isinstance(header, dict):
        raise DocumentError(f"{kind} without a Header")
    if kind == "MTConnectDevices":
        return DevicesDocument(_header(header, kind), tuple(_json_devices(root.get("Devices"))))
    if kind == "MTConnectStreams":
        return StreamsDocument(
            _header(header, kind), _sorted(_json_observations(root.get("Streams"), device))
        )
    raise DocumentError(f"not an MTConnect document: {kind}")


def _json_errors(node: Any) -> Iterator[tuple[str, str]]:
    for name, error in _members(node):
        text = error.get("value") or error.get("ErrorMessage") or ""
        yield str(error.get("errorCode") or name), str(text)


def _json_devices(node: Any) -> Iterator[Device]:
    for kind, obj in _members(node):
        items: list[DataItem] = []
        _json_component(obj, "Device", (), items)
        yield Device(str(obj.get("name", "")), str(obj.get("uuid", "")), kind, tuple(items))


def _json_component(obj: dict[str, Any], kind: str, path: tuple[str, ...], out: list[DataItem]) -> None:
    component_id = str(obj.get("id", ""))
    for name, item in _members(obj.get("DataItems")):
        if name == "DataItem":
            out.append(_data_item(item, kind, component_id, path))
    for sub, child in _members(obj.get("Components")):
        _json_component(child, sub, (*path, sub), out)


def _json_observations(node: Any, device: str | None) -> Iterator[Observation]:
    for _, stream in _members(node):
        if not _wanted(stream.get("name"), stream.get("uuid"), device):
            continue
        components = [c for _, c in _members(stream.get("ComponentStreams"))]  # version 1
        components += [c for _, c in _each("ComponentStream", stream.get("ComponentStream"))]  # version 2
        for component in components:
            for group in ("Samples", "Events", "Condition"):
                for tag, obs in _members(component.get(group)):
                    yield _observation(obs, tag, obs.get("value"), group == "Condition")


# -- what a device's data items mean -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Routes:
    """Which data item gives which signal (found in the probe)."""

    signal_of: Mapping[str, Signal]  # EVENT and SAMPLE data item id -> signal
    conditions: frozenset[str]  # CONDITION data items whose faults are the machine's alarm
    availability: str | None  # the device's AVAILABILITY data item
    unmapped: tuple[Signal, ...] = ()  # listed signals the device has no data item for (unknown)

    def describe(self) -> str:
        alarms = f", alarm_code={'+'.join(sorted(self.conditions))}" if self.conditions else ""
        return ", ".join(f"{s}={i}" for i, s in self.signal_of.items()) + alarms


class ConfigurationError(ValueError):
    """The agent's device does not have what the site model asks for."""


# signal -> (data item types, sub-types in order of preference; None: no sub-type)
_BY_TYPE: dict[Signal, tuple[tuple[str, ...], tuple[str | None, ...]]] = {
    Signal.EXECUTION: (("EXECUTION",), (None,)),
    Signal.MODE: (("CONTROLLER_MODE",), (None,)),
    Signal.PROGRAM: (("PROGRAM",), (None, "ACTIVE", "MAIN")),
    Signal.PART_COUNT: (("PART_COUNT",), (None, "ALL", "COMPLETE", "GOOD")),
    Signal.ESTOP: (("EMERGENCY_STOP",), (None,)),
    Signal.SPINDLE_SPEED: (("ROTARY_VELOCITY", "SPINDLE_SPEED"), ("ACTUAL", None)),
    Signal.FEED_OVERRIDE: (("PATH_FEEDRATE_OVERRIDE",), ("PROGRAMMED", None)),
    Signal.SINGLE_BLOCK: (("CONTROLLER_MODE_OVERRIDE",), ("SINGLE_BLOCK",)),
    Signal.OPTIONAL_STOP: (("CONTROLLER_MODE_OVERRIDE",), ("OPTIONAL_STOP",)),
}


def _pick(
    items: tuple[DataItem, ...], types: tuple[str, ...], subs: tuple[str | None, ...]
) -> DataItem | None:
    best: tuple[int, int, int] | None = None
    chosen = None
    for n, item in enumerate(items):
        if item.category == "CONDITION" or item.type not in types or item.sub_type not in subs:
            continue
        rank = (types.index(item.type), subs.index(item.sub_type), n)
        if best is None or rank < best:
            best, chosen = rank, item
    return chosen


def find_routes(device: Device, source: MtConnectSource) -> Routes:
    """Where each of the source's signals comes from in `device`; ConfigurationError if a required one
    has no data item, or a data item the site model names is not there."""
    chosen, conditions, unmapped = recognise(device, source)
    wants_alarm = Signal.ALARM_CODE in source.signals or Signal.ALARM_TEXT in source.signals
    missing = [s.value for s in unmapped if s in STATE_SIGNALS or s is Signal.PART_COUNT]
    if wants_alarm and not conditions:
        missing.append("alarm_code (no CONDITION data item)")
    if missing:
        raise ConfigurationError(
            f"device {device.name!r} has no data item for {', '.join(missing)}"
            " (name it under data_items in the site model)"
        )
    signal_of: dict[str, Signal] = {}
    for signal, item in chosen.items():
        if item.id in signal_of:
            raise ConfigurationError(f"data item {item.id!r} is both {signal_of[item.id]} and {signal}")
        signal_of[item.id] = signal
    availability = next((i.id for i in device.data_items if i.type == "AVAILABILITY" and not i.path), None)
    return Routes(signal_of, frozenset(conditions), availability, tuple(unmapped))


def recognise(
    device: Device, source: MtConnectSource
) -> tuple[dict[Signal, DataItem], set[str], list[Signal]]:
    """The data item of each of the source's signals that `device` has (by the site model's id, else
    by type and sub-type), the CONDITION data items of its alarms, and the signals it has none for.
    ConfigurationError only if a data item the site model names is not there (or is not a condition,
    for alarm_code)."""
    by_id = {i.id: i for i in device.data_items}
    conditions: set[str] = set()
    unmapped: list[Signal] = []
    chosen: dict[Signal, DataItem] = {}
    named = source.data_items
    for signal, ids in named.items():
        for item_id in ids if isinstance(ids, list) else [ids]:
            if item_id not in by_id:
                raise ConfigurationError(
                    f"data_items.{signal}: device {device.name!r} has no data item {item_id!r}"
                )
            named_item = by_id[item_id]
            if signal is Signal.ALARM_CODE:
                if named_item.category != "CONDITION":
                    raise ConfigurationError(
                        f"data_items.alarm_code: {item_id!r} is a {named_item.category or '?'} data item"
                        " (alarm_code comes from CONDITION data items)"
                    )
                conditions.add(item_id)
            else:
                chosen[signal] = named_item
    for signal in source.signals:
        if signal in chosen or signal in (Signal.ALARM_CODE, Signal.ALARM_TEXT):
            continue
        item: DataItem | None = None
        if signal is Signal.SPINDLE_LOAD:
            spindle = chosen.get(Signal.SPINDLE_SPEED) or _pick(
                device.data_items, *_BY_TYPE[Signal.SPINDLE_SPEED]
            )
            loads = [i for i in device.data_items if i.type == "LOAD" and i.category != "CONDITION"]
            item = next(
                (i for i in loads if spindle is not None and i.component_id == spindle.component_id), None
            )
            item = item or next((i for i in loads if i.component == "Rotary"), None)
        elif signal in _BY_TYPE:
            item = _pick(device.data_items, *_BY_TYPE[signal])
        if item is not None:
            chosen[signal] = item
        else:
            unmapped.append(signal)
    wants_alarm = Signal.ALARM_CODE in source.signals or Signal.ALARM_TEXT in source.signals
    if wants_alarm and Signal.ALARM_CODE not in named:
        conditions = {i.id for i in device.data_items if i.category == "CONDITION"}
    return chosen, conditions, unmapped


_EXECUTION = {
    "ACTIVE": "ACTIVE",
    "READY": "READY",
    "INTERRUPTED": "INTERRUPTED",
    "FEED_HOLD": "FEED_HOLD",
    "STOPPED": "STOPPED",
    "OPTIONAL_STOP": "STOPPED",
    "PROGRAM_STOPPED": "STOPPED",
    "PROGRAM_OPTIONAL_STOP": "STOPPED",
    "PROGRAM_COMPLETED": "READY",
    "WAIT": "INTERRUPTED",
}
_MODE = {
    "AUTOMATIC": "AUTOMATIC",
    "SEMI_AUTOMATIC": "AUTOMATIC",
    "MANUAL": "MANUAL",
    "MANUAL_DATA_INPUT": "MDI",
    "EDIT": "EDIT",
}
_SWITCH = {"TRIGGERED": True, "ARMED": False, "ON": True, "OFF": False, "TRUE": True, "FALSE": False}


def convert(signal: Signal, raw: str | int | float) -> bool | int | float | str:
    """An MTConnect observation's value as the signal's value; ValueError naming both if it does not fit."""
    text = str(raw).strip()
    value: object = raw
    if signal is Signal.EXECUTION:
        if text.upper() not in _EXECUTION:
            raise ValueError(f"{signal}: {raw!r} is not an MTConnect EXECUTION value")
        value = _EXECUTION[text.upper()]
    elif signal is Signal.MODE:
        if text.upper() not in _MODE:
            raise ValueError(f"{signal}: {raw!r} is not an MTConnect CONTROLLER_MODE value")
        value = _MODE[text.upper()]
    elif signal in (Signal.PROGRAM, Signal.ALARM_TEXT):
        value = text
    elif signal in (Signal.ESTOP, Signal.SINGLE_BLOCK, Signal.OPTIONAL_STOP):
        if text.upper() not in _SWITCH:
            raise ValueError(f"{signal}: {raw!r} is none of {', '.join(_SWITCH)}")
        value = _SWITCH[text.upper()]
    elif isinstance(raw, str):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{signal}: expected a number, got {raw!r}") from None
        if signal in (Signal.PART_COUNT, Signal.ALARM_CODE) and value.is_integer():
            value = int(value)
    return coerce(signal, value)


def _alarm_number(code: str | None) -> int:
    """A fault's nativeCode as alarm_code: the number itself, or the digits in it, or -1."""
    if code:
        with contextlib.suppress(ValueError):
            number = int(code)
            if number != 0 and -(2**31) <= number < 2**31:
                return number
        digits = re.sub(r"\D", "", code)[:9]
        if digits and int(digits):
            return int(digits)
    return -1


Value = bool | int | float | str | None


class Mapper:
    """Turns a device's observations into samples of its signals (pure: no I/O), by exception: a
    signal is reported when its value or quality changes."""

    def __init__(
        self, routes: Routes, signals: tuple[Signal, ...], counters: dict[str, int], where: str = ""
    ) -> None:
        self.routes, self.signals, self.counters, self.where = routes, signals, counters, where
        self.available = True
        self._value: dict[Signal, tuple[Value, int | None]] = {}
        self._sent: dict[Signal, Sample] = {}
        # condition data item -> nativeCode -> (alarm_code, alarm_text, timestamp, sequence)
        self._faults: dict[str, dict[str, tuple[int, str, int, int]]] = {}
        self._unknown = set(routes.conditions)  # UNAVAILABLE (or not heard of yet) condition data items

    def apply(self, obs: Observation) -> list[Sample]:
        routes = self.routes
        if obs.item in routes.conditions:
            return self._condition(obs)
        signal = routes.signal_of.get(obs.item)
        if signal is not None:
            if obs.value is None:
                self.counters["unavailable"] += 1
                self._value[signal] = (None, Quality.BAD)
            else:
                try:
                    self._value[signal] = (convert(signal, obs.value), None)
                except ValueError as exc:
                    self.counters["bad_values"] += 1
                    logger.warning("%s: data item %s: %s", self.where, obs.item, exc)
                    self._value[signal] = (None, Quality.BAD)
            return self._emit([signal], obs.timestamp)
        if obs.item == routes.availability:
            available = obs.value is not None and str(obs.value).upper() == "AVAILABLE"
            if available != self.available:
                self.available = available
                return self._emit(list(self.signals), obs.timestamp)
        return []

    def _condition(self, obs: Observation) -> list[Sample]:
        faults = self._faults.setdefault(obs.item, {})
        level, code = obs.level, obs.native_code
        if level == "UNAVAILABLE" or (level is None and obs.value is None):
            self._unknown.add(obs.item)
            faults.clear()
        else:
            self._unknown.discard(obs.item)
            if level == "FAULT":
                text = str(obs.value or "")
                number = _alarm_number(code)
                if code and str(number) != code.strip():
                    text = f"{code}: {text}" if text else code
                faults[code or ""] = (number, text or "FAULT", obs.timestamp, obs.sequence)
            elif code and level in ("NORMAL", "WARNING"):  # that fault is gone (a warning is no alarm)
                faults.pop(code, None)
            elif level == "NORMAL":  # without a code: every fault of the data item is gone
                faults.clear()
        active = [f for fs in self._faults.values() for f in fs.values()]
        if active:
            number, text, _, _ = max(active, key=lambda f: (f[2], f[3]))  # the latest fault
            self._value[Signal.ALARM_CODE] = (number, None)
            self._value[Signal.ALARM_TEXT] = (text, None)
        elif self._unknown:
            self._value[Signal.ALARM_CODE] = (None, Quality.BAD)
            self._value[Signal.ALARM_TEXT] = (None, Quality.BAD)
        else:
            self._value[Signal.ALARM_CODE] = (0, None)
            self._value[Signal.ALARM_TEXT] = ("", None)
        return self._emit([Signal.ALARM_CODE, Signal.ALARM_TEXT], obs.timestamp)

    def _emit(self, signals: list[Signal], ts: int) -> list[Sample]:
        out: list[Sample] = []
        for signal in signals:
            if signal not in self.signals or (signal not in self._value and self.available):
                continue
            value, quality = self._value.get(signal, (None, Quality.BAD))
            if not self.available:  # the agent says the device is not there: nothing it says is known
                value, quality = None, Quality.BAD
            last = self._sent.get(signal)
            if last is not None and last.value == value and last.quality == quality:
                continue
            sample = Sample(signal.value, value, ts, quality)
            self._sent[signal] = sample
            out.append(sample)
        return out

    def snapshot(self, default_ms: int) -> list[Sample]:
        """Every signal as last reported (unknown at `default_ms` if it never was): for a birth."""
        out = []
        for signal in self.signals:
            sample = self._sent.get(signal)
            if sample is None:
                sample = Sample(signal.value, None, default_ms, Quality.BAD)
                self._sent[signal] = sample
            out.append(sample)
        return out


# -- the reader ----------------------------------------------------------------------------------------
class _ResyncError(Exception):
    """The agent restarted or its buffer moved past us: start again from its current values."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _StreamEndedError(Exception):
    pass


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class MtConnectReader(MachineReader):
    """Reads one machine from an MTConnect agent (probe, current, then sample from the next sequence)."""

    def __init__(self, machine: Machine, source: MtConnectSource, **options: Unpack[ReaderOptions]) -> None:
        super().__init__(machine, **options)
        self.source = source
        self.counters.update(observations=0, unavailable=0, gaps=0, restarts=0, observations_lost=0)
        self._instance: str | None = None
        self._next: int | None = None  # the sequence number the next sample request starts from
        self._known_until = 0  # what the machine did is known up to here (the agent's time)
        self._mapper: Mapper | None = None
        self._device: Device | None = None
        self._bad_in_row = 0
        self._wrapped_at_start = False

    # HTTP ---------------------------------------------------------------------------------------
    def _url(self, request: str) -> str:
        base = self.source.endpoint.rstrip("/")
        if request != "probe" and self._device is not None:
            base += "/" + quote(self._device.name or self._device.uuid, safe="")
        return f"{base}/{request}"

    def _bad(self, what: str, exc: BaseException) -> None:
        """A document that could not be used: say so; after too many in a row the agent counts as lost."""
        self.counters["bad_reads"] += 1
        self._bad_in_row += 1
        logger.warning("machine %s: %s: %s: %s", self.machine.id, self.where, what, _describe(exc))
        if self._bad_in_row >= MAX_BAD_IN_A_ROW:
            raise ConnectionError(f"{self._bad_in_row} unusable answers in a row from the agent") from exc

    def _parse(self, body: bytes, status: int) -> DevicesDocument | StreamsDocument:
        try:
            doc = parse_document(body, self._device.uuid if self._device is not None else None)
        except DocumentError as exc:
            if status != 200:
                raise DocumentError(f"HTTP {status}, and {exc}") from None
            raise
        if status != 200:
            raise DocumentError(f"HTTP {status}")
        return doc

    async def _get(
        self, client: httpx.AsyncClient, request: str, params: dict[str, int] | None = None
    ) -> DevicesDocument | StreamsDocument:
        """GET one document; a malformed or cut-off one is asked for again (AgentError passes up)."""
        url = self._url(request)
        what = url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
        while True:
            try:
                response = await client.get(url, params=params)
                doc = self._parse(response.content, response.status_code)
            except httpx.RemoteProtocolError as exc:  # the body was cut off, or not HTTP at all
                self._bad(what, exc)
            except DocumentError as exc:
                self._bad(what, exc)
            except httpx.TransportError as exc:
                raise ConnectionError(f"{what}: {_describe(exc)}") from exc
            else:
                self._bad_in_row = 0
                return doc
            await asyncio.sleep(self.source.interval_ms / 1000)

    async def _streams(
        self, client: httpx.AsyncClient, request: str, params: dict[str, int] | None = None
    ) -> StreamsDocument:
        doc = await self._get(client, request, params)
        if not isinstance(doc, StreamsDocument):
            raise ConnectionError(f"{request}: the agent answered with a devices document")
        return doc

    # the session --------------------------------------------------------------------------------
    async def _session(self) -> None:
        source = self.source
        timeout = source.timeout_ms / 1000
        read = timeout + 2 * source.heartbeat_ms / 1000 if source.stream else timeout
        accept = "application/json" if source.format == "json" else "application/xml, text/xml"
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, read=read), headers={"Accept": accept}
        ) as client:
            routes, instance = await self._probe(client)
            self.counters["connects"] += 1
            if not await self._resume(client, routes, instance):
                await self._start(client, routes)
            while True:
                try:
                    if source.stream:
                        await self._stream(client)
                    else:
                        await self._poll(client)
                except _ResyncError as exc:
                    await self._resync(client, exc.reason)

    async def _probe(self, client: httpx.AsyncClient) -> tuple[Routes, str]:
        self._device = None
        doc = await self._get(client, "probe")
        if not isinstance(doc, DevicesDocument):
            raise ConnectionError("probe: the agent answered with a streams document")
        devices = [d for d in doc.devices if d.kind != "Agent"]
        wanted = self.source.device
        found = devices if wanted is None else [d for d in doc.devices if wanted in (d.name, d.uuid)]
        if len(found) != 1:
            names = ", ".join(repr(d.name) for d in devices) or "none"
            what = f"no device {wanted!r}" if wanted is not None else f"{len(devices)} devices"
            raise ConfigurationError(
                f"the agent has {what} (its devices: {names}); set 'device' in the site model"
            )
        self._device = found[0]
        routes = find_routes(found[0], self.source)
        for signal in routes.unmapped:
            logger.warning(
                "machine %s: device %r has no data item for %s: reported unknown",
                self.machine.id,
                found[0].name,
                signal,
            )
        return routes, doc.header.instance_id

    def _fresh_mapper(self, routes: Routes) -> Mapper:
        return Mapper(routes, tuple(self.source.signals), self.counters, f"machine {self.machine.id}")

    async def _resume(self, client: httpx.AsyncClient, routes: Routes, instance: str) -> bool:
        """Go on from where the last session stopped, if the agent still has it: True if it did."""
        if self._instance is None or self._next is None or self._mapper is None:
            return False
        if instance != self._instance:
            self._restarted(instance)
            return False
        if routes != self._mapper.routes:
            logger.warning(
                "machine %s: the agent's device model changed: starting from its current values",
                self.machine.id,
            )
            return False
        try:
            doc = await self._streams(client, "sample", {"from": self._next, "count": self.source.count})
        except AgentError as exc:
            if not exc.has("OUT_OF_RANGE"):
                raise ConnectionError(f"sample: the agent answered {exc}") from exc
            self._wrapped_at_start = True  # how much: _start knows from the agent's firstSequence
            return False
        if doc.header.instance_id != self._instance:
            self._restarted(doc.header.instance_id)
            return False
        if doc.header.first is not None and doc.header.first > self._next:
            self._wrapped(doc.header.first)
            return False
        self._online = True
        logger.info("machine %s: resuming at sequence %d of %s", self.machine.id, self._next, self.where)
        self._on_online(self._mapper.snapshot(self._known_until))
        self._deliver(doc)
        return True

    def _restarted(self, instance: str) -> None:
        self.counters["restarts"] += 1
        logger.warning(
            "machine %s: the agent restarted (instanceId %s -> %s): what it had after sequence %s and"
            " did not send is lost",
            self.machine.id,
            self._instance,
            instance,
            None if self._next is None else self._next - 1,
        )
        self._instance = None

    def _wrapped(self, first: int | None) -> None:
        self.counters["gaps"] += 1
        lost = None if first is None or self._next is None else max(0, first - self._next)
        if lost:
            self.counters["observations_lost"] += lost
        logger.warning(
            "machine %s: the agent's buffer moved past sequence %s before we read it (it begins at %s):"
            " %s observations lost; the signals are unknown from %s until its current values",
            self.machine.id,
            self._next,
            "?" if first is None else first,
            "some" if lost is None else lost,
            self._known_until,
        )

    async def _start(self, client: httpx.AsyncClient, routes: Routes) -> None:
        """Start from the agent's current values (a birth)."""
        doc = await self._streams(client, "current")
        if self._wrapped_at_start:
            self._wrapped_at_start = False
            self._wrapped(doc.header.first)
        mapper = self._fresh_mapper(routes)
        for obs in doc.observations:
            mapper.apply(obs)
        self.counters["observations"] += len(doc.observations)
        self._mapper, self._instance = mapper, doc.header.instance_id
        self._next = self._next_of(doc)
        self._known(doc)
        birth = mapper.snapshot(doc.header.creation_ms or self._now_ms())
        self.counters["samples"] += len(birth)
        self._online = True
        logger.info(
            "machine %s: reading %s from sequence %d of %s",
            self.machine.id,
            routes.describe(),
            self._next,
            self.where,
        )
        self._on_online(birth)

    async def _resync(self, client: httpx.AsyncClient, reason: str) -> None:
        """While online, the agent restarted or its buffer moved past us: the signals are unknown from
        the last moment we knew them (`_known_until`) until the agent's current values say again what
        the machine does (the latest of the state signals' timestamps); then we go on from there."""
        routes, instance = await self._probe(client)
        doc = await self._streams(client, "current")
        # sequences that went back are a restart too, whatever the instanceId says (an agent that
        # takes it from its start time in seconds keeps it across a restart within the second)
        went_back = doc.header.next is not None and self._next is not None and doc.header.next < self._next
        new_instance = instance != self._instance or doc.header.instance_id != self._instance
        if reason == "restart" or new_instance or went_back:
            self._restarted(doc.header.instance_id)
        else:
            self._wrapped(doc.header.first)
        mapper = self._fresh_mapper(routes)
        for obs in doc.observations:
            mapper.apply(obs)
        self.counters["observations"] += len(doc.observations)
        now = mapper.snapshot(doc.header.creation_ms or self._known_until)
        state = [s.timestamp for s in now if s.name in STATE_SIGNALS]
        gap_from = self._known_until
        gap_to = max([gap_from, *state])
        out: list[Sample] = []
        if gap_to > gap_from:  # the state is unknown in between: say so
            out = [Sample(s.value, None, gap_from, Quality.BAD) for s in self.source.signals]
        out += [s if s.timestamp >= gap_to else replace(s, timestamp=gap_to) for s in now]
        out.sort(key=lambda s: s.timestamp)
        self._mapper, self._instance = mapper, doc.header.instance_id
        self._next = self._next_of(doc)
        self._known(doc)
        self.counters["samples"] += len(out)
        self._on_samples(out)

    @staticmethod
    def _next_of(doc: StreamsDocument) -> int:
        if doc.header.next is not None:
            return doc.header.next
        return max((o.sequence for o in doc.observations), default=0) + 1

    def _known(self, doc: StreamsDocument) -> None:
        h = doc.header
        last = max((o.timestamp for o in doc.observations), default=self._known_until)
        caught_up = h.next is not None and h.last is not None and h.next > h.last
        created = h.creation_ms if caught_up and h.creation_ms is not None else last
        self._known_until = max(self._known_until, last, created)

    def _check(self, doc: StreamsDocument) -> None:
        h = doc.header
        if h.instance_id != self._instance:
            raise _ResyncError("restart")
        if h.first is not None and self._next is not None and h.first > self._next:
            raise _ResyncError("gap")

    def _deliver(self, doc: StreamsDocument) -> None:
        """A sample document's observations, each once, in sequence order."""
        assert self._mapper is not None
        assert self._next is not None
        start = self._next
        out: list[Sample] = []
        count = 0
        for obs in doc.observations:
            if obs.sequence < start:
                continue  # we have it already
            count += 1
            out += self._mapper.apply(obs)
        self._next = max(self._next_of(doc), start)
        self._known(doc)
        self.counters["observations"] += count
        self.counters["samples"] += len(out)
        if out:
            self._on_samples(out)

    def _sample_error(self, exc: AgentError) -> NoReturn:
        if exc.has("OUT_OF_RANGE"):
            raise _ResyncError("gap") from exc
        raise ConnectionError(f"sample: the agent answered {exc}") from exc

    async def _poll(self, client: httpx.AsyncClient) -> None:
        interval = self.source.interval_ms / 1000
        while True:
            assert self._next is not None
            try:
                doc = await self._streams(client, "sample", {"from": self._next, "count": self.source.count})
            except AgentError as exc:
                self._sample_error(exc)
            self._check(doc)
            self._deliver(doc)
            h = doc.header
            if h.last is None or h.next is None or h.next > h.last:
                await asyncio.sleep(interval)  # caught up; else go on at once

    async def _stream(self, client: httpx.AsyncClient) -> None:
        """One long sample request the agent answers part by part (multipart/x-mixed-replace): every
        `interval` when there is data, an empty part every `heartbeat` when there is none."""
        source = self.source
        ended = 0
        while True:
            assert self._next is not None
            params = {
                "from": self._next,
                "count": source.count,
                "interval": source.interval_ms,
                "heartbeat": source.heartbeat_ms,
            }
            url = self._url("sample")
            what = f"{url}?from={self._next}"
            parts = 0
            try:
                async with client.stream("GET", url, params=params) as response:
                    kind = response.headers.get("content-type", "")
                    boundary = re.search(r'boundary="?([^";]+)"?', kind)
                    if "multipart" not in kind or boundary is None:
                        doc = self._parse(await response.aread(), response.status_code)
                        if not isinstance(doc, StreamsDocument):
                            raise DocumentError("a devices document for a sample request")
                        self._check(doc)
                        self._deliver(doc)
                        self._bad_in_row = 0
                        await asyncio.sleep(source.interval_ms / 1000)
                        continue
                    async for body in _parts(response, boundary.group(1).encode()):
                        doc = self._parse(body, 200)
                        if not isinstance(doc, StreamsDocument):
                            raise DocumentError("a devices document in a sample stream")
                        self._check(doc)
                        self._deliver(doc)
                        self._bad_in_row = 0
                        parts += 1
            except AgentError as exc:
                self._sample_error(exc)
            except (httpx.RemoteProtocolError, DocumentError, _StreamEndedError) as exc:
                self._bad(what, exc)
                await asyncio.sleep(source.interval_ms / 1000)
                continue
            except httpx.TransportError as exc:
                raise ConnectionError(f"{what}: {_describe(exc)}") from exc
            # the agent ended the stream: ask again; twice in a row without a part is a lost agent
            ended = ended + 1 if parts == 0 else 0
            if ended >= 2:
                raise ConnectionError(f"{what}: the agent ends the stream without sending anything")


async def _parts(response: httpx.Response, boundary: bytes) -> AsyncIterator[bytes]:
    """The documents of a multipart/x-mixed-replace body: `--boundary`, headers, a blank line, the
    document (Content-length long, if the part says so, else up to the next boundary)."""
    marker = b"--" + boundary
    buf = bytearray()
    chunks = response.aiter_bytes()

    async def more(inside: bool) -> bool:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            if inside:
                raise _StreamEndedError("the stream ended in the middle of a document") from None
            return False
        buf.extend(chunk)
        if len(buf) > MAX_DOCUMENT_BYTES + 4096:
            raise DocumentError(f"a part of more than {MAX_DOCUMENT_BYTES:,} bytes")
        return True

    while True:
        at = buf.find(marker)
        while at < 0:
            if not await more(inside=bool(buf.strip())):
                return
            at = buf.find(marker)
        if buf[at + len(marker) : at + len(marker) + 2] == b"--":
            return  # the closing boundary
        head_end = buf.find(b"\r\n\r\n", at)
        while head_end < 0:
            await more(inside=True)
            head_end = buf.find(b"\r\n\r\n", at)
        headers = bytes(buf[at + len(marker) : head_end]).decode("latin-1").lower()
        length = re.search(r"content-length:\s*(\d+)", headers)
        start = head_end + 4
        if length is not None:
            end = start + int(length.group(1))
            if end - start > MAX_DOCUMENT_BYTES:
                raise DocumentError(f"a part of {end - start:,} bytes")
            while len(buf) < end:
                await more(inside=True)
            body = bytes(buf[start:end])
        else:
            end = buf.find(marker, start)
            while end < 0:
                await more(inside=True)
                end = buf.find(marker, start)
            body = bytes(buf[start:end]).rstrip(b"\r\n")
        del buf[:end]
        yield body
