"""A fuzz of the Sparkplug inputs of the context service: good DDATA from an edge node of the tests'
own (tests/foreign_edge.py), interleaved with truncated payloads, random bytes, payloads that break
the Sparkplug rules, broken topics, messages for nodes that were never born, junk commands and
unreadable deaths. Every good value reaches the record, every bad message is counted under what it
was, and no exception escapes."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from services.context.app import ContextService
from services.context.record import RecordStore
from tests.foreign_edge import ForeignNode, Message
from tests.services.test_foreign_edge import READY, SITE, T0, Clock
from uns.mqtt import BrokerAddress
from uns.site import parse_site
from uns.sparkplug import sparkplug_b_pb2 as pb

STEPS = 1200
EXECUTION = ("ACTIVE", "READY", "FEED_HOLD", "INTERRUPTED", "STOPPED")


def _has_seq(raw: bytes) -> bool:
    """Whether random bytes happen to be a protobuf payload that carries a seq (such garbage would
    be a seq gap to anyone; the fuzz sends only garbage that cannot pass for a message)."""
    msg = pb.SpbPayload()
    try:
        msg.ParseFromString(raw)
    except Exception:  # any failure to parse is what we want
        return False
    return msg.HasField("seq")


def _invalid(rnd: random.Random, node: ForeignNode, ts: int) -> bytes:
    """A well-formed protobuf payload that breaks a Sparkplug rule, and takes no seq of the node's."""
    msg = pb.SpbPayload(timestamp=ts, seq=node.seq)
    kind = rnd.randrange(7)
    if kind == 0:
        msg.ClearField("seq")
        msg.metrics.add(alias=1, timestamp=ts, string_value="ACTIVE")
    elif kind == 1:
        msg.seq = rnd.randint(256, 10_000)  # out of range
        msg.metrics.add(alias=1, timestamp=ts, string_value="ACTIVE")
    elif kind == 2:
        msg.metrics.add(timestamp=ts, int_value=1)  # neither a name nor an alias
    elif kind == 3:
        msg.metrics.add(alias=4, timestamp=ts, datatype=99, int_value=1)  # no such datatype
    elif kind == 4:
        msg.metrics.add(alias=1, timestamp=ts, datatype=12, int_value=1)  # a String with an int
    elif kind == 5:
        msg.ClearField("timestamp")
        msg.metrics.add(alias=1, timestamp=ts, string_value="ACTIVE")
    else:
        msg.metrics.add(alias=4, int_value=1)  # no metric timestamp in data
    return msg.SerializeToString()


BAD_TOPICS = (
    "spBv1.0/dayton/BOGUS/edge1",
    "spBv1.0/dayton/DDATA/edge1",
    "spBv1.0/dayton/NDATA/edge1/vf2-01",
    "spBv1.0/day+ton/DDATA/edge1/vf2-01",
    "spBv1.0//DDATA/edge1/vf2-01",
    "spBv1.0/dayton/DDATA/edge1/vf2-01/extra",
    "spBv1.0/dayton/ddata/edge1/vf2-01",
    "spBv1.0/dayton",
    "spBv1.0/",
)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_good_data_survives_bad_sparkplug_input(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    store = RecordStore(tmp_path / "record.db")
    clock = Clock()
    service = ContextService(parse_site(SITE), store, BrokerAddress("127.0.0.1", 1), clock)
    host = service.host
    node = ForeignNode("dayton", "edge1", {"vf2-01": READY}, bdseq=rnd.randrange(256), stamped=seed == 3)
    for topic, payload in node.births(T0):
        service.on_message(topic, payload)
    good: list[tuple[int, str, object]] = []
    bad: Counter[str] = Counter()
    parts = 0
    for step in range(1, STEPS + 1):
        ts = T0 + step * 1000
        clock.now = ts
        roll = rnd.random()
        message: Message
        if not host.is_online("dayton", "edge1"):  # it was asked for a rebirth after a death
            for topic, payload in node.births(ts):
                service.on_message(topic, payload)
            continue
        if roll < 0.55:
            if rnd.random() < 0.5:
                n = rnd.randint(1, 3)
                parts += n
                message = node.parts("vf2-01", ts, n)
                good.append((ts, "part_count", node.values["vf2-01"]["part_count"]))
            else:
                execution = rnd.choice(EXECUTION)
                message = node.data("vf2-01", ts, execution=execution)
                good.append((ts, "execution", execution))
        elif roll < 0.65:
            topic, payload = node.draft("vf2-01", ts, execution="ACTIVE")
            message = (topic, payload[: rnd.randrange(len(payload))])
            bad["malformed"] += 1
        elif roll < 0.73:
            raw = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 40)))
            if _has_seq(raw):
                continue
            message = (rnd.choice(["spBv1.0/dayton/DDATA/edge1/vf2-01", "spBv1.0/dayton/NBIRTH/edge1"]), raw)
            bad["malformed"] += 1
        elif roll < 0.83:
            message = ("spBv1.0/dayton/DDATA/edge1/vf2-01", _invalid(rnd, node, ts))
            bad["malformed"] += 1
        elif roll < 0.90:
            message = (rnd.choice(BAD_TOPICS), node.draft("vf2-01", ts, execution="ACTIVE")[1])
            bad["not_sparkplug"] += 1
        elif roll < 0.95:
            message = (f"spBv1.0/dayton/DDATA/edge{rnd.randint(2, 9)}/vf2-01", node.draft("vf2-01", ts)[1])
            bad["before_birth"] += 1
        elif roll < 0.99:
            message = ("spBv1.0/dayton/NCMD/edge1", bytes(rnd.randrange(256) for _ in range(9)))
            bad["commands_seen"] += 1
        else:  # a death that cannot be read ends the node's data: it is asked for a rebirth
            if rnd.random() < 0.5:
                message = ("spBv1.0/dayton/NDEATH/edge1", node.will(ts)[1][:-1])  # cut short
                bad["malformed"] += 1
            else:
                message = ("spBv1.0/dayton/NDEATH/edge1", pb.SpbPayload(timestamp=ts).SerializeToString())
            bad["unreadable_deaths"] += 1
        service.on_message(*message)
        if step % 100 == 0:
            service.flush()
    service.flush()
    counters = host.counters
    logged = {(ts, name, value) for ts, name, value in store.signal_events("vf2-01", 0, 1_000_000)}
    made = sum(p.delta for p in store.parts("vf2-01", 0, T0 + (STEPS + 1) * 1000))
    store.close()
    assert [g for g in good if g not in logged] == []
    assert made == parts
    for name in ("malformed", "not_sparkplug", "before_birth", "commands_seen", "unreadable_deaths"):
        assert counters[name] == bad[name], name
    assert counters["probations"] == counters["conflicts"] == counters["seq_gaps"] == 0
