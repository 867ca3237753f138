"""`uns demo`: the whole stack on one machine, with a simulated job shop (docs/getting-started.md).

Mosquitto (ours, on a free loopback port, unless --broker is given), the CNC simulator (one OPC UA
server per machine), the bridge, the context service and the API, in one asyncio process.

Each run starts a fresh record: the previous run's state (record, historian memory, the bridges'
store-and-forward buffers, the broker's persistence, the banner) moves to `<data dir>/previous/`,
because a simulated clock faster than real time leaves a record that ends in the future, and a new
run would only add to it once its own clock caught up. `--keep-record` goes on with the record instead,
its simulated clock starting where the record ends.

Stops on Ctrl-C, SIGTERM or after --duration, in this order: the context service (host STATE offline,
it stops taking messages, every open interval is closed at that moment and the record flushed), the
historian, the bridge (NDEATH, which no one records any more), the simulator, the API, and the broker
last. The broker is started with SIGINT blocked, so a Ctrl-C in the terminal (which signals the whole
process group) does not take it away from under the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import uvicorn
from pydantic import SecretStr

from bridge.runner import run_bridge
from bridge.sim.cnc import run_simulator
from bridge.sim.erp import release, releases
from bridge.sim.scenario import MachineScenario
from services.api import tokens
from services.api.app import create_app
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.app import ContextService
from services.context.reasons import taxonomy
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar, calendar_for
from services.historian.app import HistorianService, memory_path
from services.historian.writer import InfluxSettings
from services.oee.engine import Definition
from uns.broker import Credentials, Mosquitto, broker_users, edge_node_users, free_port, password_env
from uns.clock import ScaledClock, iso
from uns.mqtt import BrokerAddress
from uns.site import Site
from unscli.processes import parse_broker

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
    keep_record: bool = False


RECORD = "record.db"
BANNER = "banner.txt"
PREVIOUS = "previous"  # where the previous run's state goes (a directory in the data dir)
# What one run leaves in the data dir, which the next run must not take for its own (the broker's
# config, ACL and password file are written again at every start): the record (with SQLite's WAL and
# shared-memory files, which belong to it by name), the historian's memory of what it exported, the
# bridges' store-and-forward buffers, Mosquitto's persistence (retained tree, sessions), the banner.
RUN_STATE = (
    *(f"{RECORD}{s}" for s in ("", "-wal", "-shm")),
    *(f"{memory_path(Path(RECORD)).name}{s}" for s in ("", "-wal", "-shm")),
    BANNER,
    "buffer",
    "mosquitto/data",
)
DISPLAY_HOLDER = "demo wall display"
STOP_TIMEOUT_S = 10.0  # how long each part may take to stop before it is cancelled (again)
GRACEFUL_HTTP_S = 2  # open requests (a floor view's event stream) get this long when the API stops


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


def set_aside(data_dir: Path) -> Path | None:
    """Move the previous run's state (RUN_STATE) into `<data dir>/previous/`, replacing what an
    earlier run left there; the directory it went to, or None if there was nothing to move."""
    found = [name for name in RUN_STATE if (data_dir / name).exists()]
    if not found:
        return None
    previous = data_dir / PREVIOUS
    if previous.is_dir() and not previous.is_symlink():
        shutil.rmtree(previous)
    else:
        previous.unlink(missing_ok=True)
    for name in found:
        target = previous / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (data_dir / name).rename(target)
    return previous


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked for what is started meanwhile. A terminal's Ctrl-C signals the whole foreground
    process group, our Mosquitto included, which would exit at once, before the services have said
    goodbye: the host would lose the broker and put every machine into comms_loss at that moment, and
    the bridges would find no broker to send their NDEATH to. A child keeps the signal mask it was
    started with across exec (and Mosquitto leaves SIGINT blocked), so it goes when we stop it, last.
    (Mosquitto.start in a session of its own would do the same; uns/broker.py does not offer that.)"""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


async def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    data_dir = opts.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    previous = None if opts.keep_record else set_aside(data_dir)
    mosquitto: Mosquitto | None = None
    if opts.broker is None:
        # the site's own ACL (a user per edge node), fresh passwords, plain MQTT on 127.0.0.1 only
        mosquitto = Mosquitto.for_site(data_dir / "mosquitto", opts.site, port=opts.mqtt_port)
        mosquitto.write_files()
        with _sigint_blocked():
            mosquitto.start()
        base = BrokerAddress("127.0.0.1", mosquitto.port)
        creds = mosquitto.creds
    else:
        base = parse_broker(opts.broker)  # mqtts:// with UNS_MQTT_CA_FILE, ... for TLS
        creds = _broker_credentials(opts.site)
    try:
        await _run(opts, base, creds, stop, out, previous)
    finally:
        if mosquitto is not None:
            mosquitto.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _origin_ms(store: RecordStore) -> int:
    """Where the simulated clock starts: this minute, or for a kept record that ends later (a fast
    clock runs ahead of the wall's) the minute after its end, so that it goes on instead of waiting."""
    ends = [t for c in store.current_states() for t in (c.since_ms, c.updated_ms) if t is not None]
    after = -(-max(ends) // 60_000) * 60_000 if ends else 0
    return max(_minute_now(), after)


async def _stopped(task: asyncio.Task[Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """Wait for a task that was told to stop; if it has not within `timeout`, cancel it (again, for
    a cancellation a library swallowed), so that the demo always ends. A failure is logged, once."""
    was_done = task.done()  # then it ended before the stop, and the run's end said so
    while not task.done():
        await asyncio.wait({task}, timeout=timeout)
        if not task.done():
            logger.warning("demo: %s did not stop within %g s; cancelling it", task.get_name(), timeout)
            task.cancel()
    if not was_done and not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("demo: %s failed while stopping", task.get_name(), exc_info=exc)


async def _listening(server: uvicorn.Server, task: asyncio.Task[Any], timeout: float = 30.0) -> None:
    """Until the API listens (or its task ended: the run's end says why, or `timeout` passed).
    uvicorn says so with a flag, `Server.started`, not an event: polled."""
    deadline = time.monotonic() + timeout
    while not server.started and not task.done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _run(
    opts: DemoOptions,
    base: BrokerAddress,
    creds: Credentials,
    stop: asyncio.Event,
    out: TextIO,
    previous: Path | None,
) -> None:
    loop = asyncio.get_running_loop()
    site = opts.site.with_ports({m.id: free_port() for m in opts.site.machines})
    token = os.environ.get("UNS_API_TOKEN") or secrets.token_urlsafe(24)
    record = opts.data_dir / RECORD
    store = RecordStore(record)
    clock = ScaledClock(origin_ms=_origin_ms(store), speed=opts.speed)
    # the wall display's link, a token of its own (role display: the floor view and nothing else)
    _, display = tokens.issue(store, DISPLAY_HOLDER, tokens.DISPLAY, clock.now_ms())
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
                site.config.downtime.reason_window_hours,
            ),
            host="127.0.0.1",
            port=api_port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_HTTP_S,
        )
    )
    context = ContextService(
        site, store, base.with_credentials("services", creds.password("services")), clock
    )
    sim_stop, bridge_stop, sim_ready = asyncio.Event(), asyncio.Event(), asyncio.Event()
    print(
        f"uns demo: starting {len(site.machines)} simulated machines"
        " (OPC UA, MTConnect and Modbus servers)...",
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
        e.edge_node_id: base.with_credentials(e.user, creds.password(e.user))
        for e in edge_node_users(site)
        if e.group_id == site.group_id and e.edge_node_id in site.edge_nodes()  # ours, not foreign ones
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
            memory_path(record),
            clock.now_ms,
            oee_every_ms=int(10_000 * opts.speed),  # every 10 s, as the wall display sees it
        )
    historian_stop = asyncio.Event()
    history = asyncio.create_task(historian.run(historian_stop), name="demo.historian") if historian else None
    banner = _banner(site, base, api_port, token, display, creds, opts, clock, previous, influx)
    try:
        await _listening(server, api)  # what the banner names answers once it is printed
        _write_private(opts.data_dir / BANNER, banner)
        print(banner, end="", file=out, flush=True)
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {waiter, sim, api, bridge}, timeout=opts.duration, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        for task in done - {waiter}:
            if task.exception() is not None:
                logger.error("demo: %s failed", task.get_name(), exc_info=task.exception())
    finally:
        # The record's writer first: it stops taking messages and closes every open interval now,
        # before the bridges' NDEATHs (or the simulator's silence) could reach it as a comms loss.
        print("uns demo: stopping", file=out, flush=True)
        erp.cancel()
        await asyncio.gather(erp, return_exceptions=True)
        await context.stop()
        historian_stop.set()
        if history is not None:
            await _stopped(history)
        bridge_stop.set()
        await _stopped(bridge)
        sim_stop.set()
        await _stopped(sim)
        sender.stop()
        server.should_exit = True
        await _stopped(api)
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


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by its owner only (it holds passwords and tokens), whatever was there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


def _login_role(site: Site, user: str) -> str:
    roles = {
        "viewer": "reads the UNS tree",
        "integration": "an ERP, a QMS, a flow of yours: reads the tree, sends commands",
        "services": "the context service",
        "api": "the API's commands",
    }
    if user in roles:
        return roles[user]
    edge = next((e.edge_node_id for e in edge_node_users(site) if e.user == user), user)
    return f"the bridge, edge node {edge}"


def _banner(
    site: Site,
    base: BrokerAddress,
    api_port: int,
    token: str,
    display: str,
    creds: Credentials,
    opts: DemoOptions,
    clock: ScaledClock,
    previous: Path | None,
    influx: InfluxSettings | None = None,
) -> str:
    """What the demo prints once it runs, and writes to <data dir>/banner.txt (mode 0600)."""
    enterprise = site.config.enterprise
    http = f"http://127.0.0.1:{api_port}"
    root = f"{http}/api/v1"
    api = f"{root}/machines"
    host, port = base.host, base.port
    viewer = creds.password("viewer")
    record = opts.data_dir / RECORD
    if opts.keep_record:
        kept = "kept (--keep-record): it goes on where it ended"
    elif previous is not None:
        kept = f"a fresh one; the previous run's is in {previous}/"
    else:
        kept = "a fresh one"
    # the one a person uses first, then the demo's own (one per edge node, then the roles)
    others = ["integration", *(u for u in broker_users(site) if u not in ("viewer", "integration"))]
    width = max(len(f"{u} / {creds.password(u)}") for u in others)
    logins = [f"{u} / {creds.password(u)}".ljust(width) + f"   ({_login_role(site, u)})" for u in others]
    lines = [
        f"uns demo: {len(site.machines)} simulated machines, {opts.speed:g}x real time, seed {opts.seed}",
        f"  floor view: {http}/floor?key={display}   (a wall display's link: this page only)",
        f"  Swagger UI: {http}/docs   (every endpoint: Authorize with the token below to try them)",
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
        *(f"  {'logins' if i == 0 else '':9} {line}" for i, line in enumerate(logins)),
        f"  watch:    mosquitto_sub -h {host} -p {port} -u viewer -P '{viewer}' -t '{enterprise}/#' -v",
        f"  try:      curl -H 'Authorization: Bearer {token}' {api}",
        f"  record    {record}   ({kept})",
        f"  banner    {opts.data_dir / BANNER}   (this text, passwords and all: readable by you only)",
        f"  clock     simulated: {iso(clock.origin_ms)} at the start, {opts.speed:g}x real time",
        (
            "  Ctrl-C stops it."
            if opts.duration is None
            else f"  Ctrl-C stops it, or it stops by itself after {opts.duration:g} s."
        ),
    ]
    return "\n".join(lines) + "\n"
