"""The host against an edge node of the tests' own (tests/foreign_edge.py: payloads built with the
protobuf module, as Eclipse Tahu's JavaScript client builds them), and against two edge nodes
claiming one edge node id. Without a broker; the record side is tests/services/test_foreign_edge.py."""

from __future__ import annotations

import logging
import random

import pytest

from tests.foreign_edge import ForeignNode, Message
from uns.sparkplug import sparkplug_b_pb2 as pb
from uns.sparkplug.host import CONFLICT_METRIC, Death, Event, HostSession, MetricsUpdate, RebirthRequest

DEVICES: dict[str, dict[str, bool | int | str]] = {"m1": {"execution": "READY", "part_count": 100}}
KEY = ("g", "e")


def node(bdseq: int = 0, *, stamped: bool = False) -> ForeignNode:
    return ForeignNode("g", "e", DEVICES, bdseq=bdseq, stamped=stamped)


def feed(host: HostSession, messages: list[Message] | Message, now: float) -> list[Event]:
    if isinstance(messages, tuple):
        messages = [messages]
    return [e for m in messages for e in host.handle(*m, now)]


def counts(events: list[Event]) -> list[int]:
    """The part counters the events carry, in order."""
    return [
        m.value
        for e in events
        if isinstance(e, MetricsUpdate)
        for m in e.metrics
        if m.name == "part_count" and isinstance(m.value, int)
    ]


def conflict_flags(events: list[Event]) -> list[object]:
    return [
        m.value
        for e in events
        if isinstance(e, MetricsUpdate)
        for m in e.metrics
        if m.name == CONFLICT_METRIC
    ]


# -- what the specification allows ----------------------------------------------------------------
def test_births_and_a_death_without_session_metric_timestamps_are_accepted() -> None:
    host, a = HostSession(), node(3)
    events = feed(host, a.births(1000), 0.0)
    assert [e.device_id for e in events if isinstance(e, MetricsUpdate)] == [None, "m1"]
    assert len(events) == 2
    assert host.counters["malformed"] == 0
    assert host.is_online("g", "e", "m1")
    [update] = feed(host, a.parts("m1", 2000), 1.0)
    assert counts([update]) == [101]
    assert feed(host, a.will(0), 2.0) == [Death("g", "e", None, 0, ("m1",))]
    assert host.counters["deaths"] == 1
    assert not host.is_online("g", "e")


def test_an_ndeath_without_any_timestamp_still_ends_the_session() -> None:
    host, a = HostSession(), node(3)
    feed(host, a.births(1000), 0.0)
    bare = pb.SpbPayload()
    bare.metrics.add(name="bdSeq", datatype=8, long_value=3)
    assert feed(host, ("spBv1.0/g/NDEATH/e", bare.SerializeToString()), 1.0) == [
        Death("g", "e", None, 0, ("m1",))
    ]


def test_births_and_data_still_need_their_device_metric_timestamps() -> None:
    host, a = HostSession(), node(3)
    feed(host, a.births(1000), 0.0)
    msg = pb.SpbPayload(timestamp=5, seq=2)
    msg.metrics.add(alias=2, int_value=7)  # no timestamp: when was it seen?
    assert feed(host, ("spBv1.0/g/DDATA/e/m1", msg.SerializeToString()), 1.0) == []
    assert host.counters["malformed"] == 1


@pytest.mark.parametrize("payload", [b"\xff\xff", b"", pb.SpbPayload(timestamp=5).SerializeToString()])
def test_a_death_that_cannot_be_read_still_ends_the_nodes_data(payload: bytes) -> None:
    host, a = HostSession(), node(3)
    feed(host, a.births(1000), 0.0)
    events = feed(host, ("spBv1.0/g/NDEATH/e", payload), 1.0)
    assert events[0] == Death(
        "g", "e", None, events[0].timestamp if isinstance(events[0], Death) else 0, ("m1",)
    )
    assert isinstance(events[1], RebirthRequest)  # in case it lives: it says so with its births
    assert host.counters["unreadable_deaths"] == 1
    assert not host.is_online("g", "e")
    assert feed(host, a.births(3000), 2.0)  # and if it does, it is back
    assert host.is_online("g", "e", "m1")


# -- two edge nodes, one id ----------------------------------------------------------------------
def test_a_clone_that_takes_over_is_held_and_the_conflict_named(caplog: pytest.LogCaptureFixture) -> None:
    host = HostSession()
    a, b = node(3), ForeignNode("g", "e", {"m1": {"execution": "ACTIVE", "part_count": 900}}, bdseq=41)
    feed(host, a.births(1000), 0.0)
    assert counts(feed(host, [a.parts("m1", 1000 + i) for i in range(1, 6)], 1.0)) == [
        101,
        102,
        103,
        104,
        105,
    ]
    # the clone connects: a new bdSeq while the node's session has not died
    events = feed(host, b.births(7000), 2.0)
    assert events == [Death("g", "e", None, 7000, ("m1",))]  # the machine is lost, the clone's births held
    assert counts(feed(host, b.parts("m1", 7100), 2.1)) == []
    caplog.set_level(logging.WARNING, "uns.sparkplug.host")
    events = feed(host, a.parts("m1", 2000), 2.2)  # the first one goes on: two sessions
    assert KEY in host.conflicts
    assert conflict_flags(events) == [True]
    assert counts(events) == []
    [line] = [r.getMessage() for r in caplog.records if "claimed by two sessions" in r.getMessage()]
    assert "bdSeq 3 (" in line
    assert "bdSeq 41 (" in line
    assert "m1" in line
    assert host.counters["nodes_in_conflict"] == 1
    # while it lasts: nothing from either is applied, and no rebirth is asked for
    requested = host.counters["rebirths_requested"]
    for i in range(20):
        events = feed(host, [a.parts("m1", 3000 + i), b.parts("m1", 8000 + i)], 3.0 + i)
        events += feed(host, ("spBv1.0/g/DDATA/e/m1", b"\xff"), 3.0 + i)
        assert counts(events) == []
        assert not [e for e in events if isinstance(e, RebirthRequest)]
    assert host.counters["rebirths_requested"] == requested
    assert host.counters["conflict_dropped"] == 1 + 3 + 40  # the one that told, the clone's 3 held, since
    # the clone is unplugged: its Will. One session remains: asked for its births once
    events = feed(host, b.will(0), 30.0)
    assert conflict_flags(events) == [False]
    assert [e for e in events if isinstance(e, RebirthRequest)] == [
        RebirthRequest("g", "e", "its conflict ended")
    ]
    assert not host.conflicts
    events = feed(host, a.births(31_000), 30.5)  # the answer: applied at once, with the true counter
    assert counts(events) == [126]
    assert counts(feed(host, a.parts("m1", 31_100), 31.0)) == [127]


def test_two_nodes_that_both_answer_every_rebirth_do_not_loop() -> None:
    """The issue's loop: each rebirth request is answered by both, each answer's seq is a gap to the
    other's stream, which asks for the next rebirth."""
    host = HostSession(rebirth_interval_s=0.0)
    a, b = node(3), ForeignNode("g", "e", {"m1": {"execution": "ACTIVE", "part_count": 900}}, bdseq=41)
    now, requests, applied = 0.0, 0, []
    pending: list[Message] = [*a.births(1000), *b.births(1001)]
    for round_ in range(50):
        now += 0.01
        events = feed(host, pending, now)
        events += feed(host, [a.parts("m1", 2000 + round_), b.parts("m1", 9000 + round_)], now)
        applied += counts(events)
        asked = [e for e in events if isinstance(e, RebirthRequest)]
        requests += len(asked)
        pending = [*a.births(3000 + round_), *b.births(3001 + round_)] if asked else []
    assert KEY in host.conflicts
    assert requests <= 1
    assert all(c < 900 for c in applied)  # nothing of the clone's counter reached the record


def test_clones_that_kick_each_other_off_are_told_by_their_bdseq_going_back() -> None:
    """Two gateways with one MQTT client id: the broker drops one when the other connects, each
    death comes before the other's birth, and each reconnects with its bdSeq + 1."""
    host = HostSession(hold_s=1.0, quiet_s=5.0)
    a, b = node(5), ForeignNode("g", "e", {"m1": {"execution": "ACTIVE", "part_count": 900}}, bdseq=9)
    feed(host, a.births(1000), 0.0)
    feed(host, [a.will(0), *b.births(2000)], 0.5)  # b is a new session after a's death: nothing to tell
    assert not host.conflicts
    a.reconnect()
    feed(host, [b.will(0), *a.births(3000)], 1.0)  # bdSeq 6 after 9
    assert KEY in host.conflicts
    for i in range(5):  # they go on kicking
        b.reconnect()
        events = feed(host, [a.will(0), *b.births(4000 + i)], 1.5 + i)
        a.reconnect()
        events += feed(host, [b.will(0), *a.births(4000 + i)], 2.0 + i)
        assert counts(events) == []
    assert KEY in host.conflicts
    # the clone is gone; a stays: after quiet_s without a second bdSeq, one rebirth is asked for
    events = feed(host, a.parts("m1", 9000), 10.0)
    assert KEY in host.conflicts  # 8 s after the last sign of two (at 6.0): not yet
    events = host.tick(11.5)
    assert conflict_flags(events) == [False]
    assert [type(e) for e in events] == [MetricsUpdate, RebirthRequest]
    # it answers; which one remained is not known, so its births are held for a while
    assert feed(host, a.births(12_000), 11.6) == []
    assert host.on_probation("g", "e")
    events = host.tick(12.7)
    assert counts(events) == [101]
    assert host.is_online("g", "e", "m1")


def test_two_sessions_with_one_bdseq_are_told_by_their_seq_streams() -> None:
    host = HostSession()
    a = node(0)
    b = ForeignNode("g", "e", {"m1": {"execution": "ACTIVE", "part_count": 900}}, bdseq=0)
    feed(host, a.births(1000), 0.0)
    feed(host, [a.parts("m1", 1100 + i) for i in range(10)], 1.0)
    events = feed(host, b.births(2000), 2.0)  # a rebirth nobody asked for: held
    assert counts(events) == []
    assert host.on_probation("g", "e")
    events = feed(host, a.parts("m1", 2100), 2.1)  # a's stream goes on from where the birth left it
    assert KEY in host.conflicts
    assert conflict_flags(events) == [True]
    assert host.counters["foreign_seq"] == 1
    # one of them dies: one remains, and it is asked for its births
    events = feed(host, b.will(0), 3.0)
    assert [type(e) for e in events] == [MetricsUpdate, RebirthRequest]
    assert not host.conflicts


def test_clones_answering_one_rebirth_each_are_told_in_lockstep() -> None:
    """Same bdSeq, and their seq streams side by side: the second answer repeats the first's seqs."""
    host = HostSession()
    a = node(0)
    b = ForeignNode("g", "e", {"m1": {"execution": "ACTIVE", "part_count": 900}}, bdseq=0)
    feed(host, a.births(1000), 0.0)
    host.handle("spBv1.0/g/NCMD/e", RebirthRequest("g", "e", "test").command(5)[1], 1.0)  # another host asks
    a_births, b_births = a.births(2000), b.births(2000)
    events = feed(host, [a_births[0], b_births[0], a_births[1], b_births[1]], 1.1)
    events += feed(host, [a.parts("m1", 2100), b.parts("m1", 2100)], 1.2)
    assert KEY in host.conflicts
    assert all(c < 900 for c in counts(events))


def test_a_rebirth_storm_nobody_asked_for_is_a_conflict() -> None:
    host = HostSession(hold_s=0.5)
    a = node(7)
    feed(host, a.births(1000), 0.0)
    for i in range(1, 3):
        feed(host, a.births(1000 + i), float(i))  # each nobody asked for; each released after the hold
        assert not host.conflicts
    feed(host, a.births(1003), 3.0)
    assert KEY in host.conflicts


# -- one edge node, doing what one edge node may do ------------------------------------------------
def test_a_node_that_reconnects_and_restarts_is_one_node() -> None:
    host = HostSession()
    a = node(250)
    now = 0.0
    for _ in range(12):  # reconnects, across the wrap of bdSeq
        feed(host, a.births(1000), now)
        feed(host, a.parts("m1", 1000), now + 0.1)
        feed(host, a.will(0), now + 0.2)
        a.reconnect()
        now += 0.5
    a.bdseq = 0  # it restarts without its bdSeq
    feed(host, a.births(2000), now)
    assert not host.conflicts
    assert host.counters["probations"] == 0


def test_a_rebirth_asked_for_is_not_held() -> None:
    host = HostSession()
    a = node(7)
    feed(host, a.births(1000), 0.0)
    feed(host, [a.parts("m1", 1001), a.parts("m1", 1002)], 1.0)
    a.seq += 3  # three messages lost: a gap, and a rebirth request
    events = feed(host, a.parts("m1", 1003), 2.0)
    assert isinstance(events[0], RebirthRequest)
    assert counts(feed(host, a.births(3000), 2.1)) == [103]
    assert not host.on_probation("g", "e")


@pytest.mark.parametrize("seed", range(8))
def test_a_lossy_link_is_never_taken_for_a_second_node(seed: int) -> None:
    """A single node over a link that loses messages (one at a time, and in bursts of up to 300 as an
    overflowing broker queue drops them) and answers every rebirth request: every message that
    arrives is applied, in order (some after being held a while), and no conflict is ever found."""
    rnd = random.Random(seed)
    host = HostSession(rebirth_interval_s=0.0, hold_s=0.5)
    a = node(1)
    feed(host, a.births(0), 0.0)
    now, arrived, got = 0.0, [], []
    for i in range(3000):
        now += 0.01
        message = a.parts("m1", i + 1)
        roll = rnd.random()
        if roll < 0.01:
            for _ in range(rnd.randint(2, 300)):
                a.parts("m1", i + 1)  # a burst the broker dropped
            continue
        if roll < 0.1:
            continue
        arrived.append(a.values["m1"]["part_count"])
        events = feed(host, message, now)
        got += counts(events)
        if any(isinstance(e, RebirthRequest) for e in events):
            arrived.append(a.values["m1"]["part_count"])
            got += counts(feed(host, a.births(i + 1), now))
    got += counts(host.tick(now + 1))
    assert not host.conflicts
    assert got == arrived


def test_losing_the_broker_drops_what_probation_held_and_keeps_a_conflict() -> None:
    host = HostSession()
    a, b = node(3), ForeignNode("g", "e", DEVICES, bdseq=41)
    feed(host, a.births(1000), 0.0)
    feed(host, b.births(2000), 1.0)
    assert host.on_probation("g", "e")
    assert host.disconnected() == [Death("g", "e", None, 0, ())]  # its devices were never shown
    assert host.counters["unconfirmed_dropped"] == 2
    feed(host, b.births(3000), 2.0)
    feed(host, a.births(3000), 2.0)  # bdSeq 3 after 41
    assert KEY in host.conflicts
    host.disconnected()
    assert KEY in host.conflicts
