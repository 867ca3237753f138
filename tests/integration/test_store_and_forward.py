"""Store-and-forward with real processes: the bridge (`uns bridge`) is killed with SIGKILL while the
broker is down and started again; what it had buffered on disk survives, and the record shows what
the machine really did, on the controller's own timestamps, with no comms_loss where it was seen."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.edge_node import EdgeNode
from bridge.opcua import CncOpcUaServer
from services.context.app import ContextService
from services.context.record import RecordStore
from services.context.state import Interval, MachineState
from tests.helpers import CNC_AT_REST, address, track
from uns.broker import Mosquitto, free_port
from uns.clock import WallClock
from uns.mqtt import BrokerAddress
from uns.site import Site, parse_site
from uns.sparkplug.edge import Sample

S = MachineState
INITIAL = CNC_AT_REST


def site_yaml(port: int) -> str:
    signals = ", ".join(
        f"{s}: 'ns=2;s={n}'"
        for s, n in [
            ("execution", "Execution"),
            ("mode", "ControllerMode"),
            ("part_count", "PartCount"),
            ("alarm_code", "AlarmCode"),
            ("estop", "EmergencyStop"),
        ]
    )
    return f"""\
enterprise: acme
site: dayton
sparkplug: {{group_id: dayton, edge_node_id: edge1, host_id: uns-host}}
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - id: vf2-01
                source:
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:{port}/sim
                  publishing_interval_ms: 50
                  signals: {{{signals}}}
"""


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def settled(read: Callable[[], list[Any]], expected: list[Any], timeout: float = 15.0) -> list[Any]:
    """What the record says once it says `expected`, or at the timeout (for the assertion to show):
    a tracker's state comes before the record's, whose writes gather (up to 50 ms) and whose
    backfill follows the last historical message (docs/operations.md)."""
    deadline = time.monotonic() + timeout
    while (got := read()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return got


def buffered(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM row").fetchone()[0])


async def test_a_killed_bridge_keeps_its_buffer(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "site.yaml").write_text(site_yaml(port))
    site = parse_site(site_yaml(port))
    server = CncOpcUaServer("vf2-01", f"opc.tcp://127.0.0.1:{port}/sim")
    now = WallClock().now_ms
    await server.start(INITIAL, now())
    store = RecordStore(tmp_path / "record.db")
    context = ContextService(site, store, address(mosquitto, "services"), WallClock())
    context.start(asyncio.get_running_loop())
    track(context._client)
    buffer_file = tmp_path / "buffer" / "dayton.edge1.db"
    env = {**os.environ, "UNS_MQTT_PASSWORD": mosquitto.creds.password("bridge")}
    command = [
        sys.executable,
        "-m",
        "unscli.cli",
        "--log-level",
        "WARNING",
        "bridge",
        "--site",
        str(tmp_path / "site.yaml"),
        "--broker",
        f"mqtt://127.0.0.1:{mosquitto.port}",
        "--buffer-dir",
        str(tmp_path / "buffer"),
    ]

    def bridge() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = bridge()
    try:
        await until(lambda: context.trackers["vf2-01"].state is S.IDLE, "the machine to come online")
        born_at = context.trackers["vf2-01"].since_ms
        mosquitto.kill()
        # the bridge (another process) notices the loss by itself, in its own time: its snapshot as
        # of what it last sent is the first row. (A change sent before it noticed goes into the dead
        # connection: test_a_change_sent_into_a_connection_already_dead_leaves_no_comms_loss)
        await until(lambda: buffered(buffer_file) >= 1, "the bridge to notice the loss")
        at_loss = buffered(buffer_file)  # its last snapshot before the loss
        t1 = now()
        await server.write({"execution": "ACTIVE"}, t1)
        await until(lambda: buffered(buffer_file) > at_loss, "the bridge to buffer")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t2 = now()
        await server.write({"execution": "FEED_HOLD"}, t2)  # while no bridge runs at all
        proc = bridge()
        rows_before = buffered(buffer_file)
        assert rows_before >= 1  # it survived the kill
        await until(lambda: buffered(buffer_file) > rows_before, "the new bridge to buffer")
        t3 = now()
        await server.write({"execution": "ACTIVE"}, t3)
        await until(lambda: buffered(buffer_file) > rows_before + 1, "the new bridge to buffer t3")
        mosquitto.start()
        await until(lambda: context.trackers["vf2-01"].since_ms == t3, "the backfill")
        await until(lambda: buffered(buffer_file) == 0, "the buffer to drain")
        expected = [
            Interval("vf2-01", born_at or 0, t1, S.IDLE),
            Interval("vf2-01", t1, t2, S.RUNNING),
            Interval("vf2-01", t2, t3, S.IDLE),
        ]
        recorded = await settled(
            lambda: [i for i in store.intervals("vf2-01", 0, t3 + 1) if i.start_ms >= (born_at or 0)],
            expected,
        )
        assert recorded == expected
        assert context.trackers["vf2-01"].state is S.RUNNING
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        await context.stop()
        await server.stop()
        store.close()


def _host(site: Site, mosquitto: Mosquitto, tmp_path: Path) -> tuple[ContextService, RecordStore]:
    """The context service, started on the record in `tmp_path`."""
    store = RecordStore(tmp_path / "record.db")
    service = ContextService(site, store, address(mosquitto, "services"), WallClock())
    service.start(asyncio.get_running_loop())
    track(service._client)
    return service, store


async def test_a_host_restart_leaves_no_gap_where_the_edge_buffered(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The context service stops cleanly (STATE offline: the edge buffers) and starts again: what the
    machine did meanwhile is backfilled and the comms_loss the stop wrote is gone."""
    from bridge.runner import run_bridge

    port = free_port()
    site = parse_site(site_yaml(port))
    server = CncOpcUaServer("vf2-01", f"opc.tcp://127.0.0.1:{port}/sim")
    now = WallClock().now_ms
    await server.start(INITIAL, now())
    buffer_file = tmp_path / "buffer" / "dayton.edge1.db"

    first, store = _host(site, mosquitto, tmp_path)
    stop = asyncio.Event()
    bridge = asyncio.create_task(
        run_bridge(site, address(mosquitto, "bridge"), WallClock(), stop, buffer_dir=tmp_path / "buffer")
    )
    try:
        await until(lambda: first.trackers["vf2-01"].state is S.IDLE, "the machine to come online")
        born_at = first.trackers["vf2-01"].since_ms
        await first.stop()
        store.close()
        await asyncio.sleep(0.5)
        before = buffered(buffer_file)
        t1 = now()
        await server.write({"execution": "ACTIVE"}, t1)  # nobody is listening: the edge keeps it
        await until(lambda: buffered(buffer_file) > before, "the edge to buffer")
        second, store = _host(site, mosquitto, tmp_path)
        await until(lambda: second.trackers["vf2-01"].since_ms == t1, "the backfill")
        assert second.trackers["vf2-01"].state is S.RUNNING
        expected = [Interval("vf2-01", born_at or 0, t1, S.IDLE)]
        assert await settled(lambda: store.intervals("vf2-01", born_at or 0, t1 + 1), expected) == expected
        await second.stop()
    finally:
        stop.set()
        await bridge
        await server.stop()
        store.close()


async def test_a_broker_crash_with_the_host_still_away_keeps_the_replay_for_the_host(tmp_path: Path) -> None:
    """The broker dies (a power cut) with the host connected, after it saved its state: it publishes
    no Will, and after its restart it hands the host's online STATE, as saved, to the edge node while
    the host is not back. The edge node waits for the host's newer STATE instead of replaying to
    nobody: the host, when back, gets what the machine did meanwhile, and the record has no
    comms_loss for it. (A clean stop of Mosquitto publishes the Wills: no stale STATE then.)"""
    from bridge.runner import make_edge_node

    mosquitto = Mosquitto(tmp_path / "broker", "acme", extra_config="autosave_interval 1\n")
    mosquitto.start()
    site = parse_site(site_yaml(free_port()))
    now = WallClock().now_ms

    first, store = _host(site, mosquitto, tmp_path)
    node = make_edge_node(site, "edge1", address(mosquitto, "bridge"), WallClock(), tmp_path / "buffer")
    node.start(asyncio.get_running_loop())
    track(node._client)
    second: ContextService | None = None
    try:
        await until(lambda: node.publishable, "the edge node to publish")
        node.device_online("vf2-01", _at_rest(site, now()))
        await until(lambda: first.trackers["vf2-01"].state is S.IDLE, "the machine to come online")
        born_at = first.trackers["vf2-01"].since_ms
        await asyncio.sleep(1.5)  # (it saves its state every second here: the online STATE too)
        mosquitto.kill()
        await until(lambda: not node.connected, "the edge node to notice")
        await first.stop()  # the host goes too, while the broker is down: its offline STATE is lost
        store.close()
        t1 = now()
        node.data("vf2-01", [Sample("execution", "ACTIVE", t1)])
        mosquitto.start()
        await until(lambda: node.connected, "the edge node to connect again")
        await asyncio.sleep(1.0)  # it has the STATE from before the restart: it must not replay now
        assert not node.publishable
        assert node.buffer.devices() == {"vf2-01"}
        second, store = _host(site, mosquitto, tmp_path)
        await until(lambda: second.trackers["vf2-01"].since_ms == t1, "the backfill")
        assert second.trackers["vf2-01"].state is S.RUNNING
        expected = [Interval("vf2-01", born_at or 0, t1, S.IDLE)]
        assert await settled(lambda: store.intervals("vf2-01", born_at or 0, t1 + 1), expected) == expected
    finally:
        await node.stop()
        if second is not None:
            await second.stop()
        store.close()
        mosquitto.stop()


class _SilentLink:
    """A TCP proxy to the broker, for one edge node. `go_silent()` closes its connections to the broker
    (the broker sees the edge node go and publishes its Will) while the edge node's side stays open,
    and what the edge node then sends goes nowhere: a connection that died without a word, which the
    edge node does not know of yet. `hang_up()` then closes the edge node's side too; connections made
    after it are passed through again."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._silent = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, edge_in: asyncio.StreamReader, edge_out: asyncio.StreamWriter) -> None:
        broker_in, broker_out = await asyncio.open_connection("127.0.0.1", self.broker_port)
        self._pairs.append((edge_out, broker_out))

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_broker: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if self._silent and to_broker:
                        continue  # (into the dead connection)
                    writer.write(data)
            if not self._silent:  # (silent: the edge node's side stays open until `hang_up`)
                writer.close()

        await asyncio.gather(pump(edge_in, broker_out, True), pump(broker_in, edge_out, False))

    def go_silent(self) -> None:
        self._silent = True
        for _, broker_out in self._pairs:
            broker_out.transport.abort()  # no DISCONNECT: the broker sends the Will

    def hang_up(self) -> None:
        pairs, self._pairs = self._pairs, []
        self._silent = False
        for edge_out, _ in pairs:
            edge_out.transport.abort()

    async def stop(self) -> None:
        self.hang_up()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class _Plant:
    site: Site
    link: _SilentLink
    store: RecordStore
    context: ContextService
    node: EdgeNode

    def state(self) -> tuple[MachineState, int | None]:
        tracker = self.context.trackers["vf2-01"]
        return tracker.state, tracker.since_ms


@contextlib.asynccontextmanager
async def _through_a_link(
    mosquitto: Mosquitto, tmp_path: Path, resend_window_s: float
) -> AsyncIterator[_Plant]:
    """The context service on the broker, and an edge node of ours (vf2-01 on it, born idle) that
    reaches the broker through a `_SilentLink`."""
    from bridge.runner import make_edge_node

    site = parse_site(site_yaml(free_port()))
    link = _SilentLink(mosquitto.port)
    await link.start()
    store = RecordStore(tmp_path / "record.db")
    context = ContextService(site, store, address(mosquitto, "services"), WallClock())
    context.start(asyncio.get_running_loop())
    track(context._client)
    bridge_login = address(mosquitto, "bridge")
    via_link = BrokerAddress("127.0.0.1", link.port, bridge_login.username, bridge_login.password)
    node = make_edge_node(site, "edge1", via_link, WallClock(), tmp_path / "buffer")
    node._resend_window = resend_window_s
    node._host_grace_s = 1.0  # (its reconnects find the STATE it saw: the host stays connected here)
    plant = _Plant(site, link, store, context, node)
    try:
        node.start(asyncio.get_running_loop())
        track(node._client)
        await until(lambda: node.publishable, "the edge node to publish")
        node.device_online("vf2-01", _at_rest(site, WallClock().now_ms()))
        await until(lambda: plant.state()[0] is S.IDLE, "the machine to come online")
        yield plant
    finally:
        await node.stop()
        await context.stop()
        await link.stop()
        store.close()


def _at_rest(site: Site, ts: int) -> list[Sample]:
    signals = site.machine("vf2-01").source.signals
    return [Sample(k, v, ts) for k, v in INITIAL.items() if k in signals]


@pytest.mark.parametrize("noticed_after_s", [0.0, 1.5], ids=["at-once", "after-the-resend-window"])
async def test_a_change_sent_into_a_connection_already_dead_leaves_no_comms_loss(
    mosquitto: Mosquitto, tmp_path: Path, noticed_after_s: float
) -> None:
    """The broker has lost the edge node (the host has its death, and says comms_loss from then) but
    the edge node does not know yet: it sends a change that is lost. When it learns of the loss (at
    once, or after its resend window: its keep-alive may take many seconds), it buffers the device as
    it stood before that send, then the send (everything sent since it last heard the broker): the
    host's backfill then covers the time from the death on, and the record shows the machine's own
    states, not comms_loss."""
    now = WallClock().now_ms
    async with _through_a_link(mosquitto, tmp_path, resend_window_s=1.0) as plant:
        born_at = plant.state()[1]
        await asyncio.sleep(0.2)
        plant.link.go_silent()
        await until(lambda: plant.state()[0] is S.COMMS_LOSS, "the host to see the death")
        died_at = plant.state()[1]
        assert plant.node.publishable, "the edge node has not noticed yet"
        await asyncio.sleep(0.05)
        changed_at = now()
        plant.node.data("vf2-01", [Sample("execution", "ACTIVE", changed_at)])  # sent, and lost
        assert plant.node.counters["data_sent"] == 1
        await asyncio.sleep(noticed_after_s)
        plant.link.hang_up()  # now it notices, buffers, connects again and replays
        await until(lambda: plant.state() == (S.RUNNING, changed_at), "the backfill")
        await until(lambda: plant.node.buffer.devices() == set(), "the buffer to drain")
        assert died_at is not None
        assert born_at is not None
        assert born_at < died_at < changed_at
        expected = [Interval("vf2-01", born_at, changed_at, S.IDLE)]
        recorded = await settled(
            lambda: [i for i in plant.store.intervals("vf2-01", 0, changed_at + 1) if i.start_ms >= born_at],
            expected,
        )
        assert recorded == expected


async def test_a_device_that_went_offline_before_the_connection_dropped_keeps_its_comms_loss(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A machine runs, goes offline (its DDEATH reaches the host), and then the connection drops:
    what it sent just before is sent again, and with it that it went offline then. The replay, once
    the machine is back, must not turn its time offline into its last state."""
    now = WallClock().now_ms
    async with _through_a_link(mosquitto, tmp_path, resend_window_s=3.0) as plant:
        born_at = plant.state()[1]
        ran_at = now()
        plant.node.data("vf2-01", [Sample("execution", "ACTIVE", ran_at)])
        await until(lambda: plant.state() == (S.RUNNING, ran_at), "the machine to run")
        await asyncio.sleep(0.1)
        plant.node.device_offline("vf2-01")  # its DDEATH, live
        await until(lambda: plant.state()[0] is S.COMMS_LOSS, "the host to see it offline")
        offline_at = plant.state()[1]
        plant.link.hang_up()
        await until(lambda: not plant.node.publishable, "the edge node to notice")
        await until(lambda: plant.node.publishable, "the edge node to publish again")
        await asyncio.sleep(0.3)
        back_at = now()
        plant.node.device_online("vf2-01", _at_rest(plant.site, back_at))  # back: its rows replay
        await until(lambda: plant.node.buffer.devices() == set(), "the buffer to drain")
        await until(lambda: plant.state()[0] is S.IDLE, "the machine to be back")
        assert born_at is not None
        assert offline_at is not None
        expected = [
            (born_at, ran_at, S.IDLE),
            (ran_at, offline_at, S.RUNNING),
            (offline_at, plant.state()[1], S.COMMS_LOSS),
        ]
        recorded = await settled(
            lambda: [
                (i.start_ms, i.end_ms, i.state)
                for i in plant.store.intervals("vf2-01", 0, back_at + 1)
                if i.start_ms >= born_at
            ],
            expected,
        )
        assert recorded == expected
