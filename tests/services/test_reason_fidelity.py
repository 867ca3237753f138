"""Reason fidelity of the context service on a seeded job-shop scenario, message by message without a
broker (the same through the whole stack: tests/integration/test_reasons.py): the share of stopped
time whose reason is the one a supervisor would write (the scenario's truth) must be at least 0.95,
and a rebuild from the stored events gives the same reasons and evidence."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bridge.sim.erp import job_number, releases
from bridge.sim.scenario import PHASE_REASONS, MachineScenario
from services.context.app import ContextService
from services.context.record import RecordStore
from tests.helpers import reason_fidelity
from tests.services.test_jobshop import Clock
from uns.clock import parse_iso
from uns.mqtt import BrokerAddress
from uns.signals import metric_defs
from uns.site import OpcUaSource, load_site
from uns.sparkplug.edge import EdgeSession, Sample
from unscli.cli import DEFAULT_SITE

MACHINE = "vf2-01"
SEED = 14  # every phase of the scenario within its first three hours
ORIGIN_MS = parse_iso("2026-11-18T19:00:00.000Z")  # Wednesday 14:00 in Dayton: second shift begins
HOURS = 8  # through the dinner break and into the third shift


def run_scenario(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> tuple[ContextService, MachineScenario, int]:
    site = load_site(DEFAULT_SITE).only((MACHINE,))
    [machine] = site.machines
    assert isinstance(machine.source, OpcUaSource)
    clock = Clock(ORIGIN_MS)
    store = make_record("record")
    service = ContextService(site, store, BrokerAddress("127.0.0.1", 1), clock)
    scenario = MachineScenario(MACHINE, SEED, ORIGIN_MS)
    end_ms = ORIGIN_MS + HOURS * 3_600_000
    plan = releases([scenario], end_ms)
    edge = EdgeSession(site.group_id, machine.edge_node, {MACHINE: metric_defs(list(machine.source.signals))})
    edge.new_connection(0)
    for n, change in enumerate(scenario.changes(end_ms)):
        while plan and plan[0][0] <= change.t_ms:
            at, op = plan.pop(0)
            clock.now = max(clock.now, at)
            body = json.dumps({"operation": op, "by": "erp-sim"}).encode()
            assert service.command("dispatch_update", body, via="test").ok
        clock.now = max(clock.now, change.t_ms)
        samples = [Sample(k, v, change.t_ms) for k, v in change.values.items()]
        if n == 0:
            edge.device_online(MACHINE, change.t_ms, samples)
            messages = edge.births(change.t_ms)
        else:
            data = edge.data(MACHINE, samples, change.t_ms)
            assert data is not None
            messages = [data]
        for message in messages:
            service.on_message(*message)
        service.flush()
    return service, scenario, end_ms


def test_the_reason_a_supervisor_would_write_for_95_percent_of_stopped_time(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> None:
    service, scenario, end_ms = run_scenario(make_record, tmp_path)
    store = service.store
    phases = {p for t in scenario.truth(end_ms) if t.state != "running" for p in t.phases}
    assert phases == set(PHASE_REASONS)  # every kind of stop the scenario has
    record = store.intervals(MACHINE, ORIGIN_MS, end_ms)
    jobs = scenario.jobs(end_ms)
    # the first job's program was loaded before its release came: measured from the second job on
    start = jobs[1].start_ms
    stop = record[-1].end_ms
    share, stopped, wrong = reason_fidelity(scenario.reasons(stop), record, service.calendar, start, stop)
    print(f"\nreason fidelity: {share:.3f} of {stopped / 3600:.1f} h stopped; differing: {wrong}")
    assert share >= 0.95, wrong
    # what completed is what the scenario did
    ops = {o.job: o for o in store.operations(MACHINE)}
    assert ops[job_number(0, jobs[1].number)].status == "complete"
    # every stop explains itself, and pieces of one stop share its start
    stops = [i for i in record if i.state.value != "running" and i.start_ms >= start]
    assert all(i.reason and i.source and i.evidence for i in stops)
    assert all(i.stop_start_ms is not None and i.stop_start_ms <= i.start_ms for i in stops)
    # a rebuild from the stored events gives the same reasons and evidence, from the start or mid-stop
    before = [(i.start_ms, i.end_ms, i.reason, i.source, i.evidence, i.stop_start_ms) for i in record]
    for t in (ORIGIN_MS, stops[len(stops) // 2].start_ms + 1):
        service.rebuild(MACHINE, t)
        after = store.intervals(MACHINE, ORIGIN_MS, end_ms)
        assert [
            (i.start_ms, i.end_ms, i.reason, i.source, i.evidence, i.stop_start_ms) for i in after
        ] == before
    store.close()
