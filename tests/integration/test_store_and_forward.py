"""Store-and-forward with real processes: the bridge (`uns bridge`) is killed with SIGKILL while the
broker is down and started again; what it had buffered on disk survives, and the record shows what
the machine really did, on the controller's own timestamps, with no comms_loss where it was seen."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bridge.opcua import CncOpcUaServer
from services.context.app import ContextService
from services.context.record import RecordStore
from services.context.state import Interval, MachineState
from tests.helpers import CNC_AT_REST, address, track
from uns.broker import Mosquitto, free_port
from uns.clock import WallClock
from uns.site import parse_site

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
        # of what it last sent is the first row. A change sent before it noticed would go into the
        # dead connection, and the record could then only say comms_loss until that change
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
        recorded = [i for i in store.intervals("vf2-01", 0, t3 + 1) if i.start_ms >= (born_at or 0)]
        assert recorded == [
            Interval("vf2-01", born_at or 0, t1, S.IDLE),
            Interval("vf2-01", t1, t2, S.RUNNING),
            Interval("vf2-01", t2, t3, S.IDLE),
        ]
        assert context.trackers["vf2-01"].state is S.RUNNING
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        await context.stop()
        await server.stop()
        store.close()


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

    def host() -> tuple[ContextService, RecordStore]:
        store = RecordStore(tmp_path / "record.db")
        service = ContextService(site, store, address(mosquitto, "services"), WallClock())
        service.start(asyncio.get_running_loop())
        track(service._client)
        return service, store

    first, store = host()
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
        second, store = host()
        await until(lambda: second.trackers["vf2-01"].since_ms == t1, "the backfill")
        assert second.trackers["vf2-01"].state is S.RUNNING
        assert store.intervals("vf2-01", born_at or 0, t1 + 1) == [
            Interval("vf2-01", born_at or 0, t1, S.IDLE)
        ]
        await second.stop()
    finally:
        stop.set()
        await bridge
        await server.stop()
        store.close()
