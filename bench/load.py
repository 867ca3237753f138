"""The context service under load, from outside: a load generator of the bench's own (N edge nodes
of 10 machines each, Sparkplug B through Mosquitto) into the real `uns context` process, with a
bare paho-mqtt subscriber on the same stream beside it.

For 50, 200 and 500 machines and two load shapes, at rising rates (messages of 3 metrics each:
spindle load and speed, and one more):
- `worst`: every message changes a machine's execution (READY, ACTIVE, ...), so closes an interval;
- `realistic`: one message in ten changes a machine's execution; one in ten counts a part; the rest
  move its feed override.

Each step reports what was sent (the generator may fall short of the rate asked), what the bare
subscriber heard, the record's loss (every metric value is a row of `signal_event`: the rows the
step added against the metrics sent), how long after the last message the record had them all,
p50/p99 from the source timestamp of a value that changed a machine's state to the retained `state`
JSON that shows it (its `since`), and the context process's CPU (of one core) over the step and the
catch-up. Per run: the host's seq gaps and rebirth requests (its `_health` report) and the process's
peak RSS (VmHWM). CPU and RSS come from /proc: Linux only.

With one worker (one `uns context`) at 50 and 500 machines, and with two workers (`context.workers`,
each `uns context --worker` keeping half the edge nodes, one record) at 500: CPU is then the two
processes' together (of one core: above 100 % is more than one core), RSS the larger one's peak.

Everything shares this machine's cores (generator, broker, service, both subscribers): the figures
are what one box does, not the service alone. The generator publishes with the project's own MQTT
client and the state subscriber takes the `state` documents only, so that the bench itself takes
less of the cores; the bare subscriber, the reference, is paho-mqtt's. `BENCH_LOAD_STEP_S` sets a
step's length (3 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from uns.broker import Mosquitto
from uns.clock import parse_iso
from uns.mqtt import BareCounter, BrokerAddress, MqttClient
from uns.signals import metric_defs
from uns.site import Signal
from uns.sparkplug.edge import EdgeSession, Sample

PER_EDGE = 10
SIGNALS = (
    Signal.EXECUTION,
    Signal.MODE,
    Signal.PROGRAM,
    Signal.PART_COUNT,
    Signal.ALARM_CODE,
    Signal.ESTOP,
    Signal.SPINDLE_SPEED,
    Signal.SPINDLE_LOAD,
    Signal.FEED_OVERRIDE,
)
SIZES = ((1, 50), (1, 500), (2, 500))  # (context workers, machines)
STEP_S = float(os.environ.get("BENCH_LOAD_STEP_S", "3"))
# messages per second, by shape: a low rate first (the UNS's own latency), then up
RATES = {"worst": (50, 2_000, 5_000, 10_000), "realistic": (2_000, 5_000, 10_000, 17_000)}
EXECUTIONS = ("READY", "ACTIVE", "READY", "INTERRUPTED")  # n from 1: the first is a change


def site_yaml(machines: int, workers: int = 1) -> str:
    lines = [
        "enterprise: acme",
        "site: bench",
        "sparkplug: {group_id: bench, edge_node_id: e000, host_id: bench-host}",
        "areas:",
        "  - name: a",
        "    lines:",
        "      - name: l",
        "        cells:",
    ]
    signals = ", ".join(f"{s.value}: n{i}" for i, s in enumerate(SIGNALS))
    for cell in range(0, machines, PER_EDGE):
        lines += [f"          - name: c{cell // PER_EDGE:03d}", "            machines:"]
        for i in range(cell, min(cell + PER_EDGE, machines)):
            lines.append(
                f"              - {{id: m{i:03d}, edge_node: {_edge(i)}, source: {{protocol: opcua,"
                f" endpoint: 'opc.tcp://127.0.0.1:4840', signals: {{{signals}}}}}}}"
            )
    if workers > 1:  # the edge nodes split in `workers` runs of about the same length
        edges = [_edge(i) for i in range(0, machines, PER_EDGE)]
        lines += ["context:", "  workers:"]
        for w in range(workers):
            share = edges[w * len(edges) // workers : (w + 1) * len(edges) // workers]
            lines.append(f"    w{w}: {{edge_nodes: [{', '.join(share)}]}}")
    return "\n".join(lines) + "\n"


def _hosts(workers: int) -> list[str]:
    return ["bench-host"] if workers == 1 else [f"bench-host-w{w}" for w in range(workers)]


# -- the load generator (its own process) ----------------------------------------------------
def _edge(machine: int) -> str:
    return f"e{machine // PER_EDGE:03d}"


def _generator(conn: Connection, port: int, password: str, machines: int, shape: str) -> None:
    asyncio.run(_generate(conn, port, password, machines, shape))


class _Quiet:
    def on_connected(self) -> None: ...
    def on_disconnected(self, reason: str) -> None: ...
    def on_message(self, topic: str, payload: bytes) -> None: ...


async def _generate(conn: Connection, port: int, password: str, machines: int, shape: str) -> None:
    """The edge nodes' side, on the project's own MQTT client (it leaves more of the shared cores to
    the service than paho's would; the bare subscriber measured beside the service stays paho)."""
    loop = asyncio.get_running_loop()
    defs = metric_defs(SIGNALS)
    now = int(time.time() * 1000)
    sessions: dict[str, EdgeSession] = {}
    for first in range(0, machines, PER_EDGE):
        devices = {f"m{j:03d}": defs for j in range(first, min(first + PER_EDGE, machines))}
        session = sessions[_edge(first)] = EdgeSession("bench", _edge(first), devices)
        session.new_connection(now)
    where = [(sessions[_edge(i)], f"m{i:03d}") for i in range(machines)]
    ready: dict[str, bool | int | float | str] = {
        "execution": "READY",
        "mode": "AUTOMATIC",
        "program": "O1000",
        "part_count": 0,
        "alarm_code": 0,
        "estop": False,
        "spindle_speed": 0.0,
        "spindle_load": 0.0,
        "feed_override": 100.0,
    }
    for session, device in where:
        session.device_online(device, now, [Sample(k, v, now) for k, v in ready.items()])
    client = MqttClient("bench-load", BrokerAddress("127.0.0.1", port, "bridge", password), _Quiet(), loop)
    client.start()
    while not client.connected:
        await asyncio.sleep(0.01)
    for session in sessions.values():
        for topic, payload in session.births(now):
            client.publish(topic, payload, qos=0)
    conn.send(machines * len(ready))
    counts = [0] * machines
    steps = [0] * machines
    last = [now] * machines
    while (order := await loop.run_in_executor(None, conn.recv)) is not None:
        rate, seconds = order
        sent = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed * rate) - sent
            if due <= 0:
                await asyncio.sleep(0.0005)
                continue
            for _ in range(min(due, 100)):
                k = sent % machines
                session, device = where[k]
                # a machine's values are one per millisecond at most (the record keys them so)
                ts = last[k] = max(int(time.time() * 1000), last[k] + 1)
                n = steps[k] = steps[k] + 1
                motion = [
                    Sample("spindle_load", float(n % 97), ts),
                    Sample("spindle_speed", float(n % 500), ts),
                ]
                if shape == "worst" or n % 10 == 0:
                    execution = EXECUTIONS[(n if shape == "worst" else n // 10) % len(EXECUTIONS)]
                    values = [Sample("execution", execution, ts), *motion]
                elif n % 5 == 0:
                    counts[k] += 1
                    values = [Sample("part_count", counts[k], ts), *motion]
                else:
                    values = [Sample("feed_override", float(90 + n % 20), ts), *motion]
                msg = session.data(device, values, ts)
                assert msg is not None
                if not client.publish(msg[0], msg[1], qos=0):
                    raise RuntimeError("the load generator lost its broker")
                sent += 1
            await asyncio.sleep(0)  # (what the socket did not take yet is written by the loop)
        conn.send((sent, time.perf_counter() - start))
    await asyncio.sleep(0.5)
    client.stop()


# -- the measuring side -----------------------------------------------------------------------
class _States:
    """A subscriber to the readable tree (the services login): the delay of every state JSON that
    shows a new state after the value that began it (`since`), and the host's retained health."""

    def __init__(self, address: BrokerAddress, hosts: list[str]) -> None:
        self.delays: list[float] = []
        self._since: dict[str, str | None] = {}
        self.hosts = hosts
        self.health: dict[str, dict[str, Any]] = {}  # by host
        self._online: set[str] = set()
        self.online = threading.Event()
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-states", protocol=MQTTProtocolVersion.MQTTv5
        )
        c.username_pw_set(address.username, address.password)
        # the state documents only (not the intervals and jobs beside them), the hosts' health and STATE
        topics = [("acme/bench/+/+/+/+/state", 0), ("acme/bench/_health/host/+", 0), ("spBv1.0/STATE/+", 0)]
        c.on_connect = lambda client, *_: client.subscribe(topics)
        c.on_message = self._on_message
        self._client = c
        c.connect(address.host, address.port, 30)
        c.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        arrived = time.time() * 1000
        topic = msg.topic
        if topic.endswith("/state"):
            doc = json.loads(msg.payload)
            since = doc["since"]
            if not msg.retain and since is not None and self._since.get(topic) != since:
                self.delays.append(arrived - parse_iso(since))  # a new state: since its value's time
            self._since[topic] = since
        elif topic.startswith("spBv1.0/STATE/"):
            if msg.payload and json.loads(msg.payload).get("online"):
                self._online.add(topic.rpartition("/")[2])
                if self._online >= set(self.hosts):
                    self.online.set()
        elif topic.startswith("acme/bench/_health/host/"):
            self.health[topic.rpartition("/")[2]] = json.loads(msg.payload)

    def counter(self, name: str) -> float | None:
        """A counter summed over the hosts (None before every host has reported its health)."""
        if set(self.health) < set(self.hosts):
            return None
        return float(sum(h.get(name, 0) for h in self.health.values()))  # (one never moved: not in it)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rows(record: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{record}?mode=ro", uri=True, timeout=30)) as db:
        return int(db.execute("SELECT count(*) FROM signal_event").fetchone()[0])


def _settle(record: Path, expected: int, quiet_s: float = 5.0, limit_s: float = 90.0) -> tuple[int, float]:
    """The record's rows once they reach `expected` or stop growing for `quiet_s` (a flush of what
    queued up may take seconds), and how long that took."""
    start = time.monotonic()
    last, still = -1, 0.0
    while (waited := time.monotonic() - start) < limit_s:
        rows = _rows(record)
        if rows >= expected:
            return rows, waited
        still = still + 0.1 if rows == last else 0.0
        if still >= quiet_s:
            break
        last = rows
        time.sleep(0.1)
    return last, waited


@dataclass
class Step:
    rate: int
    sent: int
    seconds: float
    metrics: int
    lost: int
    heard: int
    delays: list[float]
    cpu: float
    catch_up_s: float  # after the last message sent, until the record had every value

    @property
    def p99(self) -> float:
        d = sorted(self.delays)
        return d[int(len(d) * 0.99)] if d else float("nan")

    @property
    def line(self) -> str:
        p50 = statistics.median(self.delays) if self.delays else float("nan")
        p99 = self.p99
        return (
            f"{self.rate:>7,}/s asked {self.sent / self.seconds:>7,.0f}/s sent"
            f" {self.metrics / self.seconds:>7,.0f} metrics/s  lost {self.lost:>6,}"
            f"  bare heard {self.heard / max(self.sent, 1):>6.1%}  state p50 {p50:>7.1f} ms"
            f" p99 {p99:>8.1f} ms  record {self.catch_up_s:>5.1f} s after  cpu {self.cpu:>4.0%}"
        )


@dataclass
class Run:
    machines: int
    shape: str
    workers: int = 1
    steps: list[Step] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    seq_gaps: float | None = None
    rebirths: float | None = None


def run(machines: int, shape: str, rates: tuple[int, ...], step_s: float = STEP_S, workers: int = 1) -> Run:
    result = Run(machines, shape, workers)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = Mosquitto(root / "broker", "acme")
        broker.start()
        site, record = root / "site.yaml", root / "record.db"
        site.write_text(site_yaml(machines, workers))
        env = {**os.environ, "UNS_MQTT_PASSWORD": broker.creds.password("services")}
        uns = Path(sys.executable).with_name("uns")
        contexts = [
            subprocess.Popen(
                [str(uns), "--log-level", "WARNING", "context", "--site", str(site)]
                + ["--broker", f"mqtt://127.0.0.1:{broker.port}", "--record", str(record)]
                + ([] if workers == 1 else ["--worker", f"w{w}"]),
                env=env,
            )
            for w in range(workers)
        ]

        def cpu_s() -> float:
            return sum(_cpu_s(c.pid) for c in contexts)

        states = _States(broker.address("services"), _hosts(workers))
        bare = BareCounter(broker.address("services"), "spBv1.0/bench/DDATA/#", "bench-bare")
        bare.start()
        ours, theirs = multiprocessing.get_context("spawn").Pipe()
        gen = multiprocessing.get_context("spawn").Process(
            target=_generator, args=(theirs, broker.port, broker.creds.password("bridge"), machines, shape)
        )
        try:
            if not states.online.wait(30) or not bare.subscribed.wait(10):
                raise RuntimeError("the context service did not come online")
            gen.start()
            born = ours.recv()
            rows, _ = _settle(record, born)
            for rate in rates:
                states.delays.clear()
                heard0, cpu0 = bare.count, cpu_s()
                ours.send((rate, step_s))
                sent, seconds = ours.recv()
                metrics = sent * 3
                now_rows, catch_up = _settle(record, rows + metrics)
                step = Step(
                    rate,
                    sent,
                    seconds,
                    metrics,
                    rows + metrics - now_rows,
                    bare.count - heard0,
                    list(states.delays),
                    (cpu_s() - cpu0) / (seconds + catch_up),
                    catch_up,
                )
                rows = now_rows
                result.steps.append(step)
                if step.lost:
                    break  # past what it keeps up with
            result.peak_rss_mib = max(_peak_rss_mib(c.pid) for c in contexts)
            deadline = time.monotonic() + 12  # the hosts report their health every 10 s
            seen = {h: v.get("updated") for h, v in states.health.items()}
            while time.monotonic() < deadline and any(
                h not in seen or states.health[h].get("updated") == seen[h] for h in states.hosts
            ):
                time.sleep(0.2)
            result.seq_gaps = states.counter("seq_gaps")
            result.rebirths = states.counter("rebirths_requested")
        finally:
            if gen.is_alive():
                with contextlib.suppress(OSError):
                    ours.send(None)
                gen.join(10)
            states.stop()
            bare.stop()
            for context in contexts:
                context.terminate()
            for context in contexts:
                try:
                    context.wait(30)
                except subprocess.TimeoutExpired:
                    context.kill()
            broker.stop()
    return result


def report() -> None:
    print("load: N machines (edge nodes of 10) through Mosquitto into `uns context`, 3 metrics a message:")
    for shape, rates in RATES.items():
        for workers, machines in SIZES:
            r = run(machines, shape, rates, workers=workers)
            who = "one worker" if workers == 1 else f"{workers} workers"
            print(
                f"  {shape} shape, {machines} machines, {who}: peak RSS {r.peak_rss_mib:.0f} MiB,"
                f" seq gaps {r.seq_gaps}, rebirths asked {r.rebirths}"
            )
            for step in r.steps:
                print(f"    {step.line}")
            kept = [s for s in r.steps if not s.lost and s.p99 < 1000]  # no backlog building up
            fast = [s for s in kept if s.p99 < 100]
            pace = max((s.sent / s.seconds for s in kept), default=0)
            quick = max((s.sent / s.seconds for s in fast), default=0)
            print(
                f"    kept pace (nothing lost, p99 under 1 s) up to {pace:,.0f} msg/s;"
                f" with p99 under 100 ms up to {quick:,.0f} msg/s"
            )


if __name__ == "__main__":
    report()
