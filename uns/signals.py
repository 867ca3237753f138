"""The Sparkplug type of each CNC signal, and the check that a value read from a machine fits it."""

from __future__ import annotations

import math

from uns.site import EXECUTION_VALUES, MODE_VALUES, Signal
from uns.sparkplug.edge import MetricDef
from uns.sparkplug.payload import DataType

SIGNAL_TYPES: dict[Signal, DataType] = {
    Signal.EXECUTION: DataType.STRING,
    Signal.MODE: DataType.STRING,
    Signal.PROGRAM: DataType.STRING,
    Signal.PART_COUNT: DataType.UINT32,
    Signal.ALARM_CODE: DataType.INT32,
    Signal.ALARM_TEXT: DataType.STRING,
    Signal.ESTOP: DataType.BOOLEAN,
    Signal.SPINDLE_SPEED: DataType.DOUBLE,
    Signal.SPINDLE_LOAD: DataType.DOUBLE,
    Signal.FEED_OVERRIDE: DataType.DOUBLE,
    Signal.SINGLE_BLOCK: DataType.BOOLEAN,
    Signal.OPTIONAL_STOP: DataType.BOOLEAN,
}


def metric_defs(
    signals: list[Signal] | tuple[Signal, ...], part_count_type: str = "UInt32"
) -> list[MetricDef]:
    """The metrics of a device with these signals (`part_count_type`: the site model's
    sparkplug.part_count_type, UInt32 or Int64)."""
    counter = DataType.INT64 if part_count_type == "Int64" else DataType.UINT32
    return [MetricDef(s.value, counter if s is Signal.PART_COUNT else SIGNAL_TYPES[s]) for s in signals]


def coerce(signal: Signal, value: object) -> bool | int | float | str:
    """The value as its Sparkplug type; ValueError naming the signal if it does not fit."""
    datatype = SIGNAL_TYPES[signal]
    if datatype is DataType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"{signal}: expected text, got {type(value).__name__} {value!r}")
        text = value.strip()
        if signal is Signal.EXECUTION and text.upper() not in EXECUTION_VALUES:
            raise ValueError(f"{signal}: {value!r} is not one of {', '.join(sorted(EXECUTION_VALUES))}")
        if signal is Signal.MODE and text.upper() not in MODE_VALUES:
            raise ValueError(f"{signal}: {value!r} is not one of {', '.join(sorted(MODE_VALUES))}")
        return text.upper() if signal in (Signal.EXECUTION, Signal.MODE) else text
    if datatype is DataType.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{signal}: expected a boolean, got {value!r}")
    if datatype in (DataType.UINT32, DataType.INT32):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"{signal}: expected a whole number, got {value!r}")
        number = int(value)
        low, high = (0, 2**32 - 1) if datatype is DataType.UINT32 else (-(2**31), 2**31 - 1)
        if not low <= number <= high:
            raise ValueError(f"{signal}: {number} is out of range for {datatype.name}")
        return number
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{signal}: expected a finite number, got {value!r}")
    return float(value)
