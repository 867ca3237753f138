"""The broker's password files. mosquitto/make-passwd.sh (a broker run by hand): a user for every `user`
of the ACL (each edge node's and each role's), files only the owner can read, passwords never printed.
mosquitto/compose-entrypoint.sh (compose.yaml's Mosquitto): the password file from the environment at
every start, the ACL and the TLS certificates beside the config, run under /bin/sh against the real
mosquitto_passwd, then a real Mosquitto with the project's config that lets each user in with its
password (over TLS, and plain on the loopback listener) and no one with a wrong one."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from uns.broker import (
    MOSQUITTO_DIR,
    PROJECT_ROOT,
    Mosquitto,
    ServerTls,
    broker_users,
    free_port,
    password_env,
    render_config,
)
from uns.certs import make_certs
from uns.enterprise import EnterpriseLink, render_bridge, render_enterprise_acl, site_user
from uns.site import load_site

ENTRYPOINT = MOSQUITTO_DIR / "compose-entrypoint.sh"
USERS = broker_users(load_site(PROJECT_ROOT / "sites" / "example.yaml"))  # those of mosquitto/acl


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("UNS_MQTT_")}


def test_make_passwd_makes_every_user_of_the_acl_and_private_secrets(tmp_path: Path) -> None:
    assert USERS == (
        "dayton.edge-machining",
        "dayton.edge-finishing",
        "services",
        "api",
        "viewer",
        "integration",
    )
    env = {**_clean_env(), "UNS_MQTT_VIEWER_PASSWORD": "viewer-secret-1"}
    env["UNS_MQTT_DAYTON_EDGE_FINISHING_PASSWORD"] = "edge-secret-2"
    result = subprocess.run(
        [str(MOSQUITTO_DIR / "make-passwd.sh"), str(tmp_path / "passwd"), str(tmp_path / "secrets.env")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "viewer-secret-1" not in result.stdout + result.stderr
    users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert tuple(users) == USERS
    secrets = dict(line.split("=", 1) for line in (tmp_path / "secrets.env").read_text().splitlines())
    assert list(secrets) == [password_env(u) for u in USERS]
    assert secrets["UNS_MQTT_VIEWER_PASSWORD"] == "viewer-secret-1"
    assert secrets["UNS_MQTT_DAYTON_EDGE_FINISHING_PASSWORD"] == "edge-secret-2"
    assert len(secrets["UNS_MQTT_DAYTON_EDGE_MACHINING_PASSWORD"]) >= 20  # generated
    assert len(set(secrets.values())) == len(secrets)
    for name in ("passwd", "secrets.env"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_make_passwd_takes_the_users_of_another_acl(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("# mine\nuser plant2.gw-7\ntopic write x\n\nuser services\ntopic read #\n")
    subprocess.run(
        [str(MOSQUITTO_DIR / "make-passwd.sh"), str(tmp_path / "passwd"), str(tmp_path / "s.env"), str(acl)],
        env=_clean_env(),
        capture_output=True,
        check=True,
    )
    assert [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()] == [
        "plant2.gw-7",
        "services",
    ]
    assert (tmp_path / "s.env").read_text().startswith("UNS_MQTT_PLANT2_GW_7_PASSWORD=")


# -- compose.yaml's Mosquitto ----------------------------------------------------------------------
PASSWORDS = {user: f"{user}-Pa55 word!$x" for user in USERS}  # spaces and $ survive the shell


def _env(tmp_path: Path, **passwords: str) -> dict[str, str]:
    env = _clean_env()
    env.update({password_env(user): pw for user, pw in passwords.items()})
    env.update(
        UNS_MOSQUITTO_CONFIG_DIR=str(tmp_path / "config"),
        UNS_MOSQUITTO_ACL_SOURCE=str(MOSQUITTO_DIR / "acl"),
        UNS_MOSQUITTO_CERTS_SOURCE=str(tmp_path / "certs"),
        UNS_MOSQUITTO_DATA_DIR=str(tmp_path / "data"),
        UNS_MOSQUITTO_CONFD_SOURCE=str(tmp_path / "conf.d-source"),  # (none: an empty conf.d)
    )
    return env


@dataclass
class Broker:
    port: int
    tls_port: int
    config: Path
    output: Path
    ca: Path


@pytest.fixture
def compose_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """The entrypoint with the project's mosquitto.conf (loopback ports, files in tmp_path), running
    Mosquitto as compose.yaml has it do: the certificates from `uns make-certs` in its certs source."""
    make_certs(tmp_path / "certs")
    with run_compose_mosquitto(tmp_path) as broker:
        yield broker


@contextlib.contextmanager
def run_compose_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """As `compose_mosquitto`, with the certificates (and any included files) made beforehand."""
    config, data = tmp_path / "config", tmp_path / "data"
    config.mkdir()
    data.mkdir()
    port, tls_port = free_port(), free_port()
    conf = config / "mosquitto.conf"
    certs = config / "certs"  # where the entrypoint puts them, as the shipped config has them
    conf.write_text(
        render_config(
            (MOSQUITTO_DIR / "mosquitto.conf").read_text(),
            port=port,
            passwd=config / "passwd",
            acl=config / "acl",
            data_dir=data,
            log_file=tmp_path / "mosquitto.log",
            tls=ServerTls(certs / "ca.crt", certs / "server.crt", certs / "server.key"),
            tls_port=tls_port,
            conf_d=config / "conf.d",  # where the entrypoint puts them
        )
    )
    output = tmp_path / "entrypoint.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            ["/bin/sh", str(ENTRYPOINT), "mosquitto", "-c", str(conf)],
            env=_env(tmp_path, **PASSWORDS),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, output.read_text() + _log(tmp_path)
            try:
                for p in (port, tls_port):
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "Mosquitto did not listen" + _log(tmp_path)
                time.sleep(0.05)
        yield Broker(port, tls_port, config, output, tmp_path / "certs" / "ca.crt")
    finally:
        process.terminate()
        process.wait(10)


def _log(tmp_path: Path) -> str:
    log = tmp_path / "mosquitto.log"
    return log.read_text()[-2000:] if log.exists() else ""


def _login(port: int, user: str, password: str, *tls: str, timeout: float = 15) -> int:
    """mosquitto_sub: log in, subscribe, exit once acknowledged (0), or the refusal's code (-1: no
    answer in time)."""
    command = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), *tls, "-u", user, "-P", password]
    try:
        run = subprocess.run(
            [*command, "-t", "$SYS/#", "-E"], capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return -1
    return run.returncode


def test_compose_entrypoint_makes_the_password_file_mosquitto_logs_in_with(
    compose_mosquitto: Broker, tmp_path: Path
) -> None:
    config = compose_mosquitto.config
    users = [line.split(":")[0] for line in (config / "passwd").read_text().splitlines()]
    assert tuple(users) == USERS
    assert (config / "acl").read_text() == (MOSQUITTO_DIR / "acl").read_text()
    for name in ("ca.crt", "server.crt", "server.key"):
        assert (config / "certs" / name).read_bytes() == (tmp_path / "certs" / name).read_bytes()
    assert not (config / "certs" / "ca.key").exists(), "the CA's key stays where it was made"
    for path in (config / "passwd", config / "acl", config / "certs" / "server.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        if os.geteuid() == 0 and _has_user("mosquitto"):  # as in the image: the user Mosquitto drops to
            assert path.owner() == "mosquitto", path
    printed = compose_mosquitto.output.read_text()
    assert not any(pw in printed for pw in PASSWORDS.values()), "a password was printed"
    tls = ("--cafile", str(compose_mosquitto.ca))
    for user, password in PASSWORDS.items():
        assert _login(compose_mosquitto.tls_port, user, password, *tls) == 0, user
        assert _login(compose_mosquitto.port, user, password) == 0, user  # the loopback listener
    assert _login(compose_mosquitto.tls_port, "viewer", PASSWORDS["services"], *tls) != 0
    assert _login(compose_mosquitto.tls_port, "viewer", "wrong", *tls) != 0
    assert _login(compose_mosquitto.tls_port, "nobody", "wrong", *tls) != 0
    plain = _login(compose_mosquitto.tls_port, "viewer", PASSWORDS["viewer"], timeout=2)
    assert plain != 0, "plain MQTT on the TLS port"


def test_compose_health_check_of_mosquitto_passes_on_it(compose_mosquitto: Broker) -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())
    kind, command = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("$$", "$").replace("-p 1883 ", f"-p {compose_mosquitto.port} ")

    def check(password: str) -> int:
        env = {**os.environ, "UNS_MQTT_VIEWER_PASSWORD": password}
        run = subprocess.run(
            ["/bin/sh", "-c", command], env=env, capture_output=True, timeout=15, check=False
        )
        return run.returncode

    assert check(PASSWORDS["viewer"]) == 0
    assert check("wrong") != 0


def test_compose_entrypoint_refuses_to_start_without_every_password(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    make_certs(tmp_path / "certs")
    passwords = {u: p for u, p in PASSWORDS.items() if u not in ("viewer", "dayton.edge-finishing")}
    passwords["integration"] = ""
    marker = tmp_path / "started"
    result = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), "touch", str(marker)],
        env=_env(tmp_path, **passwords),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    expected = (
        "UNS_MQTT_DAYTON_EDGE_FINISHING_PASSWORD UNS_MQTT_VIEWER_PASSWORD UNS_MQTT_INTEGRATION_PASSWORD"
    )
    assert expected in result.stderr
    assert not marker.exists(), "the command ran"
    assert not (tmp_path / "config" / "passwd").exists()


def test_compose_entrypoint_refuses_to_start_without_the_certificates(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "certs").mkdir()  # as shipped: mosquitto/certs holds only its .gitignore
    marker = tmp_path / "started"
    result = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), "touch", str(marker)],
        env=_env(tmp_path, **PASSWORDS),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert f"no {tmp_path / 'certs'}/ca.crt" in result.stderr
    assert "uns make-certs" in result.stderr
    assert not marker.exists()


def test_compose_entrypoint_replaces_the_password_file_at_every_start(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    make_certs(tmp_path / "certs")
    made = []
    for viewer in ("first-password", "second-password"):
        subprocess.run(
            ["/bin/sh", str(ENTRYPOINT), "true"],
            env=_env(tmp_path, **{**PASSWORDS, "viewer": viewer}),
            capture_output=True,
            timeout=30,
            check=True,
        )
        made.append((tmp_path / "config" / "passwd").read_text().splitlines())
    assert tuple(line.split(":")[0] for line in made[1]) == USERS  # made anew, not appended to
    assert made[0][USERS.index("viewer")] != made[1][USERS.index("viewer")]  # the new password
    assert not list((tmp_path / "config").glob("*.new"))


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_compose_entrypoint_includes_the_bridge_to_the_enterprise_broker(tmp_path: Path) -> None:
    """mosquitto/conf.d as docs/enterprise.md has a plant fill it: the file `uns enterprise bridge`
    renders, and the enterprise CA's certificate it names. The entrypoint puts both beside the
    config (mode 600), the shipped config includes them, and the site broker bridges its tree."""
    make_certs(tmp_path / "certs")  # one CA for the site broker's and the enterprise broker's
    site = load_site(PROJECT_ROOT / "sites" / "example.yaml")
    enterprise = Mosquitto(
        tmp_path / "enterprise",
        "acme",
        acl_text=render_enterprise_acl([site]),
        tls=ServerTls(
            tmp_path / "certs" / "ca.crt",
            tmp_path / "certs" / "server.crt",
            tmp_path / "certs" / "server.key",
        ),
    )
    enterprise.start()
    try:
        assert enterprise.tls_port is not None
        source = tmp_path / "conf.d-source"
        source.mkdir()
        (source / "enterprise-ca.crt").write_bytes((tmp_path / "certs" / "ca.crt").read_bytes())
        # the CA's path as Mosquitto sees it: beside its config, where the entrypoint puts it
        ca = tmp_path / "config" / "conf.d" / "enterprise-ca.crt"
        ca.parent.mkdir(parents=True)
        ca.write_bytes((source / "enterprise-ca.crt").read_bytes())  # (rendering checks it exists)
        link = EnterpriseLink.parse(f"127.0.0.1:{enterprise.tls_port}", ca)
        env = {password_env(site_user("dayton")): enterprise.creds.password(site_user("dayton"))}
        (source / "uns-enterprise.conf").write_text(
            render_bridge(site, link, env=env, restart_timeout=(1, 2))
        )
        shutil.rmtree(tmp_path / "config")  # the entrypoint makes conf.d itself
        with run_compose_mosquitto(tmp_path) as broker:
            included = broker.config / "conf.d"
            assert sorted(p.name for p in included.iterdir()) == ["enterprise-ca.crt", "uns-enterprise.conf"]
            for path in [included, *included.iterdir()]:
                assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
            assert "included from" in broker.output.read_text()
            topic = "acme/dayton/machining/mills/cell-1/vf2-01/state"
            publish = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", "services"]
            publish += ["-P", PASSWORDS["services"], "-t", topic, "-m", '{"state": "idle"}', "-r", "-q", "1"]
            subprocess.run(publish, check=True, timeout=15)
            read = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(enterprise.tls_port), "--cafile"]
            read += [
                str(tmp_path / "certs" / "ca.crt"),
                "-u",
                "viewer",
                "-P",
                enterprise.creds.password("viewer"),
            ]
            read += ["-t", topic, "-C", "1", "-W", "20", "-F", "%t %p"]
            seen = subprocess.run(read, capture_output=True, text=True, timeout=30, check=False)
            assert seen.stdout.strip() == f'{topic} {{"state": "idle"}}', (
                seen.stdout + seen.stderr + _log(tmp_path)
            )
    finally:
        enterprise.stop()
