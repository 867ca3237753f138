"""The job-shop simulator: one real server per machine, driven by the machine's seeded scenario.

A machine whose site-model source is OPC UA gets a CNC controller as an asyncua server; one whose
source is Modbus gets an older CNC behind a PLC as a pymodbus server; one whose source is MTConnect
gets an MTConnect agent in front of its controller (bridge/sim/mtconnect_agent.py). Values are
written when event time reaches them, paced by the clock (`--speed` runs faster than real time);
OPC UA and MTConnect keep the scenario's time as the source timestamp. On stop it can write its
ground truth as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from bridge.modbus import LegacyModbusServer
from bridge.opcua import CncOpcUaServer
from bridge.sim.mtconnect_agent import MtConnectAgent
from bridge.sim.scenario import Change, MachineScenario
from uns.clock import ScaledClock, iso
from uns.site import Machine, ModbusSource, MtConnectSource, OpcUaSource

logger = logging.getLogger(__name__)


class SimulatedMachine(Protocol):
    machine_id: str

    async def start(self, initial: Mapping[str, bool | int | float | str], t_ms: int) -> None: ...

    async def write(self, values: Mapping[str, bool | int | float | str], t_ms: int) -> None: ...

    async def stop(self) -> None: ...


def make_server(machine: Machine, scenario: MachineScenario) -> SimulatedMachine:
    if isinstance(machine.source, ModbusSource):
        # start the 16-bit counter close to the top, so the demo shows a rollover early on
        offset = 65536 - 8 - scenario.initial_part_count % 65536
        return LegacyModbusServer(machine.id, machine.source.host, machine.source.port, counter_offset=offset)
    if isinstance(machine.source, MtConnectSource):
        # an MTConnect agent in front of the controller (with its default buffer of 4096 observations)
        url = urlsplit(machine.source.endpoint)
        device = machine.source.device or machine.id
        return MtConnectAgent(machine.id, url.hostname or "127.0.0.1", url.port or 80, device=device)
    if not isinstance(machine.source, OpcUaSource):
        raise ValueError(f"machine {machine.id}: published by a foreign edge node, not simulated here")
    return CncOpcUaServer(machine.id, machine.source.endpoint)


async def drive(
    server: SimulatedMachine, changes: Iterator[Change], clock: ScaledClock, until_ms: int | None = None
) -> None:
    """Write each change when event time reaches it (all of them before `until_ms`, if given)."""
    for change in changes:
        if until_ms is not None and change.t_ms >= until_ms:
            return
        delay = clock.wall_seconds_until(change.t_ms)
        if delay > 0:
            await asyncio.sleep(delay)
        await server.write(change.values, change.t_ms)


def truth_document(scenarios: list[MachineScenario], end_ms: int) -> dict[str, object]:
    """What really happened on every machine from the scenario origin up to `end_ms`."""
    machines: dict[str, object] = {}
    for sc in scenarios:
        machines[sc.machine_id] = {
            "parts": sc.parts_until(end_ms),
            "intervals": [
                {
                    "start": iso(i.start_ms),
                    "end": iso(i.end_ms),
                    "start_ms": i.start_ms,
                    "end_ms": i.end_ms,
                    "state": i.state,
                    "phases": list(i.phases),
                }
                for i in sc.truth(end_ms)
            ],
            "stops": [  # stopped time with the reason a supervisor would give
                {
                    "start": iso(r.start_ms),
                    "end": iso(r.end_ms),
                    "start_ms": r.start_ms,
                    "end_ms": r.end_ms,
                    "state": r.state,
                    "reason": r.reason,
                }
                for r in sc.reasons(end_ms)
            ],
        }
    return {"end_ms": end_ms, "end": iso(end_ms), "machines": machines}


def _write_json(path: Path, doc: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


async def run_simulator(
    machines: list[Machine],
    seed: int,
    clock: ScaledClock,
    stop: asyncio.Event,
    truth_path: Path | None = None,
    ready: asyncio.Event | None = None,
    restart_clock: bool = True,
) -> None:
    """Serve every machine until `stop` is set; then write the ground truth (if asked) and stop.

    The servers take a moment to start (asyncua builds the standard address space, about two
    seconds of CPU each); `ready` is set once they all serve, with the scenario's origin values. The
    clock then starts again from its origin, unless `restart_clock` is False (a clock shared with
    other processes: the scenario catches up with it).
    """
    machines = [m for m in machines if not m.foreign]  # a foreign edge node's machines are its own
    scenarios = [MachineScenario(m.id, seed, clock.origin_ms) for m in machines]
    servers = [make_server(m, sc) for m, sc in zip(machines, scenarios, strict=True)]
    changes = [sc.changes() for sc in scenarios]
    started: list[SimulatedMachine] = []

    async def start(server: SimulatedMachine, machine_changes: Iterator[Change]) -> None:
        first = next(machine_changes)
        await server.start(first.values, first.t_ms)
        started.append(server)

    try:
        await asyncio.gather(*(start(s, c) for s, c in zip(servers, changes, strict=True)))
        if restart_clock:  # the scenario's time runs from now, not from when the servers were being built
            clock.restart()
        if ready is not None:
            ready.set()
        logger.info(
            "simulator: %d CNC machines serving OPC UA or MTConnect (seed %d, speed %gx)",
            len(servers),
            seed,
            clock.speed,
        )
        tasks = [
            asyncio.create_task(drive(server, c, clock), name=f"sim[{server.machine_id}].drive")
            for server, c in zip(servers, changes, strict=True)
        ]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if truth_path is not None:
            doc = truth_document(scenarios, clock.now_ms())
            await asyncio.to_thread(_write_json, truth_path, doc)
            logger.info("simulator: ground truth written to %s", truth_path)
    finally:
        for server in started:
            await server.stop()
