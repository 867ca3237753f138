"""Least privilege on the broker, over TLS: a real Mosquitto with the project's config, the ACL
rendered from the example site (`uns broker-acl`), a password per user, and certificates made by
`uns make-certs`. For every user: what it may publish arrives, what it may not is refused (PUBACK
"not authorized", MQTT 5, QoS 1) and never reaches anyone; what it may read arrives and nothing else
does. Edge nodes cannot publish as another edge node (nor die as one, through their Will), the API
cannot command machines or write STATE, the viewer can publish nothing. And TLS itself: a plain
connection to the TLS port and a broker certificate from another CA both fail; with
`require_certificate`, a client without a certificate from the plant CA is refused.

Publishes are made with Mosquitto's own client (mosquitto_pub: it reports the PUBACK's reason code);
subscriptions, the edge node and the API's sender are the project's own clients (uns/mqtt.py).
Mosquitto 2.0 grants every SUBACK and applies read access to each message it would deliver, so a
forbidden subscription shows as nothing arriving.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.edge_node import EdgeNode
from services.api.sender import CommandSender
from services.context.commands import CommandResult
from tests.helpers import Recorder, track
from uns.broker import Mosquitto, ServerTls
from uns.certs import make_certs
from uns.clock import WallClock
from uns.mqtt import BrokerAddress, MqttClient, TlsFiles, Will
from uns.site import Site, load_site
from uns.sparkplug.edge import EdgeSession

SITE = Path(__file__).resolve().parents[2] / "sites" / "example.yaml"
MACHINING, FINISHING = "dayton.edge-machining", "dayton.edge-finishing"  # their broker users
TREE = "acme/dayton/machining/mills/cell-1/vf2-01/state"
N = "spBv1.0/dayton"


@dataclass
class Plant:
    broker: Mosquitto
    site: Site
    certs: Path

    @property
    def ca(self) -> TlsFiles:
        return TlsFiles(self.certs / "ca.crt")

    def address(self, user: str, tls: TlsFiles | None = None) -> BrokerAddress:
        return self.broker.address(user, tls or self.ca)


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    tmp = tmp_path_factory.mktemp("acl")
    certs = tmp / "certs"
    make_certs(certs)
    site = load_site(SITE)
    broker = Mosquitto.for_site(
        tmp / "mosquitto",
        site,
        tls=ServerTls(certs / "ca.crt", certs / "server.crt", certs / "server.key"),
    )
    broker.start()
    yield Plant(broker, site, certs)
    broker.stop()


def test_the_sites_broker_has_a_user_per_edge_node_and_role_and_no_shared_bridge(plant: Plant) -> None:
    assert plant.broker.users == (MACHINING, FINISHING, "services", "api", "viewer", "integration")
    assert "user bridge" not in plant.broker.acl()


async def publish(plant: Plant, user: str, topic: str, *, will: str | None = None) -> str:
    """mosquitto_pub over TLS, MQTT 5, QoS 1: `ok`, `not authorized` (the PUBACK's reason code) or
    `refused: <why>` (the connection)."""
    assert plant.broker.tls_port is not None
    command = ["mosquitto_pub", "-V", "5", "-q", "1", "-h", "127.0.0.1", "-p", str(plant.broker.tls_port)]
    command += ["--cafile", str(plant.certs / "ca.crt"), "-u", user, "-P", plant.broker.creds.password(user)]
    command += ["-t", topic, "-m", f"probe from {user}"]
    if will is not None:
        command += ["--will-topic", will, "--will-payload", "x", "--will-qos", "1"]
    proc = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    said = err.decode().strip()
    if "failed: Not authorized" in said:
        return "not authorized"
    if proc.returncode != 0 or said:
        return f"refused: {said} ({proc.returncode})"
    return "ok"


async def reader(plant: Plant, user: str, *filters: str, tls: TlsFiles | None = None) -> Recorder:
    """The project's client, over TLS, as `user`."""
    rec = Recorder()
    rec.client = MqttClient(
        f"reader-{user}",
        plant.address(user, tls),
        rec,
        asyncio.get_running_loop(),
        subscriptions=tuple((f, 1) for f in filters),
    )
    track(rec.client)
    rec.client.start()
    await rec.wait_connected()
    await asyncio.sleep(0.1)  # the SUBACK
    return rec


# -- publishing --------------------------------------------------------------------------------------
ALLOWED = [
    (MACHINING, f"{N}/NBIRTH/edge-machining"),
    (MACHINING, f"{N}/NDATA/edge-machining"),
    (MACHINING, f"{N}/NDEATH/edge-machining"),
    (MACHINING, f"{N}/DBIRTH/edge-machining/vf2-01"),
    (MACHINING, f"{N}/DDATA/edge-machining/vf2-01"),
    (MACHINING, f"{N}/DDEATH/edge-machining/vf2-01"),
    (FINISHING, f"{N}/NBIRTH/edge-finishing"),
    (FINISHING, f"{N}/DDATA/edge-finishing/haas-st20"),
    ("services", f"{N}/NCMD/edge-machining"),
    ("services", f"{N}/DCMD/edge-finishing/haas-st20"),
    ("services", "spBv1.0/STATE/uns-host"),
    ("services", TREE),
    ("services", "acme/dayton/_reply/api/abc/1"),
    ("api", "acme/dayton/_command/hold"),
    ("integration", "acme/dayton/_command/dispatch"),
]
FORBIDDEN = [
    # an edge node as another edge node, in another group, as the host, or on the tree
    (MACHINING, f"{N}/NBIRTH/edge-finishing"),
    (MACHINING, f"{N}/NDATA/edge-finishing"),
    (MACHINING, f"{N}/NDEATH/edge-finishing"),
    (MACHINING, f"{N}/DBIRTH/edge-finishing/haas-st20"),
    (MACHINING, f"{N}/DDATA/edge-finishing/haas-st20"),
    (MACHINING, "spBv1.0/other/NBIRTH/edge-machining"),
    (MACHINING, f"{N}/NCMD/edge-finishing"),
    (MACHINING, f"{N}/NCMD/edge-machining"),  # it reads its commands, it does not send them
    (MACHINING, "spBv1.0/STATE/uns-host"),
    (MACHINING, TREE),
    (MACHINING, "acme/dayton/_command/parts"),
    (FINISHING, f"{N}/DDATA/edge-machining/vf2-01"),
    (FINISHING, f"{N}/NBIRTH/edge-machining"),
    # the API: commands to the context service only
    ("api", f"{N}/NCMD/edge-machining"),
    ("api", f"{N}/DCMD/edge-machining/vf2-01"),
    ("api", "spBv1.0/STATE/uns-host"),
    ("api", f"{N}/NBIRTH/edge-machining"),
    ("api", TREE),
    ("api", "acme/dayton/_reply/api/abc/1"),
    # the viewer: nothing at all
    ("viewer", "acme/dayton/_command/hold"),
    ("viewer", TREE),
    ("viewer", "acme/dayton/_reply/x/1"),
    ("viewer", f"{N}/NCMD/edge-machining"),
    ("viewer", f"{N}/DDATA/edge-machining/vf2-01"),
    ("viewer", "spBv1.0/STATE/uns-host"),
    # integration: commands, not the tree, machines or STATE
    ("integration", TREE),
    ("integration", f"{N}/NCMD/edge-machining"),
    ("integration", "spBv1.0/STATE/uns-host"),
    ("integration", "acme/dayton/_reply/x/1"),
    # the host does not speak for edge nodes
    ("services", f"{N}/NBIRTH/edge-machining"),
    ("services", f"{N}/DDATA/edge-machining/vf2-01"),
]


async def test_every_user_publishes_what_it_may_and_nothing_else(plant: Plant) -> None:
    watch = await reader(plant, "services", "#")  # reads every Sparkplug and tree topic
    results = await asyncio.gather(*(publish(plant, u, t) for u, t in ALLOWED + FORBIDDEN))
    said = dict(zip(ALLOWED + FORBIDDEN, results, strict=True))
    wrong = {k: v for k, v in said.items() if v != ("ok" if k in ALLOWED else "not authorized")}
    assert not wrong, wrong
    assert watch.client is not None
    assert watch.client.publish("acme/marker", b"m", 1)  # after every probe: all of theirs are in
    await watch.wait_for(lambda t, _: t == "acme/marker")
    got = {(p.decode().removeprefix("probe from "), t) for t, p in watch.messages if t != "acme/marker"}
    assert got == set(ALLOWED), f"missing {set(ALLOWED) - got}, leaked {got - set(ALLOWED)}"


async def test_an_edge_node_cannot_die_as_another_edge_node(plant: Plant) -> None:
    """A cloned gateway's death must not take the real edge node down: Mosquitto 2.0 takes the
    CONNECT, and checks the Will against the ACL when it would publish it."""
    watch = await reader(plant, "services", "spBv1.0/#")
    for edge in ("edge-finishing", "edge-machining"):  # another's death first, then its own
        rec = Recorder()
        rec.client = MqttClient(
            f"dies-as-{edge}",
            plant.address(MACHINING),
            rec,
            asyncio.get_running_loop(),
            will=functools.partial(Will, f"{N}/NDEATH/{edge}", b"death"),
        )
        track(rec.client)
        rec.client.start()
        await rec.wait_connected()
        rec.client.abort()  # no DISCONNECT: the broker sends the Will
    await watch.wait_for(lambda t, _: t == f"{N}/NDEATH/edge-machining")
    assert watch.topics() == [f"{N}/NDEATH/edge-machining"]


# -- reading -------------------------------------------------------------------------------------------
PROBES = {  # topic: who may publish it
    f"{N}/NBIRTH/edge-machining": MACHINING,
    f"{N}/DDATA/edge-finishing/haas-st20": FINISHING,
    f"{N}/NCMD/edge-machining": "services",
    f"{N}/DCMD/edge-finishing/haas-st20": "services",
    f"{N}/NCMD/edge-finishing": "services",
    "spBv1.0/STATE/uns-host": "services",
    TREE: "services",
    "acme/dayton/_command/hold": "integration",
    "acme/dayton/_reply/api/abc/1": "services",
}
READS = {
    MACHINING: {f"{N}/NCMD/edge-machining", "spBv1.0/STATE/uns-host"},
    FINISHING: {f"{N}/DCMD/edge-finishing/haas-st20", f"{N}/NCMD/edge-finishing", "spBv1.0/STATE/uns-host"},
    "services": set(PROBES),
    "api": {"acme/dayton/_reply/api/abc/1"},
    "viewer": {TREE, "acme/dayton/_command/hold", "acme/dayton/_reply/api/abc/1"},
    "integration": {TREE, "acme/dayton/_command/hold", "acme/dayton/_reply/api/abc/1"},
}
MARKERS = ("spBv1.0/STATE/marker", "acme/dayton/_reply/marker")  # one of them readable by each


async def test_every_user_reads_what_it_may_and_nothing_else(plant: Plant) -> None:
    # `#` and a few exact filters each: the broker hands over only what the user may read
    filters = ("#", f"{N}/NCMD/edge-finishing", "spBv1.0/#", "acme/dayton/_command/hold")
    readers = {user: await reader(plant, user, *filters) for user in READS}
    results = await asyncio.gather(*(publish(plant, who, topic) for topic, who in PROBES.items()))
    assert set(results) == {"ok"}, results
    for marker in MARKERS:
        assert await publish(plant, "services", marker) == "ok"
    for user, rec in readers.items():
        await rec.wait_for(lambda t, _: t in MARKERS)
        got = {t for t, _ in rec.messages if t not in MARKERS}
        assert got == READS[user], f"{user}: missing {READS[user] - got}, leaked {got - READS[user]}"


# -- the project's own clients over TLS -----------------------------------------------------------------
async def test_an_edge_node_over_tls_births_as_itself_and_not_as_another(plant: Plant) -> None:
    watch = await reader(plant, "services", "spBv1.0/#")
    own = EdgeNode(EdgeSession("dayton", "edge-machining", {}), plant.address(MACHINING), WallClock())
    # a cloned gateway: edge-finishing's session with edge-machining's login
    clone = EdgeNode(EdgeSession("dayton", "edge-finishing", {}), plant.address(MACHINING), WallClock())
    for node in (clone, own):
        node.start(asyncio.get_running_loop())
        track(node._client)
    await watch.wait_for(lambda t, _: t == f"{N}/NBIRTH/edge-machining")
    assert clone._client is not None
    assert clone._client.connected  # its login is good; what it says as edge-finishing is not
    clone._client.abort()  # its Will: edge-finishing's NDEATH
    await own.stop()  # its own NDEATH, published, after the clone's birth and death
    await watch.wait_for(lambda t, _: t == f"{N}/NDEATH/edge-machining")
    assert watch.topics() == [f"{N}/NBIRTH/edge-machining", f"{N}/NDEATH/edge-machining"]


async def test_the_apis_sender_over_tls_sends_commands_and_reads_their_answers(plant: Plant) -> None:
    host = await reader(plant, "services", "acme/dayton/_command/#")
    sender = CommandSender(plant.address("api"), "acme/dayton", timeout_s=5)
    sender.start(asyncio.get_running_loop())
    track(sender._client)
    assert sender._client is not None
    for _ in range(200):
        if sender._client.connected:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the SUBACK of its reply topic
    sent = asyncio.create_task(sender.send("hold", {"machine": "vf2-01"}))
    [(_, payload)] = await host.wait_for(lambda t, _: t == "acme/dayton/_command/hold")
    command = json.loads(payload)
    assert host.client is not None
    assert host.client.publish(
        command["reply_to"], CommandResult(id=command["id"], ok=True).model_dump_json().encode(), 1
    )
    assert (await asyncio.wait_for(sent, 5)).ok


# -- TLS itself -------------------------------------------------------------------------------------------
async def test_plain_mqtt_on_the_tls_port_never_connects(plant: Plant) -> None:
    assert plant.broker.tls_port is not None
    address = BrokerAddress(
        "127.0.0.1", plant.broker.tls_port, "viewer", plant.broker.creds.password("viewer")
    )
    rec = Recorder()
    rec.client = MqttClient("plain", address, rec, asyncio.get_running_loop())
    track(rec.client)
    rec.client.start()
    await asyncio.sleep(1.5)
    assert rec.connects == 0


async def test_a_broker_certificate_from_another_ca_fails_verification(
    plant: Plant, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_certs(tmp_path / "other")
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="uns.mqtt"):
        rec.client = MqttClient(
            "wrong-ca",
            plant.address("viewer", TlsFiles(tmp_path / "other" / "ca.crt")),
            rec,
            asyncio.get_running_loop(),
        )
        track(rec.client)
        rec.client.start()
        await asyncio.sleep(1.5)
    assert rec.connects == 0
    assert any("certificate verify failed" in r.getMessage() for r in caplog.records), caplog.text


def test_client_tls_checks_the_brokers_name_and_wants_tls_1_2() -> None:
    context = TlsFiles().context()
    assert context.check_hostname
    assert context.minimum_version.name == "TLSv1_2"


async def test_with_require_certificate_only_clients_with_a_plant_certificate_get_in(tmp_path: Path) -> None:
    certs, other = tmp_path / "certs", tmp_path / "other"
    make_certs(certs, clients=["viewer"])
    make_certs(other, clients=["viewer"])  # the same name from another CA
    site = load_site(SITE)
    broker = Mosquitto.for_site(
        tmp_path / "mosquitto",
        site,
        tls=ServerTls(certs / "ca.crt", certs / "server.crt", certs / "server.key", require_certificate=True),
    )
    broker.start()
    try:
        plant = Plant(broker, site, certs)
        mine = TlsFiles(certs / "ca.crt", certs / "viewer.crt", certs / "viewer.key")
        ok = await reader(plant, "viewer", "acme/#", tls=mine)
        assert ok.connects == 1
        refused = {
            "no certificate": plant.address("viewer", plant.ca),
            "another CA's certificate": plant.address(
                "viewer", TlsFiles(certs / "ca.crt", other / "viewer.crt", other / "viewer.key")
            ),
            # the certificate is not the login: the password still counts
            "a wrong password": plant.address("viewer", mine).with_credentials("viewer", "not-the-password"),
        }
        recorders = {why: Recorder() for why in refused}
        for why, rec in recorders.items():
            rec.client = MqttClient(why.replace(" ", "-"), refused[why], rec, asyncio.get_running_loop())
            track(rec.client)
            rec.client.start()
        await asyncio.sleep(1.2)
        assert {why: rec.connects for why, rec in recorders.items()} == dict.fromkeys(refused, 0)
        await asyncio.gather(*(asyncio.to_thread(c.stop) for r in recorders.values() if (c := r.client)))
    finally:
        broker.stop()
