"""Backfill on the host: buffered history fills the record where the host could not hear, exactly
once however often it comes; where nothing was buffered, comms_loss stays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.context.app import ContextService
from services.context.record import RecordStore
from services.context.state import Interval, MachineState
from tests.integration.test_sparkplug_mqtt import DEFS, SITE
from uns.mqtt import BrokerAddress
from uns.site import parse_site
from uns.sparkplug.edge import EdgeSession, Sample

S = MachineState


class Clock:
    speed = 1.0

    def __init__(self) -> None:
        self.now = 0

    def now_ms(self) -> int:
        return self.now


def ready(ts: int, count: int = 10) -> list[Sample]:
    return [
        Sample("execution", "READY", ts),
        Sample("mode", "AUTOMATIC", ts),
        Sample("part_count", count, ts),
        Sample("alarm_code", 0, ts),
        Sample("estop", False, ts),
    ]


def setup(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> tuple[ContextService, RecordStore, EdgeSession, Clock]:
    store = make_record("record")
    clock = Clock()
    service = ContextService(parse_site(SITE), store, BrokerAddress("127.0.0.1", 1), clock)
    edge = EdgeSession("dayton", "edge1", DEFS)
    edge.new_connection(0)
    edge.device_online("vf2-01", 1000, ready(1000))
    for message in edge.births(1000):
        service.on_message(*message)
    msg = edge.data("vf2-01", [Sample("execution", "ACTIVE", 2000)], 2000)
    assert msg is not None
    service.on_message(*msg)
    clock.now = 2500
    service.on_disconnected("broker gone")  # the host hears nothing from here
    service.flush()
    return service, store, edge, clock


def reconnect(service: ContextService, edge: EdgeSession, clock: Clock) -> None:
    clock.now = 10_000
    edge.record("vf2-01", [Sample("execution", "READY", 9000), Sample("part_count", 11, 7000)])
    for message in edge.births(10_000):
        service.on_message(*message)
    service.flush()


def history(edge: EdgeSession) -> list[tuple[str, bytes]]:
    """What the edge node buffered: whole snapshots from its last live send (2000) on."""
    base = {s.name: s for s in ready(1000)}
    rows = [
        (2000, [Sample("execution", "ACTIVE", 2000)]),
        (3000, [Sample("execution", "FEED_HOLD", 3000)]),
        (5000, [Sample("execution", "ACTIVE", 5000)]),
        (7000, [Sample("execution", "ACTIVE", 5000), Sample("part_count", 11, 7000)]),
        (9000, [Sample("execution", "READY", 9000)]),
    ]
    out = []
    for ts, samples in rows:
        base.update({s.name: s for s in samples})
        out.append(edge.historical("vf2-01", list(base.values()), ts))
    return out


def test_history_fills_the_gap_once_however_often_it_comes(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> None:
    service, store, edge, clock = setup(make_record, tmp_path)
    assert store.intervals("vf2-01", 0, 20_000) == [
        Interval("vf2-01", 1000, 2000, S.IDLE),
        Interval("vf2-01", 2000, 2500, S.RUNNING),
    ]
    reconnect(service, edge, clock)
    replay = history(edge)
    for message in replay:
        service.on_message(*message)
    service.flush()
    expected = [
        Interval("vf2-01", 1000, 2000, S.IDLE),
        Interval("vf2-01", 2000, 3000, S.RUNNING),
        Interval("vf2-01", 3000, 5000, S.IDLE),
        Interval("vf2-01", 5000, 9000, S.RUNNING),
    ]
    assert store.intervals("vf2-01", 0, 20_000) == expected
    assert [(p.timestamp, p.delta) for p in store.parts("vf2-01", 0, 20_000)] == [(7000, 1)]
    tracker = service.trackers["vf2-01"]
    assert (tracker.state, tracker.since_ms) == (S.IDLE, 9000)
    # the same history again (a replay after another reconnect): nothing changes
    for message in history(edge):
        service.on_message(*message)
    service.flush()
    assert store.intervals("vf2-01", 0, 20_000) == expected
    assert [(p.timestamp, p.delta) for p in store.parts("vf2-01", 0, 20_000)] == [(7000, 1)]
    assert service.host.counters["history_repeated"] > 0
    store.close()


def test_where_nothing_was_buffered_comms_loss_stays(
    make_record: Callable[..., RecordStore], tmp_path: Path
) -> None:
    service, store, edge, clock = setup(make_record, tmp_path)
    reconnect(service, edge, clock)
    intervals = store.intervals("vf2-01", 0, 20_000)
    assert intervals[-1] == Interval("vf2-01", 2500, 9000, S.COMMS_LOSS)
    assert sum(p.delta for p in store.parts("vf2-01", 0, 20_000)) == 1  # the part made unseen still counts
    store.close()
