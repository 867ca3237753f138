"""Store-and-forward: the disk buffer's write rate, the replay rate after an outage, and the time
from a broker restart to the first live data."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench.codec import METRICS, samples
from bridge.buffer import DiskBuffer
from bridge.edge_node import EdgeNode
from uns.broker import Mosquitto
from uns.clock import WallClock
from uns.mqtt import BrokerAddress, MqttClient
from uns.sparkplug.edge import EdgeSession
from uns.sparkplug.payload import decode

ROWS = 20_000


def write_rate(path: Path) -> float:
    buffer = DiskBuffer(path)
    start = time.perf_counter()
    for i in range(ROWS):
        buffer.append([("d", i, samples(i))])
    rate = ROWS / (time.perf_counter() - start)
    buffer.close()
    return rate


class _Counter:
    def __init__(self) -> None:
        self.historical = 0
        self.metrics = 0
        self.first_live: float | None = None

    def on_connected(self) -> None: ...
    def on_disconnected(self, reason: str) -> None: ...

    def on_message(self, topic: str, payload: bytes) -> None:
        if "/DDATA/" not in topic:
            return
        p = decode(payload)
        if p.metrics and p.metrics[0].is_historical:
            self.historical += 1
            self.metrics += len(p.metrics)
        elif self.first_live is None:
            self.first_live = time.perf_counter()


async def _until(check: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


async def replay_and_restart(broker: Mosquitto, buffer_path: Path) -> tuple[float, float, float]:
    loop = asyncio.get_running_loop()
    counter = _Counter()
    watcher = MqttClient(
        "bench-watch",
        BrokerAddress("127.0.0.1", broker.port, "services", broker.creds.password("services")),
        counter,
        loop,
        subscriptions=(("spBv1.0/#", 0),),
    )
    watcher.start()
    await _until(lambda: watcher.connected)
    session = EdgeSession("bench", "edge", {"d": METRICS})
    node = EdgeNode(
        session,
        BrokerAddress("127.0.0.1", broker.port, "bridge", broker.creds.password("bridge")),
        WallClock(),
        primary_host_id="bench-host",
        buffer=DiskBuffer(buffer_path),
    )
    node.start(loop)
    await _until(lambda: node.connected)
    node.device_online("d", samples(0))
    for i in range(ROWS):  # the host is not online: all of it is buffered
        node.data("d", samples(i + 1))
    await asyncio.sleep(0.2)
    assert watcher.publish(
        "spBv1.0/STATE/bench-host", json.dumps({"online": True, "timestamp": 1}).encode(), 1, True
    )
    start = time.perf_counter()
    await _until(lambda: counter.historical >= ROWS)
    elapsed = time.perf_counter() - start
    replay_msgs, replay_metrics = counter.historical / elapsed, counter.metrics / elapsed

    async def feed() -> None:
        i = ROWS
        while True:
            i += 1
            node.data("d", samples(i))
            await asyncio.sleep(0.005)

    feeder = asyncio.create_task(feed())
    await asyncio.sleep(0.5)
    broker.kill()
    await asyncio.sleep(1.0)
    counter.first_live = None
    broker.start()
    restarted = time.perf_counter()
    watcher.publish(
        "spBv1.0/STATE/bench-host", json.dumps({"online": True, "timestamp": 2}).encode(), 1, True
    )
    await _until(lambda: watcher.connected)
    watcher.publish(
        "spBv1.0/STATE/bench-host", json.dumps({"online": True, "timestamp": 2}).encode(), 1, True
    )
    await _until(lambda: counter.first_live is not None, timeout=60)
    to_live = (counter.first_live or 0) - restarted
    feeder.cancel()
    await node.stop()
    watcher.stop()
    return replay_msgs, replay_metrics, to_live


def report() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rate = write_rate(Path(tmp) / "write.db")
        broker = Mosquitto(Path(tmp) / "mosquitto", "acme")
        broker.start()
        try:
            msgs, metrics, to_live = asyncio.run(replay_and_restart(broker, Path(tmp) / "replay.db"))
        finally:
            broker.stop()
    print(f"store-and-forward, {ROWS:,} buffered snapshots of 10 metrics:")
    print(f"  disk buffer writes (one row a call, WAL)        {rate:>10,.0f} rows/s")
    print(f"  replay after the outage, through Mosquitto      {msgs:>10,.0f} msg/s")
    print(f"                                                  {metrics:>10,.0f} metric updates/s")
    print(f"  broker restart to first live data               {to_live:>10.2f} s")
