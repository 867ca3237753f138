"""The host's session rules, without a broker (the MQTT side is in tests/integration)."""

from __future__ import annotations

from uns.sparkplug.edge import EdgeSession, MetricDef, Sample
from uns.sparkplug.host import Death, HostSession, MetricsUpdate, RebirthRequest
from uns.sparkplug.payload import DataType, Metric, Payload, encode

DEFS = {"m1": [MetricDef("alarm_code", DataType.INT32), MetricDef("execution", DataType.STRING)]}


def born() -> tuple[EdgeSession, HostSession, list[object]]:
    edge = EdgeSession("g", "e", DEFS)
    host = HostSession(rebirth_interval_s=5)
    edge.new_connection(0)
    edge.device_online("m1", 0, [Sample("alarm_code", 0, 0), Sample("execution", "READY", 0)])
    events: list[object] = []
    for topic, payload in edge.births(1):
        events += host.handle(topic, payload, 0.0)
    return edge, host, events


def test_births_then_data_resolve_aliases_and_types() -> None:
    edge, host, events = born()
    assert [type(e) for e in events] == [MetricsUpdate, MetricsUpdate]
    assert host.is_online("g", "e", "m1")
    msg = edge.data("m1", [Sample("alarm_code", -5, 7)], 8)
    assert msg is not None
    [update] = host.handle(*msg, now=1.0)
    assert isinstance(update, MetricsUpdate)
    [m] = update.metrics
    assert (m.name, m.value, m.datatype, m.timestamp) == ("alarm_code", -5, DataType.INT32, 7)


def test_seq_gap_is_counted_and_asks_for_a_throttled_rebirth() -> None:
    edge, host, _ = born()
    edge.data("m1", [Sample("execution", "ACTIVE", 2)], 2)  # lost on the way
    msg = edge.data("m1", [Sample("execution", "READY", 3)], 3)
    assert msg is not None
    events = host.handle(*msg, now=10.0)
    assert host.counters["seq_gaps"] == 1
    assert [type(e) for e in events] == [RebirthRequest, MetricsUpdate]  # the data is still kept
    edge.data("m1", [Sample("execution", "ACTIVE", 4)], 4)
    msg = edge.data("m1", [Sample("execution", "READY", 5)], 5)
    assert msg is not None
    assert not any(isinstance(e, RebirthRequest) for e in host.handle(*msg, now=11.0))
    assert host.counters["rebirths_throttled"] == 1


def test_unknown_alias_asks_for_rebirth_and_keeps_the_known_metrics() -> None:
    _, host, _ = born()
    payload = Payload(
        5, (Metric(None, 99, 5, DataType.INT32, 1), Metric(None, 1, 5, DataType.INT32, 3)), seq=2
    )
    events = host.handle("spBv1.0/g/DDATA/e/m1", encode(payload, with_datatypes=False), 1.0)
    assert host.counters["unknown_metrics"] == 1
    assert isinstance(events[0], RebirthRequest)
    assert isinstance(events[1], MetricsUpdate)
    assert [(m.name, m.value) for m in events[1].metrics] == [("alarm_code", 3)]


def test_malformed_and_foreign_messages_are_counted_and_the_host_goes_on() -> None:
    edge, host, _ = born()
    assert host.handle("spBv1.0/g/DDATA/e/m1", b"\xff\x00garbage", 1.0) == []
    assert host.handle("acme/dayton/state", b"{}", 1.0) == []
    assert host.handle("spBv1.0/g/BOGUS/e", b"", 1.0) == []
    assert host.counters["malformed"] == 1
    assert host.counters["not_sparkplug"] == 2
    msg = edge.data("m1", [Sample("execution", "ACTIVE", 2)], 2)
    assert msg is not None
    assert isinstance(host.handle(*msg, now=1.0)[0], MetricsUpdate)


def test_data_before_birth_asks_for_rebirth() -> None:
    host = HostSession()
    payload = encode(Payload(1, (Metric(None, 1, 1, DataType.INT32, 3),), seq=4), with_datatypes=False)
    assert host.handle("spBv1.0/g/DDATA/e/m1", payload, 0.0) == [
        RebirthRequest("g", "e", "DDATA before NBIRTH")
    ]
    assert host.counters["before_birth"] == 1


def test_ndeath_with_matching_bdseq_kills_node_and_devices_stale_will_is_ignored() -> None:
    edge, host, _ = born()
    old_will = edge.death(0)
    edge.new_connection(10)  # the node reconnected before the broker sent the old Will
    events = [e for m in edge.births(11) for e in host.handle(*m, now=1.0)]
    # a new bdSeq while the old session has not died: held until no sign of the old one comes
    assert events == [Death("g", "e", None, 11, ("m1",))]
    assert host.on_probation("g", "e")
    assert host.handle(*old_will, now=2.0) == []
    assert host.counters["stale_deaths"] == 1
    *released, death = host.handle(*edge.death(20), now=12.0)  # after the hold
    assert [e.device_id for e in released if isinstance(e, MetricsUpdate)] == [None, "m1"]
    assert len(released) == 2
    assert death == Death("g", "e", None, 20, ("m1",))
    assert not host.is_online("g", "e")


def test_ddeath_marks_the_device_gone() -> None:
    edge, host, _ = born()
    msg = edge.device_offline("m1", 30)
    assert msg is not None
    assert host.handle(*msg, now=1.0) == [Death("g", "e", "m1", 30)]
    assert not host.is_online("g", "e", "m1")
