"""MTConnect observations per second through the reader into Sparkplug, beside the OPC UA reader's
rate on the same machine.

The server runs in a process of its own (the simulator's MTConnect agent, or its asyncua CNC server);
once the reader is online it is told to produce N value changes as fast as it can (the agent takes
them all into its buffer at once; the OPC UA server writes them one by one, round the ten signals).
The reader, in this process, turns what it gets into Sparkplug DDATA payloads (EdgeSession.data: the
aliases, seq and protobuf of the real bridge, without a broker), and is timed until the last change
it delivers, counted from the moment the server was told to begin (so a server slower
than the reader bounds the figure: its own rate is printed beside it). What did not arrive is
reported, not hidden.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from bridge.mtconnect import Mapper, MtConnectReader, StreamsDocument, find_routes, parse_document
from bridge.opcua import CncOpcUaServer, OpcUaReader
from bridge.sim.mtconnect_agent import MtConnectAgent
from uns.broker import free_port
from uns.signals import metric_defs
from uns.site import Machine, MtConnectSource, OpcUaSource, load_site
from uns.sparkplug.edge import EdgeSession, Sample
from unscli.cli import DEFAULT_SITE

SITE = Path(__file__).resolve().parent.parent / "tests" / "bridge" / "mtconnect_site.yaml"
N_MTCONNECT = 200_000
N_OPCUA = 20_000
T0 = 1_795_300_000_000
INITIAL: dict[str, bool | int | float | str] = {
    "execution": "ACTIVE",
    "mode": "AUTOMATIC",
    "program": "O1234",
    "part_count": 0,
    "alarm_code": 0,
    "alarm_text": "",
    "estop": False,
    "spindle_speed": 8000.0,
    "spindle_load": 0.0,
    "feed_override": 100.0,
}


def _change(i: int) -> dict[str, bool | int | float | str]:
    """The i-th change: one signal, a new value (round the process values and the counter)."""
    k = i % 4
    if k == 0:
        return {"spindle_load": float(i % 997) + 0.5}
    if k == 1:
        return {"spindle_speed": 8000.0 + i % 991}
    if k == 2:
        return {"feed_override": float(50 + i % 89)}
    return {"part_count": i}


def _serve(kind: str, port: int, n: int, ready: MpEvent, go: MpEvent, done: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server: MtConnectAgent | CncOpcUaServer
        if kind == "mtconnect":
            server = MtConnectAgent("bench", "127.0.0.1", port, buffer_size=n + 1000)
        else:
            server = CncOpcUaServer("bench", f"opc.tcp://127.0.0.1:{port}/bench")
        await server.start(INITIAL, T0)
        ready.set()
        await loop.run_in_executor(None, go.wait)
        start = time.perf_counter()
        for i in range(n):
            await server.write(_change(i), T0 + 1 + i)
            if kind == "opcua" and i % 20 == 19:
                # let its publish loop run: asyncua's write_value does not yield, and a server that only
                # writes sends no keep-alive, which the reader takes for a dead subscription
                await asyncio.sleep(0.001)
        done.put(n / (time.perf_counter() - start))
        await asyncio.sleep(120)  # until the parent is done and ends us

    asyncio.run(main())


class _Sink:
    """The reader's callbacks: every batch into a Sparkplug DDATA payload, timed."""

    def __init__(self, machine: Machine) -> None:
        self.session = EdgeSession("bench", "edge", {"m": metric_defs(tuple(machine.source.signals))})
        self.session.new_connection(0)
        self.samples = 0
        self.bytes = 0
        self.first: float | None = None
        self.last = 0.0
        self.online = False

    def on_online(self, samples: list[Sample]) -> None:
        self.session.device_online("m", 0, samples)
        self.online = True

    def on_samples(self, samples: list[Sample]) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        message = self.session.data("m", samples, 0)
        assert message is not None
        self.bytes += len(message[1])
        self.samples += len(samples)
        self.last = time.perf_counter()

    def on_offline(self) -> None:
        self.online = False


async def _measure(kind: str, machine: Machine, port: int, n: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    ready, go, done = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_serve, args=(kind, port, n, ready, go, done), daemon=True)
    proc.start()
    try:
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
        sink = _Sink(machine)
        options: dict[str, Callable[..., Any]] = {
            "on_online": sink.on_online,
            "on_samples": sink.on_samples,
            "on_offline": sink.on_offline,
            "now_ms": lambda: T0,
        }
        reader: MtConnectReader | OpcUaReader
        if isinstance(machine.source, MtConnectSource):
            reader = MtConnectReader(machine, machine.source, **options)  # type: ignore[arg-type]
        else:
            assert isinstance(machine.source, OpcUaSource)
            reader = OpcUaReader(machine, machine.source, **options)  # type: ignore[arg-type]
        task = asyncio.create_task(reader.run())
        deadline = time.monotonic() + 30
        while not sink.online:
            assert time.monotonic() < deadline, f"{kind}: the reader did not come online"
            await asyncio.sleep(0.05)
        go.set()
        began = time.perf_counter()
        production = asyncio.get_running_loop().run_in_executor(None, done.get, True, 300)
        last, still = -1, 0.0
        # until all arrived, or (once all are made) nothing more for two seconds
        while sink.samples < n and not (production.done() and still >= 2.0):
            await asyncio.sleep(0.05)
            still = still + 0.05 if sink.samples == last and production.done() else 0.0
            last = sink.samples
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        produced = await production
    finally:
        proc.kill()
        proc.join()
    elapsed = sink.last - began
    return {
        "rate": sink.samples / elapsed if elapsed > 0 else 0.0,
        "received": sink.samples,
        "sent": n,
        "produced_per_s": produced,
        "bytes_per_sample": sink.bytes / sink.samples if sink.samples else 0.0,
        "bad_reads": reader.counters["bad_reads"],
        "gaps": reader.counters.get("gaps", 0),
    }


def _mtconnect_machine(**changes: object) -> Machine:
    port = free_port()
    m = load_site(SITE).with_ports({"mtc-01": port}).machine("mtc-01")
    assert isinstance(m.source, MtConnectSource)
    return Machine(m.id, m.name, m.path, m.edge_node, m.source.model_copy(update=changes))


def run() -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label, changes in (
        ("MTConnect, XML, streamed (interval 10 ms, count 1000)", {"count": 1000, "interval_ms": 10}),
        ("MTConnect, JSON 2, polled (count 1000)", {"format": "json", "stream": False, "count": 1000}),
    ):
        m = _mtconnect_machine(**changes)
        assert isinstance(m.source, MtConnectSource)
        port = int(m.source.endpoint.rsplit(":", 1)[1])
        out[label] = asyncio.run(_measure("mtconnect", m, port, N_MTCONNECT))
    port = free_port()
    opc = load_site(DEFAULT_SITE).with_ports({"vf2-01": port}).machine("vf2-01")
    assert isinstance(opc.source, OpcUaSource)
    opc = Machine(
        opc.id,
        opc.name,
        opc.path,
        opc.edge_node,
        opc.source.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{port}/bench"}),
    )
    out["OPC UA (asyncua server, subscription, 100 ms)"] = asyncio.run(_measure("opcua", opc, port, N_OPCUA))
    return out


def ceiling(as_json: bool, n: int = 50_000) -> float:
    """The reader's own work per observation, without HTTP: parse a sample document of 1000,
    map, encode the DDATA; observations per second."""
    machine = _mtconnect_machine()
    assert isinstance(machine.source, MtConnectSource)

    async def documents() -> tuple[list[bytes], bytes, str]:
        agent = MtConnectAgent("bench", "127.0.0.1", 1, buffer_size=n + 1000)
        agent._reset(T0)
        await agent.write(INITIAL, T0)
        start = agent.next_sequence
        for i in range(n):
            await agent.write(_change(i), T0 + 1 + i)
        docs = [agent._sample(as_json, s, 1000)[0] for s in range(start, start + n, 1000)]
        return docs, agent._probe(as_json), agent.uuid

    docs, probe, uuid = asyncio.run(documents())
    devices = parse_document(probe)
    assert not isinstance(devices, StreamsDocument)
    counters = {"unavailable": 0, "bad_values": 0}
    mapper = Mapper(find_routes(devices.devices[0], machine.source), tuple(machine.source.signals), counters)
    sink = _Sink(machine)
    sink.on_online(mapper.snapshot(T0))
    count, start = 0, time.perf_counter()
    for body in docs:
        doc = parse_document(body, uuid)
        assert isinstance(doc, StreamsDocument)
        out: list[Sample] = []
        for obs in doc.observations:
            out += mapper.apply(obs)
        sink.on_samples(out)
        count += len(doc.observations)
    return count / (time.perf_counter() - start)


def report() -> None:
    xml_ceiling, json_ceiling = ceiling(False), ceiling(True)
    results = run()
    print("machine readers into Sparkplug (reader -> EdgeSession.data), server in another process:")
    for label, r in results.items():
        print(
            f"  {label:48} {r['rate']:>10,.0f} values/s   received {r['received']:,.0f}/{r['sent']:,.0f}"
            f"   (server produced {r['produced_per_s']:,.0f}/s; {r['bytes_per_sample']:.1f} B/value in DDATA;"
            f" bad reads {r['bad_reads']:.0f}, gaps {r['gaps']:.0f})"
        )
    print(
        f"  the MTConnect reader's own work (parse, map, DDATA; no HTTP)   XML {xml_ceiling:>9,.0f} obs/s"
        f"   JSON {json_ceiling:>9,.0f} obs/s"
    )


if __name__ == "__main__":
    report()
