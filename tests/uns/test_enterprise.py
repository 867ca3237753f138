"""uns/enterprise.py and `uns enterprise` without a broker: the site broker's bridge section and
the enterprise broker's ACL as rendered from site models, and every bad input refused naming what.
(tests/integration/test_enterprise.py runs them on real brokers.)"""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from uns.broker import MOSQUITTO_DIR, PROJECT_ROOT, Mosquitto, acl_users, render_config
from uns.enterprise import (
    EnterpriseError,
    EnterpriseLink,
    bridge_topics,
    client_id,
    enterprise_users,
    render_bridge,
    render_enterprise_acl,
    site_user,
)
from uns.site import Site, load_site, parse_site
from unscli import enterprise as cli

EXAMPLE = PROJECT_ROOT / "sites" / "example.yaml"  # acme/dayton: areas machining, finishing
PASSWORD = {"UNS_MQTT_SITE_DAYTON_PASSWORD": "s3cret-Pw_1"}


def _site(site: str = "toledo", enterprise: str = "acme") -> Site:
    return parse_site(
        f"""\
enterprise: {enterprise}
site: {site}
sparkplug: {{group_id: g}}
areas:
  - name: turning
    lines:
      - name: l
        cells:
          - name: c
            machines:
              - id: m1
                source:
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {{execution: a, mode: b, part_count: c, alarm_code: d, estop: e}}
""",
        f"{site}.yaml",
    )


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "enterprise-ca.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_bridge_sends_the_sites_tree_only_over_tls_with_a_kept_session(ca: Path) -> None:
    site = load_site(EXAMPLE)
    link = EnterpriseLink.parse("ent.example.com", ca)
    lines = _lines(render_bridge(site, link, env=PASSWORD))
    assert lines[:2] == ["connection uns-enterprise", "address ent.example.com:8883"]
    assert [line for line in lines if line.startswith("topic ")] == [
        "topic acme/dayton/machining/# out 1",
        "topic acme/dayton/finishing/# out 1",
        "topic acme/dayton/_health/# out 1",
    ]
    for wanted in (
        "cleansession false",
        "local_cleansession false",
        f"remote_clientid {client_id('acme', 'dayton')}",
        "local_clientid uns-bridge.acme.dayton.local",
        "remote_username site.dayton",
        "remote_password s3cret-Pw_1",
        f"bridge_cafile {ca}",
        "bridge_insecure false",
        "bridge_tls_version tlsv1.2",
        "notification_topic acme/dayton/_bridge/enterprise",
        "try_private true",
    ):
        assert wanted in lines
    assert not [line for line in lines if "spBv1.0" in line or "_command" in line or "_reply" in line]
    assert not [line for line in lines if line.startswith(("bridge_certfile", "bridge_keyfile"))]
    assert bridge_topics(site) == (
        "acme/dayton/machining/#",
        "acme/dayton/finishing/#",
        "acme/dayton/_health/#",
    )


def test_the_bridge_takes_a_client_certificate_and_may_not_announce_itself(tmp_path: Path, ca: Path) -> None:
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    cert.write_text("c")
    key.write_text("k")
    link = EnterpriseLink.parse("10.0.4.2:18883", ca, cert, key)
    lines = _lines(render_bridge(_site(), link, password="pw", try_private=False, restart_timeout=(5, 60)))
    assert "address 10.0.4.2:18883" in lines
    assert f"bridge_certfile {cert}" in lines
    assert f"bridge_keyfile {key}" in lines
    assert "try_private false" in lines
    assert "restart_timeout 5 60" in lines


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("", "give host or host:port"),
        ("ent.example.com:0", "port must be a number from 1 to 65535"),
        ("ent.example.com:port", "port must be a number"),
        ("mqtts://ent.example.com", "give host or host:port"),
        ("::1", "IPv6"),
        ("bad host:8883", "give host or host:port"),
    ],
)
def test_a_bad_enterprise_address_is_refused_naming_it(ca: Path, address: str, what: str) -> None:
    with pytest.raises(EnterpriseError, match=what) as err:
        EnterpriseLink.parse(address, ca)
    assert repr(address) in str(err.value)


def test_missing_or_unpaired_tls_files_are_refused_naming_them(tmp_path: Path, ca: Path) -> None:
    with pytest.raises(EnterpriseError, match=rf"CA file {tmp_path / 'nope.crt'}: no such file"):
        EnterpriseLink.parse("ent", tmp_path / "nope.crt")
    with pytest.raises(EnterpriseError, match="client certificate needs its key"):
        EnterpriseLink.parse("ent", ca, ca)
    with pytest.raises(EnterpriseError, match=r"client key .*/none.key: no such file"):
        EnterpriseLink.parse("ent", ca, ca, tmp_path / "none.key")
    with pytest.raises(EnterpriseError, match=r"CA file ca\.crt: give an absolute path"):
        EnterpriseLink.parse("ent", "ca.crt")


def test_the_password_comes_from_the_site_users_variable_and_must_be_set(ca: Path) -> None:
    link = EnterpriseLink.parse("ent", ca)
    with pytest.raises(EnterpriseError, match=r"set UNS_MQTT_SITE_TOLEDO_PASSWORD .* user site\.toledo"):
        render_bridge(_site(), link, env={})
    with pytest.raises(EnterpriseError, match=r"UNS_MQTT_SITE_TOLEDO_PASSWORD: .* without spaces"):
        render_bridge(_site(), link, env={"UNS_MQTT_SITE_TOLEDO_PASSWORD": "two words"})
    with pytest.raises(EnterpriseError, match=r"need 1 <= base <= cap"):
        render_bridge(_site(), link, password="pw", restart_timeout=(10, 5))


def test_the_enterprise_acl_lets_each_site_write_its_own_tree_and_the_viewer_read() -> None:
    acl = render_enterprise_acl([load_site(EXAMPLE), _site()])
    block = acl.split("user site.toledo\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == [
        "topic deny acme/toledo/_command/#",
        "topic deny acme/toledo/_reply/#",
        "topic write acme/toledo/#",
    ]
    assert "# password: UNS_MQTT_SITE_DAYTON_PASSWORD\nuser site.dayton\n" in acl
    assert acl.endswith("user viewer\ntopic read acme/#\n")
    assert acl_users(acl) == ("site.dayton", "site.toledo", "viewer")
    assert enterprise_users([load_site(EXAMPLE), _site()]) == ("site.dayton", "site.toledo", "viewer")
    assert site_user("toledo") == "site.toledo"


def test_the_enterprise_acl_refuses_mixed_enterprises_and_sites_alike() -> None:
    with pytest.raises(EnterpriseError, match="north: enterprise 'globex', but toledo says 'acme'"):
        render_enterprise_acl([_site(), _site("north", "globex")])
    with pytest.raises(
        EnterpriseError, match=r"a-b: site 'a-b' and a_b: site 'a_b' would share .*SITE_A_B_PASSWORD"
    ):
        render_enterprise_acl([_site("a_b"), _site("a-b")])
    with pytest.raises(EnterpriseError, match="would share"):
        render_enterprise_acl([_site(), _site()])
    with pytest.raises(EnterpriseError, match="at least one site"):
        render_enterprise_acl([])


def test_a_broker_with_an_acl_of_its_own_and_a_bridge_section(tmp_path: Path) -> None:
    acl = render_enterprise_acl([_site()])
    broker = Mosquitto(tmp_path, "acme", acl_text=acl, extra_config="connection x\naddress h:1\n")
    assert broker.users == ("site.toledo", "viewer")
    assert broker.acl() == acl
    base = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
    conf = render_config(
        base,
        port=1,
        passwd=tmp_path / "p",
        acl=tmp_path / "a",
        data_dir=tmp_path,
        log_file=tmp_path / "l",
        extra="connection x\naddress h:1\n",
    )
    assert conf.endswith("\nconnection x\naddress h:1\n")
    with pytest.raises(ValueError, match="names no user"):
        acl_users("topic read a/#\n")


# -- the command -------------------------------------------------------------------------------
def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="uns")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return cli.run(parser.parse_args(["enterprise", *argv]))


def test_the_command_writes_the_bridge_readable_by_its_owner_only(
    tmp_path: Path, ca: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UNS_MQTT_SITE_DAYTON_PASSWORD", "s3cret-Pw_1")
    out = tmp_path / "enterprise.conf"
    args = ["bridge", "--site", str(EXAMPLE), "--enterprise-broker", "ent:8883", "--cafile", str(ca)]
    assert _run(*args, "--output", str(out)) == 0
    assert "remote_password s3cret-Pw_1" in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    said = capsys.readouterr()
    assert "s3cret" not in said.out + said.err
    assert f"wrote {out}" in said.out


def test_the_command_names_what_is_wrong(
    tmp_path: Path, ca: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("UNS_MQTT_SITE_DAYTON_PASSWORD", raising=False)
    out = str(tmp_path / "e.conf")
    common = ["--enterprise-broker", "ent", "--cafile", str(ca), "--output", out]
    assert _run("bridge", "--site", str(tmp_path / "nope.yaml"), *common) == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read the site model" in capsys.readouterr().err
    assert _run("bridge", "--site", str(EXAMPLE), *common) == 2
    assert "set UNS_MQTT_SITE_DAYTON_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("UNS_MQTT_SITE_DAYTON_PASSWORD", "pw")
    bad_ca = ["--enterprise-broker", "ent", "--cafile", str(tmp_path / "no-ca.crt"), "--output", out]
    assert _run("bridge", "--site", str(EXAMPLE), *bad_ca) == 2
    assert f"CA file {tmp_path / 'no-ca.crt'}: no such file" in capsys.readouterr().err
    bad_address = ["--enterprise-broker", "ent:99999", "--cafile", str(ca), "--output", out]
    assert _run("bridge", "--site", str(EXAMPLE), *bad_address) == 2
    assert "'ent:99999': the port" in capsys.readouterr().err
    no_dir = ["--enterprise-broker", "ent", "--cafile", str(ca), "--output", str(tmp_path / "x" / "e.conf")]
    assert _run("bridge", "--site", str(EXAMPLE), *no_dir) == 2
    assert "no directory" in capsys.readouterr().err
    assert not Path(out).exists()


def test_the_command_prints_the_enterprise_acl_and_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toledo = tmp_path / "toledo.yaml"
    toledo.write_text(EXAMPLE.read_text().replace("site: dayton", "site: toledo", 1))
    assert _run("acl", "--site", str(EXAMPLE), "--site", str(toledo)) == 0
    acl = capsys.readouterr().out
    assert acl == render_enterprise_acl([load_site(EXAMPLE), load_site(toledo)])
    assert _run("users", "--site", str(EXAMPLE), "--site", str(toledo)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "site.dayton UNS_MQTT_SITE_DAYTON_PASSWORD",
        "site.toledo UNS_MQTT_SITE_TOLEDO_PASSWORD",
        "viewer UNS_MQTT_VIEWER_PASSWORD",
    ]
    assert _run("users", "--site", str(EXAMPLE), "--site", str(EXAMPLE)) == 2
    assert "would share" in capsys.readouterr().err
