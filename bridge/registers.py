"""Modbus register maps, without sockets: which reads to make, and how raw words become signal values."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from uns.signals import coerce
from uns.site import ModbusSignal, RegisterType, Signal, Table

MAX_REGISTERS_PER_READ = 125  # Modbus application protocol limit for function codes 3 and 4
MAX_BITS_PER_READ = 2000  # ... and for 1 and 2
MAX_GAP = 8  # read across a gap this small rather than make another request

_STRUCT = {
    RegisterType.INT16: "h",
    RegisterType.UINT16: "H",
    RegisterType.INT32: "i",
    RegisterType.UINT32: "I",
    RegisterType.FLOAT32: "f",
    RegisterType.FLOAT64: "d",
}


@dataclass(frozen=True, slots=True)
class Read:
    """One request: `count` registers or bits of `table` from `address`, for these signals."""

    table: Table
    address: int
    count: int
    signals: tuple[Signal, ...]


def plan_reads(signals: dict[Signal, ModbusSignal]) -> list[Read]:
    """As few requests as the protocol's limits allow, reading across small gaps."""
    reads: list[Read] = []
    for table in Table:
        specs = sorted(
            ((s, spec) for s, spec in signals.items() if spec.table is table), key=lambda x: x[1].span
        )
        limit = MAX_BITS_PER_READ if table.is_bits else MAX_REGISTERS_PER_READ
        start = end = -1
        members: list[Signal] = []
        for signal, spec in specs:
            first, last = spec.span
            if members and first - end <= MAX_GAP and last - start < limit:
                end = max(end, last)
                members.append(signal)
                continue
            if members:
                reads.append(Read(table, start, end - start + 1, tuple(members)))
            start, end, members = first, last, [signal]
        if members:
            reads.append(Read(table, start, end - start + 1, tuple(members)))
    return reads


def raw_value(spec: ModbusSignal, read: Read, data: Sequence[int] | Sequence[bool]) -> int | float | bool:
    """The signal's raw value from a read's response (registers or bits)."""
    offset = spec.address - read.address
    if spec.table.is_bits:
        return bool(data[offset])
    words = [int(w) & 0xFFFF for w in data[offset : offset + spec.register_type.words]]
    if spec.register_type is RegisterType.BOOL:
        assert spec.bit is not None
        return bool(words[0] >> spec.bit & 1)
    if spec.word_order == "little":
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big" if spec.byte_order == "big" else "little") for w in words)
    value: int | float = struct.unpack(">" + _STRUCT[spec.register_type], raw)[0]
    return value


def signal_value(signal: Signal, spec: ModbusSignal, raw: int | float | bool) -> bool | int | float | str:
    """The signal's value: mapped, scaled and offset, formatted; ValueError naming what does not fit."""
    if spec.map is not None:
        key = int(raw)
        if key not in spec.map:
            raise ValueError(f"{signal}: register value {key} is not in its map ({sorted(spec.map)})")
        return coerce(signal, spec.map[key])
    value: int | float | bool = raw
    if not isinstance(raw, bool) and (spec.scale != 1.0 or spec.offset != 0.0):
        value = raw * spec.scale + spec.offset
        if isinstance(raw, int) and float(value).is_integer():
            value = int(value)
    if spec.format is not None:
        return coerce(signal, spec.format.format(value))
    return coerce(signal, value)


def changed(spec: ModbusSignal, old: object, new: object) -> bool:
    """Report by exception: a number moves only when it leaves the deadband."""
    if old is None or new is None or isinstance(new, bool | str) or isinstance(old, bool | str):
        return old != new
    assert isinstance(old, int | float)
    assert isinstance(new, int | float)
    return abs(new - old) > spec.deadband if spec.deadband else new != old
