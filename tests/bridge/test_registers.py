"""Register maps without sockets: read planning, decoding of every type and order, mapping, deadband."""

from __future__ import annotations

import struct

import pytest

from bridge.registers import Read, changed, plan_reads, raw_value, signal_value
from uns.site import ModbusSignal, Signal, Table


def spec(**kw: object) -> ModbusSignal:
    return ModbusSignal.model_validate(kw)


def words(fmt: str, value: object) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


@pytest.mark.parametrize(
    ("kind", "fmt", "value"),
    [
        ("int16", "h", -2),
        ("uint16", "H", 65535),
        ("int32", "i", -70000),
        ("uint32", "I", 4_000_000_000),
        ("float32", "f", 1.5),
        ("float64", "d", -2.25),
    ],
)
def test_every_type_in_big_endian_order(kind: str, fmt: str, value: object) -> None:
    s = spec(table="holding", address=10, type=kind)
    data = [0, *words(fmt, value)]
    assert raw_value(s, Read(Table.HOLDING, 9, len(data), ()), data) == value


def test_word_and_byte_order() -> None:
    big = words("I", 0x01020304)  # [0x0102, 0x0304]
    little_words = list(reversed(big))
    swapped_bytes = [int.from_bytes(w.to_bytes(2, "big"), "little") for w in big]
    read = Read(Table.INPUT, 0, 2, ())
    assert (
        raw_value(spec(table="input", address=0, type="uint32", word_order="little"), read, little_words)
        == 0x01020304
    )
    assert (
        raw_value(spec(table="input", address=0, type="uint32", byte_order="little"), read, swapped_bytes)
        == 0x01020304
    )


def test_bits_from_a_register_and_from_coils() -> None:
    reg = spec(table="holding", address=0, bit=3)
    assert raw_value(reg, Read(Table.HOLDING, 0, 1, ()), [0b1000]) is True
    assert raw_value(reg, Read(Table.HOLDING, 0, 1, ()), [0b0111]) is False
    coil = spec(table="coil", address=5)
    assert raw_value(coil, Read(Table.COIL, 4, 2, ()), [False, True]) is True


def test_map_scale_offset_and_format() -> None:
    assert signal_value(Signal.MODE, spec(table="holding", address=1, map={1: "automatic"}), 1) == "AUTOMATIC"
    with pytest.raises(ValueError, match="register value 9 is not in its map"):
        signal_value(Signal.MODE, spec(table="holding", address=1, map={1: "AUTOMATIC"}), 9)
    assert signal_value(Signal.SPINDLE_LOAD, spec(table="input", address=7, scale=0.1), 455) == 45.5
    assert (
        signal_value(Signal.SPINDLE_SPEED, spec(table="input", address=7, scale=10, offset=-5), 100) == 995.0
    )
    assert signal_value(Signal.PROGRAM, spec(table="holding", address=4, format="O{}"), 4711) == "O4711"
    assert signal_value(Signal.PART_COUNT, spec(table="input", address=3, scale=2), 21) == 42


def test_reads_are_grouped_within_protocol_limits() -> None:
    signals = {
        Signal.EXECUTION: spec(table="holding", address=9, map={0: "READY"}),
        Signal.MODE: spec(table="holding", address=1, map={1: "AUTOMATIC"}),
        Signal.PART_COUNT: spec(table="holding", address=300),
        Signal.ESTOP: spec(table="discrete_input", address=3),
        Signal.ALARM_CODE: spec(table="holding", address=2, type="int16"),
    }
    reads = plan_reads(signals)
    assert [(r.table, r.address, r.count) for r in reads] == [
        (Table.DISCRETE_INPUT, 3, 1),
        (Table.HOLDING, 1, 9),
        (Table.HOLDING, 300, 1),
    ]
    assert reads[1].signals == (Signal.MODE, Signal.ALARM_CODE, Signal.EXECUTION)


def test_deadband() -> None:
    s = spec(table="input", address=0, deadband=5)
    assert not changed(s, 100.0, 104.0)
    assert changed(s, 100.0, 106.0)
    assert changed(s, 100.0, None)  # going bad is always news
    assert changed(spec(table="input", address=0), 1, 2)
