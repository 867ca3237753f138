"""The context service's output under load: a machine's retained `state` goes out when it changes in
more than `updated` (or once a second while values come, and once after the last; a reconnect
republishes every machine), and the record's writes gather for up to `record_gap_s`, losing and
reordering nothing (an explicit flush writes at once).

Real Mosquitto and real stores (SQLite and PostgreSQL). The test holds the service's clock for these
rules (`time.monotonic` as app.py sees it) and its timers (what it asks of its event loop runs when
the test says), so that "within the second" and "after it" do not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.context import app
from services.context.app import ContextService
from services.context.record import RecordStore
from services.context.state import Interval, MachineState
from tests.helpers import Held, Recorder, address, recorder, track
from tests.integration.test_sparkplug_mqtt import DEFS, SITE
from tests.services.test_backfill import Clock, ready
from tests.services.test_record_outage_cases import Outage
from uns.broker import Mosquitto
from uns.clock import iso
from uns.mqtt import BrokerAddress
from uns.site import parse_site
from uns.sparkplug.edge import EdgeSession, Sample

S = MachineState
TWO = SITE + (
    "              - id: vf2-02\n"
    "                source:\n"
    "                  protocol: opcua\n"
    "                  endpoint: opc.tcp://127.0.0.1:4841\n"
    "                  signals: {execution: a, mode: b, part_count: c, alarm_code: d, estop: e}\n"
)
T0 = 1_795_100_000_000


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Held:
    h = Held()

    class Time:
        monotonic = staticmethod(h.monotonic)

    monkeypatch.setattr(app, "time", Time)
    return h


def states(tree: Recorder, machine: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in tree.messages if t.endswith(f"/{machine}/state")]


def state(check: Callable[[dict[str, Any]], bool]) -> Callable[[str, bytes], bool]:
    """A predicate on the tree's `state` documents."""
    return lambda topic, payload: topic.endswith("/state") and check(json.loads(payload))


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_state_goes_out_when_it_changes_or_once_a_second(
    mosquitto: Mosquitto, held: Held, tmp_path: Path
) -> None:
    store = RecordStore(tmp_path / "record.db")
    tree = await recorder(mosquitto, "viewer", "acme/#", client_id="viewer")
    service = ContextService(parse_site(TWO), store, address(mosquitto, "services"), Clock())
    service.start(asyncio.get_running_loop())
    track(service._client)
    service._loop = held  # type: ignore[assignment]  # its timers run when the test says
    edge = await recorder(mosquitto, "bridge", client_id="raw-edge")
    assert edge.client is not None
    session = EdgeSession("dayton", "edge1", {"vf2-01": DEFS["vf2-01"], "vf2-02": DEFS["vf2-01"]})
    session.new_connection(0)
    for machine in ("vf2-01", "vf2-02"):
        session.device_online(machine, T0, ready(T0))
    for message in session.births(T0):
        edge.client.publish(*message, qos=1)
    tracker = service.trackers["vf2-01"]

    async def send(samples: list[Sample], ts: int) -> None:
        msg = session.data("vf2-01", samples, ts)
        assert msg is not None
        edge.client.publish(*msg, qos=1)  # type: ignore[union-attr]
        await until(lambda: tracker.updated_ms == ts, f"the value at {ts}")
        held.run(0.02)  # the flush the message asked for

    await until(lambda: service.trackers["vf2-02"].state is S.IDLE, "the births")
    held.run()
    await tree.wait_for(state(lambda d: d["machine"] == "vf2-02" and d["state"] == "idle"))
    seen = len(states(tree, "vf2-01"))
    assert states(tree, "vf2-01")[-1]["updated"] == iso(T0)

    # a value that changes nothing but `updated`: logged, but no state within the second, nor a
    # current_state row (the record has the value in its event log)
    await send([Sample("mode", "AUTOMATIC", T0 + 100)], T0 + 100)
    held.run(service.record_gap_s)  # (the record's write, gathered)
    assert (T0 + 100, "mode", "AUTOMATIC") in store.signal_events("vf2-01", T0, 100)
    await asyncio.sleep(0.3)  # (what would have been published has arrived)
    assert len(states(tree, "vf2-01")) == seen
    assert (row := store.current_state("vf2-01")) is not None
    assert row.updated_ms == T0
    # once the second is over it goes out all the same, though no value came since
    [due] = held.pending("_refresh_due")
    assert due == pytest.approx(1000 + 1.0 + 0.05)  # (the births' state went out at 1000)
    held.run(due - held.now)
    [(topic, _)] = await tree.wait_for(state(lambda d: d["updated"] == iso(T0 + 100)))
    assert topic.endswith("/vf2-01/state")
    assert (row := store.current_state("vf2-01")) is not None
    assert row.updated_ms == T0 + 100

    # a change of state goes out at once (no time passes on the service's clock)
    await send([Sample("execution", "ACTIVE", T0 + 200)], T0 + 200)
    await tree.wait_for(state(lambda d: d["state"] == "running"))
    # so does a part (the document's count), and a value a second after the last state
    await send([Sample("part_count", 11, T0 + 300)], T0 + 300)
    await tree.wait_for(state(lambda d: d["part_count"] == 11))
    held.now += 1.0
    await send([Sample("mode", "AUTOMATIC", T0 + 400)], T0 + 400)
    await tree.wait_for(state(lambda d: d["updated"] == iso(T0 + 400)))
    assert not held.pending("_refresh_due")  # (nothing waits for a refresh: it went with the value)

    # a reconnect republishes every machine, changed or not
    before = {m: len(states(tree, m)) for m in ("vf2-01", "vf2-02")}
    service.on_connected()  # (as the client calls it on every connection)
    held.run(0.02)
    await tree.wait_for(lambda t, p: t.endswith("vf2-02/state"), count=before["vf2-02"] + 1)
    await tree.wait_for(lambda t, p: t.endswith("vf2-01/state"), count=before["vf2-01"] + 1)
    assert states(tree, "vf2-02")[-1] == states(tree, "vf2-02")[-2]
    await service.stop()
    store.close()


def test_record_writes_gather_under_load_and_lose_nothing(
    make_record: Callable[..., RecordStore], held: Held, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_record()
    clock = Clock()
    service = ContextService(parse_site(SITE), store, BrokerAddress("127.0.0.1", 1), clock)
    service._loop = held  # type: ignore[assignment]
    service.record_gap_s = 0.1  # (the test's bursts, 10 ms a message, stay within it)
    edge = EdgeSession("dayton", "edge1", DEFS)
    edge.new_connection(0)
    edge.device_online("vf2-01", 1000, ready(1000))
    for message in edge.births(1000):
        service.on_message(*message)
    held.run()  # after a quiet spell: written at once
    assert store.current_state("vf2-01") is not None

    def data(samples: list[Sample], ts: int) -> None:
        msg = edge.data("vf2-01", samples, ts)
        assert msg is not None
        clock.now = ts
        service.on_message(*msg)
        held.run(0.01)

    def logged() -> list[tuple[int, str, Any]]:
        return store.signal_events("vf2-01", 0, 1000)

    # under load: each flush publishes (there is no client here), the record waits for the gap
    for i in range(6):
        data([Sample("execution", "ACTIVE" if i % 2 == 0 else "READY", 2000 + i)], 2000 + i)
    data([Sample("part_count", 11, 2006)], 2006)
    assert store.intervals("vf2-01", 1500, 3000) == []
    assert [ts for ts, _, _ in logged()] == [1000] * 5
    [due] = held.pending("_write_due")
    assert due == pytest.approx(1000 + service.record_gap_s)  # (the births' write was at 1000)
    held.run(due - held.now)  # one transaction takes all of it, in order
    assert [(i.start_ms, i.end_ms, i.state) for i in store.intervals("vf2-01", 1000, 3000)] == [
        (1000, 2000, S.IDLE),
        (2000, 2001, S.RUNNING),
        (2001, 2002, S.IDLE),
        (2002, 2003, S.RUNNING),
        (2003, 2004, S.IDLE),
        (2004, 2005, S.RUNNING),
    ]
    assert [ts for ts, _, _ in logged()][5:] == [2000, 2001, 2002, 2003, 2004, 2005, 2006]
    assert (row := store.current_state("vf2-01")) is not None
    assert (row.state, row.since_ms, row.counter) == (S.IDLE, 2005, 11)

    # enough waiting values write before the gap is over
    service.record_batch = 3
    data([Sample("execution", "ACTIVE", 2100)], 2100)
    data([Sample("execution", "READY", 2101)], 2101)
    assert len(logged()) == 12
    data([Sample("execution", "ACTIVE", 2102)], 2102)
    assert len(logged()) == 15
    service.record_batch = app.RECORD_BATCH

    # an explicit flush (a rebuild, a stop, the record's retry) writes at once
    data([Sample("execution", "READY", 2200)], 2200)
    assert len(logged()) == 15
    service.flush()
    assert len(logged()) == 16
    assert store.intervals("vf2-01", 2102, 2200) == [Interval("vf2-01", 2102, 2200, S.RUNNING)]

    # a gathered write the record cannot take keeps everything for the retry
    outage = Outage(store, monkeypatch)
    held.run(1.0)
    data([Sample("execution", "ACTIVE", 2300)], 2300)
    assert len(logged()) == 17  # (after a quiet spell: at once)
    data([Sample("execution", "READY", 2301)], 2301)
    data([Sample("part_count", 12, 2302)], 2302)
    outage.down = True
    [due] = held.pending("_write_due")
    held.run(due - held.now)
    assert service._record_retry is not None
    data([Sample("execution", "ACTIVE", 2303)], 2303)  # (the host is offline: kept, not flushed)
    outage.down = False
    service.flush(retry=True)
    assert service._record_retry is None
    assert [ts for ts, _, _ in logged()][16:] == [2300, 2301, 2302, 2303]
    assert [(i.start_ms, i.end_ms, i.state) for i in store.intervals("vf2-01", 2200, 3000)] == [
        (2200, 2300, S.IDLE),
        (2300, 2301, S.RUNNING),
        (2301, 2303, S.IDLE),
    ]
    assert (row := store.current_state("vf2-01")) is not None
    assert (row.state, row.since_ms, row.updated_ms, row.counter) == (S.RUNNING, 2303, 2303, 12)
