"""`sparkplug.part_count_type`: our edge nodes publish part counters as UInt32 (`int_value`, the
specification's type table) or, for consumers that misread UInt32 (Eclipse Tahu's JavaScript codec),
as Int64 (`long_value`); the host reads both as the same count. The payloads are read back with the
protobuf module directly, as another consumer would."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.runner import make_edge_node
from services.context.app import ContextService
from services.context.record import RecordStore
from tests.services.test_foreign_edge import SITE
from uns.clock import WallClock
from uns.mqtt import BrokerAddress
from uns.site import SiteConfigError, parse_site
from uns.sparkplug import sparkplug_b_pb2 as pb
from uns.sparkplug.edge import Sample

T0 = 1_795_000_000_000


def with_counters(counter_type: str | None) -> str:
    """tests/services/test_foreign_edge.py's site, its counters of this type (None: the default)."""
    if counter_type is None:
        return SITE
    return SITE.replace("host_id: test-host}", f"host_id: test-host, part_count_type: {counter_type}}}")


def dbirth(counter_type: str | None) -> tuple[str, bytes]:
    site = parse_site(with_counters(counter_type))
    node = make_edge_node(site, "edge1", BrokerAddress("127.0.0.1", 1), WallClock())
    return node.session.device_online(
        "vf2-01",
        T0,
        [
            Sample("execution", "READY", T0),
            Sample("mode", "AUTOMATIC", T0),
            Sample("part_count", 3_000_000_000, T0),
        ],
    )


@pytest.mark.parametrize(
    ("counter_type", "datatype", "field"),
    [(None, 7, "int_value"), ("UInt32", 7, "int_value"), ("Int64", 4, "long_value")],
)
def test_the_counter_goes_out_in_the_type_the_site_chose(
    counter_type: str | None, datatype: int, field: str
) -> None:
    topic, payload = dbirth(counter_type)
    assert topic == "spBv1.0/dayton/DBIRTH/edge1/vf2-01"
    msg = pb.SpbPayload()
    msg.ParseFromString(payload)
    [count] = [m for m in msg.metrics if m.name == "part_count"]
    assert count.datatype == datatype
    assert count.WhichOneof("value") == field
    assert getattr(count, field) == 3_000_000_000


@pytest.mark.parametrize("counter_type", ["UInt32", "Int64"])
def test_the_host_reads_either_as_the_same_count(counter_type: str, tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "record.db")
    try:
        site = parse_site(SITE)
        service = ContextService(site, store, BrokerAddress("127.0.0.1", 1), WallClock())
        node = make_edge_node(
            parse_site(
                SITE.replace("host_id: test-host}", f"host_id: test-host, part_count_type: {counter_type}}}")
            ),
            "edge1",
            BrokerAddress("127.0.0.1", 1),
            WallClock(),
        )
        samples = [
            Sample("execution", "READY", T0),
            Sample("mode", "AUTOMATIC", T0),
            Sample("program", "O1", T0),
            Sample("part_count", 41, T0),
            Sample("alarm_code", 0, T0),
            Sample("estop", False, T0),
        ]
        node.session.new_connection(0)
        service.on_message(*node.session.births(T0)[0])
        service.on_message(*node.session.device_online("vf2-01", T0, samples))
        data = node.session.data("vf2-01", [Sample("part_count", 42, T0 + 1000)], T0 + 1000)
        assert data is not None
        service.on_message(*data)
        service.flush()
        assert [(p.delta, p.counter) for p in store.parts("vf2-01", 0, 2**62)] == [(1, 42)]
    finally:
        store.close()


def test_another_counter_type_is_refused_naming_the_key() -> None:
    with pytest.raises(SiteConfigError, match="part_count_type"):
        parse_site(with_counters("Int16"))
