"""From a machine value's source timestamp to its retained state JSON on the UNS: a publisher process
of the bench's own (an edge node of 10 machines, Sparkplug through Mosquitto) sends DDATA that
changes a machine's execution (every message a state change, closing an interval), stamped with the
wall clock when it is sent; the real context service (in this process, with its record on disk)
takes them; a subscriber with the viewer's login takes every state JSON. p50 and p99 of its arrival
less the state's `since` (the value's timestamp), at a low and a high rate. The retained state is the
machine's latest: when one flush of the record takes two changes of one machine, only the second is
published as state (both are in the record and on its `intervals` topic), so at high rates fewer
states than changes are seen, and that is no loss."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from services.context.app import ContextService
from services.context.record import RecordStore
from uns.broker import Mosquitto
from uns.clock import WallClock, parse_iso
from uns.mqtt import BrokerAddress, MqttClient
from uns.signals import metric_defs
from uns.site import Signal, parse_site
from uns.sparkplug.edge import EdgeSession, Sample

MACHINES = [f"m{i:02d}" for i in range(10)]
SIGNALS = (Signal.EXECUTION, Signal.MODE, Signal.PROGRAM, Signal.PART_COUNT, Signal.ALARM_CODE, Signal.ESTOP)
RATES = ((20, 5.0), (1000, 5.0))  # messages per second, seconds
SITE = "\n".join(
    [
        "enterprise: acme",
        "site: bench",
        "sparkplug: {group_id: bench, edge_node_id: edge, host_id: bench-host}",
        "areas:",
        "  - name: a",
        "    lines:",
        "      - name: l",
        "        cells:",
        "          - name: c",
        "            machines:",
        *(
            f"              - id: {m}\n                source: {{protocol: opcua, endpoint: opc.tcp://127.0.0.1:4840,"
            " signals: {execution: a, mode: b, program: p, part_count: c, alarm_code: d, estop: e}}"
            for m in MACHINES
        ),
    ]
)


def _publish(port: int, password: str, rate: float, seconds: float) -> None:
    async def main() -> None:
        session = EdgeSession("bench", "edge", {m: metric_defs(SIGNALS) for m in MACHINES})
        session.new_connection(0)
        now = int(time.time() * 1000)
        for m in MACHINES:
            ready: dict[str, bool | int | str] = {
                "execution": "READY",
                "mode": "AUTOMATIC",
                "program": "O1",
                "part_count": 0,
                "alarm_code": 0,
                "estop": False,
            }
            session.device_online(m, now, [Sample(k, v, now) for k, v in ready.items()])

        class Quiet:
            def on_connected(self) -> None: ...
            def on_disconnected(self, reason: str) -> None: ...
            def on_message(self, topic: str, payload: bytes) -> None: ...

        client = MqttClient(
            "bench-edge",
            BrokerAddress("127.0.0.1", port, "bridge", password),
            Quiet(),
            asyncio.get_running_loop(),
        )
        client.start()
        while not client.connected:
            await asyncio.sleep(0.01)
        for topic, payload in session.births(now):
            client.publish(topic, payload)
        await asyncio.sleep(1.0)  # the host takes the births
        n = int(rate * seconds)
        began = time.perf_counter()
        for i in range(n):
            due = began + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            machine = MACHINES[i % len(MACHINES)]
            value = "ACTIVE" if (i // len(MACHINES)) % 2 == 0 else "READY"
            ts = int(time.time() * 1000)
            message = session.data(machine, [Sample("execution", value, ts)], ts)
            if message is not None:
                client.publish(*message)
        await asyncio.sleep(1.0)
        client.stop()

    asyncio.run(main())


class _States:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.seen: set[tuple[str, str]] = set()

    def on_connected(self) -> None: ...
    def on_disconnected(self, reason: str) -> None: ...

    def on_message(self, topic: str, payload: bytes) -> None:
        arrived = time.time() * 1000
        if not topic.endswith("/state"):
            return
        state = json.loads(payload)
        since = state.get("since")
        if since is None or (state["machine"], since) in self.seen:
            return
        self.seen.add((state["machine"], since))
        self.latencies_ms.append(arrived - parse_iso(since))


async def _run(rate: float, seconds: float) -> tuple[float, float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto", "acme")
        broker.start()
        store = RecordStore(Path(tmp) / "record.db")
        service = ContextService(parse_site(SITE), store, broker.address("services"), WallClock())
        loop = asyncio.get_running_loop()
        service.start(loop)
        states = _States()
        viewer = MqttClient(
            "bench-viewer", broker.address("viewer"), states, loop, subscriptions=(("acme/#", 0),)
        )
        viewer.start()
        try:
            while not (viewer.connected and service._client is not None and service._client.connected):
                await asyncio.sleep(0.02)
            proc = multiprocessing.get_context("spawn").Process(
                target=_publish, args=(broker.port, broker.creds.password("bridge"), rate, seconds)
            )
            proc.start()
            while proc.is_alive():
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            ready = len(MACHINES)  # each machine's first state (READY, from its birth) is no change
            changes = int(rate * seconds)
            got = states.latencies_ms[ready:]
            ordered = sorted(got)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")
            return statistics.median(ordered) if ordered else float("nan"), p99, len(got), changes
        finally:
            viewer.stop()
            await service.stop()
            store.close()
            broker.stop()


def run() -> list[tuple[float, float, float, int, int]]:
    return [(rate, *asyncio.run(_run(rate, seconds))) for rate, seconds in RATES]


def report() -> None:
    for rate, p50, p99, got, sent in run():
        print(
            f"state latency, {len(MACHINES)} machines, {rate:g} state changes/s: value timestamp to retained"
            f" state JSON p50 {p50:.1f} ms, p99 {p99:.1f} ms ({got} states published for {sent} changes)"
        )


if __name__ == "__main__":
    report()
