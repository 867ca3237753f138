"""The edge node's session rules, without a broker (the MQTT side is in tests/integration)."""

from __future__ import annotations

import pytest

from uns.sparkplug.edge import BDSEQ, REBIRTH, EdgeSession, MetricDef, Sample
from uns.sparkplug.host import RebirthRequest
from uns.sparkplug.payload import DataType, decode

DEFS = {"m1": [MetricDef("execution", DataType.STRING), MetricDef("part_count", DataType.UINT32)]}


def session(last_bdseq: int = 255) -> EdgeSession:
    return EdgeSession("g", "e", DEFS, last_bdseq=last_bdseq)


def test_bdseq_goes_up_per_connection_wraps_and_will_matches_nbirth() -> None:
    s = session(last_bdseq=254)
    topic, will = s.new_connection(10)
    assert topic == "spBv1.0/g/NDEATH/e"
    death = decode(will)
    assert death.seq is None
    assert [(m.name, m.value, m.datatype) for m in death.metrics] == [(BDSEQ, 255, DataType.INT64)]
    nbirth = decode(s.births(11)[0][1])
    assert {m.name: m.value for m in nbirth.metrics}[BDSEQ] == 255
    s.new_connection(20)
    assert s.bdseq == 0  # wraps after 255
    s.births(21)
    assert s.bdseq == 0  # a rebirth keeps it


def test_seq_is_one_counter_for_node_and_devices_and_wraps() -> None:
    s = session()
    s.new_connection(0)
    s.device_online("m1", 0, [Sample("execution", "READY", 0), Sample("part_count", 1, 0)])
    births = s.births(1)
    assert [t for t, _ in births] == ["spBv1.0/g/NBIRTH/e", "spBv1.0/g/DBIRTH/e/m1"]
    assert [decode(p).seq for _, p in births] == [0, 1]
    seqs = []
    for i in range(300):
        msg = s.data("m1", [Sample("part_count", i, 100 + i)], 100 + i)
        assert msg is not None
        seqs.append(decode(msg[1]).seq)
    assert seqs[:3] == [2, 3, 4]
    assert seqs[253:256] == [255, 0, 1]
    death = s.device_offline("m1", 500)
    assert death is not None
    assert decode(death[1]).seq == ((seqs[-1] or 0) + 1) % 256


def test_nbirth_holds_bdseq_and_rebirth_unaliased_and_data_carries_aliases_only() -> None:
    s = session()
    s.new_connection(0)
    s.device_online("m1", 0, [Sample("execution", "ACTIVE", 5)])
    nbirth, dbirth = (decode(p) for _, p in s.births(9))
    rebirth = next(m for m in nbirth.metrics if m.name == REBIRTH)
    assert rebirth.alias is None
    assert rebirth.datatype is DataType.BOOLEAN
    assert rebirth.value is False
    assert all(m.name and m.alias and m.datatype for m in dbirth.metrics)
    assert {m.name: m.timestamp for m in dbirth.metrics} == {"execution": 5, "part_count": 9}
    msg = s.data("m1", [Sample("execution", "READY", 12)], 13)
    assert msg is not None
    topic, payload = msg
    assert topic == "spBv1.0/g/DDATA/e/m1"
    [m] = decode(payload).metrics
    assert (m.name, m.datatype, m.timestamp, m.value) == (None, None, 12, "READY")
    assert m.alias == next(b.alias for b in dbirth.metrics if b.name == "execution")


def test_offline_devices_get_no_data_and_no_birth() -> None:
    s = session()
    s.new_connection(0)
    assert s.data("m1", [Sample("execution", "READY", 1)], 1) is None
    assert len(s.births(2)) == 1
    assert s.device_offline("m1", 3) is None


def test_rebirth_command_is_recognised_and_bad_commands_raise() -> None:
    s = session()
    topic, payload = RebirthRequest("g", "e", "test").command(5)
    assert s.is_rebirth_request(topic, payload)
    assert not s.is_rebirth_request("spBv1.0/g/NCMD/other", payload)
    with pytest.raises(ValueError, match=r"NCMD on spBv1\.0/g/NCMD/e"):
        s.is_rebirth_request(topic, b"\xff\xff")


def test_unknown_metric_is_refused_with_its_name() -> None:
    s = session()
    with pytest.raises(KeyError, match="no metric 'spindle'"):
        s.data("m1", [Sample("spindle", 1.0, 1)], 1)
