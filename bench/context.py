"""The context service's own cost per message, without a broker: DDATA for two machines whose state
changes with every message (the worst case: every message closes an interval, which is cut at shift
and context changes and written with its job, operation, shift and operator), a part every tenth."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from services.context.app import ContextService
from services.context.record import RecordStore
from uns.mqtt import BrokerAddress
from uns.signals import metric_defs
from uns.site import Signal, parse_site
from uns.sparkplug.edge import EdgeSession, Sample

N = 20_000
T0 = 1_795_100_000_000
MACHINES = ("m1", "m2")
SITE = """\
enterprise: acme
site: bench
timezone: America/New_York
sparkplug: {group_id: bench, edge_node_id: edge, host_id: bench-host}
shifts:
  pattern:
    - name: first
      start: "06:00"
      end: "14:00"
      days: [mon, tue, wed, thu, fri]
      breaks: [{name: b, start: "09:00", end: "09:15"}]
    - {name: second, start: "14:00", end: "22:00", days: [mon, tue, wed, thu, fri]}
areas:
  - name: a
    lines:
      - name: l
        cells:
          - name: c
            machines:
              - id: m1
                source: &src
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {execution: a, mode: b, program: p, part_count: c, alarm_code: d, estop: e}
              - id: m2
                source: *src
"""
SIGNALS = metric_defs(
    (Signal.EXECUTION, Signal.MODE, Signal.PROGRAM, Signal.PART_COUNT, Signal.ALARM_CODE, Signal.ESTOP)
)


class _Clock:
    speed = 1.0
    now = T0

    def now_ms(self) -> int:
        return self.now


def run(n: int = N) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = RecordStore(Path(tmp) / "record.db")
        clock = _Clock()
        service = ContextService(parse_site(SITE), store, BrokerAddress("127.0.0.1", 1), clock)
        for m in MACHINES:
            ops = [
                {"job": f"{m}-{j}", "operation": "10", "machine": m, "program": f"O{j}", "quantity": 50}
                for j in range(n // 500 + 1)
            ]
            service.command("dispatch", json.dumps({"machine": m, "operations": ops}).encode(), via="bench")
            service.command(
                "operator",
                json.dumps({"action": "login", "machine": m, "operator": "ann"}).encode(),
                via="bench",
            )
        edge = EdgeSession("bench", "edge", dict.fromkeys(MACHINES, SIGNALS))
        edge.new_connection(0)
        for m in MACHINES:
            edge.device_online(
                m,
                T0,
                [
                    Sample("execution", "READY", T0),
                    Sample("mode", "AUTOMATIC", T0),
                    Sample("program", "", T0),
                    Sample("part_count", 0, T0),
                    Sample("alarm_code", 0, T0),
                    Sample("estop", False, T0),
                ],
            )
        for message in edge.births(T0):
            service.on_message(*message)
        messages = []
        for i in range(n):
            t = T0 + 1000 + i * 20_000
            samples = [Sample("execution", "ACTIVE" if i % 2 else "READY", t)]
            if i % 10 == 0:
                samples.append(Sample("part_count", i // 10, t))
            if i % 500 == 0:
                samples.append(Sample("program", f"O{i // 500}", t))
            data = edge.data(MACHINES[(i // 2) % 2], samples, t)
            assert data is not None
            messages.append(data)
        clock.now = T0 + n * 20_000
        start = time.perf_counter()
        for k, message in enumerate(messages):
            service.on_message(*message)
            if k % 10 == 9:
                service.flush()
        service.flush()
        elapsed = time.perf_counter() - start
        intervals = sum(len(store.intervals(m, 0, 2**62)) for m in MACHINES)
        store.close()
    return n / elapsed, intervals


def report() -> None:
    rate, intervals = run()
    what = f"{N} DDATA (each closing an interval)"
    print(f"context service: {what} at {rate:,.0f} msg/s; {intervals} record intervals")


if __name__ == "__main__":
    report()
