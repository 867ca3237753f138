"""The broker's password files. mosquitto/make-passwd.sh (a broker run by hand): four users, files only
the owner can read, passwords never printed. mosquitto/compose-entrypoint.sh (compose.yaml's Mosquitto):
the password file from the environment at every start, run under /bin/sh against the real
mosquitto_passwd, then a real Mosquitto with the project's config that lets each role in with its
password and no one with a wrong one."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from uns.broker import MOSQUITTO_DIR, PROJECT_ROOT, ROLES, free_port, render_config

ENTRYPOINT = MOSQUITTO_DIR / "compose-entrypoint.sh"


def test_make_passwd_writes_four_users_and_private_secrets(tmp_path: Path) -> None:
    env = {**os.environ, "UNS_MQTT_VIEWER_PASSWORD": "viewer-secret-1"}
    env.pop("UNS_MQTT_BRIDGE_PASSWORD", None)
    result = subprocess.run(
        [str(MOSQUITTO_DIR / "make-passwd.sh"), str(tmp_path / "passwd"), str(tmp_path / "secrets.env")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "viewer-secret-1" not in result.stdout + result.stderr
    users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert users == ["bridge", "services", "viewer", "integration"]
    secrets = dict(line.split("=", 1) for line in (tmp_path / "secrets.env").read_text().splitlines())
    assert secrets["UNS_MQTT_VIEWER_PASSWORD"] == "viewer-secret-1"
    assert len(secrets["UNS_MQTT_BRIDGE_PASSWORD"]) >= 20  # generated
    for name in ("passwd", "secrets.env"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


# -- compose.yaml's Mosquitto ----------------------------------------------------------------------
PASSWORDS = {role: f"{role}-Pa55 word!$x" for role in ROLES}  # spaces and $ survive the shell


def _env(tmp_path: Path, **passwords: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNS_MQTT_")}
    env.update({f"UNS_MQTT_{role.upper()}_PASSWORD": pw for role, pw in passwords.items()})
    env.update(
        UNS_MOSQUITTO_CONFIG_DIR=str(tmp_path / "config"),
        UNS_MOSQUITTO_ACL_SOURCE=str(MOSQUITTO_DIR / "acl"),
        UNS_MOSQUITTO_DATA_DIR=str(tmp_path / "data"),
    )
    return env


@dataclass
class Broker:
    port: int
    config: Path
    output: Path


@pytest.fixture
def compose_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """The entrypoint with the project's mosquitto.conf (a loopback port, files in tmp_path), running
    Mosquitto as compose.yaml has it do."""
    config, data = tmp_path / "config", tmp_path / "data"
    config.mkdir()
    data.mkdir()
    port = free_port()
    conf = config / "mosquitto.conf"
    conf.write_text(
        render_config(
            (MOSQUITTO_DIR / "mosquitto.conf").read_text(),
            port=port,
            passwd=config / "passwd",
            acl=config / "acl",
            data_dir=data,
            log_file=tmp_path / "mosquitto.log",
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
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "Mosquitto did not listen" + _log(tmp_path)
                time.sleep(0.05)
        yield Broker(port, config, output)
    finally:
        process.terminate()
        process.wait(10)


def _log(tmp_path: Path) -> str:
    log = tmp_path / "mosquitto.log"
    return log.read_text()[-2000:] if log.exists() else ""


def _login(port: int, user: str, password: str) -> int:
    """mosquitto_sub: log in, subscribe, exit once acknowledged (0), or the refusal's code."""
    run = subprocess.run(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-u",
            user,
            "-P",
            password,
            "-t",
            "$SYS/#",
            "-E",
        ],
        capture_output=True,
        timeout=15,
        check=False,
    )
    return run.returncode


def test_compose_entrypoint_makes_the_password_file_mosquitto_logs_in_with(
    compose_mosquitto: Broker, tmp_path: Path
) -> None:
    config = compose_mosquitto.config
    users = [line.split(":")[0] for line in (config / "passwd").read_text().splitlines()]
    assert users == list(ROLES)
    assert (config / "acl").read_text() == (MOSQUITTO_DIR / "acl").read_text()
    for name in ("passwd", "acl"):
        assert stat.S_IMODE((config / name).stat().st_mode) == 0o600, name
        if os.geteuid() == 0 and _has_user("mosquitto"):  # as in the image: the user Mosquitto drops to
            assert (config / name).owner() == "mosquitto", name
    printed = compose_mosquitto.output.read_text()
    assert not any(pw in printed for pw in PASSWORDS.values()), "a password was printed"
    for role, password in PASSWORDS.items():
        assert _login(compose_mosquitto.port, role, password) == 0, role
    assert _login(compose_mosquitto.port, "viewer", PASSWORDS["bridge"]) != 0
    assert _login(compose_mosquitto.port, "viewer", "wrong") != 0
    assert _login(compose_mosquitto.port, "nobody", "wrong") != 0


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
    passwords = {r: p for r, p in PASSWORDS.items() if r != "viewer"}
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
    assert "UNS_MQTT_VIEWER_PASSWORD UNS_MQTT_INTEGRATION_PASSWORD" in result.stderr
    assert not marker.exists(), "the command ran"
    assert not (tmp_path / "config" / "passwd").exists()


def test_compose_entrypoint_replaces_the_password_file_at_every_start(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
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
    assert [line.split(":")[0] for line in made[1]] == list(ROLES)  # made anew, not appended to
    assert made[0][ROLES.index("viewer")] != made[1][ROLES.index("viewer")]  # the new password
    assert not list((tmp_path / "config").glob("*.new"))


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
