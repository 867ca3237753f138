"""Sparkplug B payload codec: our own value types in, protobuf bytes out (and back).

This is the only module that imports protobuf. Everything else talks to `Payload` and `Metric`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

from google.protobuf.message import DecodeError

from uns.sparkplug import sparkplug_b_pb2 as pb

MetricValue = bool | int | float | str | bytes | None

QUALITY_PROPERTY = "Quality"


class PayloadError(ValueError):
    """A payload that cannot be encoded or decoded; the message says which metric and why."""


class DataType(enum.IntEnum):
    """Sparkplug B data type codes (specification 3.0, section 6.4.16)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    BYTES = 17


class Quality(enum.IntEnum):
    """Quality codes carried in the `Quality` metric property (the values Ignition and Tahu use)."""

    BAD = 0
    GOOD = 192
    STALE = 500


_SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
_UNSIGNED_BITS = {DataType.UINT8: 8, DataType.UINT16: 16, DataType.UINT32: 32, DataType.UINT64: 64}
_INT_FIELD = {
    DataType.INT8: "int_value",
    DataType.INT16: "int_value",
    DataType.INT32: "int_value",
    DataType.UINT8: "int_value",
    DataType.UINT16: "int_value",
    DataType.UINT32: "int_value",
    DataType.INT64: "long_value",
    DataType.UINT64: "long_value",
    DataType.DATETIME: "long_value",
}
_STRING_TYPES = frozenset({DataType.STRING, DataType.TEXT, DataType.UUID})


class Metric(NamedTuple):
    """One Sparkplug metric: a name and/or an alias, a typed value and a UTC millisecond timestamp.

    A NamedTuple rather than a frozen dataclass: the host makes one per metric it receives, and
    tuples are several times cheaper to build.
    """

    name: str | None
    alias: int | None
    timestamp: int
    datatype: DataType | None
    value: MetricValue
    is_historical: bool = False
    is_transient: bool = False
    quality: int | None = None


@dataclass(frozen=True, slots=True)
class Payload:
    """A Sparkplug payload. `seq` is None only for NDEATH and commands, which carry none."""

    timestamp: int
    metrics: tuple[Metric, ...] = field(default_factory=tuple)
    seq: int | None = None


def _wrap_signed(value: int, bits: int) -> int:
    return value & ((1 << bits) - 1) if value < 0 else value


def _unwrap_signed(raw: int, bits: int) -> int:
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >= 1 << (bits - 1) else raw


def _check_int(metric: Metric, dt: DataType, value: int) -> None:
    if dt in _SIGNED_BITS:
        bits = _SIGNED_BITS[dt]
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    elif dt in _UNSIGNED_BITS:
        low, high = 0, (1 << _UNSIGNED_BITS[dt]) - 1
    else:  # DATETIME: ms since the epoch
        low, high = 0, (1 << 64) - 1
    if not low <= value <= high:
        raise PayloadError(f"metric {metric.name or metric.alias!r}: {value} out of range for {dt.name}")


def _fill_metric(out: pb.SpbMetric, metric: Metric, with_datatype: bool) -> None:
    dt = metric.datatype
    if dt is None:
        raise PayloadError(f"metric {metric.name or metric.alias!r}: no datatype to encode it with")
    if metric.name is not None:
        out.name = metric.name
    if metric.alias is not None:
        out.alias = metric.alias
    out.timestamp = metric.timestamp
    if with_datatype:
        out.datatype = int(dt)
    if metric.is_historical:
        out.is_historical = True
    if metric.is_transient:
        out.is_transient = True
    if metric.quality is not None:
        out.properties.keys.append(QUALITY_PROPERTY)
        prop = out.properties.values.add()
        prop.type = int(DataType.INT32)
        prop.int_value = _wrap_signed(metric.quality, 32)
    value = metric.value
    if value is None:
        out.is_null = True
        return
    if dt in _INT_FIELD:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PayloadError(
                f"metric {metric.name or metric.alias!r}: {dt.name} needs an int, got {value!r}"
            )
        _check_int(metric, dt, value)
        bits = _SIGNED_BITS.get(dt)
        setattr(out, _INT_FIELD[dt], _wrap_signed(value, bits) if bits else value)
    elif dt is DataType.BOOLEAN:
        if not isinstance(value, bool):
            raise PayloadError(f"metric {metric.name or metric.alias!r}: Boolean needs a bool, got {value!r}")
        out.boolean_value = value
    elif dt in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(
                f"metric {metric.name or metric.alias!r}: {dt.name} needs a number, got {value!r}"
            )
        if dt is DataType.FLOAT:
            out.float_value = float(value)
        else:
            out.double_value = float(value)
    elif dt in _STRING_TYPES:
        if not isinstance(value, str):
            raise PayloadError(
                f"metric {metric.name or metric.alias!r}: {dt.name} needs a str, got {value!r}"
            )
        out.string_value = value
    else:  # BYTES
        if not isinstance(value, bytes):
            raise PayloadError(f"metric {metric.name or metric.alias!r}: Bytes needs bytes, got {value!r}")
        out.bytes_value = value


def encode(payload: Payload, *, with_datatypes: bool = True) -> bytes:
    """Serialise a payload. Raises PayloadError naming the metric whose value does not fit its type.

    Births carry every metric's datatype; data messages may leave it out (`with_datatypes=False`),
    the host then types them from the birth.
    """
    msg = pb.SpbPayload()
    msg.timestamp = payload.timestamp
    if payload.seq is not None:
        msg.seq = payload.seq
    for metric in payload.metrics:
        _fill_metric(msg.metrics.add(), metric, with_datatypes)
    return msg.SerializeToString()


def typed_value(where: str, datatype: DataType, value: bool | int | float | str | bytes) -> MetricValue:
    """The value as `datatype` says it is: signed integers unwrapped, float32 noise dropped."""
    if datatype in _INT_FIELD:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PayloadError(f"{where}: datatype {datatype.name} but value {value!r}")
        bits = _SIGNED_BITS.get(datatype)
        return _unwrap_signed(value, bits) if bits else value
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, bool) or not isinstance(value, float):
            raise PayloadError(f"{where}: datatype {datatype.name} but value {value!r}")
        if datatype is DataType.FLOAT and math.isfinite(value):
            return float(f"{value:.7g}")  # float32 on the wire: drop the widening noise
        return value
    expected: type = {DataType.BOOLEAN: bool, DataType.BYTES: bytes}.get(datatype, str)
    if not isinstance(value, expected):
        raise PayloadError(f"{where}: datatype {datatype.name} but value {value!r}")
    return value


_DATATYPES = {int(d): d for d in DataType}
# what each type's value field already holds as it is (no unwrapping, no rounding): taken as read
_AS_READ = {DataType.DOUBLE: float, DataType.STRING: str, DataType.TEXT: str, DataType.BOOLEAN: bool}


def _where(index: int, name: str | None, alias: int | None) -> str:
    return f"metric #{index} ({name if name is not None else alias!r})"


def _metric_from_pb(index: int, m: pb.SpbMetric, untimed: Collection[str] | None, payload_ms: int) -> Metric:
    # `untimed`: the names that may come without a timestamp (they take the payload's); None: any
    # The per-message hot path of the host: the error text is only built when there is an error.
    has = m.HasField
    name = m.name if has("name") else None
    alias = m.alias if has("alias") else None
    if name is None and alias is None:
        raise PayloadError(f"{_where(index, name, alias)}: has neither a name nor an alias")
    if has("timestamp"):
        timestamp = m.timestamp
    elif untimed is not None and (name is None or name not in untimed):
        raise PayloadError(f"{_where(index, name, alias)}: has no timestamp")
    else:
        timestamp = payload_ms
    datatype: DataType | None = None
    code = m.datatype
    if code:
        datatype = _DATATYPES.get(code)
        if datatype is None:
            raise PayloadError(f"{_where(index, name, alias)}: unsupported datatype {code}")
    quality: int | None = None
    if has("properties"):
        for key, prop in zip(m.properties.keys, m.properties.values, strict=False):
            kind = prop.WhichOneof("value")
            if key == QUALITY_PROPERTY and kind in ("int_value", "long_value"):
                quality = _unwrap_signed(getattr(prop, kind), 32)
    value: MetricValue = None
    if not m.is_null:
        which = m.WhichOneof("value")
        if which is None:
            raise PayloadError(f"{_where(index, name, alias)}: carries no value and is not marked null")
        value = getattr(m, which)
        if datatype is not None and type(value) is not _AS_READ.get(datatype):
            value = typed_value(_where(index, name, alias), datatype, value)
    return Metric(name, alias, timestamp, datatype, value, m.is_historical, m.is_transient, quality)


def _parse(data: bytes) -> pb.SpbPayload:
    msg = pb.SpbPayload()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise PayloadError(f"not a Sparkplug B protobuf payload ({len(data)} bytes): {exc}") from exc
    return msg


def decode(data: bytes, *, untimed: Collection[str] = ()) -> Payload:
    """Parse a payload. Raises PayloadError for bytes that are not a valid Sparkplug payload.

    The payload and every metric must carry a timestamp (births and data: the specification asks
    for them), except the metrics named in `untimed`, which then take the payload's: an NBIRTH's
    `bdSeq` and `Node Control/...` metrics as Eclipse Tahu's JavaScript client builds them.
    """
    msg = _parse(data)
    if not msg.HasField("timestamp"):
        raise PayloadError("payload has no timestamp")
    ts = msg.timestamp
    metrics = tuple([_metric_from_pb(i, m, untimed, ts) for i, m in enumerate(msg.metrics)])
    return Payload(ts, metrics, msg.seq if msg.HasField("seq") else None)


def decode_untimed(data: bytes) -> Payload:
    """Parse a payload that needs no timestamps: an NDEATH (the specification requires none in a
    death; Eclipse Tahu's JavaScript client sends its `bdSeq` without one) or a command. A missing
    payload timestamp reads as 0, a missing metric timestamp as the payload's."""
    msg = _parse(data)
    ts = msg.timestamp
    metrics = tuple(_metric_from_pb(i, m, None, ts) for i, m in enumerate(msg.metrics))
    return Payload(ts, metrics, msg.seq if msg.HasField("seq") else None)
