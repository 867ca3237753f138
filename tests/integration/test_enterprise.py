"""Sites feeding an enterprise (docs/enterprise.md): two sites, each with its own Mosquitto started
with the project's config and the site's ACL, each bridged over TLS (a bridge section rendered by
uns/enterprise.py, certificates made by uns/certs.py) to one enterprise Mosquitto whose ACL is the
rendered enterprise ACL.

What is checked:
- the retained state JSON of both sites' machines, published on each site broker as the context
  service publishes it (the `services` user, QoS 1, retained), arrives at the enterprise broker with
  its retain flag; Sparkplug, `_command` and `_reply` stay at the site; a site's user may not write
  another site's tree or commands at the enterprise, the viewer nothing;
- a site broker stopped and started again on the same port with its persistence, while its feed
  goes on: every message the site broker took (PUBACK) is at the enterprise, and the enterprise's
  retained value of every topic is the site's;
- the enterprise broker stopped and started again: what the sites publish meanwhile waits in the
  site brokers and arrives after.

"Arrives at the enterprise" is seen by an enterprise consumer with a session of its own that
outlives a restart (mosquitto_sub -c, QoS 1: the way an enterprise historian would subscribe), and
by the retained messages a new subscriber gets. No timing is asserted; waits have timeouts.

One API answers for both sites: each site's context service (in process, on its own site broker,
fed by that site's own Sparkplug edge nodes) writes one PostgreSQL record; one API over that record
lists both sites' machines with their ISA-95 paths and answers a machine's intervals and the downtime
report for a machine of each site.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.edge_node import EdgeNode
from bridge.runner import make_edge_node
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.context.app import ContextService
from services.context.record import RecordStore, open_record
from tests.helpers import CNC_AT_REST, Recorder, address, track
from uns.broker import Mosquitto, ServerTls
from uns.certs import make_certs
from uns.enterprise import EnterpriseLink, bridge_topics, render_bridge, render_enterprise_acl, site_user
from uns.mqtt import BrokerAddress, MqttClient, TlsFiles
from uns.site import Site, load_site
from uns.sparkplug.edge import Sample

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "sites" / "example.yaml"  # acme/dayton
TOLEDO = """\
enterprise: acme
site: toledo
sparkplug: {group_id: toledo, edge_node_id: edge-toledo, host_id: uns-host-toledo}
areas:
  - name: turning
    lines:
      - name: lathes
        cells:
          - name: cell-1
            machines:
              - id: puma-01
                source: &modbus
                  protocol: modbus
                  host: 127.0.0.1
                  port: 5020
                  device_id: 1
                  poll_groups:
                    fast:
                      interval_ms: 100
                      signals:
                        execution: {table: holding, address: 9, map: {0: READY, 1: ACTIVE}}
                        mode: {table: holding, address: 1, map: {1: AUTOMATIC, 2: MANUAL}}
                        alarm_code: {table: input, address: 2, type: int16}
                        estop: {table: discrete_input, address: 3}
                        part_count: {table: input, address: 3, type: uint16}
              - id: puma-02
                source: *modbus
"""


@dataclass
class SiteBroker:
    site: Site
    broker: Mosquitto

    @property
    def name(self) -> str:
        return self.site.config.site


@dataclass
class Enterprise:
    broker: Mosquitto
    sites: dict[str, SiteBroker]
    certs: Path
    tmp: Path
    witnesses: list[Witness] = field(default_factory=list)

    @property
    def ca(self) -> TlsFiles:
        return TlsFiles(self.certs / "ca.crt")


@pytest.fixture
def enterprise(tmp_path: Path) -> Iterator[Enterprise]:
    certs = tmp_path / "certs"
    make_certs(certs)
    (tmp_path / "toledo.yaml").write_text(TOLEDO)
    sites = [load_site(EXAMPLE), load_site(tmp_path / "toledo.yaml")]
    ent = Mosquitto(
        tmp_path / "enterprise",
        "acme",
        acl_text=render_enterprise_acl(sites),
        tls=ServerTls(certs / "ca.crt", certs / "server.crt", certs / "server.key"),
    )
    ent.start()
    assert ent.tls_port is not None
    link = EnterpriseLink.parse(f"127.0.0.1:{ent.tls_port}", certs / "ca.crt")
    brokers: dict[str, SiteBroker] = {}
    for site in sites:
        name = site.config.site
        # The password as `uns enterprise bridge` reads it: from the site user's variable.
        env = {"UNS_MQTT_SITE_" + name.upper() + "_PASSWORD": ent.creds.password(site_user(name))}
        bridge = render_bridge(site, link, env=env, restart_timeout=(1, 2))
        brokers[name] = SiteBroker(site, Mosquitto.for_site(tmp_path / name, site, extra_config=bridge))
        brokers[name].broker.start()
    plant = Enterprise(ent, brokers, certs, tmp_path)
    try:
        yield plant
    finally:
        for w in plant.witnesses:
            w.stop()
        for s in brokers.values():
            s.broker.stop()
        ent.stop()


# -- the enterprise side ------------------------------------------------------------------------
class Witness:
    """An enterprise consumer with a session that outlives restarts: mosquitto_sub over TLS with a
    fixed client id, no clean session, QoS 1. What it prints is read from its output file."""

    def __init__(self, plant: Enterprise, name: str, topic: str = "acme/#") -> None:
        assert plant.broker.tls_port is not None
        self.out = plant.tmp / f"witness-{name}.txt"
        self._file = self.out.open("w")
        command = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(plant.broker.tls_port)]
        command += ["--cafile", str(plant.certs / "ca.crt"), "-u", "viewer"]
        command += ["-P", plant.broker.creds.password("viewer"), "-c", "-i", f"witness-{name}", "-q", "1"]
        command += ["-t", topic, "-F", "%t %p"]
        self.process = subprocess.Popen(command, stdout=self._file, stderr=subprocess.STDOUT)
        plant.witnesses.append(self)

    def messages(self) -> list[tuple[str, str]]:
        lines = self.out.read_text().splitlines()
        return [(t, p) for t, _, p in (line.partition(" ") for line in lines)]

    async def wait_connected(self, plant: Enterprise, timeout: float = 10.0) -> None:
        log = plant.broker.log_file
        deadline = time.monotonic() + timeout
        while f" as {self.out.stem} " not in (log.read_text() if log.exists() else ""):
            assert self.process.poll() is None, self.out.read_text()
            assert time.monotonic() < deadline, "the witness did not connect"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # its SUBACK

    async def wait_for_all(self, wanted: list[tuple[str, str]], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            missing = set(wanted) - set(self.messages())
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(missing)} of {len(set(wanted))} never arrived, e.g. {sorted(missing)[:3]}"
                )
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        self._file.close()


async def client(name: str, address: BrokerAddress, *filters: str) -> Recorder:
    rec = Recorder()
    rec.client = MqttClient(
        name, address, rec, asyncio.get_running_loop(), subscriptions=tuple((f, 1) for f in filters)
    )
    track(rec.client)
    rec.client.start()
    await rec.wait_connected()
    await asyncio.sleep(0.1)  # the SUBACK
    return rec


async def retained(name: str, address: BrokerAddress, filters: tuple[str, ...]) -> dict[str, bytes]:
    """The retained messages a new subscriber gets (topic -> payload), once they stop coming."""
    rec = await client(name, address, *filters)
    count = -1
    deadline = time.monotonic() + 5
    while count != len(rec.messages) and time.monotonic() < deadline:
        count = len(rec.messages)
        await asyncio.sleep(0.3)
    assert rec.client is not None
    rec.client.stop()
    return {t: p for t, p in rec.messages if p}


async def same_retained_view(plant: Enterprise, name: str, timeout: float = 30.0) -> dict[str, bytes]:
    """Wait until the enterprise's retained tree of a site is the site broker's own; return it."""
    s = plant.sites[name]
    filters = bridge_topics(s.site)
    deadline = time.monotonic() + timeout
    while True:
        here = await retained(f"view-{name}", s.broker.address("viewer"), filters)
        there = await retained(f"view-ent-{name}", plant.broker.address("viewer", plant.ca), filters)
        if here == there or time.monotonic() > deadline:
            break
    assert there == here, {
        t: (here.get(t), there.get(t)) for t in {*here, *there} if here.get(t) != there.get(t)
    }
    return there


# -- the site side ------------------------------------------------------------------------------
@dataclass
class Feed:
    """Publishes on a site broker as the context service does: each machine's state JSON (QoS 1,
    retained) and an interval (QoS 1, not retained) per round. `taken` is what the broker
    acknowledged; a publish while the broker is away is not taken (the context service would
    publish the state again on reconnecting: it republishes the whole tree)."""

    site: Site
    rec: Recorder
    taken: list[tuple[str, str]] = field(default_factory=list)
    refused: int = 0

    @classmethod
    async def start(cls, s: SiteBroker) -> Feed:
        return cls(s.site, await client(f"feed-{s.name}", s.broker.address("services")))

    async def round(self, n: int) -> None:
        assert self.rec.client is not None
        for m in self.site.machines:
            state = {"machine": m.id, "path": str(m.path), "state": "running", "part_count": n}
            interval = {"machine": m.id, "state": "running", "n": n}
            for topic, payload, keep in (
                (m.path.topic("state"), state, True),
                (m.path.topic("intervals"), interval, False),
            ):
                text = json.dumps(payload)
                if await self.rec.client.publish_and_wait(topic, text.encode(), 1, keep, timeout=2):
                    self.taken.append((topic, text))
                else:
                    self.refused += 1


def pub(broker: Mosquitto, user: str, topic: str, ca: Path | None = None) -> str:
    """mosquitto_pub, MQTT 5, QoS 1: `ok` or `not authorized` (the PUBACK's reason code)."""
    port = broker.tls_port if ca is not None else broker.port
    command = ["mosquitto_pub", "-V", "5", "-q", "1", "-h", "127.0.0.1", "-p", str(port)]
    command += ["--cafile", str(ca)] if ca is not None else []
    command += ["-u", user, "-P", broker.creds.password(user), "-t", topic, "-m", f"from {user}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)
    if "Not authorized" in done.stderr:
        return "not authorized"
    assert done.returncode == 0, done
    assert not done.stderr, done
    return "ok"


# -- the tests ----------------------------------------------------------------------------------
async def test_both_sites_trees_reach_the_enterprise_and_only_the_tree(enterprise: Enterprise) -> None:
    witness = Witness(enterprise, "all")
    await witness.wait_connected(enterprise)
    feeds = [await Feed.start(s) for s in enterprise.sites.values()]
    for f in feeds:
        await f.round(1)
    dayton = enterprise.sites["dayton"].broker
    # what must stay at the site: Sparkplug, commands and their answers
    assert pub(dayton, "dayton.edge-machining", "spBv1.0/dayton/NDATA/edge-machining") == "ok"
    assert pub(dayton, "integration", "acme/dayton/_command/dispatch") == "ok"
    assert pub(dayton, "services", "acme/dayton/_reply/api/x") == "ok"
    assert pub(dayton, "services", "acme/dayton/_health/host/uns-host") == "ok"
    await witness.wait_for_all(
        [*feeds[0].taken, *feeds[1].taken, ("acme/dayton/_health/host/uns-host", "from services")]
    )
    views = {name: await same_retained_view(enterprise, name) for name in enterprise.sites}
    for name, s in enterprise.sites.items():
        machines = {m.path.topic("state") for m in s.site.machines}
        assert machines <= set(views[name]), f"{name}: the state of every machine, retained"
        assert len(machines) == len(s.site.machines) >= 2
    seen = {t for t, _ in witness.messages()}
    assert not [t for t in seen if "_command" in t or "_reply" in t or t.startswith("spBv1.0")]
    assert {"acme/dayton/_bridge/enterprise", "acme/toledo/_bridge/enterprise"} <= seen, "link states"
    # the enterprise ACL: a site writes only its own tree, never commands; the viewer nothing
    ent, ca = enterprise.broker, enterprise.certs / "ca.crt"
    assert pub(ent, "site.toledo", "acme/toledo/turning/x", ca) == "ok"
    assert pub(ent, "site.toledo", "acme/dayton/machining/x", ca) == "not authorized"
    assert pub(ent, "site.toledo", "acme/toledo/_command/dispatch", ca) == "not authorized"
    assert pub(ent, "site.dayton", "spBv1.0/dayton/NDATA/edge-machining", ca) == "not authorized"
    assert pub(ent, "viewer", "acme/dayton/machining/x", ca) == "not authorized"


async def test_a_site_broker_restart_loses_nothing_at_the_enterprise(enterprise: Enterprise) -> None:
    witness = Witness(enterprise, "site-restart")
    await witness.wait_connected(enterprise)
    dayton, toledo = enterprise.sites["dayton"], enterprise.sites["toledo"]
    feed, other = await Feed.start(dayton), await Feed.start(toledo)

    async def run(n0: int, n1: int) -> None:
        for n in range(n0, n1):
            await asyncio.gather(feed.round(n), other.round(n))

    await run(0, 5)
    # Stop the site broker while its feed goes on (its persistence is written on the way out),
    # and start it again on the same port; the feed goes on until it is connected again.
    back = asyncio.Event()

    async def keep_feeding() -> int:
        n = 5
        while not back.is_set():
            await run(n, n + 1)
            await asyncio.sleep(0.02)
            n += 1
        return n

    feeding = asyncio.create_task(keep_feeding())
    await asyncio.sleep(0.3)
    await asyncio.to_thread(dayton.broker.stop)
    await asyncio.sleep(1)
    await asyncio.to_thread(dayton.broker.start)
    await feed.rec.wait_connected()
    back.set()
    n = await feeding
    assert feed.refused, "some publishes met the stopped broker (else the restart was not mid-stream)"
    await run(n, n + 3)
    await witness.wait_for_all(feed.taken + other.taken)
    view = await same_retained_view(enterprise, "dayton")
    last = {t: p for t, p in feed.taken if t.endswith("/state")}
    assert {t: view[t].decode() for t in last} == last, "the latest state of every machine"
    await same_retained_view(enterprise, "toledo")


async def test_the_enterprise_link_down_queues_at_the_site_and_delivers_after(enterprise: Enterprise) -> None:
    witness = Witness(enterprise, "enterprise-restart")
    await witness.wait_connected(enterprise)
    feeds = [await Feed.start(s) for s in enterprise.sites.values()]
    for f in feeds:
        await f.round(0)
    await witness.wait_for_all([m for f in feeds for m in f.taken])
    await asyncio.to_thread(enterprise.broker.stop)
    before = [len(f.taken) for f in feeds]
    for n in range(1, 20):  # published while the enterprise broker is away: the sites take them all
        for f in feeds:
            await f.round(n)
    assert [f.refused for f in feeds] == [0, 0]
    await asyncio.to_thread(enterprise.broker.start)
    during = [m for f, b in zip(feeds, before, strict=True) for m in f.taken[b:]]
    await witness.wait_for_all(during)
    for name in enterprise.sites:
        await same_retained_view(enterprise, name)
    # each link says it is up again on the enterprise broker
    seen = witness.messages()
    for name in enterprise.sites:
        states = [p for t, p in seen if t == f"acme/{name}/_bridge/enterprise"]
        assert states[-1] == "1", states


# -- one API for both sites ---------------------------------------------------------------------
MIN = 60_000
T0 = (int(time.time()) // 3600 - 48) * 3_600_000  # the scenario's event time: two days ago on
TOKEN = "enterprise-api-token-0123456789"


class ScriptClock:
    """The edge nodes' clock: the event time the scenario has reached."""

    speed = 1.0

    def __init__(self) -> None:
        self.now = T0

    def now_ms(self) -> int:
        return self.now


async def site_edge_nodes(s: SiteBroker, clock: ScriptClock) -> list[EdgeNode]:
    """The site's own edge nodes (the bridge's), every machine at rest at T0, on its site broker."""
    nodes = []
    for edge, machines in s.site.edge_nodes().items():
        user = f"{s.site.group_id}.{edge}"
        node = make_edge_node(s.site, edge, address(s.broker, user), clock)
        for m in machines:
            signals = {str(k) for k in m.source.signals}
            node.device_online(m.id, [Sample(k, v, T0) for k, v in CNC_AT_REST.items() if k in signals])
        node.start(asyncio.get_running_loop())
        track(node._client)
        nodes.append(node)
    return nodes


async def test_one_api_answers_for_both_sites_from_one_postgresql_record(
    enterprise: Enterprise, pg_url: str
) -> None:
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from uns.clock import WallClock, iso

    sites = list(enterprise.sites.values())
    ids = [m.id for s in sites for m in s.site.machines]
    assert len(ids) == len(set(ids)), "machine ids differ across the sites: the record keys on them"
    # each site's context service on its own broker, with a connection of its own to the one record
    services: list[tuple[ContextService, RecordStore]] = []
    for s in sites:
        store = open_record(pg_url)
        service = ContextService(s.site, store, address(s.broker, "services"), WallClock())
        service.start(asyncio.get_running_loop())
        track(service._client)
        services.append((service, store))
    for service, _ in services:
        deadline = time.monotonic() + 10
        while service._client is None or not service._client.connected:
            assert time.monotonic() < deadline, f"{service.site.config.site}: no broker"
            await asyncio.sleep(0.05)
    clocks = {s.name: ScriptClock() for s in sites}
    nodes = {s.name: await site_edge_nodes(s, clocks[s.name]) for s in sites}
    every = [n for ns in nodes.values() for n in ns]
    deadline = time.monotonic() + 30
    while not all(n.publishable for n in every):
        assert time.monotonic() < deadline, "the edge nodes never could publish"
        await asyncio.sleep(0.05)
    # every machine of both sites: runs at 10 min (a part), stops at 30, runs again at 50
    for s in sites:
        clock = clocks[s.name]
        for at, execution, count in ((10, "ACTIVE", 2), (30, "READY", 2), (50, "ACTIVE", 3)):
            clock.now = T0 + at * MIN
            for node in nodes[s.name]:
                for m in s.site.edge_nodes()[node.session.edge_node_id]:
                    node.data(
                        m.id,
                        [Sample("execution", execution, clock.now), Sample("part_count", count, clock.now)],
                    )

    reader = open_record(pg_url)  # the API's own connection
    try:

        def recorded() -> bool:
            now = {c.machine_id: c.since_ms for c in reader.current_states()}
            return all(now.get(m) == T0 + 50 * MIN for m in ids) and all(
                any(i.end_ms == T0 + 50 * MIN for i in reader.intervals(m, T0, T0 + 60 * MIN)) for m in ids
            )

        deadline = time.monotonic() + 30
        while not recorded():
            assert time.monotonic() < deadline, {c.machine_id: c.since_ms for c in reader.current_states()}
            await asyncio.sleep(0.2)

        app = create_app(ApiSettings(api_token=SecretStr(TOKEN)), reader)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with TestClient(app) as api:
            listed = api.get("/api/v1/machines", headers=auth)
            assert listed.status_code == 200, listed.text
            paths = {m["id"]: m["path"] for m in listed.json()}
            assert paths == {m.id: str(m.path) for s in sites for m in s.site.machines}
            assert {p.split("/")[1] for p in paths.values()} == {"dayton", "toledo"}
            assert {m["state"] for m in listed.json()} == {"running"}
            window = {"start": iso(T0), "end": iso(T0 + 60 * MIN)}
            for s in sites:
                m = s.site.machines[0]
                got = api.get(f"/api/v1/machines/{m.id}/intervals", params=window, headers=auth)
                assert got.status_code == 200, got.text
                said = [(i["start"], i["end"], i["state"]) for i in got.json()["intervals"]]
                assert said == [
                    (iso(T0), iso(T0 + 10 * MIN), "idle"),
                    (iso(T0 + 10 * MIN), iso(T0 + 30 * MIN), "running"),
                    (iso(T0 + 30 * MIN), iso(T0 + 50 * MIN), "idle"),
                    (iso(T0 + 50 * MIN), None, "running"),
                ], (s.name, said)
                down = api.get("/api/v1/downtime", params={**window, "machine": m.id}, headers=auth)
                assert down.status_code == 200, down.text
                rows = down.json()["rows"]
                assert {r["machine"] for r in rows} == {m.id}, rows
                assert sum(r["duration_s"] for r in rows) == 30 * 60, rows  # two stops of 10 and 20 min
    finally:
        reader.close()
        for node in every:
            await node.stop()
        for service, store in services:
            await service.stop()
            store.close()
