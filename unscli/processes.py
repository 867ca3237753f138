"""Each part of the stack as its own process (`uns sim`, `uns bridge`, `uns context`, `uns api`), for a
plant where they run on different hosts or containers (compose.yaml). `uns demo` runs them all at once.

Broker credentials come from the environment: UNS_MQTT_USERNAME (default: the role's user) and
UNS_MQTT_PASSWORD; for the bridge, each edge node's own UNS_MQTT_<USER>_PASSWORD (uns/broker.py
`password_env`). TLS (an `mqtts://` broker URL): UNS_MQTT_CA_FILE, and UNS_MQTT_CERT_FILE with
UNS_MQTT_KEY_FILE where the broker wants a client certificate. The API token from UNS_API_TOKEN.
Nothing secret is taken from the command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from uns.broker import ANY_EDGE_NODE, EdgeNodeUser, password_env
from uns.clock import Clock, ScaledClock, WallClock
from uns.mqtt import BrokerAddress, TlsFiles
from uns.site import Site

if TYPE_CHECKING:
    from services.historian.writer import InfluxSettings

# Each process imports what it runs, in its function: `uns context` has no OPC UA, Modbus, web
# server or InfluxDB client in memory (about 58 MiB less than with everything imported).

logger = logging.getLogger(__name__)


class ConfigError(RuntimeError):
    """A setting missing from the environment; the message names it."""


TLS_VARIABLES = ("UNS_MQTT_CA_FILE", "UNS_MQTT_CERT_FILE", "UNS_MQTT_KEY_FILE")


def tls_files() -> TlsFiles | None:
    """The client's TLS files from UNS_MQTT_CA_FILE (the plant CA; unset: the system's CAs),
    UNS_MQTT_CERT_FILE and UNS_MQTT_KEY_FILE (a client certificate, both or neither); None if none
    is set."""
    ca = os.environ.get("UNS_MQTT_CA_FILE") or None
    cert = os.environ.get("UNS_MQTT_CERT_FILE") or None
    key = os.environ.get("UNS_MQTT_KEY_FILE") or None
    if ca is None and cert is None and key is None:
        return None
    for name, value in zip(TLS_VARIABLES, (ca, cert, key), strict=True):
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{name}={value}: no such file")
    if (cert is None) != (key is None):
        raise ConfigError(
            "set both UNS_MQTT_CERT_FILE and UNS_MQTT_KEY_FILE (a client certificate and its key)"
        )
    return TlsFiles(Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None)


def parse_broker(url: str) -> BrokerAddress:
    """The broker URL, with the TLS files of the environment for `mqtts://`."""
    tls = tls_files()
    address = BrokerAddress.parse(url, tls)
    if tls is not None and address.tls is None:
        raise ConfigError(
            f"UNS_MQTT_CA_FILE, _CERT_FILE or _KEY_FILE is set, but the broker {address} is plain MQTT:"
            " use mqtts://host:8883"
        )
    return address


def broker_address(url: str, role: str) -> BrokerAddress:
    address = parse_broker(url)
    user = os.environ.get("UNS_MQTT_USERNAME") or address.username or role
    password = os.environ.get("UNS_MQTT_PASSWORD") or address.password
    if not password:
        raise ConfigError(f"set UNS_MQTT_PASSWORD to the password of MQTT user {user!r}")
    return address.with_credentials(user, password)


def edge_node_addresses(url: str, site: Site, edge_nodes: Sequence[str]) -> dict[str, BrokerAddress]:
    """Each edge node's own login: its user `<group>.<edge node id>` with the password in that
    user's UNS_MQTT_<USER>_PASSWORD. An edge node without one falls back to one login shared by the
    process: UNS_MQTT_USERNAME (default `bridge`) and UNS_MQTT_PASSWORD (or the URL's), which only
    a broker of your own with such a user takes; the site's rendered ACL has none."""
    address = parse_broker(url)
    shared_user = os.environ.get("UNS_MQTT_USERNAME") or address.username or ANY_EDGE_NODE
    shared_password = os.environ.get("UNS_MQTT_PASSWORD") or address.password
    found: dict[str, BrokerAddress] = {}
    missing: list[str] = []
    for edge in edge_nodes:
        if edge not in site.edge_nodes():
            continue  # run_bridge names it
        user = EdgeNodeUser(site.group_id, edge).user
        own = os.environ.get(password_env(user))
        if own:
            found[edge] = address.with_credentials(user, own)
        elif shared_password:
            logger.warning(
                "edge node %s: no %s, so it logs in as %r (UNS_MQTT_USERNAME, UNS_MQTT_PASSWORD)",
                edge,
                password_env(user),
                shared_user,
            )
            found[edge] = address.with_credentials(shared_user, shared_password)
        else:
            missing.append(password_env(user))
    if missing:
        raise ConfigError(
            f"set {', '.join(missing)}: the password of each edge node's MQTT user (`uns broker-users`)"
        )
    return found


async def _until_signal(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)


async def sim(site: Site, clock: Clock, seed: int, truth: Path | None) -> None:
    """The simulated machines; their scenario begins at the clock's start. A simulated clock (shared
    with the other processes of the run) is kept as it is; on the wall clock the scenario starts now."""
    from bridge.sim.cnc import run_simulator

    shared = isinstance(clock, ScaledClock)
    scaled = clock if isinstance(clock, ScaledClock) else ScaledClock(int(time.time() // 60 * 60_000), 1.0)
    await _until_signal(
        lambda stop: run_simulator(list(site.machines), seed, scaled, stop, truth, restart_clock=not shared)
    )


async def bridge(
    site: Site, url: str, edge_nodes: list[str] | None, buffer_dir: Path, clock: Clock | None = None
) -> None:
    from bridge.runner import run_bridge

    addresses = edge_node_addresses(url, site, edge_nodes or list(site.edge_nodes()))
    wall = clock or WallClock()
    await _until_signal(lambda stop: run_bridge(site, addresses, wall, stop, edge_nodes, buffer_dir))


async def context(
    site: Site, url: str, record: str | Path, clock: Clock | None = None, worker: str | None = None
) -> None:
    """The context service, or one worker of a partitioned site (`worker`): refused (ValueError,
    PartitionHeldError) for a worker the site does not have or one another live worker holds."""
    from services.context.app import ContextService
    from services.context.partition import check_unheld
    from services.context.record import open_record

    address = broker_address(url, "services")
    site.partition(worker)  # a worker the site model does not have: said before anything starts
    if site.partitioned:
        await check_unheld(site, worker, address)
    store = open_record(record)
    service = ContextService(site, store, address, clock or WallClock(), worker)
    service.start(asyncio.get_running_loop())

    async def run(stop: asyncio.Event) -> None:
        await stop.wait()
        await service.stop()
        store.close()

    await _until_signal(run)


def influx_settings() -> InfluxSettings:
    """UNS_INFLUX_URL, UNS_INFLUX_ORG, UNS_INFLUX_BUCKET, UNS_INFLUX_TOKEN from the environment."""
    from pydantic import ValidationError

    from services.historian.writer import InfluxSettings

    try:
        return InfluxSettings()  # type: ignore[call-arg]  # (the fields come from the environment)
    except ValidationError as exc:
        problems = "; ".join(
            f"UNS_INFLUX_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"the historian's InfluxDB settings: {problems}") from None


async def historian(site: Site, record: str | Path, memory: Path | None) -> None:
    from services.context.record import open_record
    from services.historian.app import HistorianService, memory_path

    settings = influx_settings()
    store = open_record(record)  # (made empty if the context service has not started yet)
    if memory is None and not isinstance(record, Path):
        store.close()
        raise ConfigError(
            "uns historian --memory FILE: where it is in a PostgreSQL record (no file to keep it beside)"
        )
    service = HistorianService(site, store, settings, memory or memory_path(Path(record)), WallClock().now_ms)
    try:
        await _until_signal(service.run)
    finally:
        store.close()


def api(
    record: str | Path,
    host: str,
    port: int,
    site: Site | None = None,
    broker: str | None = None,
    clock: Clock | None = None,
) -> None:
    import uvicorn
    from pydantic import SecretStr

    from services.api.app import create_app
    from services.api.sender import CommandSender
    from services.api.settings import ApiSettings
    from services.context.reasons import taxonomy
    from services.context.record import open_record
    from services.context.shifts import calendar_for
    from services.oee.engine import Definition

    token = os.environ.get("UNS_API_TOKEN")
    if not token:
        raise ConfigError("set UNS_API_TOKEN (at least 16 characters) to the bearer token clients must send")
    settings = ApiSettings(api_token=SecretStr(token))  # UNS_API_TOKEN_<ROLE> are read too
    store = open_record(record)
    try:
        shifts = site.config.shifts if site is not None else None
        calendar = (
            calendar_for(shifts, site.config.timezone) if site is not None and shifts is not None else None
        )
        reasons = taxonomy(site.config.downtime) if site is not None else None
        sender = None
        if broker is not None:  # writes go to the context service as MQTT commands
            if site is None:
                raise ConfigError("uns api --broker needs --site (the enterprise and site name the topics)")
            root = f"{site.config.enterprise}/{site.config.site}"
            sender = CommandSender(broker_address(broker, "api"), root, settings.command_timeout_s)
        definition = (
            Definition.from_config(site.config.oee, reasons, site.config.downtime.rules)
            if site is not None and reasons
            else None
        )
        zone = site.config.timezone if site is not None else "UTC"
        window = site.config.downtime.reason_window_hours if site is not None else None
        app = create_app(
            settings,
            store,
            calendar,
            reasons,
            sender,
            definition,
            zone,
            clock=clock.now_ms if clock is not None and not isinstance(clock, WallClock) else None,
            reason_window_hours=window,
        )
        # an open floor view's stream would hold a shutdown for up to a minute: 5 s, then it is cut
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        store.close()
