"""Modbus TCP: the machine reader the bridge uses and the legacy-controller server the simulator runs.

This is the only module that imports pymodbus.

`ModbusReader` polls each poll group of a machine's register map at its own interval and reports by
exception (a number moves only when it leaves its deadband). A Modbus device gives no timestamps, so
each value is stamped with the bridge's clock when the poll began. A failed read reports the affected
signals as bad quality, never the last good value; a lost connection reports the machine offline and
reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from bridge.reader import MachineReader, ReaderError, ReaderOptions
from bridge.registers import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    Read,
    changed,
    plan_reads,
    raw_value,
    signal_value,
)
from uns.site import Machine, ModbusSource, PollGroup, Signal, Table
from uns.sparkplug.edge import Sample
from uns.sparkplug.payload import Quality

logger = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs every failed request; we report them

_MISSING = object()


class ReadFailedError(RuntimeError):
    pass


class ModbusReader(MachineReader):
    """Reads one machine over Modbus TCP (poll groups, report by exception)."""

    def __init__(
        self,
        machine: Machine,
        source: ModbusSource,
        **options: Unpack[ReaderOptions],
    ) -> None:
        super().__init__(machine, **options)
        self.source = source
        self._plans = {name: plan_reads(group.signals) for name, group in source.poll_groups.items()}
        self._last: dict[Signal, tuple[object, int | None]] = {}

    @property
    def timeout_s(self) -> float:
        return self.source.timeout_ms / 1000

    async def _session(self) -> None:
        src = self.source
        client = AsyncModbusTcpClient(
            src.host, port=src.port, timeout=src.timeout_ms / 1000, retries=0, reconnect_delay=0
        )
        try:
            if not await client.connect():
                raise ConnectionError("cannot connect") from await _why_not(
                    src.host, src.port, self.timeout_s
                )
            self.counters["connects"] += 1
            self._last = {}
            first: list[Sample] = []
            for name in src.poll_groups:
                first += await self._poll(client, name)
            self._online = True
            logger.info("machine %s: polling %d signals at %s", self.machine.id, len(first), self.where)
            self._on_online(first)
            # Not a TaskGroup: on Python 3.11 a child failing while the group waits to exit leaves the
            # parent task marked as cancelling for good, and the reader would take that for a stop.
            tasks = [
                asyncio.create_task(
                    self._poll_loop(client, name, group), name=f"bridge[{self.machine.id}].{name}"
                )
                for name, group in src.poll_groups.items()
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if (exc := task.exception()) is not None:
                    raise exc
        finally:
            client.close()

    async def _poll_loop(self, client: AsyncModbusTcpClient, name: str, group: PollGroup) -> None:
        loop = asyncio.get_running_loop()
        interval = group.interval_ms / 1000
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + interval, loop.time())  # a slow device skips ticks, never bunches them
            samples = await self._poll(client, name)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for (in pymodbus) drops a cancellation that comes as the answer
                # does; without this check the loop would go on, and the bridge never stop
                raise asyncio.CancelledError
            if samples:
                self._on_samples(samples)

    async def _poll(self, client: AsyncModbusTcpClient, group: str) -> list[Sample]:
        ts = self._now_ms()
        out: list[Sample] = []
        for read in self._plans[group]:
            try:
                data = await self._read(client, read)
            except ReadFailedError as exc:
                if not client.connected:
                    raise ConnectionError(f"connection lost ({exc})") from exc
                self.counters["bad_reads"] += 1
                logger.warning("machine %s: %s: %s", self.machine.id, self.where, exc)
                data = None
            for signal in read.signals:
                out += self._report(signal, read, data, ts)
        self.counters["samples"] += len(out)
        return out

    def _report(self, signal: Signal, read: Read, data: Sequence[Any] | None, ts: int) -> list[Sample]:
        spec = self.source.signals[signal]
        value: object = None
        quality: int | None = Quality.BAD
        if data is not None:
            try:
                value, quality = signal_value(signal, spec, raw_value(spec, read, data)), None
            except (ValueError, struct.error) as exc:
                self.counters["bad_values"] += 1
                logger.warning("machine %s (%s): %s", self.machine.id, self.where, exc)
        last = self._last.get(signal, _MISSING)
        if last is not _MISSING:
            assert isinstance(last, tuple)
            if last[1] == quality and not changed(spec, last[0], value):
                return []
        self._last[signal] = (value, quality)
        return [Sample(signal.value, value, ts, quality)]  # type: ignore[arg-type]

    async def _read(self, client: AsyncModbusTcpClient, read: Read) -> Sequence[Any]:
        fn = {
            Table.COIL: client.read_coils,
            Table.DISCRETE_INPUT: client.read_discrete_inputs,
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
        }[read.table]
        where = f"{read.table} {read.address}..{read.address + read.count - 1}"
        try:
            response = await fn(read.address, count=read.count, device_id=self.source.device_id)
        except ModbusException as exc:
            raise ReadFailedError(f"reading {where}: {exc}") from exc
        if response.isError():
            raise ReadFailedError(f"reading {where}: the device answered {response}")
        if read.table.is_bits:
            return list(response.bits[: read.count])
        return list(response.registers)


async def _why_not(host: str, port: int, timeout_s: float) -> BaseException | None:
    """Why a TCP connection fails (pymodbus only says that it did): the error of a plain try."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        return exc
    writer.close()
    return None


# -- reading a device's tables as they are (uns probe) ----------------------------------------------
@dataclass(frozen=True, slots=True)
class TableDump:
    """What `read_tables` found: address -> value, and why a part of a table could not be read."""

    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    coil: dict[int, bool] = field(default_factory=dict)
    discrete_input: dict[int, bool] = field(default_factory=dict)
    errors: dict[Table, str] = field(default_factory=dict)


_EXCEPTION_CODES = {
    1: "(illegal function: the device has no such table)",
    2: "(illegal data address: the device has no such address)",
    3: "(illegal data value)",
    4: "(server device failure; a gateway's for a unit id it does not have)",
    6: "(device busy)",
    10: "(gateway path unavailable: check the unit id)",
    11: "(gateway target device failed to respond: check the unit id)",
}


class _RefusedError(ReadFailedError):
    """The device answered with an exception response (an address it does not have, say)."""


async def read_tables(
    host: str, port: int, device_id: int, start: int, count: int, timeout_s: float
) -> TableDump:
    """Read `count` addresses from `start` of each of the four tables. A block the device refuses
    (an exception response) is read address by address, to find which addresses exist.
    ConnectionError (with the cause) when the device cannot be reached or answers nothing."""
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
    dump = TableDump()
    answered = False

    async def read(table: Table, address: int, n: int) -> dict[int, Any]:
        nonlocal answered
        try:
            values = await _read_block(client, table, address, n, device_id)
        except _RefusedError:
            answered = True
            raise
        except ReadFailedError as exc:
            if not client.connected:
                raise ConnectionError(f"connection lost ({exc})") from exc
            raise
        answered = True
        return values

    try:
        if not await client.connect():
            raise ConnectionError("cannot connect") from await _why_not(host, port, timeout_s)
        for table, into in (
            (Table.HOLDING, dump.holding),
            (Table.INPUT, dump.input),
            (Table.COIL, dump.coil),
            (Table.DISCRETE_INPUT, dump.discrete_input),
        ):
            step = MAX_BITS_PER_READ if table.is_bits else MAX_REGISTERS_PER_READ
            for first in range(start, start + count, step):
                n = min(step, start + count - first)
                try:
                    into.update(await read(table, first, n))
                except _RefusedError as exc:
                    dump.errors.setdefault(table, str(exc))
                    for address in range(first, first + n) if n > 1 else ():
                        with contextlib.suppress(ReadFailedError):
                            into.update(await read(table, address, 1))
                except ReadFailedError as exc:  # no answer: the next table may have one
                    dump.errors.setdefault(table, str(exc))
        if not answered:
            raise ReaderError(
                f"the device answers no request within {timeout_s:g} s ({dump.errors.get(Table.HOLDING)}):"
                f" check the device (unit) id, {device_id} here, and that the address is the device's"
            )
    finally:
        client.close()
    return dump


async def _read_block(
    client: AsyncModbusTcpClient, table: Table, address: int, count: int, device_id: int
) -> dict[int, Any]:
    fn = {
        Table.COIL: client.read_coils,
        Table.DISCRETE_INPUT: client.read_discrete_inputs,
        Table.HOLDING: client.read_holding_registers,
        Table.INPUT: client.read_input_registers,
    }[table]
    where = f"{table} {address}..{address + count - 1}"
    try:
        response = await fn(address, count=count, device_id=device_id)
    except ModbusException as exc:
        raise ReadFailedError(f"reading {where}: {exc}") from exc
    if response.isError():
        code = getattr(response, "exception_code", None)
        meaning = _EXCEPTION_CODES.get(code, "") if isinstance(code, int) else ""
        raise _RefusedError(f"reading {where}: the device answered exception {code} {meaning}".rstrip())
    values = list(response.bits[:count]) if table.is_bits else list(response.registers)
    return {address + i: v for i, v in enumerate(values)}


# -- the simulator's side ------------------------------------------------------------------------
EXECUTION_CODES = {"READY": 0, "ACTIVE": 1, "FEED_HOLD": 2, "INTERRUPTED": 3, "STOPPED": 4}
MODE_CODES = {"AUTOMATIC": 1, "MANUAL": 2, "MDI": 3, "EDIT": 4}
REGISTERS = 16


class LegacyModbusServer:
    """An older CNC behind a PLC, as a real Modbus TCP server (device id 1). Its "PLC program":

    register 0  status bits: 0 cycle running, 1 feed hold, 2 alarm active, 3 emergency stop
                (also readable as coils / discrete inputs 0-3)
    register 1  controller mode (1 automatic, 2 manual, 3 MDI, 4 edit)
    register 2  alarm code (int16, 0 = none)
    register 3  part counter (uint16, rolls over at 65536)
    register 4  program number (O4711 -> 4711)
    register 5  spindle speed, float32 over registers 5-6 (big-endian words)
    register 7  spindle load in tenths of a percent
    register 8  feed override in percent
    register 9  execution (0 ready, 1 active, 2 feed hold, 3 interrupted, 4 stopped)
    Holding and input registers are the same registers, as on many small PLCs.
    """

    def __init__(self, machine_id: str, host: str, port: int, *, counter_offset: int = 0) -> None:
        self.machine_id = machine_id
        self.host, self.port = host, port
        self.counter_offset = counter_offset
        self._signals: dict[str, bool | int | float | str] = {}
        self._image = [0] * REGISTERS
        self._answering = asyncio.Event()
        self._answering.set()
        device = SimDevice(
            id=1,
            simdata=[SimData(0, count=REGISTERS, values=0, datatype=SimType.REGISTERS)],
            action=self._action,
            use_bit_addressing=True,
        )
        self._server = ModbusTcpServer(device, address=(host, port))

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        await self._answering.wait()
        for i in range(len(current_registers)):
            reg = start_address + i
            current_registers[i] = self._image[reg] if 0 <= reg < REGISTERS else 0

    async def start(self, initial: Mapping[str, bool | int | float | str], t_ms: int) -> None:
        await self.write(initial, t_ms)
        await self._server.serve_forever(background=True)

    async def write(self, values: Mapping[str, bool | int | float | str], t_ms: int) -> None:
        """The controller's signals changed (a PLC has no clock to tell when: `t_ms` is not kept)."""
        self._signals.update(values)
        s = self._signals
        execution = str(s.get(Signal.EXECUTION, "READY"))
        alarm = int(s.get(Signal.ALARM_CODE, 0))
        status = (execution == "ACTIVE") | (execution == "FEED_HOLD") << 1 | (alarm != 0) << 2
        status |= bool(s.get(Signal.ESTOP, False)) << 3
        speed_hi, speed_lo = struct.unpack(">HH", struct.pack(">f", float(s.get(Signal.SPINDLE_SPEED, 0.0))))
        program = str(s.get(Signal.PROGRAM, "O0")).lstrip("O") or "0"
        self._image[:10] = [
            status,
            MODE_CODES[str(s.get(Signal.MODE, "AUTOMATIC"))],
            alarm & 0xFFFF,
            (int(s.get(Signal.PART_COUNT, 0)) + self.counter_offset) % 65536,
            int(program) % 65536,
            speed_hi,
            speed_lo,
            round(float(s.get(Signal.SPINDLE_LOAD, 0.0)) * 10) % 65536,
            round(float(s.get(Signal.FEED_OVERRIDE, 100.0))) % 65536,
            EXECUTION_CODES[execution],
        ]

    def stop_answering(self) -> None:
        """The PLC hangs: the connection stays up, requests get no answer."""
        self._answering.clear()

    def answer_again(self) -> None:
        self._answering.set()

    async def stop(self) -> None:
        self._answering.set()
        await self._server.shutdown()  # type: ignore[no-untyped-call]
