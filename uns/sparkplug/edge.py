"""The edge-node side of a Sparkplug B 3.0 session, without sockets.

`EdgeSession` owns bdSeq, seq, aliases and the last value of every metric, and turns them into
(topic, payload) pairs; `bridge.edge_node` puts those on MQTT. The rules it keeps:

- bdSeq goes up by one per new MQTT connection (0-255, wraps); the Will (NDEATH) and the NBIRTH
  of that connection carry the same value; a rebirth keeps it.
- seq is one counter per edge node: 0 in NBIRTH, +1 on every DBIRTH, NDATA, DDATA and DDEATH,
  wrapping after 255. NDEATH carries none.
- NBIRTH holds every node metric plus `bdSeq` and `Node Control/Rebirth` (never aliased); births
  carry names and aliases, data carries aliases only. Every metric has a millisecond timestamp.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from uns.sparkplug.payload import DataType, Metric, MetricValue, Payload, PayloadError, decode, encode
from uns.sparkplug.topic import MessageType, SparkplugTopic, check_id, parse

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    datatype: DataType


@dataclass(slots=True)
class _Slot:
    alias: int
    datatype: DataType
    value: MetricValue = None
    timestamp: int = 0
    quality: int | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """A new value of one metric, observed by the source at `timestamp` (UTC ms)."""

    name: str
    value: MetricValue
    timestamp: int
    quality: int | None = None


Message = tuple[str, bytes]


class EdgeSession:
    """Sequence numbers, aliases and births of one edge node."""

    def __init__(
        self,
        group_id: str,
        edge_node_id: str,
        devices: Mapping[str, Iterable[MetricDef]],
        node_metrics: Iterable[MetricDef] = (),
        *,
        last_bdseq: int = 255,
    ) -> None:
        self.group_id = check_id("group id", group_id)
        self.edge_node_id = check_id("edge node id", edge_node_id)
        self._bdseq = last_bdseq % 256
        self._seq = 0
        self._next_alias = 1
        self._node: dict[str, _Slot] = {}
        for d in node_metrics:
            if d.name in (BDSEQ, REBIRTH):
                raise ValueError(f"node metric {d.name!r} is reserved by Sparkplug")
            self._node[d.name] = self._slot(d)
        self._devices: dict[str, dict[str, _Slot]] = {}
        for device_id, defs in devices.items():
            check_id("device id", device_id)
            self._devices[device_id] = {d.name: self._slot(d) for d in defs}
        self._online: set[str] = set()

    def _slot(self, d: MetricDef) -> _Slot:
        slot = _Slot(self._next_alias, d.datatype)
        self._next_alias += 1
        return slot

    @property
    def bdseq(self) -> int:
        return self._bdseq

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self._devices)

    def is_online(self, device_id: str) -> bool:
        return device_id in self._online

    def _topic(self, message_type: MessageType, device_id: str | None = None) -> str:
        return str(SparkplugTopic(self.group_id, message_type, self.edge_node_id, device_id))

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    # -- connection ------------------------------------------------------------------------
    def new_connection(self, now_ms: int) -> Message:
        """Start a new MQTT connection: bdSeq goes up by one; returns the Will (NDEATH) to set."""
        self._bdseq = (self._bdseq + 1) % 256
        return self.death(now_ms)

    def death(self, now_ms: int) -> Message:
        """The NDEATH of the current connection: bdSeq only, no seq."""
        metric = Metric(BDSEQ, None, now_ms, DataType.INT64, self._bdseq)
        return self._topic(MessageType.NDEATH), encode(Payload(now_ms, (metric,)))

    def births(self, now_ms: int) -> list[Message]:
        """NBIRTH (seq 0, same bdSeq as the Will) and a DBIRTH for every online device."""
        self._seq = 0
        metrics = [
            Metric(BDSEQ, None, now_ms, DataType.INT64, self._bdseq),
            Metric(REBIRTH, None, now_ms, DataType.BOOLEAN, False),
        ]
        metrics += self._birth_metrics(self._node, now_ms)
        out = [(self._topic(MessageType.NBIRTH), encode(Payload(now_ms, tuple(metrics), self._next_seq())))]
        out += [self._device_birth(d, now_ms) for d in self._devices if d in self._online]
        return out

    @staticmethod
    def _birth_metrics(slots: Mapping[str, _Slot], now_ms: int) -> list[Metric]:
        return [
            Metric(name, s.alias, s.timestamp or now_ms, s.datatype, s.value, quality=s.quality)
            for name, s in slots.items()
        ]

    def _device_birth(self, device_id: str, now_ms: int) -> Message:
        metrics = tuple(self._birth_metrics(self._devices[device_id], now_ms))
        return self._topic(MessageType.DBIRTH, device_id), encode(Payload(now_ms, metrics, self._next_seq()))

    # -- devices ---------------------------------------------------------------------------
    def _device(self, device_id: str) -> dict[str, _Slot]:
        try:
            return self._devices[device_id]
        except KeyError:
            raise KeyError(f"edge node {self.edge_node_id!r} has no device {device_id!r}") from None

    def record(self, device_id: str | None, samples: Iterable[Sample]) -> list[_Slot]:
        """Keep the latest values (they go into the next birth); returns the slots touched."""
        slots = self._node if device_id is None else self._device(device_id)
        touched = []
        for s in samples:
            try:
                slot = slots[s.name]
            except KeyError:
                where = "the node" if device_id is None else f"device {device_id!r}"
                raise KeyError(
                    f"{where} of edge node {self.edge_node_id!r} has no metric {s.name!r}"
                ) from None
            if s.timestamp >= slot.timestamp:
                slot.value, slot.timestamp, slot.quality = s.value, s.timestamp, s.quality
            touched.append(slot)
        return touched

    def device_online(self, device_id: str, now_ms: int, samples: Iterable[Sample] = ()) -> Message:
        """A device came (back) online: its DBIRTH with the current values."""
        self.record(device_id, samples)
        self._online.add(device_id)
        return self._device_birth(device_id, now_ms)

    def device_offline(self, device_id: str, now_ms: int) -> Message | None:
        """A device was lost: its DDEATH (with a seq), or None if it was not online."""
        self._device(device_id)
        if device_id not in self._online:
            return None
        self._online.discard(device_id)
        for slot in self._devices[device_id].values():
            slot.quality = None
        return self._topic(MessageType.DDEATH, device_id), encode(Payload(now_ms, (), self._next_seq()))

    def data(self, device_id: str | None, samples: Iterable[Sample], now_ms: int) -> Message | None:
        """NDATA (device None) or DDATA for new values: aliases only, no datatypes.

        Returns None for a device that is not online (its values still go into its next DBIRTH).
        """
        samples = list(samples)
        self.record(device_id, samples)
        if device_id is not None and device_id not in self._online:
            return None
        slots = self._node if device_id is None else self._devices[device_id]
        metrics = tuple(
            Metric(None, slots[s.name].alias, s.timestamp, slots[s.name].datatype, s.value, quality=s.quality)
            for s in samples
        )
        kind = MessageType.NDATA if device_id is None else MessageType.DDATA
        payload = Payload(now_ms, metrics, self._next_seq())
        return self._topic(kind, device_id), encode(payload, with_datatypes=False)

    def snapshot(self, device_id: str) -> list[Sample]:
        """Every metric of a device as it stands, each with the time it last changed."""
        return [Sample(name, s.value, s.timestamp, s.quality) for name, s in self._device(device_id).items()]

    def historical(self, device_id: str, samples: Iterable[Sample], payload_ms: int) -> Message:
        """A DDATA of buffered values, sent after the births: metrics flagged is_historical, with their
        original timestamps; `payload_ms` is when the bridge buffered them."""
        slots = self._device(device_id)
        metrics = tuple(
            Metric(
                None,
                slots[s.name].alias,
                s.timestamp,
                slots[s.name].datatype,
                s.value,
                True,
                quality=s.quality,
            )
            for s in samples
        )
        payload = Payload(payload_ms, metrics, self._next_seq())
        return self._topic(MessageType.DDATA, device_id), encode(payload, with_datatypes=False)

    # -- commands --------------------------------------------------------------------------
    def is_rebirth_request(self, topic: str, payload: bytes) -> bool:
        """True for an NCMD to this node with `Node Control/Rebirth` = true.

        Raises ValueError (TopicError or PayloadError) for a command that cannot be read.
        """
        t = parse(topic)
        if t.message_type is not MessageType.NCMD or t.node_key != (self.group_id, self.edge_node_id):
            return False
        try:
            return any(m.name == REBIRTH and m.value is True for m in decode(payload).metrics)
        except PayloadError as exc:
            raise PayloadError(f"NCMD on {topic}: {exc}") from exc
