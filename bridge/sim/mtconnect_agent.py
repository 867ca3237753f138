"""A simulated MTConnect agent: one CNC controller of the scenario served over HTTP the way an MTConnect
agent serves it (docs/mtconnect.md).

`probe` describes the device (a controller with a path, a spindle and an X axis), `current` gives every
data item's latest observation (`at=` the state at a sequence number still in the buffer), `sample`
gives the observations from a sequence number (`from`, `count`), at once or streamed as
multipart/x-mixed-replace parts (`interval`, `heartbeat`), as the C++ agent does. Observations get
sequence numbers in a ring buffer of `buffer_size`: one asked for after it fell out is an OUT_OF_RANGE
error. XML by default; JSON (the C++ agent's version 1 or 2) for `Accept: application/json`. A
restart gets a new `instanceId` and an empty buffer. Tests can make it cut off or garble answers,
report its device UNAVAILABLE (the adapter lost), or stop answering while it keeps its buffer.

Plain asyncio: a GET-only HTTP/1.1 server with keep-alive is a few lines, and nothing here is shared
with the reader's side (httpx).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape, quoteattr

from uns.site import Signal

logger = logging.getLogger(__name__)

Value = bool | int | float | str


@dataclass(frozen=True, slots=True)
class _Item:
    id: str
    type: str
    category: str
    sub_type: str | None = None
    units: str | None = None


@dataclass(frozen=True, slots=True)
class _Component:
    kind: str  # Controller, Path, Axes, Rotary, Linear
    id: str
    name: str
    items: tuple[_Item, ...] = ()
    children: tuple[_Component, ...] = ()


_DEVICE_ITEMS = (_Item("avail", "AVAILABILITY", "EVENT"),)
_MODEL = (
    _Component(
        "Axes",
        "axes",
        "base",
        children=(
            _Component(
                "Rotary",
                "c1",
                "C",
                (
                    _Item("c1_mode", "ROTARY_MODE", "EVENT"),
                    _Item("c1_speed", "ROTARY_VELOCITY", "SAMPLE", "ACTUAL", "REVOLUTION/MINUTE"),
                    _Item("c1_load", "LOAD", "SAMPLE", None, "PERCENT"),
                ),
            ),
            _Component("Linear", "x1", "X", (_Item("x1_load", "LOAD", "SAMPLE", None, "PERCENT"),)),
        ),
    ),
    _Component(
        "Controller",
        "cont",
        "controller",
        (
            _Item("estop", "EMERGENCY_STOP", "EVENT"),
            _Item("mode", "CONTROLLER_MODE", "EVENT"),
            _Item("system", "SYSTEM", "CONDITION"),
        ),
        (
            _Component(
                "Path",
                "path1",
                "path",
                (
                    _Item("exec", "EXECUTION", "EVENT"),
                    _Item("program", "PROGRAM", "EVENT"),
                    _Item("partcount", "PART_COUNT", "EVENT", "ALL"),
                    _Item("feed_ovr", "PATH_FEEDRATE_OVERRIDE", "EVENT", "PROGRAMMED"),
                    _Item("rapid_ovr", "PATH_FEEDRATE_OVERRIDE", "EVENT", "RAPID"),
                    _Item("motion", "MOTION_PROGRAM", "CONDITION"),
                ),
            ),
        ),
    ),
)


def _walk(components: Iterable[_Component]) -> Iterable[tuple[_Component, _Item]]:
    for c in components:
        for item in c.items:
            yield c, item
        yield from _walk(c.children)


_DEVICE = _Component("Device", "dev", "", _DEVICE_ITEMS)
_OWNER: dict[str, _Component] = {item.id: c for c, item in _walk(_MODEL)} | {
    i.id: _DEVICE for i in _DEVICE_ITEMS
}
_ITEMS: dict[str, _Item] = {item.id: item for _, item in _walk(_MODEL)} | {i.id: i for i in _DEVICE_ITEMS}
ITEM_IDS = tuple(_ITEMS)

_MODES = {"MDI": "MANUAL_DATA_INPUT"}


@dataclass(frozen=True, slots=True)
class Obs:
    """One observation: `value` None is UNAVAILABLE; a condition's value is (level, nativeCode, text)."""

    seq: int
    item: str
    t_ms: int
    value: Value | tuple[str, str | None, str] | None


@functools.lru_cache(maxsize=1024)
def _second(t_s: int) -> str:
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso(t_ms: int) -> str:
    """As the C++ agent writes them: microseconds, Z."""
    return f"{_second(t_ms // 1000)}.{t_ms % 1000:03d}000Z"


class _HttpError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        self.status, self.code, self.text = status, code, text
        super().__init__(text)


class MtConnectAgent:
    """The simulated agent of one machine, on `host:port`; `now_ms` is the agent's clock (by default
    the latest event time it was given)."""

    def __init__(
        self,
        machine_id: str,
        host: str,
        port: int,
        *,
        device: str | None = None,
        buffer_size: int = 4096,
        now_ms: Callable[[], int] | None = None,
        json_version: int = 2,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.machine_id = machine_id
        self.host, self.port = host, port
        self.device = device or machine_id
        self.uuid = f"{machine_id}-sim-uuid"
        self.buffer_size = buffer_size
        self.json_version = json_version
        self._clock = now_ms
        self._latest_ms = 0
        self.faults: list[str] = []  # "truncate", "garbage", "json_garbage": how the next answers go wrong
        self.requests = 0
        self._ring: list[Obs | None] = [None] * buffer_size
        self._first = 1
        self._next = 1
        self._base: dict[str, Obs] = {}  # the latest observation of each item before the buffer's first
        self._latest: dict[str, Obs] = {}
        self._signals: dict[str, Value] = {}
        self._instance = 0
        self._new_data = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- the controller's side -------------------------------------------------------------------------
    def now_ms(self) -> int:
        return self._clock() if self._clock is not None else self._latest_ms

    @property
    def instance_id(self) -> int:
        return self._instance

    @property
    def first_sequence(self) -> int:
        return self._first

    @property
    def next_sequence(self) -> int:
        return self._next

    def _add(self, item: str, t_ms: int, value: Value | tuple[str, str | None, str] | None) -> None:
        seq = self._next
        slot = seq % self.buffer_size
        old = self._ring[slot]
        if old is not None:  # falls out of the buffer
            self._base[old.item] = old
            self._first = old.seq + 1
        obs = Obs(seq, item, t_ms, value)
        self._ring[slot] = obs
        self._latest[item] = obs
        self._next = seq + 1
        self._latest_ms = max(self._latest_ms, t_ms)
        self._new_data.set()

    def _observe(self, item: str, t_ms: int, value: Value | tuple[str, str | None, str] | None) -> None:
        last = self._latest.get(item)
        if last is not None and last.value == value:
            return  # an agent filters out repeated values
        self._add(item, t_ms, value)

    def _reset(self, t_ms: int) -> None:
        """A new instance: an empty buffer, every data item UNAVAILABLE until the adapter says more."""
        # a new instanceId at every restart (from the clock, and never the one before)
        self._instance = max(int(time.time()) * 1000 + random.randrange(1000), self._instance + 1)
        self._ring = [None] * self.buffer_size
        self._first = self._next = 1
        self._base, self._latest = {}, {}
        for item in ITEM_IDS:
            self._add(item, t_ms, None)

    async def start(self, initial: Mapping[str, Value], t_ms: int) -> None:
        """Start serving, with the controller's signals as they were at `t_ms`."""
        self._reset(t_ms)
        self._add("avail", t_ms, "AVAILABLE")
        self._add("c1_mode", t_ms, "SPINDLE")
        self._add("rapid_ovr", t_ms, 100.0)
        self._add("x1_load", t_ms, 0.0)
        self._add("motion", t_ms, ("NORMAL", None, ""))
        await self.write(initial, t_ms)
        await self._listen()

    async def write(self, values: Mapping[str, Value], t_ms: int) -> None:
        """The controller's signals changed at `t_ms` (the observations' timestamp)."""
        self._signals.update(values)
        s = self._signals
        for name, value in values.items():
            signal = Signal(name)
            if signal is Signal.EXECUTION:
                self._observe("exec", t_ms, str(value))
            elif signal is Signal.MODE:
                self._observe("mode", t_ms, _MODES.get(str(value), str(value)))
            elif signal is Signal.PROGRAM:
                self._observe("program", t_ms, str(value))
            elif signal is Signal.PART_COUNT:
                self._observe("partcount", t_ms, int(value))
            elif signal is Signal.ESTOP:
                self._observe("estop", t_ms, "TRIGGERED" if value else "ARMED")
            elif signal is Signal.SPINDLE_SPEED:
                self._observe("c1_speed", t_ms, float(value))
            elif signal is Signal.SPINDLE_LOAD:
                self._observe("c1_load", t_ms, float(value))
            elif signal is Signal.FEED_OVERRIDE:
                self._observe("feed_ovr", t_ms, float(value))
        if Signal.ALARM_CODE in values or Signal.ALARM_TEXT in values:
            code = int(s.get(Signal.ALARM_CODE, 0))
            if code:
                self._observe("system", t_ms, ("FAULT", str(code), str(s.get(Signal.ALARM_TEXT, ""))))
            else:
                self._observe("system", t_ms, ("NORMAL", None, ""))

    def unavailable(self, t_ms: int) -> None:
        """The adapter lost the controller: every data item UNAVAILABLE (as the C++ agent does)."""
        for item in ITEM_IDS:
            self._observe(item, t_ms, None)

    async def available(self, t_ms: int) -> None:
        """The adapter is back: it sends everything it knows again."""
        self._observe("avail", t_ms, "AVAILABLE")
        self._observe("c1_mode", t_ms, "SPINDLE")
        self._observe("rapid_ovr", t_ms, 100.0)
        self._observe("x1_load", t_ms, 0.0)
        self._observe("motion", t_ms, ("NORMAL", None, ""))
        signals, self._signals = self._signals, {}
        await self.write(signals, t_ms)

    async def restart(self, t_ms: int) -> None:
        """The agent restarts: a new instanceId and an empty buffer; the adapter resends its values."""
        await self._close()
        signals, self._signals = self._signals, {}
        await self.start(signals, t_ms)

    async def go_away(self) -> None:
        """Stop answering (a network outage); the agent keeps its buffer and takes new values."""
        await self._close()

    async def come_back(self) -> None:
        await self._listen()

    async def stop(self) -> None:
        await self._close()

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)
                }
                if len(parts) != 3 or parts[0] != "GET":
                    await self._send(writer, 405, "text/plain", b"only GET\n", close=True)
                    return
                if not await self._request(reader, writer, parts[1], headers):
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, kind: str, body: bytes, *, close: bool = False
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "")
        fault = self.faults.pop(0) if self.faults and status == 200 else None
        if fault == "garbage":
            body = body[: len(body) // 2]  # a well-framed answer that is half a document
        elif fault == "json_garbage":
            body = b'{"MTConnectStreams": {"Header": {"instanceId": 1}, "Streams": [{"Devi'
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
        head += "Connection: close\r\n\r\n" if close or fault == "truncate" else "\r\n"
        if fault == "truncate":  # the connection drops in the middle of the answer
            writer.write(head.encode() + body[: len(body) // 2])
            await writer.drain()
            raise ConnectionResetError("truncated on purpose")
        writer.write(head.encode() + body)
        await writer.drain()

    async def _request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str, headers: dict[str, str]
    ) -> bool:
        """Answer one request; False when the connection is to close."""
        self.requests += 1
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        as_json = "json" in headers.get("accept", "") or query.get("format") == "json"
        kind = "application/json" if as_json else "text/xml"
        path = [unquote(p) for p in url.path.split("/") if p]
        if len(path) == 2 and path[0] in (self.device, self.uuid):
            path = path[1:]
        try:
            if len(path) != 1:
                raise _HttpError(404, "INVALID_URI", f"{url.path} is not a request of this agent")
            request = path[0]
            if request == "probe":
                await self._send(writer, 200, kind, self._probe(as_json))
            elif request == "current":
                at = self._number(query, "at")
                await self._send(writer, 200, kind, self._current(as_json, at))
            elif request == "sample":
                start = self._number(query, "from")
                count = self._number(query, "count") or 100
                if "interval" in query:
                    await self._stream(reader, writer, as_json, start, count, query)
                    return False
                await self._send(writer, 200, kind, self._sample(as_json, start, count)[0])
            else:
                raise _HttpError(404, "UNSUPPORTED", f"{request!r} is not supported")
        except _HttpError as exc:
            await self._send(writer, exc.status, kind, self._error(as_json, exc.code, exc.text))
        return True

    @staticmethod
    def _number(query: Mapping[str, str], name: str) -> int | None:
        if name not in query:
            return None
        try:
            return int(query[name])
        except ValueError:
            raise _HttpError(400, "INVALID_REQUEST", f"'{name}' must be a whole number") from None

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        as_json: bool,
        start: int | None,
        count: int,
        query: Mapping[str, str],
    ) -> None:
        interval = max(int(query.get("interval", "0") or 0), 0) / 1000
        heartbeat = max(int(query.get("heartbeat", "10000") or 10000), 10) / 1000
        kind = "application/json" if as_json else "text/xml"
        boundary = f"mtc{self._instance:x}"
        nxt = self._next if start is None else start
        if not self._first <= nxt <= self._next:
            await self._send(writer, 400, kind, self._error(as_json, "OUT_OF_RANGE", self._range_text(nxt)))
            return
        writer.write(
            (
                "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary="
                f"{boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        while not reader.at_eof():  # until the client hangs up
            if nxt < self._first:  # we fell behind: the C++ agent ends the stream with an error
                body = self._error(as_json, "OUT_OF_RANGE", self._range_text(nxt))
            elif nxt < self._next or loop.time() - last_sent >= heartbeat:
                body, nxt = self._sample(as_json, nxt, count)
            else:
                self._new_data.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._new_data.wait(), max(0.0, heartbeat - (loop.time() - last_sent))
                    )
                continue
            fault = self.faults.pop(0) if self.faults else None
            if fault in ("garbage", "json_garbage"):
                body = body[: len(body) // 2]
            part = f"--{boundary}\r\nContent-type: {kind}\r\nContent-length: {len(body)}\r\n\r\n".encode()
            part += body + b"\r\n"
            if fault == "truncate":
                part = part[: len(part) // 2]
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
            if fault == "truncate":
                raise ConnectionResetError("truncated on purpose")
            if body.lstrip().startswith((b"<MTConnectError", b'{"MTConnectError')):
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return
            last_sent = loop.time()
            if interval:
                await asyncio.sleep(interval)

    def _range_text(self, start: int) -> str:
        return f"'from' must be greater than or equal to {self._first} and at most {self._next}, not {start}"

    # -- documents ----------------------------------------------------------------------------------
    def _header(self, streams: bool, next_seq: int | None = None) -> dict[str, Any]:
        h: dict[str, Any] = {
            "creationTime": _iso(self.now_ms()),
            "sender": "uns-sim",
            "instanceId": self._instance,
            "version": "2.2.0.0",
            "bufferSize": self.buffer_size,
        }
        if streams:
            h |= {
                "firstSequence": self._first,
                "lastSequence": self._next - 1,
                "nextSequence": self._next if next_seq is None else next_seq,
            }
        else:
            h |= {"assetBufferSize": 0, "assetCount": 0}
        return h

    def _state_at(self, at: int | None) -> list[Obs]:
        if at is None:
            return sorted(self._latest.values(), key=lambda o: o.seq)
        if not self._first <= at < self._next:
            raise _HttpError(
                400, "OUT_OF_RANGE", f"'at' must be from {self._first} to {self._next - 1}, not {at}"
            )
        state = dict(self._base)
        for seq in range(self._first, at + 1):
            obs = self._ring[seq % self.buffer_size]
            assert obs is not None
            state[obs.item] = obs
        return sorted(state.values(), key=lambda o: o.seq)

    def _current(self, as_json: bool, at: int | None) -> bytes:
        observations = self._state_at(at)
        return self._streams(as_json, observations, None if at is None else at + 1)

    def _sample(self, as_json: bool, start: int | None, count: int) -> tuple[bytes, int]:
        start = self._first if start is None else start
        if not self._first <= start <= self._next or count < 1:
            raise _HttpError(400, "OUT_OF_RANGE", self._range_text(start))
        end = min(start + count, self._next)
        observations = [self._ring[s % self.buffer_size] for s in range(start, end)]
        return self._streams(as_json, [o for o in observations if o is not None], end), end

    def _error(self, as_json: bool, code: str, text: str) -> bytes:
        header = self._header(False)
        if as_json:
            errors: Any = (
                {"Error": [{"errorCode": code, "value": text}]}
                if self.json_version == 2
                else [{"Error": {"errorCode": code, "value": text}}]
            )
            return json.dumps({"MTConnectError": {"Header": header, "Errors": errors}}).encode()
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<MTConnectError xmlns="urn:mtconnect.org:MTConnectError:2.2">'
            f"<Header {_attrs(header)}/><Errors><Error errorCode={quoteattr(code)}>{escape(text)}</Error>"
            "</Errors></MTConnectError>"
        ).encode()

    def _probe(self, as_json: bool) -> bytes:
        header = self._header(False)
        if as_json:
            device = {
                "id": "dev",
                "name": self.device,
                "uuid": self.uuid,
                **_json_parts(_DEVICE_ITEMS, _MODEL, self.json_version),
            }
            devices: Any = {"Device": [device]} if self.json_version == 2 else [{"Device": device}]
            doc: dict[str, Any] = {"Header": header, "Devices": devices}
            if self.json_version == 2:
                doc["jsonVersion"] = 2
            return json.dumps({"MTConnectDevices": doc}).encode()
        body = "".join(_xml_component(c) for c in _MODEL)
        items = "".join(_xml_item(i) for i in _DEVICE_ITEMS)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<MTConnectDevices xmlns="urn:mtconnect.org:MTConnectDevices:2.2">'
            f"<Header {_attrs(header)}/><Devices>"
            f'<Device id="dev" name={quoteattr(self.device)} uuid={quoteattr(self.uuid)}>'
            f"<DataItems>{items}</DataItems><Components>{body}</Components></Device>"
            "</Devices></MTConnectDevices>"
        ).encode()

    def _streams(self, as_json: bool, observations: list[Obs], next_seq: int | None) -> bytes:
        header = self._header(True, next_seq)
        by_component: dict[str, list[Obs]] = {}
        for obs in observations:
            by_component.setdefault(_OWNER[obs.item].id, []).append(obs)
        owners = {c.id: c for c in [_DEVICE, *(c for c, _ in _walk(_MODEL))]}
        if as_json:
            return self._json_streams(header, by_component, owners)
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<MTConnectStreams xmlns="urn:mtconnect.org:MTConnectStreams:2.2">'
            f"<Header {_attrs(header)}/><Streams>"
            f"<DeviceStream name={quoteattr(self.device)} uuid={quoteattr(self.uuid)}>"
        ]
        for cid, items in by_component.items():
            c = owners[cid]
            out.append(
                f'<ComponentStream component="{c.kind}" name={quoteattr(c.name or self.device)}'
                f' componentId="{cid}">'
            )
            for group, category in (("Samples", "SAMPLE"), ("Events", "EVENT"), ("Condition", "CONDITION")):
                mine = [o for o in items if _ITEMS[o.item].category == category]
                if mine:
                    out.append(f"<{group}>" + "".join(_xml_obs(o) for o in mine) + f"</{group}>")
            out.append("</ComponentStream>")
        out.append("</DeviceStream></Streams></MTConnectStreams>")
        return "".join(out).encode()

    def _json_streams(
        self, header: dict[str, Any], by_component: dict[str, list[Obs]], owners: dict[str, _Component]
    ) -> bytes:
        v2 = self.json_version == 2
        components = []
        for cid, items in by_component.items():
            c = owners[cid]
            stream: dict[str, Any] = {"component": c.kind, "name": c.name or self.device, "componentId": cid}
            for group, category in (("Samples", "SAMPLE"), ("Events", "EVENT"), ("Condition", "CONDITION")):
                mine = [o for o in items if _ITEMS[o.item].category == category]
                if not mine:
                    continue
                if v2:
                    grouped: dict[str, list[dict[str, Any]]] = {}
                    for o in mine:
                        tag, obj = _json_obs(o)
                        grouped.setdefault(tag, []).append(obj)
                    stream[group] = grouped
                else:
                    stream[group] = [dict([_json_obs(o)]) for o in mine]
            components.append(stream)
        device: dict[str, Any] = {"name": self.device, "uuid": self.uuid}
        if v2:
            device["ComponentStream"] = components
            streams: Any = {"DeviceStream": [device]} if components else {}
        else:
            device["ComponentStreams"] = [{"ComponentStream": c} for c in components]
            streams = [{"DeviceStream": device}] if components else []
        doc: dict[str, Any] = {"Header": header, "Streams": streams}
        if v2:
            doc["jsonVersion"] = 2
        return json.dumps({"MTConnectStreams": doc}).encode()


def _pascal(kind: str) -> str:
    return "".join(w.capitalize() for w in kind.split("_"))


def _attrs(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={quoteattr(str(v))}" for k, v in values.items())


def _item_attrs(i: _Item) -> dict[str, str]:
    attrs = {"id": i.id, "type": i.type, "category": i.category}
    if i.sub_type:
        attrs["subType"] = i.sub_type
    if i.units:
        attrs["units"] = i.units
    return attrs


def _xml_item(i: _Item) -> str:
    return f"<DataItem {_attrs(_item_attrs(i))}/>"


def _xml_component(c: _Component) -> str:
    items = f"<DataItems>{''.join(_xml_item(i) for i in c.items)}</DataItems>" if c.items else ""
    children = (
        f"<Components>{''.join(_xml_component(x) for x in c.children)}</Components>" if c.children else ""
    )
    return f'<{c.kind} id="{c.id}" name={quoteattr(c.name)}>{items}{children}</{c.kind}>'


def _json_parts(items: Iterable[_Item], children: Iterable[_Component], version: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    item_list = [_item_attrs(i) for i in items]
    if item_list:
        out["DataItems"] = {"DataItem": item_list} if version == 2 else [{"DataItem": i} for i in item_list]
    kids = list(children)
    if kids:
        if version == 2:
            grouped: dict[str, list[dict[str, Any]]] = {}
            for c in kids:
                grouped.setdefault(c.kind, []).append(
                    {"id": c.id, "name": c.name, **_json_parts(c.items, c.children, version)}
                )
            out["Components"] = grouped
        else:
            out["Components"] = [
                {c.kind: {"id": c.id, "name": c.name, **_json_parts(c.items, c.children, version)}}
                for c in kids
            ]
    return out


def _xml_obs(o: Obs) -> str:
    item = _ITEMS[o.item]
    common = f'dataItemId="{o.item}" timestamp="{_iso(o.t_ms)}" sequence="{o.seq}"'
    if item.sub_type:
        common += f' subType="{item.sub_type}"'
    if item.category == "CONDITION":
        if o.value is None:
            return f'<Unavailable {common} type="{item.type}"/>'
        assert isinstance(o.value, tuple)
        level, code, text = o.value
        tag = level.capitalize()
        native = f" nativeCode={quoteattr(code)}" if code else ""
        return (
            f'<{tag} {common} type="{item.type}"{native}>{escape(text)}</{tag}>'
            if text
            else f'<{tag} {common} type="{item.type}"{native}/>'
        )
    tag = _pascal(item.type)
    value = "UNAVAILABLE" if o.value is None else str(o.value)
    return f"<{tag} {common}>{escape(value)}</{tag}>"


def _json_obs(o: Obs) -> tuple[str, dict[str, Any]]:
    item = _ITEMS[o.item]
    obj: dict[str, Any] = {"dataItemId": o.item, "timestamp": _iso(o.t_ms), "sequence": o.seq}
    if item.sub_type:
        obj["subType"] = item.sub_type
    if item.category == "CONDITION":
        obj["type"] = item.type
        if o.value is None:
            return "Unavailable", obj
        assert isinstance(o.value, tuple)
        level, code, text = o.value
        if code:
            obj["nativeCode"] = code
        if text:
            obj["value"] = text
        return level.capitalize(), obj
    obj["value"] = "UNAVAILABLE" if o.value is None else o.value
    return _pascal(item.type), obj
