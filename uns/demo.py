"""`uns demo`: the whole stack on one machine, with a simulated job shop.

Mosquitto (ours, on a free loopback port, unless --broker is given), the CNC simulator (one OPC UA
server per machine), the bridge, the context service and the API, in one asyncio process. Stops on
Ctrl-C, SIGTERM or after --duration: host STATE offline, NDEATH, record flushed, broker stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import uvicorn
from pydantic import SecretStr

from bridge.runner import run_bridge
from bridge.sim.cnc import run_simulator
from bridge.sim.erp import release, releases
from bridge.sim.scenario import MachineScenario
from services.api.app import create_app
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.app import ContextService
from services.context.reasons import taxonomy
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar, calendar_for
from services.historian.app import HistorianService
from services.historian.writer import InfluxSettings
from services.oee.engine import Definition
from uns.broker import Credentials, Mosquitto, broker_users, edge_node_users, free_port, password_env
from uns.clock import ScaledClock
from uns.mqtt import BrokerAddress
from uns.processes import parse_broker
from uns.site import Site

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    site: Site
    data_dir: Path
    speed: float = 1.0
    seed: int = 1
    duration: float | None = None
    broker: str | None = None
    mqtt_port: int | None = None
    api_port: int | None = None
    truth_file: Path | None = None


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the demo owns Ctrl-C and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _broker_credentials(site: Site) -> Credentials:
    """For --broker: the password of each user the demo logs in as (every user of the site's ACL)."""
    users = broker_users(site)
    missing = [password_env(u) for u in users if not os.environ.get(password_env(u))]
    if missing:
        raise SystemExit(
            f"uns demo --broker: set {', '.join(missing)} (the passwords of the broker's users:"
            " `uns broker-users`)"
        )
    return Credentials({u: os.environ[password_env(u)] for u in users})


async def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    data_dir = opts.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    mosquitto: Mosquitto | None = None
    if opts.broker is None:
        # the site's own ACL (a user per edge node), fresh passwords, plain MQTT on 127.0.0.1 only
        mosquitto = Mosquitto.for_site(data_dir / "mosquitto", opts.site, port=opts.mqtt_port)
        mosquitto.write_files()
        mosquitto.start()
        base = BrokerAddress("127.0.0.1", mosquitto.port)
        creds = mosquitto.creds
    else:
        base = parse_broker(opts.broker)  # mqtts:// with UNS_MQTT_CA_FILE, ... for TLS
        creds = _broker_credentials(opts.site)
    try:
        await _run(opts, base, creds, stop, out)
    finally:
        if mosquitto is not None:
            mosquitto.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(
    opts: DemoOptions, base: BrokerAddress, creds: Credentials, stop: asyncio.Event, out: TextIO
) -> None:
    loop = asyncio.get_running_loop()
    site = opts.site.with_ports({m.id: free_port() for m in opts.site.machines})
    clock = ScaledClock(origin_ms=_minute_now(), speed=opts.speed)
    token = os.environ.get("UNS_API_TOKEN") or secrets.token_urlsafe(24)
    store = RecordStore(opts.data_dir / "record.db")
    api_port = opts.api_port or free_port()
    root = f"{site.config.enterprise}/{site.config.site}"
    sender = CommandSender(base.with_credentials("api", creds.password("api")), root)
    server = _Uvicorn(
        uvicorn.Config(
            create_app(
                ApiSettings(api_token=SecretStr(token)),
                store,
                _calendar(site),
                taxonomy(site.config.downtime),
                sender,
                Definition.from_config(
                    site.config.oee, taxonomy(site.config.downtime), site.config.downtime.rules
                ),
                site.config.timezone,
                clock.now_ms,
            ),
            host="127.0.0.1",
            port=api_port,
            log_level="warning",
            lifespan="off",
        )
    )
    context = ContextService(
        site, store, base.with_credentials("services", creds.password("services")), clock
    )
    sim_stop, bridge_stop, sim_ready = asyncio.Event(), asyncio.Event(), asyncio.Event()
    print(
        f"uns demo: starting {len(site.machines)} simulated machines (OPC UA and Modbus servers)...",
        file=out,
        flush=True,
    )
    sim = asyncio.create_task(
        run_simulator(list(site.machines), opts.seed, clock, sim_stop, opts.truth_file, sim_ready),
        name="demo.sim",
    )
    await asyncio.wait({sim, asyncio.create_task(sim_ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if sim.done():
        await sim  # it failed to start: raise why
    api = asyncio.create_task(server.serve(), name="demo.api")
    context.start(loop)
    sender.start(loop)
    # the simulated shop's ERP releases each of a day of the scenarios' jobs just before its setup
    # begins (so the idle time between jobs is `no_work`); what is due now goes before the bridge starts
    scenarios = [MachineScenario(m.id, opts.seed, clock.origin_ms) for m in site.machines]
    plan = releases(scenarios, clock.origin_ms + 24 * 3_600_000)
    due = [op for at, op in plan if at <= clock.now_ms()]
    for m in site.machines:
        body = {"machine": m.id, "by": "erp-sim", "operations": [o for o in due if o["machine"] == m.id]}
        context.command("dispatch", json.dumps(body).encode(), via="demo")

    async def send(body: dict[str, Any]) -> None:
        context.command("dispatch_update", json.dumps(body).encode(), via="demo")

    erp = asyncio.create_task(release(send, plan[len(due) :], clock), name="demo.erp")
    # each edge node logs in as its own broker user
    logins = {
        e.edge_node_id: base.with_credentials(e.user, creds.password(e.user)) for e in edge_node_users(site)
    }
    bridge = asyncio.create_task(
        run_bridge(
            site,
            logins,
            clock,
            bridge_stop,
            buffer_dir=opts.data_dir / "buffer",
        ),
        name="demo.bridge",
    )
    historian, influx = None, _influx(out)
    if influx is not None:
        historian = HistorianService(
            site,
            store,
            influx,
            opts.data_dir / "record.historian.db",
            clock.now_ms,
            oee_every_ms=int(10_000 * opts.speed),  # every 10 s, as the wall display sees it
        )
    historian_stop = asyncio.Event()
    history = asyncio.create_task(historian.run(historian_stop), name="demo.historian") if historian else None
    viewer = creds.password("viewer")
    _banner(out, site, base, api_port, token, viewer, opts, influx)
    try:
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {waiter, sim, api, bridge}, timeout=opts.duration, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        for task in done - {waiter}:
            if task.exception() is not None:
                logger.error("demo: %s failed", task.get_name(), exc_info=task.exception())
    finally:
        print("uns demo: stopping", file=out, flush=True)
        erp.cancel()
        await asyncio.gather(erp, return_exceptions=True)
        await context.stop()
        historian_stop.set()
        if history is not None:
            await asyncio.gather(history, return_exceptions=True)
        bridge_stop.set()
        await asyncio.gather(bridge, return_exceptions=True)
        sim_stop.set()
        await asyncio.gather(sim, return_exceptions=True)
        sender.stop()
        server.should_exit = True
        await asyncio.gather(api, return_exceptions=True)
        store.close()
        print("uns demo: stopped cleanly", file=out, flush=True)


LOCAL_STORES = ("http://127.0.0.1:8428", "http://127.0.0.1:8086")  # VictoriaMetrics, InfluxDB


def _influx(out: TextIO) -> InfluxSettings | None:
    """Where the demo's historian writes: UNS_INFLUX_URL (with _ORG, _BUCKET, _TOKEN), else a
    VictoriaMetrics or InfluxDB answering on its usual local port, else nowhere (said once)."""
    if os.environ.get("UNS_INFLUX_URL"):
        env = {k: os.environ.get(f"UNS_INFLUX_{k.upper()}") for k in ("url", "org", "bucket", "token")}
        return InfluxSettings(
            url=env["url"] or "",
            org=env["org"] or "acme",
            bucket=env["bucket"] or "uns",
            token=SecretStr(env["token"] or "demo"),
        )
    for url in LOCAL_STORES:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=0.5):  # noqa: S310 (a local address)
                return InfluxSettings(url=url, org="acme", bucket="uns", token=SecretStr("demo"))
        except (urllib.error.URLError, OSError, ValueError):
            continue
    print(
        "uns demo: no InfluxDB here, so no historian (set UNS_INFLUX_URL, _ORG, _BUCKET and _TOKEN, or"
        " start victoria-metrics on 127.0.0.1:8428); OEE and losses are in the API",
        file=out,
        flush=True,
    )
    return None


def _calendar(site: Site) -> ShiftCalendar | None:
    shifts = site.config.shifts
    return calendar_for(shifts, site.config.timezone) if shifts is not None else None


def _minute_now() -> int:
    return int(time.time() // 60 * 60_000)


def _banner(
    out: TextIO,
    site: Site,
    base: BrokerAddress,
    api_port: int,
    token: str,
    viewer: str,
    opts: DemoOptions,
    influx: InfluxSettings | None = None,
) -> None:
    enterprise = site.config.enterprise
    root = f"http://127.0.0.1:{api_port}/api/v1"
    api = f"{root}/machines"
    host, port = base.host, base.port
    lines = [
        f"uns demo: {len(site.machines)} simulated machines, {opts.speed:g}x real time, seed {opts.seed}",
        f"  API       {api}   (OpenAPI: /openapi.json)",
        f"  API token {token}",
        f"  OEE       {root}/oee   (this shift by machine; ?group_by=shift&group_by=machine, ...)",
        f"  losses    {root}/losses   (the Pareto and the six big losses)",
        (
            f"  historian {influx.url}, bucket {influx.bucket} (InfluxQL for Grafana: grafana/)"
            if influx is not None
            else "  historian off (no InfluxDB)"
        ),
        f"  MQTT      {host}:{port}   viewer login: viewer / {viewer}",
        f"  watch:    mosquitto_sub -h {host} -p {port} -u viewer -P '{viewer}' -t '{enterprise}/#' -v",
        f"  try:      curl -H 'Authorization: Bearer {token}' {api}",
        f"  record    {opts.data_dir / 'record.db'}",
        "  Ctrl-C stops it." if opts.duration is None else f"  stops by itself after {opts.duration:g} s.",
    ]
    print("\n".join(lines), file=out, flush=True)
