"""The host-application side of a Sparkplug B 3.0 session, without sockets.

`HostSession.handle(topic, payload, now)` decodes one message, checks it against the edge node's
session (bdSeq, seq, aliases) and returns what happened as events. It never raises for bad input:
a malformed payload, an unknown alias, a seq gap or a topic that is not Sparkplug is counted,
logged and, where the specification says so, answered with a (throttled) rebirth request.
`uns.sparkplug.host_app` puts this on MQTT.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from uns.sparkplug.edge import BDSEQ, REBIRTH
from uns.sparkplug.payload import DataType, Metric, Payload, PayloadError, decode, encode, typed_value
from uns.sparkplug.topic import MessageType, SparkplugTopic, TopicError, parse, parse_state

logger = logging.getLogger(__name__)

NodeKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class MetricsUpdate:
    """Named, typed metrics of a node (device None) or a device, from a birth or a data message."""

    group_id: str
    edge_node_id: str
    device_id: str | None
    metrics: tuple[Metric, ...]
    is_birth: bool
    timestamp: int = 0  # the payload's: when the edge node sent (or, for historical data, buffered) it


@dataclass(frozen=True, slots=True)
class Death:
    """A node (device None) or a device is gone: its metrics (all of a node's devices') are stale.

    `timestamp` is the message's; `devices` lists the devices that were online under a dying node.
    """

    group_id: str
    edge_node_id: str
    device_id: str | None
    timestamp: int
    devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RebirthRequest:
    group_id: str
    edge_node_id: str
    reason: str

    def command(self, now_ms: int) -> tuple[str, bytes]:
        """The NCMD that asks the node for a rebirth."""
        topic = SparkplugTopic(self.group_id, MessageType.NCMD, self.edge_node_id)
        payload = Payload(now_ms, (Metric(REBIRTH, None, now_ms, DataType.BOOLEAN, True),))
        return str(topic), encode(payload)


Event = MetricsUpdate | Death | RebirthRequest


@dataclass(slots=True)
class _Node:
    bdseq: int
    expected_seq: int
    # alias -> (device id or None, name, datatype); aliases are unique per edge node
    aliases: dict[int, tuple[str | None, str, DataType]] = field(default_factory=dict)
    # (device id or None, name) -> datatype, for data that uses names instead of aliases
    types: dict[tuple[str | None, str], DataType] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)
    last_rebirth_request: float | None = None


def state_payload(online: bool, timestamp: int) -> bytes:
    """The Sparkplug 3.0 STATE payload of a host application."""
    return json.dumps({"online": online, "timestamp": timestamp}, separators=(",", ":")).encode()


class HostSession:
    """Tracks every edge node's session and turns its messages into events."""

    def __init__(self, *, rebirth_interval_s: float = 5.0) -> None:
        self.rebirth_interval_s = rebirth_interval_s
        self.counters: Counter[str] = Counter()
        self._nodes: dict[NodeKey, _Node] = {}
        self._asked: dict[NodeKey, float] = {}

    # -- queries ---------------------------------------------------------------------------
    def is_online(self, group_id: str, edge_node_id: str, device_id: str | None = None) -> bool:
        node = self._nodes.get((group_id, edge_node_id))
        if node is None:
            return False
        return device_id is None or device_id in node.devices

    @property
    def nodes(self) -> tuple[NodeKey, ...]:
        return tuple(self._nodes)

    # -- input -----------------------------------------------------------------------------
    def handle(self, topic: str, data: bytes, now: float) -> list[Event]:
        """Process one message. `now` is a monotonic wall-clock second, used only to throttle rebirths."""
        self.counters["messages"] += 1
        if parse_state(topic) is not None:
            self.counters["state"] += 1
            return []
        try:
            t = parse(topic)
        except TopicError as exc:
            self.counters["not_sparkplug"] += 1
            logger.warning("ignored a message on %s: %s", topic, exc)
            return []
        if t.message_type in (MessageType.NCMD, MessageType.DCMD):
            self.counters["commands_seen"] += 1
            return []
        try:
            payload = decode(data)
        except PayloadError as exc:
            self.counters["malformed"] += 1
            logger.warning("malformed payload on %s: %s", topic, exc)
            return []
        try:
            return self._dispatch(t, payload, now)
        except PayloadError as exc:
            self.counters["malformed"] += 1
            logger.warning("rejected %s: %s", topic, exc)
            return self._ask_rebirth(t.node_key, f"rejected {t.message_type}: {exc}", now)

    def _dispatch(self, t: SparkplugTopic, payload: Payload, now: float) -> list[Event]:
        mt = t.message_type
        if mt is MessageType.NBIRTH:
            return self._node_birth(t, payload)
        if mt is MessageType.NDEATH:
            return self._node_death(t, payload)
        node = self._nodes.get(t.node_key)
        if node is None:
            self.counters["before_birth"] += 1
            logger.info("%s from %s/%s before its NBIRTH", mt, t.group_id, t.edge_node_id)
            return self._ask_rebirth(t.node_key, f"{mt} before NBIRTH", now)
        events = self._check_seq(t, node, payload, now)
        if mt is MessageType.DBIRTH:
            assert t.device_id is not None
            return events + self._device_birth(t, node, payload)
        if mt is MessageType.DDEATH:
            assert t.device_id is not None
            node.devices.discard(t.device_id)
            return [*events, Death(t.group_id, t.edge_node_id, t.device_id, payload.timestamp)]
        if t.device_id is not None and t.device_id not in node.devices:
            self.counters["before_birth"] += 1
            return events + self._ask_rebirth(t.node_key, f"DDATA for {t.device_id!r} before its DBIRTH", now)
        return events + self._data(t, node, payload, now)

    def _check_seq(self, t: SparkplugTopic, node: _Node, payload: Payload, now: float) -> list[Event]:
        seq = payload.seq
        if seq is None or not 0 <= seq <= 255:
            raise PayloadError(f"{t.message_type} needs a seq from 0 to 255, got {seq}")
        expected = node.expected_seq
        node.expected_seq = (seq + 1) % 256
        if seq == expected:
            return []
        self.counters["seq_gaps"] += 1
        logger.warning(
            "seq gap from %s/%s: expected %d, got %d (%s)",
            t.group_id,
            t.edge_node_id,
            expected,
            seq,
            t.message_type,
        )
        return self._ask_rebirth(t.node_key, f"seq gap: expected {expected}, got {seq}", now)

    def _ask_rebirth(self, key: NodeKey, reason: str, now: float) -> list[Event]:
        last = self._asked.get(key)
        if last is not None and now - last < self.rebirth_interval_s:
            self.counters["rebirths_throttled"] += 1
            return []
        self._asked[key] = now
        self.counters["rebirths_requested"] += 1
        logger.info("requesting a rebirth of %s/%s: %s", key[0], key[1], reason)
        return [RebirthRequest(key[0], key[1], reason)]

    @staticmethod
    def _birth_metrics(where: str, payload: Payload) -> list[Metric]:
        for m in payload.metrics:
            if m.name is None:
                raise PayloadError(f"{where}: a birth metric has no name (alias {m.alias})")
            if m.datatype is None:
                raise PayloadError(f"{where}: birth metric {m.name!r} has no datatype")
        return list(payload.metrics)

    def _node_birth(self, t: SparkplugTopic, payload: Payload) -> list[Event]:
        where = f"NBIRTH of {t.group_id}/{t.edge_node_id}"
        metrics = self._birth_metrics(where, payload)
        bdseq = next((m.value for m in metrics if m.name == BDSEQ), None)
        if not isinstance(bdseq, int) or isinstance(bdseq, bool):
            raise PayloadError(f"{where}: no bdSeq metric")
        if payload.seq != 0:
            raise PayloadError(f"{where}: seq must be 0, got {payload.seq}")
        old = self._nodes.get(t.node_key)
        node = _Node(bdseq=bdseq, expected_seq=1)
        self._register(node, None, metrics)
        self._nodes[t.node_key] = node
        self._asked.pop(t.node_key, None)
        self.counters["births"] += 1
        events: list[Event] = []
        if old is not None and old.devices:
            # A rebirth without a death: the old devices are gone until their DBIRTH comes again.
            events.append(
                Death(t.group_id, t.edge_node_id, None, payload.timestamp, tuple(sorted(old.devices)))
            )
        node_metrics = tuple(m for m in metrics if m.name not in (BDSEQ, REBIRTH))
        events.append(MetricsUpdate(t.group_id, t.edge_node_id, None, node_metrics, True, payload.timestamp))
        return events

    def _device_birth(self, t: SparkplugTopic, node: _Node, payload: Payload) -> list[Event]:
        device = t.device_id
        assert device is not None
        metrics = self._birth_metrics(f"DBIRTH of {t.group_id}/{t.edge_node_id}/{device}", payload)
        self._register(node, device, metrics)
        node.devices.add(device)
        self.counters["births"] += 1
        return [MetricsUpdate(t.group_id, t.edge_node_id, device, tuple(metrics), True, payload.timestamp)]

    @staticmethod
    def _register(node: _Node, device: str | None, metrics: list[Metric]) -> None:
        for m in metrics:
            assert m.name is not None
            assert m.datatype is not None
            node.types[(device, m.name)] = m.datatype
            if m.alias is not None:
                node.aliases[m.alias] = (device, m.name, m.datatype)

    def _node_death(self, t: SparkplugTopic, payload: Payload) -> list[Event]:
        bdseq = next((m.value for m in payload.metrics if m.name == BDSEQ), None)
        node = self._nodes.get(t.node_key)
        if node is None or bdseq != node.bdseq:
            # The Will of an older connection, delivered after the node connected again.
            self.counters["stale_deaths"] += 1
            logger.info("ignored NDEATH of %s/%s with bdSeq %s", t.group_id, t.edge_node_id, bdseq)
            return []
        del self._nodes[t.node_key]
        self.counters["deaths"] += 1
        return [Death(t.group_id, t.edge_node_id, None, payload.timestamp, tuple(sorted(node.devices)))]

    def _data(self, t: SparkplugTopic, node: _Node, payload: Payload, now: float) -> list[Event]:
        device = t.device_id
        resolved: list[Metric] = []
        unknown: list[str] = []
        bad: list[str] = []
        for m in payload.metrics:
            if m.name is None:
                entry = node.aliases.get(m.alias) if m.alias is not None else None
                if entry is None or entry[0] != device:
                    unknown.append(f"alias {m.alias}")
                    continue
                _, name, datatype = entry
            else:
                name = m.name
                known = node.types.get((device, name))
                if known is None:
                    unknown.append(f"metric {name!r}")
                    continue
                datatype = known
            value = m.value
            if value is not None and m.datatype is not datatype:
                try:
                    if m.datatype is not None:
                        raise PayloadError(
                            f"{name!r} is {m.datatype.name} here but {datatype.name} in the birth"
                        )
                    value = typed_value(name, datatype, value)
                except PayloadError as exc:
                    bad.append(str(exc))
                    continue
            resolved.append(
                Metric(
                    name, m.alias, m.timestamp, datatype, value, m.is_historical, m.is_transient, m.quality
                )
            )
        if bad:
            self.counters["malformed_metrics"] += len(bad)
            logger.warning("%s on %s/%s: dropped %s", payload.seq, t.group_id, t.edge_node_id, "; ".join(bad))
        self.counters["metrics"] += len(resolved)
        events: list[Event] = []
        if unknown:
            self.counters["unknown_metrics"] += len(unknown)
            where = f"{t.group_id}/{t.edge_node_id}" + (f"/{device}" if device else "")
            logger.warning("%s: %s not in the birth", where, ", ".join(unknown))
            events += self._ask_rebirth(t.node_key, f"unknown {unknown[0]}", now)
        if resolved:
            events.append(
                MetricsUpdate(t.group_id, t.edge_node_id, device, tuple(resolved), False, payload.timestamp)
            )
        return events

    def disconnected(self) -> list[Death]:
        """The host lost its broker: every node's state is unknown until it is born again."""
        deaths = [Death(g, e, None, 0, tuple(sorted(n.devices))) for (g, e), n in self._nodes.items()]
        self._nodes.clear()
        return deaths
