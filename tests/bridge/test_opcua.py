"""The OPC UA reader against a real asyncua server (the CNC simulator's): source timestamps kept,
bad values reported as bad quality, a lost server noticed and reconnected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.opcua import CncOpcUaServer, OpcUaReader
from uns.broker import free_port
from uns.site import Machine, OpcUaSource, load_site
from uns.sparkplug.edge import Sample
from uns.sparkplug.payload import Quality
from unscli.cli import DEFAULT_SITE

INITIAL: dict[str, bool | int | float | str] = {
    "execution": "READY",
    "mode": "AUTOMATIC",
    "program": "O1234",
    "part_count": 10,
    "alarm_code": 0,
    "alarm_text": "",
    "estop": False,
    "spindle_speed": 0.0,
    "spindle_load": 0.0,
    "feed_override": 100.0,
}


def machine() -> Machine:
    return load_site(DEFAULT_SITE).with_ports({"vf2-01": free_port()}).machine("vf2-01")


def endpoint(m: Machine) -> str:
    assert isinstance(m.source, OpcUaSource)
    return m.source.endpoint


class Seen:
    def __init__(self) -> None:
        self.online: list[list[Sample]] = []
        self.samples: list[Sample] = []
        self.offline = 0

    def reader(self, m: Machine) -> OpcUaReader:
        assert isinstance(m.source, OpcUaSource)
        return OpcUaReader(
            m,
            m.source,
            on_online=self.online.append,
            on_samples=self.samples.extend,
            on_offline=self._off,
            now_ms=lambda: 0,
            max_backoff_s=0.5,
        )

    def _off(self) -> None:
        self.offline += 1


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_values_arrive_with_the_source_timestamp_and_bad_values_are_bad_quality() -> None:
    m = machine()
    server = CncOpcUaServer(m.id, endpoint(m))
    await server.start(INITIAL, 1_000_000)
    seen = Seen()
    task = asyncio.create_task(seen.reader(m).run())
    try:
        await until(lambda: bool(seen.online))
        first = {s.name: s for s in seen.online[0]}
        assert first["program"].value == "O1234"
        assert first["program"].timestamp == 1_000_000
        await server.write({"execution": "ACTIVE", "part_count": 11}, 2_000_000)
        await server.write({"execution": "FEED_HOLD"}, 2_000_500)  # two changes in one publish interval
        await until(lambda: len(seen.samples) >= 3)
        assert [(s.name, s.value, s.timestamp) for s in seen.samples[:3]] == [
            ("execution", "ACTIVE", 2_000_000),
            ("part_count", 11, 2_000_000),
            ("execution", "FEED_HOLD", 2_000_500),
        ]
        # a controller that reports nonsense: bad quality, not the last good value
        await server.write({"execution": "WARP_SPEED"}, 3_000_000)
        await until(lambda: len(seen.samples) >= 4)
        assert seen.samples[3] == Sample("execution", None, 3_000_000, Quality.BAD)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


async def test_a_lost_server_is_noticed_and_the_reader_reconnects() -> None:
    m = machine()
    server = CncOpcUaServer(m.id, endpoint(m))
    await server.start(INITIAL, 1_000_000)
    seen = Seen()
    task = asyncio.create_task(seen.reader(m).run())
    try:
        await until(lambda: bool(seen.online))
        await server.stop()
        started = time.monotonic()
        await until(lambda: seen.offline == 1)
        assert time.monotonic() - started < 10  # bounded: the client's watchdog probes every second
        server = CncOpcUaServer(m.id, endpoint(m))
        await server.start(INITIAL, 5_000_000)
        await until(lambda: len(seen.online) == 2, timeout=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


async def test_a_dead_subscription_is_noticed_and_made_again() -> None:
    m = machine()
    server = CncOpcUaServer(m.id, endpoint(m))
    await server.start(INITIAL, 1_000_000)
    seen = Seen()
    task = asyncio.create_task(seen.reader(m).run())
    try:
        await until(lambda: bool(seen.online))
        await server.drop_subscriptions()  # the connection stays up; no data and no keep-alive come
        started = time.monotonic()
        await until(lambda: seen.offline == 1)
        assert time.monotonic() - started < 8  # three missed keep-alives of about a second each
        await until(lambda: len(seen.online) == 2, timeout=20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


class Blackhole:
    """A TCP proxy that can silently stop carrying bytes both ways (a cut cable: no RST, no FIN)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.cut = False
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.cut:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_a_network_cut_without_a_reset_is_noticed_and_recovered() -> None:
    server_port = free_port()
    server = CncOpcUaServer("vf2-01", f"opc.tcp://127.0.0.1:{server_port}/sim")
    await server.start(INITIAL, 1_000_000)
    cable = Blackhole(server_port)
    await cable.start()
    m = load_site(DEFAULT_SITE).with_ports({"vf2-01": cable.port}).machine("vf2-01")
    assert isinstance(m.source, OpcUaSource)
    m = Machine(
        m.id,
        m.name,
        m.path,
        m.edge_node,
        m.source.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{cable.port}/sim"}),
    )
    seen = Seen()
    task = asyncio.create_task(seen.reader(m).run())
    try:
        await until(lambda: bool(seen.online))
        cable.cut = True
        started = time.monotonic()
        await until(lambda: seen.offline == 1)
        assert time.monotonic() - started < 5  # the client's one-second probe times out
        cable.cut = False
        await until(lambda: len(seen.online) == 2, timeout=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await cable.stop()
        await server.stop()
