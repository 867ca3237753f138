"""The record's PostgreSQL goes away while the context service runs: the service keeps what it could
not write, goes offline as Sparkplug host so the edge node buffers on its disk, tries again with
backoff, and once the record takes its writes comes back online; the edge node then sends its births
and what it buffered, and the record shows what the machine did, with nothing lost and no comms_loss
where the edge saw it. A real Mosquitto, a real asyncua server behind the bridge's own edge node, a
real PostgreSQL reached through a TCP proxy of the test's own that is cut and put back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import psycopg
import pytest

from bridge.opcua import CncOpcUaServer
from bridge.runner import run_bridge
from services.context.app import ContextService
from services.context.record import open_record
from services.context.state import Interval, MachineState
from tests.helpers import CNC_AT_REST, address, track
from tests.integration.test_store_and_forward import buffered, site_yaml, until
from tests.services.test_record_store import _closed_port, _LateProxy
from uns.broker import Mosquitto, free_port
from uns.clock import WallClock
from uns.site import parse_site

S = MachineState


async def test_a_record_gone_mid_run_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "services.context.app")
    target = psycopg.conninfo.conninfo_to_dict(pg_url)
    host, port = str(target.get("host", "127.0.0.1")), int(str(target.get("port", 5432)))
    proxied = _closed_port()
    proxy = _LateProxy(proxied, host, port)
    proxy.start()
    store = open_record(pg_url.replace(f":{port}/", f":{proxied}/"), wait_s=10.0)

    opc_port = free_port()
    site = parse_site(site_yaml(opc_port))
    server = CncOpcUaServer("vf2-01", f"opc.tcp://127.0.0.1:{opc_port}/sim")
    now = WallClock().now_ms
    await server.start(CNC_AT_REST, now())
    buffer_file = tmp_path / "buffer" / "dayton.edge1.db"
    service = ContextService(site, store, address(mosquitto, "services"), WallClock())
    service.start(asyncio.get_running_loop())
    track(service._client)
    stop = asyncio.Event()
    bridge = asyncio.create_task(
        run_bridge(site, address(mosquitto, "bridge"), WallClock(), stop, buffer_dir=tmp_path / "buffer")
    )
    try:
        await until(lambda: service.trackers["vf2-01"].state is S.IDLE, "the machine to come online")
        born_at = service.trackers["vf2-01"].since_ms or 0
        await until(lambda: bool(store.current_states()[0].since_ms), "its state in the record")

        proxy.stop()  # the record's database is gone: its connections cut, no new ones
        t1 = now()
        await server.write({"execution": "ACTIVE"}, t1)  # closes an interval the record cannot take
        await until(lambda: service.host.counters["record_outages"] == 1, "the write to fail")
        before = buffered(buffer_file)
        t2 = now()
        await server.write({"execution": "FEED_HOLD"}, t2)  # the host is offline: the edge buffers
        await until(lambda: buffered(buffer_file) > before, "the edge to buffer")
        await until(lambda: "still cannot be written" in caplog.text, "a try while it is still gone")

        proxy = _LateProxy(proxied, host, port)
        proxy.start()  # back: the kept writes go in, the host comes back, the edge sends its buffer
        await until(lambda: service.trackers["vf2-01"].since_ms == t2, "the backfill", timeout=60)
        await until(lambda: buffered(buffer_file) == 0, "the buffer to drain")
        await until(
            lambda: any(i.start_ms == t1 for i in store.intervals("vf2-01", t1, t1 + 1)), "the record"
        )
        assert store.intervals("vf2-01", born_at, t2 + 1) == [
            Interval("vf2-01", born_at, t1, S.IDLE),
            Interval("vf2-01", t1, t2, S.RUNNING),
        ]
        assert service.trackers["vf2-01"].state is S.IDLE
        assert service.host.counters["record_outages"] == 1
        assert "comes back online" in caplog.text
    finally:
        stop.set()
        await bridge
        await service.stop()
        await server.stop()
        store.close()
        proxy.stop()
