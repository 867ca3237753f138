"""The host's throughput beside a bare paho-mqtt subscriber, on the same broker and messages, and
the same stream over TLS (publisher and host on the broker's TLS listener, certificates from
`uns make-certs`) against plain MQTT, by turns, the best of two runs each.

A separate publisher process sends a valid Sparkplug session (NBIRTH, DBIRTHs) and then N DDATA
messages of 10 metrics each for 10 devices, as fast as it can, QoS 0. Each consumer is measured
from its first to its last message; what did not arrive is reported, not hidden.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.codec import METRICS, samples
from uns.broker import Mosquitto, ServerTls
from uns.certs import make_certs
from uns.mqtt import BareCounter, BrokerAddress, MqttClient, TlsFiles
from uns.sparkplug.edge import EdgeSession
from uns.sparkplug.host import HostSession, MetricsUpdate

DEVICES = [f"d{i}" for i in range(10)]
N = 50_000
ROUNDS = 2  # of our host plain and over TLS


def _publish(host: str, port: int, password: str, n: int, ca: str | None = None) -> None:
    async def main() -> None:
        session = EdgeSession("bench", "edge", dict.fromkeys(DEVICES, METRICS))
        session.new_connection(0)
        for d in DEVICES:
            session.device_online(d, 0, samples(0))
        messages = session.births(1)
        messages += [m for i in range(n) if (m := session.data(DEVICES[i % 10], samples(i), 2)) is not None]

        class Quiet:
            def on_connected(self) -> None: ...
            def on_disconnected(self, reason: str) -> None: ...
            def on_message(self, topic: str, payload: bytes) -> None: ...

        tls = TlsFiles(Path(ca)) if ca is not None else None
        address = BrokerAddress(host, port, "bridge", password, tls)
        client = MqttClient("bench-pub", address, Quiet(), asyncio.get_running_loop())
        client.start()
        while not client.connected:
            await asyncio.sleep(0.01)
        for i, (topic, payload) in enumerate(messages):
            while not client.publish(topic, payload):
                await asyncio.sleep(0.001)
            if i % 500 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(1)
        client.stop()

    asyncio.run(main())


def _send(broker: Mosquitto, n: int, tls: TlsFiles | None = None) -> multiprocessing.process.BaseProcess:
    port = broker.address("bridge", tls).port
    ca = str(tls.ca_file) if tls is not None and tls.ca_file is not None else None
    proc = multiprocessing.get_context("spawn").Process(
        target=_publish, args=("127.0.0.1", port, broker.creds.password("bridge"), n, ca)
    )
    proc.start()
    return proc


def _settle(count: Callable[[], int]) -> None:
    """Wait until nothing more arrives for two seconds."""
    last, still = -1, 0.0
    while still < 2.0:
        time.sleep(0.1)
        still = still + 0.1 if count() == last else 0.0
        last = count()


def bare(broker: Mosquitto, n: int) -> tuple[float, int]:
    counter = BareCounter(
        BrokerAddress("127.0.0.1", broker.port, "services", broker.creds.password("services")), "spBv1.0/#"
    )
    counter.start()
    counter.subscribed.wait(5)
    proc = _send(broker, n)
    proc.join()
    _settle(lambda: counter.count)
    counter.stop()
    elapsed = (counter.last or 0) - (counter.first or 0)
    return counter.count / elapsed if elapsed else 0.0, counter.count


class _HostBench:
    def __init__(self) -> None:
        self.host = HostSession()
        self.messages = 0
        self.metrics = 0
        self.first: float | None = None
        self.last: float | None = None

    def on_connected(self) -> None: ...
    def on_disconnected(self, reason: str) -> None: ...

    def on_message(self, topic: str, payload: bytes) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.messages += 1
        for event in self.host.handle(topic, payload, now):
            if isinstance(event, MetricsUpdate):
                self.metrics += len(event.metrics)


async def ours(
    broker: Mosquitto, n: int, tls: TlsFiles | None = None
) -> tuple[float, float, int, _HostBench]:
    """Our host's rate; with `tls`, the publisher and the host both on the TLS listener."""
    bench = _HostBench()
    client = MqttClient(
        "bench-host",
        broker.address("services", tls),
        bench,
        asyncio.get_running_loop(),
        subscriptions=(("spBv1.0/#", 0),),
    )
    client.start()
    while not client.connected:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    proc = _send(broker, n, tls)
    while proc.is_alive():
        await asyncio.sleep(0.05)
    last, still = -1, 0.0
    while still < 2.0:  # until nothing more arrives for two seconds
        await asyncio.sleep(0.1)
        still = still + 0.1 if bench.messages == last else 0.0
        last = bench.messages
    client.stop()
    elapsed = (bench.last or 0) - (bench.first or 0)
    return bench.messages / elapsed, bench.metrics / elapsed, bench.messages, bench


def report() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "certs"
        make_certs(certs)
        broker = Mosquitto(
            Path(tmp) / "mosquitto",
            "acme",
            tls=ServerTls(certs / "ca.crt", certs / "server.crt", certs / "server.key"),
        )
        broker.start()
        try:
            sent = N + 1 + len(DEVICES)
            bare_rate, bare_count = bare(broker, N)
            # plain and TLS by turns, the best of each: the same stream, the same machine's noise
            plain_runs, tls_runs = [], []
            for _ in range(ROUNDS):
                plain_runs.append(asyncio.run(ours(broker, N)))
                tls_runs.append(asyncio.run(ours(broker, N, TlsFiles(certs / "ca.crt"))))
            msg_rate, metric_rate, count, b = max(plain_runs, key=lambda r: r[0])
            tls_rate, _, tls_count, t = max(tls_runs, key=lambda r: r[0])
        finally:
            broker.stop()
    print(f"host throughput, {N:,} DDATA x 10 metrics (+ births) through Mosquitto, one publisher process:")
    print(f"  bare paho-mqtt subscriber  {bare_rate:>10,.0f} msg/s   received {bare_count:,}/{sent:,}")
    print(
        f"  our host (decode, aliases, seq, events)  {msg_rate:>10,.0f} msg/s  {metric_rate:>10,.0f} metric "
        f"updates/s   received {count:,}/{sent:,}   seq gaps {b.host.counters['seq_gaps']}"
    )
    print(f"  ratio ours / bare          {msg_rate / bare_rate:>10.2f}")
    print(
        f"  our host over TLS (publisher too)        {tls_rate:>10,.0f} msg/s"
        f"   received {tls_count:,}/{sent:,}   seq gaps {t.host.counters['seq_gaps']}"
    )
    print(
        f"  ratio TLS / plain          {tls_rate / msg_rate:>10.2f}   (best of {ROUNDS} runs each, by turns)"
    )
    print(
        f"  peak RSS of this process   {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:>10.1f} MiB"
    )
