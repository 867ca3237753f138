"""The Modbus reader against a real pymodbus server (the legacy-controller simulator): values mapped
and scaled, report by exception, a device that stops answering goes bad (not stale-good), a lost
server goes offline, and both recover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.modbus import LegacyModbusServer, ModbusReader
from uns.broker import free_port
from uns.site import Machine, ModbusSource, load_site
from uns.sparkplug.edge import Sample
from uns.sparkplug.payload import Quality
from unscli.cli import DEFAULT_SITE

INITIAL: dict[str, bool | int | float | str] = {
    "execution": "READY",
    "mode": "MANUAL",
    "program": "O4711",
    "part_count": 10,
    "alarm_code": 0,
    "alarm_text": "",
    "estop": False,
    "spindle_speed": 1200.0,
    "spindle_load": 12.5,
    "feed_override": 100.0,
}


def machine() -> Machine:
    return load_site(DEFAULT_SITE).with_ports({"lynx-01": free_port()}).machine("lynx-01")


class Seen:
    def __init__(self) -> None:
        self.online: list[list[Sample]] = []
        self.samples: list[Sample] = []
        self.offline = 0

    def reader(self, m: Machine, clock: Callable[[], int] = lambda: 7) -> ModbusReader:
        assert isinstance(m.source, ModbusSource)
        return ModbusReader(
            m,
            m.source,
            on_online=self.online.append,
            on_samples=self.samples.extend,
            on_offline=self._off,
            now_ms=clock,
            max_backoff_s=0.5,
        )

    def _off(self) -> None:
        self.offline += 1

    def latest(self, name: str) -> Sample:
        return [s for s in self.samples if s.name == name][-1]


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def serve(m: Machine, offset: int = 0) -> LegacyModbusServer:
    assert isinstance(m.source, ModbusSource)
    server = LegacyModbusServer(m.id, "127.0.0.1", m.source.port, counter_offset=offset)
    await server.start(INITIAL, 0)
    return server


async def test_values_are_mapped_scaled_and_reported_by_exception() -> None:
    m = machine()
    server = await serve(m, offset=65530)
    seen = Seen()
    task = asyncio.create_task(seen.reader(m).run())
    try:
        await until(lambda: bool(seen.online))
        first = {s.name: s.value for s in seen.online[0]}
        assert first == {
            "execution": "READY",
            "mode": "MANUAL",
            "alarm_code": 0,
            "estop": False,
            "part_count": 65540 % 65536,
            "program": "O4711",
            "spindle_speed": 1200.0,
            "spindle_load": 12.5,
            "feed_override": 100.0,
        }
        assert {s.timestamp for s in seen.online[0]} == {7}  # the bridge's clock: Modbus has none
        await asyncio.sleep(0.5)
        assert seen.samples == []  # nothing changed: nothing reported
        await server.write({"spindle_load": 13.0}, 0)  # inside its 1 % deadband
        await server.write({"execution": "ACTIVE", "mode": "AUTOMATIC", "part_count": 11, "estop": True}, 0)
        await until(lambda: len(seen.samples) >= 4)
        assert {(s.name, s.value) for s in seen.samples} == {
            ("execution", "ACTIVE"),
            ("mode", "AUTOMATIC"),
            ("part_count", 5),
            ("estop", True),
        }
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


async def test_a_device_that_stops_answering_goes_bad_then_recovers() -> None:
    m = machine()
    server = await serve(m)
    seen = Seen()
    task = asyncio.create_task(seen.reader(m).run())
    try:
        await until(lambda: bool(seen.online))
        server.stop_answering()
        await until(lambda: any(s.name == "execution" and s.quality == Quality.BAD for s in seen.samples))
        assert seen.latest("execution") == Sample(
            "execution", None, 7, Quality.BAD
        )  # not the last good value
        server.answer_again()
        await until(lambda: seen.latest("execution").quality is None, timeout=20)
        assert seen.latest("execution").value == "READY"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


async def test_a_lost_server_goes_offline_and_the_reader_reconnects() -> None:
    m = machine()
    server = await serve(m)
    seen = Seen()
    task = asyncio.create_task(seen.reader(m).run())
    try:
        await until(lambda: bool(seen.online))
        await server.stop()
        await until(lambda: seen.offline == 1)
        server = await serve(m)
        await until(lambda: len(seen.online) == 2, timeout=20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
