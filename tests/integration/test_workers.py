"""Context workers partitioned by edge node (issue #13), against a real Mosquitto with the project's
config and ACL:
- two `uns context --worker` processes give the record one `uns context` gives on the same seeded
  scenario, also when one is killed (SIGKILL) mid-run and a replacement takes its partition over: its
  edge nodes buffer while its STATE is offline and backfill the replacement, nothing lost or doubled;
  on a shared SQLite file and on a PostgreSQL record (`--record postgresql://...`);
- a second worker for a partition a live worker holds refuses to start and says why;
- every command is answered by exactly one worker: the one that keeps its machine, or the lead,
  which refuses what spans workers.

The scenario is played into the bridge's own edge nodes (bridge/runner.py `make_edge_node`) on a
clock of the test's, so that both runs see the same values at the same event times."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.edge_node import EdgeNode
from bridge.runner import make_edge_node
from services.api.sender import CommandSender
from services.context.app import ContextService
from services.context.partition import PartitionHeldError, check_unheld
from services.context.record import RecordStore, open_record
from tests.conftest import postgres_url
from tests.helpers import CNC_AT_REST, Recorder, address, recorder, track
from uns.broker import Mosquitto
from uns.clock import WallClock
from uns.site import Site, parse_site
from uns.sparkplug.edge import Sample

pytestmark = pytest.mark.integration

SIGNALS = (
    "{execution: 'ns=2;s=E', mode: 'ns=2;s=M', program: 'ns=2;s=G', part_count: 'ns=2;s=P',"
    " alarm_code: 'ns=2;s=A', estop: 'ns=2;s=S'}"
)


def machine(machine_id: str, edge: str, port: int) -> str:
    return (
        f"              - {{id: {machine_id}, edge_node: {edge}, source: {{protocol: opcua,"
        f" endpoint: 'opc.tcp://127.0.0.1:{port}', signals: {SIGNALS}}}}}\n"
    )


SITE = f"""\
enterprise: acme
site: dayton
sparkplug: {{group_id: dayton, host_id: uns-host}}
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
{machine("m1", "edge-a", 4841)}
          - name: cell-2
            machines:
{machine("m2", "edge-a", 4842)}{machine("m3", "edge-b", 4843)}
          - name: cell-3
            machines:
{machine("m4", "edge-b", 4844)}"""
WORKERS = """\
context:
  workers:
    a: {edge_nodes: [edge-a]}
    b: {edge_nodes: [edge-b]}
"""
MACHINES = ("m1", "m2", "m3", "m4")
REPORTED = ("execution", "mode", "program", "part_count", "alarm_code", "estop")
T0 = (int(time.time()) // 3600 - 48) * 3_600_000  # the scenario's event time: two days ago on
ROOT = "acme/dayton"


class ScriptClock:
    """The edge nodes' clock: the event time the scenario has reached."""

    speed = 1.0

    def __init__(self) -> None:
        self.now = T0

    def now_ms(self) -> int:
        return self.now


def scenario(seed: int, steps: int) -> list[tuple[int, str, list[Sample]]]:
    """(time, machine, samples): machines that run, stop, hold, alarm and make parts."""
    rng = random.Random(seed)
    counts = dict.fromkeys(MACHINES, 1)
    out = []
    t = T0
    for _ in range(steps):
        t += rng.randint(2_000, 90_000)
        m = rng.choice(MACHINES)
        roll = rng.random()
        if roll < 0.4:
            counts[m] += rng.randint(1, 3)
            samples = [Sample("execution", "ACTIVE", t), Sample("part_count", counts[m], t)]
        elif roll < 0.7:
            samples = [Sample("execution", rng.choice(["READY", "FEED_HOLD", "INTERRUPTED"]), t)]
        elif roll < 0.85:
            samples = [Sample("alarm_code", rng.choice([0, 0, 1010]), t)]
        else:
            samples = [Sample("program", rng.choice(["O100", "O200"]), t)]
        out.append((t, m, samples))
    return out


def context(
    site: Path, record: Path | str, broker: Mosquitto, log: Path, *more: str
) -> subprocess.Popen[bytes]:
    """`uns context` as a process of its own, its output in `log`."""
    env = {**os.environ, "UNS_MQTT_PASSWORD": broker.creds.password("services")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "unscli.cli",
                "context",
                "--site",
                str(site),
                "--broker",
                f"mqtt://127.0.0.1:{broker.port}",
                "--record",
                str(record),
                *more,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def state_of(rec: Recorder, host: str) -> bool | None:
    """The last STATE the recorder saw of a host: True online, False offline, None nothing yet."""
    said = [json.loads(p)["online"] for t, p in rec.messages if t == f"spBv1.0/STATE/{host}"]
    return bool(said[-1]) if said else None


def updated(rec: Recorder, machine_id: str) -> int | None:
    """The `updated` of the last retained state JSON published for a machine, as UTC ms."""
    from uns.clock import parse_iso

    said = [
        json.loads(p)["updated"]
        for t, p in rec.messages
        if t.endswith(f"/{machine_id}/state") and json.loads(p)["updated"]
    ]
    return parse_iso(said[-1]) if said else None


def recorded(path: Path | str, at_least: dict[str, int]) -> bool:
    """Whether the record's current state of these machines is as recent as that."""
    store = open_record(path)
    try:
        now = {c.machine_id: c.updated_ms or 0 for c in store.current_states()}
    finally:
        store.close()
    return all(now.get(m, 0) >= ms for m, ms in at_least.items())


def record_of(path: Path | str, until_ms: int) -> dict[str, Any]:
    """What the record says up to `until_ms`: each machine's closed intervals (state, reason) and
    its part counts."""
    store = open_record(path)
    try:
        return {
            m: (
                [
                    (i.start_ms, i.end_ms, i.state.value, i.reason)
                    for i in store.intervals(m, 0, until_ms)
                    if i.end_ms <= until_ms
                ],
                [(p.timestamp, p.delta) for p in store.parts(m, 0, until_ms + 1)],
            )
            for m in MACHINES
        }
    finally:
        store.close()


async def edge_nodes(site: Site, broker: Mosquitto, clock: ScriptClock) -> dict[str, EdgeNode]:
    nodes = {}
    for edge in ("edge-a", "edge-b"):
        node = make_edge_node(site, edge, address(broker, "bridge"), clock)
        for m in site.edge_nodes()[edge]:
            at_rest = [Sample(k, v, T0) for k, v in CNC_AT_REST.items() if k in REPORTED]
            node.device_online(m.id, at_rest)
        node.start(asyncio.get_running_loop())
        track(node._client)
        nodes[edge] = node
    return nodes


def play(
    nodes: dict[str, EdgeNode], site: Site, clock: ScriptClock, steps: list[tuple[int, str, list[Sample]]]
) -> None:
    for t, m, samples in steps:
        clock.now = t
        nodes[site.machine(m).edge_node].data(m, samples)


@pytest.fixture(params=["sqlite", "postgresql"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """Where the one service and the two workers keep their records: two SQLite files, or two
    empty schemas of the tests' PostgreSQL database (URLs, as `uns context --record` takes them)."""
    if request.param == "sqlite":
        return str(tmp_path / "one.db"), str(tmp_path / "two.db")
    import psycopg

    two = str(request.getfixturevalue("pg_url"))
    schema = two.rsplit("search_path%3D", 1)[1] + "_one"  # next to pg_url's, dropped with the database
    with psycopg.connect(postgres_url(two), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return postgres_url(two, schema=schema), two


async def test_two_workers_give_the_record_of_one_and_a_killed_one_is_replaced(
    mosquitto: Mosquitto, tmp_path: Path, records: tuple[str, str]
) -> None:
    one_record, record = records
    steps = scenario(seed=13, steps=400)
    last = steps[-1][0]
    half = len(steps) // 2
    watch = await recorder(
        mosquitto, "services", "spBv1.0/STATE/+", f"{ROOT}/+/+/+/+/state", client_id="watch"
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # one context service: the record to match
        one_site = tmp_path / "one.yaml"
        one_site.write_text(SITE)
        site = parse_site(SITE)
        procs.append(context(one_site, one_record, mosquitto, tmp_path / "one.log"))
        await until(lambda: state_of(watch, "uns-host") is True, "the context service to go online")
        clock = ScriptClock()
        nodes = await edge_nodes(site, mosquitto, clock)
        await until(lambda: all(n.publishable for n in nodes.values()), "the edge nodes to publish")
        play(nodes, site, clock, steps)
        finals = {m: max(t for t, mm, _ in steps if mm == m) for m in MACHINES}
        await until(lambda: all(updated(watch, m) == finals[m] for m in MACHINES), "the last values")
        for node in nodes.values():
            await node.stop()
        procs[0].send_signal(signal.SIGINT)
        assert procs[0].wait(30) == 0, (tmp_path / "one.log").read_text()
        expected = record_of(one_record, last)
        assert all(expected[m][0] and expected[m][1] for m in MACHINES), expected

        # two workers on one record, one killed half way and replaced
        two_site = tmp_path / "two.yaml"
        two_site.write_text(SITE + WORKERS)
        site = parse_site(SITE + WORKERS)
        watch.messages.clear()
        a = context(two_site, record, mosquitto, tmp_path / "a.log", "--worker", "a")
        b = context(two_site, record, mosquitto, tmp_path / "b.log", "--worker", "b")
        procs += [a, b]
        await until(
            lambda: state_of(watch, "uns-host-a") is True and state_of(watch, "uns-host-b") is True,
            "the workers",
        )
        clock = ScriptClock()
        nodes = await edge_nodes(site, mosquitto, clock)
        assert [n.primary_host_id for n in nodes.values()] == ["uns-host-a", "uns-host-b"]
        await until(lambda: all(n.publishable for n in nodes.values()), "the edge nodes to publish")
        play(nodes, site, clock, steps[:half])
        b_done = {m: max((t for t, mm, _ in steps[:half] if mm == m), default=T0) for m in ("m3", "m4")}
        await until(lambda: recorded(record, b_done), "worker b to record the first half")
        # what b recorded is not sent again: its replacement must take it from the record
        nodes["edge-b"]._resend_window = 0.0
        b.send_signal(signal.SIGKILL)
        b.wait(10)
        await until(lambda: state_of(watch, "uns-host-b") is False, "the broker to publish b's Will")
        await until(lambda: not nodes["edge-b"].publishable, "edge-b to notice its host is gone")
        play(nodes, site, clock, steps[half:])  # edge-b buffers, edge-a goes on live

        # a worker for a partition that a live one holds refuses to start, and says why
        twin = context(two_site, record, mosquitto, tmp_path / "twin.log", "--worker", "a")
        assert twin.wait(30) == 1
        said = (tmp_path / "twin.log").read_text()
        assert "context worker 'a' (host id uns-host-a; edge nodes dayton/edge-a) is held by another" in said
        assert "spBv1.0/STATE/uns-host-a says online since" in said

        # b's replacement takes its partition over from the record and the buffer
        procs.append(context(two_site, record, mosquitto, tmp_path / "b2.log", "--worker", "b"))
        await until(lambda: state_of(watch, "uns-host-b") is True, "b's replacement to go online")
        deadline = time.monotonic() + 60
        while record_of(record, last) != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for node in nodes.values():
            await node.stop()
        assert record_of(record, last) == expected
        # the second half of edge-b (and only that) reached the record as the replacement's backfill
        second = len([s for s in steps[half:] if s[1] in ("m3", "m4")])
        replayed = nodes["edge-b"].counters["replayed"]
        first = len([s for s in steps[:half] if s[1] in ("m3", "m4")])
        assert second <= replayed < second + first // 4, replayed  # (and a few snapshots)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(30)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.log")))  # noqa: ASYNC240
    assert [p.returncode for p in procs if p is not b] == [0] * (len(procs) - 1), logs


# -- commands -----------------------------------------------------------------------------------
async def worker(
    site: Site, name: str, record: Path, broker: Mosquitto
) -> tuple[ContextService, RecordStore]:
    store = RecordStore(record)
    service = ContextService(site, store, address(broker, "services"), WallClock(), name)
    service.start(asyncio.get_running_loop())
    track(service._client)
    deadline = time.monotonic() + 10
    while service._client is None or not service._client.connected:
        assert time.monotonic() < deadline, f"worker {name} never reached the broker"
        await asyncio.sleep(0.05)
    return service, store


async def test_each_command_is_answered_by_the_worker_that_keeps_its_machine(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = parse_site(SITE + WORKERS)
    record = tmp_path / "record.db"
    replies = await recorder(
        mosquitto, "services", f"{ROOT}/_reply/#", "spBv1.0/STATE/+", client_id="replies"
    )
    (a, store_a), (b, store_b) = [await worker(site, w, record, mosquitto) for w in ("a", "b")]
    assert (sorted(a.trackers), sorted(b.trackers)) == (["m1", "m2"], ["m3", "m4"])
    sender = CommandSender(address(mosquitto, "api"), ROOT)
    sender.start(asyncio.get_running_loop())
    track(sender._client)
    while sender._client is None or not sender._client.connected:
        await asyncio.sleep(0.05)

    def op(job: str, machine_id: str) -> dict[str, Any]:
        return {"job": job, "operation": "10", "machine": machine_id, "program": "O100", "quantity": 5}

    commands: list[tuple[str, str, dict[str, Any]]] = [
        ("login a", "operator", {"action": "login", "machine": "m1", "operator": "ann"}),
        ("login b", "operator", {"action": "login", "machine": "m3", "operator": "bob"}),
        ("scrap b", "parts", {"machine": "m4", "result": "scrap"}),
        ("dispatch b", "dispatch", {"machine": "m3", "operations": [op("J1", "m3")]}),
        ("move to a", "dispatch", {"machine": "m1", "operations": [op("J1", "m1")]}),
        ("cell of a and b", "dispatch", {"cell": "machining/mills/cell-2", "operations": [op("J2", "m2")]}),
        ("cell of b", "dispatch", {"cell": "machining/mills/cell-3", "operations": [op("J3", "m4")]}),
        ("job hold", "hold", {"action": "open", "hold": "H0", "job": "J1"}),
        ("hold b", "hold", {"action": "open", "hold": "H1", "machine": "m3"}),
        ("close b", "hold", {"action": "close", "hold": "H1"}),
        ("unknown machine", "operator", {"action": "login", "machine": "zz", "operator": "ann"}),
        ("bad", "operator", {"action": "login", "machine": 5}),
    ]
    results = {name: await sender.send(kind, body) for name, kind, body in commands}
    ok = {name for name, r in results.items() if r.ok}
    assert ok == {"login a", "login b", "scrap b", "dispatch b", "cell of b", "hold b", "close b"}, results
    assert results["move to a"].status == 409
    assert results["move to a"].error == (
        "dispatch operations[0] (J1/10): J1/10 is planned on m3, which context worker 'b' keeps:"
        " cancel it there first (dispatch_update with cancel: true), then plan it here"
    )
    assert results["cell of a and b"].status == 409
    assert results["cell of a and b"].error == (
        "dispatch: the machines of cell machining/mills/cell-2 are kept by several context workers"
        " ('a': m2; 'b': m3): send a dispatch for each machine"
    )
    assert results["job hold"].status == 422
    assert "a hold names its machine" in (results["job hold"].error or "")
    assert results["unknown machine"].status == 404
    assert results["bad"].status == 422
    # in the record and on the worker that keeps the machine, nowhere else
    assert b.contexts["m3"].operator_at(b.clock.now_ms()) == "bob"
    assert a.contexts["m1"].operator_at(a.clock.now_ms()) == "ann"
    assert [o.key for o in store_a.operations()] == [("J1", "10"), ("J3", "10")]
    assert {o.machine_id for o in store_a.operations()} == {"m3", "m4"}
    assert [h.hold_id for h in b.holds] == ["H1"]
    assert [h.hold_id for h in a.holds] == []
    # every worker heard every command: each answered its own, the lead the refusals, none twice
    applied = (a.host.counters["commands_applied"], b.host.counters["commands_applied"])
    assert applied == (1, 6)
    refused = (a.host.counters["commands_refused"], b.host.counters["commands_refused"])
    assert refused == (5, 0)
    for service, store in ((a, store_a), (b, store_b)):
        await service.stop()
        store.close()
    await until(
        lambda: state_of(replies, "uns-host-a") is False and state_of(replies, "uns-host-b") is False,
        "both to stop",
    )
    answered = [json.loads(p)["id"] for t, p in replies.messages if "/_reply/" in t]
    assert len(answered) == len(set(answered)) == len(results)  # (everything before STATE came first)
    sender.stop()


async def test_a_partition_held_by_a_live_worker_is_refused_and_free_once_it_died(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = parse_site(SITE + WORKERS)
    watch = await recorder(mosquitto, "services", "spBv1.0/STATE/+", client_id="watch")
    services = address(mosquitto, "services")
    await check_unheld(site, "a", services)  # nothing said yet: free
    a, store = await worker(site, "a", tmp_path / "record.db", mosquitto)
    await until(lambda: state_of(watch, "uns-host-a") is True, "a to go online")
    with pytest.raises(PartitionHeldError) as info:
        await check_unheld(site, "a", services)
    assert str(info.value).startswith(
        "context worker 'a' (host id uns-host-a; edge nodes dayton/edge-a) is held by another live"
        " worker: spBv1.0/STATE/uns-host-a says online since "
    )
    await check_unheld(site, "b", services)  # the other partition is free
    assert a._client is not None
    a._client.abort()  # dies without a word: the broker publishes its Will
    await until(lambda: state_of(watch, "uns-host-a") is False, "a's Will")
    await check_unheld(site, "a", services)
    a._stopped = True
    if a._health_task is not None:
        a._health_task.cancel()
    store.close()


def test_uns_context_names_the_workers_when_the_worker_is_wrong_or_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from unscli.cli import main

    monkeypatch.setenv("UNS_MQTT_PASSWORD", "not-used")
    (tmp_path / "two.yaml").write_text(SITE + WORKERS)
    (tmp_path / "one.yaml").write_text(SITE)
    record = ["--record", str(tmp_path / "record.db")]
    assert main(["context", "--site", str(tmp_path / "two.yaml"), *record, "--worker", "c"]) == 2
    assert "uns: no context worker 'c' in the site model (its workers: a, b)" in capsys.readouterr().err
    assert main(["context", "--site", str(tmp_path / "two.yaml"), *record]) == 2
    assert "say which one this is (uns context --worker NAME)" in capsys.readouterr().err
    assert main(["context", "--site", str(tmp_path / "one.yaml"), *record, "--worker", "a"]) == 2
    assert "the site model has no context.workers" in capsys.readouterr().err
    assert not (tmp_path / "record.db").exists()  # refused before anything was opened
