"""Health you can see: the bridge's and each machine's health reach the UNS tree (retained JSON)
and the record (for /metrics); a PLC that stops answering makes its machine comms_loss until it
answers again; a lost machine shows as not connected."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.modbus import LegacyModbusServer
from bridge.runner import run_bridge
from bridge.sim.cnc import SimulatedMachine, make_server
from bridge.sim.mtconnect_agent import MtConnectAgent
from bridge.sim.scenario import MachineScenario
from services.context.app import ContextService
from services.context.record import RecordStore
from tests.helpers import Recorder, address, recorder, track
from uns.broker import Mosquitto, free_port
from uns.clock import ScaledClock
from uns.site import load_site
from unscli.cli import DEFAULT_SITE


@dataclass
class Running:
    """One demo machine served by the simulator, its bridge (health every 0.3 s) and the context
    service, and a viewer of the tree."""

    server: SimulatedMachine
    store: RecordStore
    context: ContextService
    tree: Recorder
    clock: ScaledClock
    stop: asyncio.Event
    bridge: asyncio.Task[None]

    async def close(self) -> None:
        self.stop.set()
        await self.bridge
        await self.context.stop()
        await self.server.stop()
        self.store.close()


async def run_one(mosquitto: Mosquitto, tmp_path: Path, machine_id: str) -> Running:
    site = load_site(DEFAULT_SITE).with_ports({machine_id: free_port()}).only([machine_id])
    [machine] = site.machines
    clock = ScaledClock(1_795_300_000_000, 60)
    scenario = MachineScenario(machine.id, 3, clock.origin_ms)
    first = next(scenario.changes())
    server = make_server(machine, scenario)
    await server.start(first.values, first.t_ms)
    store = RecordStore(tmp_path / "record.db")
    context = ContextService(site, store, address(mosquitto, "services"), clock)
    context.health_interval_s = 0.3
    context.start(asyncio.get_running_loop())
    track(context._client)
    tree = await recorder(mosquitto, "viewer", "acme/#", client_id="viewer")
    stop = asyncio.Event()
    bridge = asyncio.create_task(
        run_bridge(site, address(mosquitto, "bridge"), clock, stop, health_interval_s=0.3)
    )
    return Running(server, store, context, tree, clock, stop, bridge)


async def test_health_reaches_the_tree_and_the_record(mosquitto: Mosquitto, tmp_path: Path) -> None:
    run = await run_one(mosquitto, tmp_path, "grind-01")
    server, store, context, tree = run.server, run.store, run.context, run.tree
    try:
        [(_, edge), *_] = await tree.wait_for(lambda t, p: t == "acme/dayton/_health/edge/edge-finishing")
        edge_health = json.loads(edge)
        assert edge_health["buffer_depth"] == 0
        assert edge_health["devices_online"] == 1
        [(_, ours), *_] = await tree.wait_for(
            lambda t, p: t == "acme/dayton/finishing/grinding/cell-4/grind-01/health"
        )
        assert json.loads(ours)["connected"] is True
        await tree.wait_for(lambda t, p: t == "acme/dayton/_health/host/uns-host")
        # the PLC stops answering: its signals go bad, the machine goes comms_loss, then recovers
        assert isinstance(server, LegacyModbusServer)
        tracker = context.trackers["grind-01"]
        assert tracker.state != "comms_loss"
        server.stop_answering()
        deadline = time.monotonic() + 10
        while context.trackers["grind-01"].state != "comms_loss":
            assert time.monotonic() < deadline, "a PLC that does not answer did not become comms_loss"
            await asyncio.sleep(0.05)
        server.answer_again()
        while context.trackers["grind-01"].state == "comms_loss":
            assert time.monotonic() < deadline + 10, "the machine did not recover"
            await asyncio.sleep(0.05)
        await server.stop()  # the PLC goes away
        await tree.wait_for(
            lambda t, p: t.endswith("grind-01/health") and json.loads(p)["connected"] is False, timeout=20
        )
        deadline = time.monotonic() + 5
        while not any(scope == "machine/grind-01" for scope, *_ in store.health()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        names = {(scope, name) for scope, name, *_ in store.health()}
        assert {
            ("edge/edge-finishing", "buffer_depth"),
            ("machine/grind-01", "losses"),
            ("host/uns-host", "messages"),
        } <= names
    finally:
        await run.close()


async def test_an_mtconnect_agents_restart_is_in_the_machines_health(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The demo's MTConnect machine (the simulator's agent over real HTTP): the agent restarts, and
    `agent_restarts` in its health says so, in the tree and in the record (for /metrics)."""
    run = await run_one(mosquitto, tmp_path, "umc-01")
    server, store, tree, clock = run.server, run.store, run.tree, run.clock
    assert isinstance(server, MtConnectAgent)
    try:
        [(_, ours), *_] = await tree.wait_for(lambda t, p: t.endswith("umc-01/health"))
        health = json.loads(ours)
        assert (health["agent_restarts"], health["sequence_gaps"], health["observations_lost"]) == (0, 0, 0)
        await server.restart(clock.now_ms())
        await tree.wait_for(
            lambda t, p: t.endswith("umc-01/health") and json.loads(p)["agent_restarts"] == 1, timeout=20
        )
        deadline = time.monotonic() + 5
        while ("machine/umc-01", "agent_restarts", 1.0) not in {r[:3] for r in store.health()}:
            assert time.monotonic() < deadline, "agent_restarts did not reach the record"
            await asyncio.sleep(0.05)
    finally:
        await run.close()
