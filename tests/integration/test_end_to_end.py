"""End to end: simulated CNC controllers (real OPC UA servers) -> bridge -> Mosquitto -> context
service -> record, compared with the scenario's own ground truth.

Tolerance: interval boundaries must match the ground truth to within 1 ms (the values carry the
controllers' source timestamps all the way; 1 ms allows for rounding of OPC UA's 100 ns clock).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bridge.opcua import CncOpcUaServer
from bridge.runner import run_bridge
from bridge.sim.cnc import drive, make_server
from bridge.sim.scenario import MachineScenario
from services.context.app import ContextService
from services.context.record import RecordStore
from tests.helpers import address, track
from uns.broker import Mosquitto, free_port
from uns.cli import DEFAULT_SITE
from uns.clock import ScaledClock
from uns.site import OpcUaSource, load_site

TOLERANCE_MS = 1
SPEED = 1800.0  # half an hour of shop time per second
HORIZON_MS = 3 * 3600 * 1000  # three hours of scenario
ORIGIN_MS = 1_795_300_000_000
MACHINES = ("vf2-01", "st20-01", "swiss-01")  # OPC UA machines on two edge nodes


async def test_record_matches_the_scenario_ground_truth(mosquitto: Mosquitto, tmp_path: Path) -> None:
    full = load_site(DEFAULT_SITE)
    site = full.with_ports({m: free_port() for m in MACHINES}).only(MACHINES)
    clock = ScaledClock(ORIGIN_MS, SPEED)
    scenarios = {m.id: MachineScenario(m.id, seed=42, origin_ms=ORIGIN_MS) for m in site.machines}
    servers, changes = {}, {}
    for m in site.machines:
        changes[m.id] = scenarios[m.id].changes()
        first = next(changes[m.id])
        assert isinstance(m.source, OpcUaSource)
        servers[m.id] = CncOpcUaServer(m.id, m.source.endpoint)
        await servers[m.id].start(first.values, first.t_ms)

    store = RecordStore(tmp_path / "record.db")
    context = ContextService(site, store, address(mosquitto, "services"), clock)
    context.start(asyncio.get_running_loop())
    track(context._client)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(site, address(mosquitto, "bridge"), clock, stop))
    # wait until every machine is born in the record, then let the scenario run
    deadline = time.monotonic() + 30
    while any(t.since_ms is None for t in context.trackers.values()):
        assert time.monotonic() < deadline, "machines never came online"
        await asyncio.sleep(0.05)
    clock.restart()
    end_ms = ORIGIN_MS + HORIZON_MS
    await asyncio.gather(*(drive(servers[m], changes[m], clock, until_ms=end_ms) for m in servers))
    await asyncio.sleep(1.0)  # let the last values through

    for machine_id, scenario in scenarios.items():
        truth = scenario.truth(end_ms)
        recorded = store.intervals(machine_id, ORIGIN_MS, end_ms + 1)
        assert len(recorded) == len(truth) - 1, (
            f"{machine_id}: {len(recorded)} intervals, truth {len(truth) - 1}"
        )
        for rec, real in zip(recorded, truth, strict=False):
            assert rec.state == real.state, f"{machine_id} at {real.start_ms}: {rec} vs {real}"
            assert abs(rec.start_ms - real.start_ms) <= TOLERANCE_MS
            assert abs(rec.end_ms - real.end_ms) <= TOLERANCE_MS
        for rec, real in zip(recorded, truth, strict=False):  # the rules' reasons for the stops
            if real.state == "down":
                assert rec.reason == "machine_fault"
            elif real.state == "setup":
                assert rec.reason == "setup"
            elif real.state == "idle":
                assert rec.reason in {"micro_stop", "unclassified", "planned_break"}
        tracker = context.trackers[machine_id]
        assert (tracker.state, tracker.since_ms) == (truth[-1].state, truth[-1].start_ms)
        made = sum(p.delta for p in store.parts(machine_id, ORIGIN_MS, end_ms + 1))
        assert made == scenario.parts_until(end_ms) > 0
        assert {i.state for i in truth} >= {"running", "idle", "setup"}

    # a machine whose controller goes away becomes comms_loss, not a stretched last state ...
    await servers["vf2-01"].stop()
    lost_at = time.monotonic()
    while context.trackers["vf2-01"].state != "comms_loss":
        assert time.monotonic() - lost_at < 5, "a lost controller was not noticed within 5 s"
        await asyncio.sleep(0.05)
    gap_from = context.trackers["vf2-01"].since_ms
    # ... and when it comes back, data resumes within the reader's bound (backoff at most 5 s)
    vf2 = site.machine("vf2-01")
    assert isinstance(vf2.source, OpcUaSource)
    servers["vf2-01"] = CncOpcUaServer("vf2-01", vf2.source.endpoint)
    await servers["vf2-01"].start(
        {**first.values, "execution": "ACTIVE", "mode": "AUTOMATIC"}, clock.now_ms()
    )
    back_at = time.monotonic()
    while context.trackers["vf2-01"].state == "comms_loss":
        assert time.monotonic() - back_at < 10, "data did not resume within 10 s of the server's restart"
        await asyncio.sleep(0.05)
    gap = store.intervals("vf2-01", gap_from or 0, clock.now_ms())[0]
    assert gap.state == "comms_loss"
    assert gap.start_ms == gap_from
    stop.set()
    await bridge
    await context.stop()
    for server in servers.values():
        await server.stop()
    store.close()
    assert context.host.counters["seq_gaps"] == 0
    assert context.host.counters["malformed"] == 0


async def test_a_modbus_machine_through_to_the_record(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A legacy machine has no source timestamps: values are stamped when polled, so boundaries are good
    to one poll interval (100 ms) in event time. At 360x that is 36 s; checked here: the recorded state
    in the middle of every true interval longer than a minute, and every part, across a counter wrap."""
    speed = 360.0
    tolerance_ms = int(0.1 * speed * 1000) + 2000  # one poll, plus scheduling on a busy machine
    full = load_site(DEFAULT_SITE)
    site = full.with_ports({"lynx-01": free_port()}).only(["lynx-01"])
    [machine] = site.machines
    clock = ScaledClock(ORIGIN_MS, speed)
    scenario = MachineScenario(machine.id, seed=5, origin_ms=ORIGIN_MS)
    changes = scenario.changes()
    first = next(changes)
    server = make_server(machine, scenario)  # its counter wraps after 8 parts
    await server.start(first.values, first.t_ms)

    store = RecordStore(tmp_path / "record.db")
    context = ContextService(site, store, address(mosquitto, "services"), clock)
    context.start(asyncio.get_running_loop())
    track(context._client)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(site, address(mosquitto, "bridge"), clock, stop))
    deadline = time.monotonic() + 30
    while context.trackers[machine.id].since_ms is None:
        assert time.monotonic() < deadline, "the machine never came online"
        await asyncio.sleep(0.05)
    clock.restart()
    end_ms = ORIGIN_MS + 3 * 3600 * 1000
    await drive(server, changes, clock, until_ms=end_ms)
    await asyncio.sleep(1.0)

    truth = scenario.truth(end_ms)
    recorded = [*store.intervals(machine.id, ORIGIN_MS, end_ms + 1)]
    tracker = context.trackers[machine.id]
    checked = 0
    for real in truth[:-1]:
        if real.end_ms - real.start_ms < 2 * tolerance_ms + 60_000:
            continue
        middle = (real.start_ms + real.end_ms) // 2
        at = [i for i in recorded if i.start_ms <= middle < i.end_ms]
        state = at[0].state if at else tracker.state
        assert state == real.state, f"at {middle}: recorded {state}, truth {real}"
        checked += 1
    assert checked >= 10
    made = sum(p.delta for p in store.parts(machine.id, ORIGIN_MS, end_ms + tolerance_ms))
    assert made == scenario.parts_until(end_ms) > 8  # more than 8: the 16-bit counter wrapped
    stop.set()
    await bridge
    await context.stop()
    await server.stop()
    store.close()


async def test_broker_killed_and_restarted_loses_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Mosquitto is SIGKILLed three times while the scenario runs. The bridge buffers on disk and
    replays; the host backfills. The record must still equal the ground truth (which the
    uninterrupted run above matches): no lost or doubled intervals, no lost or doubled parts."""
    full = load_site(DEFAULT_SITE)
    machines = ("vf2-01", "swiss-01")
    site = full.with_ports({m: free_port() for m in machines}).only(machines)
    clock = ScaledClock(ORIGIN_MS, SPEED)
    scenarios = {m.id: MachineScenario(m.id, seed=11, origin_ms=ORIGIN_MS) for m in site.machines}
    servers, changes = {}, {}
    for m in site.machines:
        changes[m.id] = scenarios[m.id].changes()
        first = next(changes[m.id])
        assert isinstance(m.source, OpcUaSource)
        servers[m.id] = CncOpcUaServer(m.id, m.source.endpoint)
        await servers[m.id].start(first.values, first.t_ms)
    store = RecordStore(tmp_path / "record.db")
    context = ContextService(site, store, address(mosquitto, "services"), clock)
    context.start(asyncio.get_running_loop())
    track(context._client)
    stop = asyncio.Event()
    bridge = asyncio.create_task(
        run_bridge(site, address(mosquitto, "bridge"), clock, stop, buffer_dir=tmp_path / "buffer")
    )
    deadline = time.monotonic() + 30
    while any(t.since_ms is None for t in context.trackers.values()):
        assert time.monotonic() < deadline, "machines never came online"
        await asyncio.sleep(0.05)
    clock.restart()
    end_ms = ORIGIN_MS + HORIZON_MS

    async def outages() -> None:
        for _ in range(3):
            await asyncio.sleep(1.2)
            mosquitto.kill()
            await asyncio.sleep(0.8)
            mosquitto.start()

    await asyncio.gather(outages(), *(drive(servers[m], changes[m], clock, until_ms=end_ms) for m in servers))
    truths = {m: sc.truth(end_ms) for m, sc in scenarios.items()}
    deadline = time.monotonic() + 30
    while any(
        (context.trackers[m].state, context.trackers[m].since_ms)
        != (truths[m][-1].state, truths[m][-1].start_ms)
        for m in truths
    ):
        assert time.monotonic() < deadline, {m: (t.state, t.since_ms) for m, t in context.trackers.items()}
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)

    assert context.host.counters["history_applied"] > 0  # the outages really happened
    for machine_id, scenario in scenarios.items():
        truth = truths[machine_id]
        recorded = [
            (i.start_ms, i.end_ms, i.state) for i in store.intervals(machine_id, ORIGIN_MS, end_ms + 1)
        ]
        expected = [(i.start_ms, i.end_ms, i.state) for i in truth[:-1]]
        assert recorded == expected, (machine_id, sorted(set(recorded) ^ set(expected)))
        made = sum(p.delta for p in store.parts(machine_id, ORIGIN_MS, end_ms + 1))
        assert made == scenario.parts_until(end_ms)
    stop.set()
    await bridge
    await context.stop()
    for server in servers.values():
        await server.stop()
    store.close()
