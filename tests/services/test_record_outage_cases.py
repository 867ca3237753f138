"""The context service while its record cannot be written, the cases around the clean cut of
tests/integration/test_record_outage.py: a rebuild (from a backfill) the record could not take is
done with the retry, not forgotten; commands are refused with 503 (nothing half done); the health
tick goes on; a stop while the record is back writes what was kept. On both real stores; the outage
is the store's own RecordUnavailableError raised by a switch on the real store's connection (a real
database cannot be made to fail at one chosen call)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.context import app
from services.context.record import RecordStore, RecordUnavailableError
from services.context.state import Interval, MachineState
from tests.helpers import Held
from tests.services.test_backfill import history, reconnect, setup
from uns.sparkplug.edge import Sample

S = MachineState


class Outage:
    """Makes the store's connections fail while `down` (as a database gone would)."""

    def __init__(self, store: RecordStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        use, transaction = store._use, store._transaction

        @contextlib.contextmanager
        def failing(real: Callable[..., Any], *args: Any) -> Iterator[Any]:
            if self.down:
                raise RecordUnavailableError("the test's outage")
            with real(*args) as db:
                yield db

        monkeypatch.setattr(store, "_use", lambda: failing(use))
        monkeypatch.setattr(store, "_transaction", lambda *a: failing(transaction, *a))


EXPECTED = [
    Interval("vf2-01", 1000, 2000, S.IDLE),
    Interval("vf2-01", 2000, 3000, S.RUNNING),
    Interval("vf2-01", 3000, 5000, S.IDLE),
    Interval("vf2-01", 5000, 9000, S.RUNNING),
]


def test_a_rebuild_the_record_could_not_take_is_done_with_the_retry(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, edge, clock = setup(make_record, tmp_path)
    reconnect(service, edge, clock)
    real = store.replace_from
    calls = []

    def once(*args: Any) -> None:  # the backfill is in; the recomputation after it cannot be written
        calls.append(args[0])
        if len(calls) == 1:
            raise RecordUnavailableError("the test's outage")
        real(*args)

    monkeypatch.setattr(store, "replace_from", once)
    for message in history(edge):
        service.on_message(*message)
    service.flush()
    assert service._record_retry is not None  # offline, waiting to try again
    assert store.intervals("vf2-01", 0, 20_000)[-1].state is S.COMMS_LOSS  # not recomputed yet
    assert service.trackers["vf2-01"].state is S.IDLE  # the tracker as the record has it
    service.flush(retry=True)
    assert service._record_retry is None
    assert store.intervals("vf2-01", 0, 20_000) == EXPECTED
    assert (service.trackers["vf2-01"].state, service.trackers["vf2-01"].since_ms) == (S.IDLE, 9000)
    assert calls == ["vf2-01", "vf2-01"]


def test_while_the_record_cannot_be_written_commands_are_refused_and_health_goes_on(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, edge, clock = setup(make_record, tmp_path)
    outage = Outage(store, monkeypatch)
    outage.down = True
    reconnect(service, edge, clock)  # births: a closed interval the record cannot take
    assert service._record_retry is not None
    body = {"id": "c-1", "action": "login", "machine": "vf2-01", "operator": "ann"}
    refused = service.command("operator", json.dumps(body).encode(), via="test")
    assert (refused.ok, refused.status) == (False, 503)
    assert refused.error == "the record cannot be written now: send it again later"

    async def one_tick() -> None:
        service.health_interval_s = 0.01
        task = asyncio.create_task(service._report_health(0.01))
        await asyncio.sleep(0.1)
        assert not task.done()  # the record's copy of health skipped; the task lives on
        task.cancel()

    asyncio.run(one_tick())
    outage.down = False
    service.flush(retry=True)
    assert service._record_retry is None
    assert store.intervals("vf2-01", 0, 20_000)[-1] == Interval("vf2-01", 2500, 9000, S.COMMS_LOSS)
    again = service.command("operator", json.dumps(body).encode(), via="test")
    assert again.ok, again.error  # the same id: not applied before (it was refused)


def test_a_stop_writes_what_was_kept_when_the_record_is_back(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, edge, clock = setup(make_record, tmp_path)
    outage = Outage(store, monkeypatch)
    outage.down = True
    reconnect(service, edge, clock)
    assert service._record_retry is not None
    outage.down = False  # back, before the retry's time came
    clock.now = 12_000
    asyncio.run(service.stop())
    recorded = store.intervals("vf2-01", 0, 20_000)
    assert recorded[-2:] == [
        Interval("vf2-01", 2500, 9000, S.COMMS_LOSS),
        Interval("vf2-01", 9000, 12_000, S.IDLE),
    ]


class _Client:
    """What the host publishes (no broker: the service is driven message by message)."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        self.sent.append((topic, payload))
        return True


def test_an_edge_node_that_sends_on_while_the_record_is_down_is_held_within_a_bound(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge node that ignores the host's STATE keeps sending while the record cannot be written.
    What is held stays within `outage_values_max`: past it the machine is comms_loss from its first
    value not kept, the rest is counted, and its edge node is asked for a rebirth once the host is
    online again. Nothing before the bound is lost."""
    service, store, edge, clock = setup(make_record, tmp_path)
    outage = Outage(store, monkeypatch)
    outage.down = True
    reconnect(service, edge, clock)  # births at 10,000 (READY since 9,000): held, the record is down
    assert service._record_retry is not None
    service.outage_values_max = len(service._events) + 6
    executions = ["ACTIVE", "READY"] * 10
    for n, execution in enumerate(executions):  # one value each, a second apart, from 11,000 on
        msg = edge.data("vf2-01", [Sample("execution", execution, 11_000 + 1000 * n)], 11_000 + 1000 * n)
        assert msg is not None
        clock.now = 11_000 + 1000 * n
        service.on_message(*msg)
        service.flush()
    held = len(service._events)
    assert held <= service.outage_values_max + 1, "one comms_loss marker past the bound, no more"
    assert service.host.counters["values_dropped"] == 20 - 6
    tracker = service.trackers["vf2-01"]
    assert (tracker.state, tracker.since_ms) == (S.COMMS_LOSS, 17_000)  # the first value not kept

    outage.down = False
    service.flush(retry=True)
    assert service._record_retry is None
    intervals = [(i.start_ms, i.end_ms, i.state) for i in store.intervals("vf2-01", 9000, 20_000)]
    assert intervals == [  # the six values kept, each its own state, then comms_loss
        (9000, 11_000, S.IDLE),
        (11_000, 12_000, S.RUNNING),
        (12_000, 13_000, S.IDLE),
        (13_000, 14_000, S.RUNNING),
        (14_000, 15_000, S.IDLE),
        (15_000, 16_000, S.RUNNING),
        (16_000, 17_000, S.IDLE),
    ]
    # what it sends before its rebirth is not taken either: the machine's values are not whole
    dropped = service.host.counters["values_dropped"]
    msg = edge.data("vf2-01", [Sample("execution", "ACTIVE", 30_000)], 30_000)
    assert msg is not None
    service.on_message(*msg)
    service.flush()
    assert service.host.counters["values_dropped"] == dropped + 1
    assert service.trackers["vf2-01"].state is S.COMMS_LOSS
    # online again on a new connection: STATE online, and the edge node asked for a rebirth
    timers, client = _online_again(service, monkeypatch)
    assert [t for t, _ in client.sent if "/NCMD/" in t] == ["spBv1.0/dayton/NCMD/edge1"]
    client.sent.clear()
    service.on_connected()  # a reconnect at once: the host session holds the request back ...
    assert not [t for t, _ in client.sent if "/NCMD/" in t]
    every = 2 * service.host.rebirth_interval_s
    timers.run(every - 0.1)
    assert not [t for t, _ in client.sent if "/NCMD/" in t]
    timers.run(0.1)  # ... and it is asked again while it is not born (the first may have been lost)
    assert [t for t, _ in client.sent if "/NCMD/" in t] == ["spBv1.0/dayton/NCMD/edge1"]
    clock.now = 40_000
    for message in edge.births(40_000):  # its rebirth: the machine's values whole again
        service.on_message(*message)
    service.flush()
    assert service.trackers["vf2-01"].state is not S.COMMS_LOSS
    client.sent.clear()
    timers.run(every)
    assert not [t for t, _ in client.sent if "/NCMD/" in t]  # born: nothing more is asked
    assert timers.pending("_rebirths_retry_due") == []


def _online_again(service: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Held, _Client]:
    """The host online again on a new connection (`on_connected`), its timers and clock the test's."""
    timers = Held()
    timers.now = time.monotonic()  # (on from the clock the host session has seen so far)
    monkeypatch.setattr(app, "time", timers)
    service._loop = timers  # (its timers run when the test says)
    client = _Client()
    service._client = client
    service.on_connected()
    return timers, client


def _not_kept_when_back(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any, Any]:
    """vf2-01's value at 11,000 past the bound while the record is down (not kept), then the record
    back: (service, edge, clock)."""
    service, store, edge, clock = setup(make_record, tmp_path)
    outage = Outage(store, monkeypatch)
    outage.down = True
    reconnect(service, edge, clock)
    service.outage_values_max = len(service._events)
    msg = edge.data("vf2-01", [Sample("execution", "ACTIVE", 11_000)], 11_000)
    assert msg is not None
    clock.now = 11_000
    service.on_message(*msg)  # past the bound: not kept
    outage.down = False
    service.flush(retry=True)
    assert service._record_retry is None
    return service, edge, clock


def test_a_machine_not_kept_whose_edge_node_never_answers_is_taken_again(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge node that ignores the host's STATE may ignore rebirth requests too: after REBIRTH_ASKS
    of them unanswered, its machine's data is taken as it comes again (said in the log), rather than
    the machine staying comms_loss until the node happens to rebirth."""
    service, edge, clock = _not_kept_when_back(make_record, tmp_path, monkeypatch)
    timers, client = _online_again(service, monkeypatch)
    every = 2 * service.host.rebirth_interval_s
    for _ in range(app.REBIRTH_ASKS - 1):
        timers.run(every)
    assert len([t for t, _ in client.sent if "/NCMD/" in t]) == app.REBIRTH_ASKS
    assert "vf2-01" in service._not_kept
    timers.run(every)  # no answer to any: taken again, and nothing more is asked
    assert "vf2-01" not in service._not_kept
    assert len([t for t, _ in client.sent if "/NCMD/" in t]) == app.REBIRTH_ASKS
    assert timers.pending("_rebirths_retry_due") == []
    dropped = service.host.counters["values_dropped"]
    msg = edge.data("vf2-01", [Sample("execution", "READY", 60_000)], 60_000)
    assert msg is not None
    clock.now = 60_000
    service.on_message(*msg)
    assert service.host.counters["values_dropped"] == dropped
    assert service.trackers["vf2-01"].signals["execution"] == "READY"


def test_a_machine_not_kept_whose_edge_node_is_in_conflict_waits_for_the_conflict_to_end(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sessions claim the edge node: the host session asks it for a rebirth only when that
    conflict ends, so the retry asks nothing meanwhile and keeps its requests for after it."""
    service, _, _ = _not_kept_when_back(make_record, tmp_path, monkeypatch)
    in_conflict = [("dayton", "edge1")]
    monkeypatch.setattr(type(service.host), "conflicts", property(lambda _: tuple(in_conflict)))
    timers, client = _online_again(service, monkeypatch)
    every = 2 * service.host.rebirth_interval_s
    for _ in range(app.REBIRTH_ASKS + 1):
        timers.run(every)
    assert not [t for t, _ in client.sent if "/NCMD/" in t]
    assert service.host.counters["rebirths_withheld"] == 0
    assert "vf2-01" in service._not_kept  # still waiting, with all its requests left
    in_conflict.clear()
    timers.run(every)
    assert [t for t, _ in client.sent if "/NCMD/" in t] == ["spBv1.0/dayton/NCMD/edge1"]
