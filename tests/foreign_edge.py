"""A Sparkplug B edge node of the tests' own, not the project's (uns/sparkplug/edge.py).

It builds its payloads with the generated protobuf module directly, as an edge node of another
make would: like Eclipse Tahu's JavaScript client, its NDEATH and its NBIRTH carry `bdSeq` as a
UInt64 with no metric timestamp, and `Node Control/Rebirth` has none either (`stamped=True` gives
them one, for a node that is strict about it). Its device metrics carry names and aliases in a
DBIRTH, aliases only in a DDATA, each with the source's timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping

from uns.sparkplug import sparkplug_b_pb2 as pb

Message = tuple[str, bytes]
Value = bool | int | float | str

INT32, INT64, UINT32, UINT64, DOUBLE, BOOLEAN, STRING = 3, 4, 7, 8, 10, 11, 12

# The CNC signals of docs/topics.md, with their Sparkplug datatypes.
CNC = {
    "execution": STRING,
    "mode": STRING,
    "program": STRING,
    "part_count": UINT32,
    "alarm_code": INT32,
    "estop": BOOLEAN,
}


def _value(m: pb.SpbMetric, datatype: int, value: Value) -> None:
    if datatype == STRING:
        assert isinstance(value, str)
        m.string_value = value
    elif datatype == BOOLEAN:
        assert isinstance(value, bool)
        m.boolean_value = value
    elif datatype in (INT64, UINT64):
        assert isinstance(value, int)
        m.long_value = value
    elif datatype == DOUBLE:
        assert isinstance(value, int | float)
        m.double_value = float(value)
    else:
        assert isinstance(value, int)
        assert not isinstance(value, bool)
        m.int_value = value


class ForeignNode:
    """One edge node: its bdSeq, seq and aliases, and the current value of each device metric."""

    def __init__(
        self,
        group_id: str,
        edge_node_id: str,
        devices: Mapping[str, Mapping[str, Value]],
        *,
        bdseq: int = 0,
        stamped: bool = False,
        first_alias: int = 1,
        types: dict[str, int] | None = None,
    ) -> None:
        """`types`: the datatype of each metric not named as in `CNC` (a foreign edge's own names)."""
        self.group_id, self.edge_node_id = group_id, edge_node_id
        self.types = {**CNC, **(types or {})}
        self.bdseq = bdseq
        self.stamped = stamped
        self.seq = 0
        self.values = {d: dict(v) for d, v in devices.items()}
        self.aliases: dict[tuple[str, str], int] = {}
        alias = first_alias
        for device, metrics in devices.items():
            for name in metrics:
                self.aliases[(device, name)] = alias
                alias += 1

    def _topic(self, kind: str, device: str | None = None) -> str:
        base = f"spBv1.0/{self.group_id}/{kind}/{self.edge_node_id}"
        return base if device is None else f"{base}/{device}"

    def _next_seq(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def _session_metric(self, msg: pb.SpbPayload, name: str, datatype: int, value: Value, ts: int) -> None:
        m = msg.metrics.add()
        m.name, m.datatype = name, datatype
        if self.stamped:
            m.timestamp = ts
        _value(m, datatype, value)

    def will(self, ts: int) -> Message:
        """The NDEATH of this connection (what the broker sends when the connection is lost)."""
        msg = pb.SpbPayload(timestamp=ts)
        self._session_metric(msg, "bdSeq", UINT64, self.bdseq, ts)
        return self._topic("NDEATH"), msg.SerializeToString()

    def reconnect(self) -> Message:
        """A new MQTT connection: bdSeq goes up by one; returns the Will to connect with."""
        self.bdseq = (self.bdseq + 1) % 256
        return self.will(0)

    def births(self, ts: int) -> list[Message]:
        self.seq = 0
        nbirth = pb.SpbPayload(timestamp=ts, seq=self._next_seq())
        self._session_metric(nbirth, "bdSeq", UINT64, self.bdseq, ts)
        self._session_metric(nbirth, "Node Control/Rebirth", BOOLEAN, False, ts)
        out = [(self._topic("NBIRTH"), nbirth.SerializeToString())]
        for device, values in self.values.items():
            dbirth = pb.SpbPayload(timestamp=ts, seq=self._next_seq())
            for name, value in values.items():
                m = dbirth.metrics.add()
                datatype = self.types[name]
                m.name, m.alias, m.timestamp, m.datatype = name, self.aliases[(device, name)], ts, datatype
                _value(m, datatype, value)
            out.append((self._topic("DBIRTH", device), dbirth.SerializeToString()))
        return out

    def data(self, device: str, ts: int, **values: Value) -> Message:
        message = self.draft(device, ts, **values)
        self.seq = (self.seq + 1) % 256
        self.values[device].update(values)
        return message

    def draft(self, device: str, ts: int, **values: Value) -> Message:
        """The DDATA that `data` would send now, without sending it (seq and values stay)."""
        msg = pb.SpbPayload(timestamp=ts, seq=self.seq)
        for name, value in values.items():
            m = msg.metrics.add()
            m.alias, m.timestamp = self.aliases[(device, name)], ts
            _value(m, self.types[name], value)
        return self._topic("DDATA", device), msg.SerializeToString()

    def parts(self, device: str, ts: int, n: int = 1) -> Message:
        """`n` parts made: the counter goes up."""
        counter = self.values[device]["part_count"]
        assert isinstance(counter, int)
        return self.data(device, ts, part_count=counter + n)
