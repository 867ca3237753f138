"""Sparkplug encodes and decodes per second for a 10-metric DDATA, and our decode beside protobuf's
own parse of the same bytes that reads every field a metric carries (the goal: at least 0.5x)."""

from __future__ import annotations

import time
from collections.abc import Callable

from google.protobuf.internal import api_implementation

from uns.sparkplug import sparkplug_b_pb2 as pb
from uns.sparkplug.edge import EdgeSession, MetricDef, Sample
from uns.sparkplug.payload import DataType, decode

METRICS = [MetricDef(f"m{i}", DataType.DOUBLE if i % 2 else DataType.STRING) for i in range(10)]


def samples(i: int) -> list[Sample]:
    return [
        Sample(d.name, float(i) if d.datatype is DataType.DOUBLE else f"v{i}", 1_795_000_000_000 + i)
        for d in METRICS
    ]


def run(seconds: float = 2.0) -> dict[str, float]:
    session = EdgeSession("g", "e", {"d": METRICS})
    session.new_connection(0)
    session.device_online("d", 0, samples(0))
    batches = [samples(i) for i in range(1000)]
    n, start = 0, time.perf_counter()
    payload = b""
    while time.perf_counter() - start < seconds:
        for batch in batches:
            msg = session.data("d", batch, 1)
            assert msg is not None
            payload = msg[1]
        n += len(batches)
    enc = n / (time.perf_counter() - start)
    dec = _per_second(lambda: decode(payload), seconds)
    raw = _per_second(lambda: _protobuf_read(payload), seconds)
    return {"encode_per_s": enc, "decode_per_s": dec, "protobuf_per_s": raw, "bytes": len(payload)}


def _per_second(call: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            call()
        n += 1000
    return n / (time.perf_counter() - start)


def _protobuf_read(data: bytes) -> list[object]:
    """protobuf's parse, and a read of every field of the payload and its metrics (the floor)."""
    msg = pb.SpbPayload()
    msg.ParseFromString(data)
    out: list[object] = [msg.timestamp, msg.seq]
    for m in msg.metrics:
        which = m.WhichOneof("value")
        value = getattr(m, which) if which else None
        out.append(
            (m.name, m.alias, m.timestamp, m.datatype, value, m.is_historical, m.is_transient, m.is_null)
        )
    return out


def report() -> None:
    r = run()
    backend = api_implementation.Type()
    print(f"sparkplug codec (protobuf backend: {backend}), 10-metric DDATA of {r['bytes']:.0f} B:")
    print(f"  encode (EdgeSession.data: aliases, seq, protobuf)  {r['encode_per_s']:>10,.0f} /s")
    print(f"  decode (payload.decode)                            {r['decode_per_s']:>10,.0f} /s")
    print(f"  protobuf's own parse and read of every field       {r['protobuf_per_s']:>10,.0f} /s")
    ratio = r["decode_per_s"] / r["protobuf_per_s"]
    print(f"  decode against protobuf's own                      {ratio:>10.2f}x   (goal: 0.5x)")
