"""uns/broker.py without a broker: the ACL and users generated from the site model, the password
variables, the rendered config's listeners; and how the processes find their broker logins and TLS
files in the environment (unscli/processes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from uns.broker import (
    MOSQUITTO_DIR,
    PROJECT_ROOT,
    EdgeNodeUser,
    ServerTls,
    broker_users,
    password_env,
    render_acl,
    render_config,
)
from uns.mqtt import BrokerAddress, TlsFiles
from uns.site import Site, load_site, parse_site
from unscli import processes

EXAMPLE = PROJECT_ROOT / "sites" / "example.yaml"


def _site(*edges: str, group: str = "plant2") -> Site:
    machines = "".join(
        f"""
              - id: m{i}
                edge_node: {edge}
                source:
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {{execution: a, mode: b, part_count: c, alarm_code: d, estop: e}}"""
        for i, edge in enumerate(edges)
    )
    return parse_site(
        f"""\
enterprise: globex
site: north
sparkplug: {{group_id: "{group}"}}
areas:
  - name: a
    lines:
      - name: l
        cells:
          - name: c
            machines:{machines}
"""
    )


def test_the_shipped_acl_is_the_example_sites() -> None:
    assert (MOSQUITTO_DIR / "acl").read_text() == render_acl(load_site(EXAMPLE))


def test_each_edge_node_may_publish_as_itself_only() -> None:
    acl = render_acl(_site("gw-1", "gw-2"))
    block = acl.split("user plant2.gw-1\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == [
        "topic write spBv1.0/plant2/NBIRTH/gw-1",
        "topic write spBv1.0/plant2/NDATA/gw-1",
        "topic write spBv1.0/plant2/NDEATH/gw-1",
        "topic write spBv1.0/plant2/DBIRTH/gw-1/+",
        "topic write spBv1.0/plant2/DDATA/gw-1/+",
        "topic write spBv1.0/plant2/DDEATH/gw-1/+",
        "topic read spBv1.0/plant2/NCMD/gw-1",
        "topic read spBv1.0/plant2/DCMD/gw-1/+",
        "topic read spBv1.0/STATE/+",
    ]
    assert "user plant2.gw-2\n" in acl
    assert "user bridge" not in acl, "no login that may speak for every edge node"
    api = acl.split("user api\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert api == ["topic write globex/+/_command/#", "topic read globex/+/_reply/#"]
    assert broker_users(_site("gw-1", "gw-2")) == (
        "plant2.gw-1",
        "plant2.gw-2",
        "services",
        "api",
        "viewer",
        "integration",
    )


def test_every_user_is_named_with_its_password_variable() -> None:
    assert password_env("services") == "UNS_MQTT_SERVICES_PASSWORD"
    assert password_env("dayton.edge-machining") == "UNS_MQTT_DAYTON_EDGE_MACHINING_PASSWORD"
    acl = render_acl(_site("gw-1"))
    for user in broker_users(_site("gw-1")):
        assert f"# password: {password_env(user)}\nuser {user}\n" in acl


def test_edge_nodes_that_would_share_a_password_variable_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'plant2.gw-1' and 'plant2.gw_1' would share .*GW_1_PASSWORD"):
        render_acl(_site("gw-1", "gw_1"))


def test_an_edge_node_id_that_cannot_be_a_broker_user_is_refused() -> None:
    with pytest.raises(ValueError, match=r"edge node plant2/gw 1: its broker user would be 'plant2.gw 1'"):
        render_acl(_site("gw 1"))
    with pytest.raises(ValueError, match="broker user"):
        EdgeNodeUser("g", "a:b")


def test_the_rendered_config_keeps_both_listeners_on_loopback(tmp_path: Path) -> None:
    base = (MOSQUITTO_DIR / "mosquitto.conf").read_text()

    def render(**tls: object) -> list[str]:
        files: dict[str, Any] = {
            "passwd": tmp_path / "p",
            "acl": tmp_path / "a",
            "log_file": tmp_path / "l",
            **tls,
        }
        return render_config(base, port=1234, data_dir=tmp_path, **files).splitlines()

    plain = render()
    assert [line for line in plain if line.startswith("listener")] == ["listener 1234 127.0.0.1"]
    assert not [line for line in plain if line.split(" ")[0] in {"cafile", "certfile", "keyfile"}]
    tls = ServerTls(tmp_path / "ca.crt", tmp_path / "s.crt", tmp_path / "s.key", require_certificate=True)
    both = render(tls=tls, tls_port=5678)
    assert [line for line in both if line.startswith("listener")] == [
        "listener 1234 127.0.0.1",
        "listener 5678 127.0.0.1",
    ]
    tail = both[both.index("listener 5678 127.0.0.1") :]
    assert f"cafile {tmp_path / 'ca.crt'}" in tail
    assert f"keyfile {tmp_path / 's.key'}" in tail
    assert "require_certificate true" in tail
    # the shipped config includes the bridges' directory last; a run has its own, or none
    assert base.rstrip().splitlines()[-1] == "include_dir /mosquitto/config/conf.d"
    assert not [line for line in both if line.startswith("include_dir")]
    with_bridges = render(conf_d=tmp_path / "conf.d")
    assert with_bridges[-1] == f"include_dir {tmp_path / 'conf.d'}"


# -- the processes' logins ---------------------------------------------------------------------------
@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("UNS_MQTT_USERNAME", "UNS_MQTT_PASSWORD", *processes.TLS_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_mqtts_urls_take_the_tls_files_of_the_environment(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert BrokerAddress.parse("mqtts://broker.plant").port == 8883
    assert BrokerAddress.parse("mqtts://broker.plant").tls == TlsFiles()  # the system's CAs
    assert BrokerAddress.parse("mqtt://broker.plant").tls is None
    assert str(BrokerAddress.parse("mqtts://u:secret@b:1")) == "mqtts://u@b:1"
    with pytest.raises(ValueError, match="mqtt:// or mqtts://"):
        BrokerAddress.parse("ws://b")
    for name in ("ca.crt", "me.crt", "me.key"):
        (tmp_path / name).write_text("x")
    env.setenv("UNS_MQTT_CA_FILE", str(tmp_path / "ca.crt"))
    assert processes.parse_broker("mqtts://b").tls == TlsFiles(tmp_path / "ca.crt")
    with pytest.raises(processes.ConfigError, match="is plain MQTT: use mqtts://"):
        processes.parse_broker("mqtt://b")
    env.setenv("UNS_MQTT_CERT_FILE", str(tmp_path / "me.crt"))
    with pytest.raises(processes.ConfigError, match="both UNS_MQTT_CERT_FILE and UNS_MQTT_KEY_FILE"):
        processes.parse_broker("mqtts://b")
    env.setenv("UNS_MQTT_KEY_FILE", str(tmp_path / "nowhere.key"))
    with pytest.raises(processes.ConfigError, match=r"UNS_MQTT_KEY_FILE=.*nowhere\.key: no such file"):
        processes.parse_broker("mqtts://b")
    env.setenv("UNS_MQTT_KEY_FILE", str(tmp_path / "me.key"))
    assert processes.parse_broker("mqtts://b").tls == TlsFiles(
        tmp_path / "ca.crt", tmp_path / "me.crt", tmp_path / "me.key"
    )


def test_each_edge_node_logs_in_as_itself(env: pytest.MonkeyPatch) -> None:
    site = _site("gw-1", "gw-2")
    env.setenv("UNS_MQTT_PLANT2_GW_1_PASSWORD", "one")
    with pytest.raises(
        processes.ConfigError, match=r"set UNS_MQTT_PLANT2_GW_2_PASSWORD: .*`uns broker-users`"
    ):
        processes.edge_node_addresses("mqtt://b", site, ["gw-1", "gw-2"])
    env.setenv("UNS_MQTT_PLANT2_GW_2_PASSWORD", "two")
    logins = processes.edge_node_addresses("mqtts://b", site, ["gw-1", "gw-2"])
    assert {e: (a.username, a.password, a.port) for e, a in logins.items()} == {
        "gw-1": ("plant2.gw-1", "one", 8883),
        "gw-2": ("plant2.gw-2", "two", 8883),
    }
    # only the ones asked for
    assert list(processes.edge_node_addresses("mqtt://b", site, ["gw-2"])) == ["gw-2"]


def test_an_edge_node_without_its_own_password_falls_back_to_the_shared_login(
    env: pytest.MonkeyPatch,
) -> None:
    site = _site("gw-1", "gw-2")
    env.setenv("UNS_MQTT_PLANT2_GW_1_PASSWORD", "one")
    env.setenv("UNS_MQTT_PASSWORD", "shared")
    logins = processes.edge_node_addresses("mqtt://b", site, ["gw-1", "gw-2"])
    assert (logins["gw-1"].username, logins["gw-2"].username) == ("plant2.gw-1", "bridge")
    assert logins["gw-2"].password == "shared"
    env.setenv("UNS_MQTT_USERNAME", "gateway")
    assert processes.edge_node_addresses("mqtt://b", site, ["gw-2"])["gw-2"].username == "gateway"


def test_the_broker_sends_without_waiting_for_acks() -> None:
    """Nagle off: a state JSON moments after another would wait for the subscriber's delayed ACK
    (up to 40 ms on Linux; bench/load.py measured 25 ms p50 at 50 changes/s with it on)."""
    lines = (MOSQUITTO_DIR / "mosquitto.conf").read_text().splitlines()
    assert "set_tcp_nodelay true" in lines
