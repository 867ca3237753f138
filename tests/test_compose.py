"""compose.yaml, the plant stack, checked without a Docker engine (none runs where the project is
tested): it is a Compose file by the Compose Specification's schema; every file it mounts exists or is
made at start; every service's command, environment variable and port is one the project or the
image understands; .env.example names every variable and holds no secret; the image installs runtime
dependencies only. The health checks of the uns services are run here against real things. The
broker: only its TLS port is published, every service reaches it over TLS with the plant CA, each
logs in as its own user (each edge node as itself), and Mosquitto is given every user's password."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from pydantic_settings import BaseSettings

from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.commands import CommandResult
from services.context.record import open_record
from services.historian.writer import InfluxSettings
from tests.helpers import address, recorder
from tests.historian.servers import Influx16
from uns.broker import (
    PROJECT_ROOT,
    Mosquitto,
    broker_users,
    edge_node_users,
    free_port,
    password_env,
    render_acl,
)
from uns.certs import make_certs
from uns.mqtt import PLAIN_PORT, TLS_PORT
from uns.site import OpcUaSource, Site, SparkplugSource, load_site
from unscli import processes
from unscli.cli import build_parser

COMPOSE = PROJECT_ROOT / "compose.yaml"
PG_OVERRIDE = PROJECT_ROOT / "compose.postgres.yaml"  # the record on PostgreSQL, merged over COMPOSE
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
ENTRYPOINT = PROJECT_ROOT / "mosquitto" / "compose-entrypoint.sh"
UNS_IMAGE_SERVICES = ("bridge", "context", "historian", "api", "sim")
RECORD_READERS = ("context", "historian", "api")  # the record's writer and its readers share it
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET")
WORKDIR = PurePosixPath("/app")  # the Dockerfile's WORKDIR: the uns services' relative paths start there

# What the images document. InfluxDB 2's entrypoint (influxdb:2.7) sets up from these at the first
# start; influxd itself reads INFLUXD_<OPTION>. It listens on :8086 unless told otherwise.
INFLUX_INIT = {
    "DOCKER_INFLUXDB_INIT_MODE",
    "DOCKER_INFLUXDB_INIT_USERNAME",
    "DOCKER_INFLUXDB_INIT_PASSWORD",
    "DOCKER_INFLUXDB_INIT_ORG",
    "DOCKER_INFLUXDB_INIT_BUCKET",
    "DOCKER_INFLUXDB_INIT_RETENTION",
    "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
    "DOCKER_INFLUXDB_INIT_CLI_CONFIG_NAME",
}
INFLUX_REQUIRED = {"DOCKER_INFLUXDB_INIT_" + k for k in ("MODE", "USERNAME", "PASSWORD", "ORG", "BUCKET")}
INFLUX_PORT = 8086
# Grafana reads GF_<SECTION>_<KEY> for any key of its configuration (grafana.ini); these are the
# ones used here, by section and key as Grafana's configuration reference names them. It listens on
# [server] http_port, 3000 by default.
GRAFANA_SETTINGS = {
    "GF_SECURITY_ADMIN_USER": ("security", "admin_user"),
    "GF_SECURITY_ADMIN_PASSWORD": ("security", "admin_password"),
    "GF_USERS_ALLOW_SIGN_UP": ("users", "allow_sign_up"),
    "GF_ANALYTICS_REPORTING_ENABLED": ("analytics", "reporting_enabled"),
    "GF_ANALYTICS_CHECK_FOR_UPDATES": ("analytics", "check_for_updates"),
}
GRAFANA_PORT = 3000

# -- the Compose file, its variables resolved as `docker compose` resolves them -----------------------
_DOLLAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


@dataclass
class Interpolation:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
    `${VAR:+other}`, `$VAR` and `$$`, with the variables of `env`; what it used and missed."""

    env: Mapping[str, str]
    used: set[str]
    missing: set[str]

    def string(self, text: str) -> str:
        return _DOLLAR.sub(self._one, text)

    def _one(self, match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        braced = _BRACED.fullmatch(match["braced"] or match["named"] or "")
        assert braced is not None, f"not a Compose variable: {match[0]}"
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        assert "$" not in arg, f"{match[0]}: nested variables are not used here"
        self.used.add(name)
        value = self.env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset else value or ""
        if op in (":?", "?") and unset:
            self.missing.add(name)
            return ""
        if op in (":+", "+"):
            return "" if unset else arg
        return value or ""

    def node(self, node: Any) -> Any:
        if isinstance(node, str):
            return self.string(node)
        if isinstance(node, list):
            return [self.node(x) for x in node]
        if isinstance(node, dict):
            return {k: self.node(v) for k, v in node.items()}
        return node


def read_env_example() -> tuple[dict[str, str], set[str]]:
    """The example's `NAME=value` lines, and the names it shows commented out (optional ones)."""
    values: dict[str, str] = {}
    optional: set[str] = set()
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if not line.strip():
            continue
        setting = re.fullmatch(r"(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)", line)
        if setting is None:
            assert line.startswith("#"), f".env.example:{number}: neither NAME=value nor a comment"
            continue
        if setting["commented"]:
            optional.add(setting["name"])
        else:
            assert setting["name"] not in values, f".env.example:{number}: {setting['name']} again"
            values[setting["name"]] = setting["value"]
    return values, optional


def filled(example: Mapping[str, str]) -> dict[str, str]:
    """The example as a plant fills it: every empty value given one (API tokens need 16 characters)."""
    return {k: v or f"test-{k.lower()}-value" for k, v in example.items()}


@dataclass
class Stack:
    raw: dict[str, Any]
    compose: dict[str, Any]  # resolved with a filled-in .env.example
    used: set[str]

    def service(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.compose["services"][name]
        return found

    def env(self, name: str) -> dict[str, Any]:
        env: dict[str, Any] = self.service(name).get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        return env

    def args(self, name: str) -> Any:
        command = self.service(name)["command"]
        assert command[0] == "uns", f"{name}: {command}"
        return build_parser().parse_args(command[1:])

    def mounts(self, name: str) -> list[tuple[str, PurePosixPath]]:
        """(source, target) of the service's volumes: `./...` for the project's files, else a volume."""
        found = []
        for entry in self.service(name).get("volumes", []):
            if isinstance(entry, dict):  # the long syntax
                assert entry.get("read_only") is True, f"{name}: {entry}: the project's files are read-only"
                found.append((str(entry["source"]), PurePosixPath(entry["target"])))
                continue
            source, target, *_ = entry.split(":")
            found.append((source, PurePosixPath(target)))
        return found

    def host_path(self, name: str, path: str | Path) -> tuple[str, PurePosixPath]:
        """Where a path a service uses lives: (mount source, path under it), the deepest mount first."""
        full = WORKDIR / PurePosixPath(str(path))
        for source, target in sorted(self.mounts(name), key=lambda m: -len(m[1].parts)):
            if full == target or target in full.parents:
                return source, full.relative_to(target)
        raise AssertionError(f"{name}: {full} is on no mount, so it is lost with the container")

    def site(self, name: str) -> Site:
        source, rest = self.host_path(name, self.args(name).site)
        assert source.startswith("./"), f"{name}: the site model comes from the project"
        return load_site(PROJECT_ROOT / source / rest)


def merge(base: Any, over: Any) -> Any:
    """An override file over a Compose file, as `docker compose -f base -f over` merges the parts
    compose.postgres.yaml uses: mappings key by key, anything else (a command, a health check's test)
    replaced by the override's."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: merge(base[k], v) if k in base else v for k, v in over.items()} | {
            k: v for k, v in base.items() if k not in over
        }
    return over


def _stack(raw: dict[str, Any], env: Mapping[str, str]) -> Stack:
    resolve = Interpolation(env, set(), set())
    compose = resolve.node(raw)
    assert not resolve.missing, resolve.missing
    for service in compose["services"].values():  # `VAR:` (no value): passed on from .env if there
        resolve.used |= {k for k, v in service.get("environment", {}).items() if v is None}
    return Stack(raw, compose, resolve.used)


@pytest.fixture(scope="module")
def stack() -> Stack:
    values, _ = read_env_example()
    return _stack(yaml.safe_load(COMPOSE.read_text()), filled(values))


@pytest.fixture(scope="module")
def pg_stack() -> Stack:
    """compose.yaml with compose.postgres.yaml over it, and .env.example filled in with the
    override's optional values too."""
    values, optional = read_env_example()
    raw = merge(yaml.safe_load(COMPOSE.read_text()), yaml.safe_load(PG_OVERRIDE.read_text()))
    return _stack(raw, filled(values) | {k: f"test-{k.lower()}-value" for k in optional})


def healthcheck_code(stack: Stack, name: str) -> str:
    test = stack.service(name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"{name}: {test}"
    code: str = test[3]
    return code


# -- the file --------------------------------------------------------------------------------------
def compose_schema() -> dict[str, Any]:
    """The Compose Specification's schema, as check-jsonschema ships it (its `vendor.compose-spec`)."""
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


def test_compose_yaml_follows_the_compose_specification(stack: Stack, pg_stack: Stack) -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    for label, document in (
        ("as written", stack.raw),
        ("with .env.example filled in", stack.compose),
        ("with compose.postgres.yaml as written", yaml.safe_load(PG_OVERRIDE.read_text())),
        ("with compose.postgres.yaml merged", pg_stack.raw),
        ("with compose.postgres.yaml merged, .env.example filled in", pg_stack.compose),
    ):
        problems = [
            f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in validator.iter_errors(document)
        ]
        assert not problems, f"compose.yaml {label}:\n" + "\n".join(problems)


def test_env_example_names_every_variable_and_holds_no_secret(stack: Stack, pg_stack: Stack) -> None:
    values, optional = read_env_example()
    assert pg_stack.used == set(values) | optional, (
        "compose.yaml with compose.postgres.yaml and .env.example name other variables"
    )
    assert pg_stack.used - stack.used == {"UNS_RECORD_PASSWORD"}, "what only the override reads"
    secrets = {k for k in values if SECRET.search(k)}
    assert secrets, "the example names the secrets a plant must fill in"
    for name in secrets | optional:
        assert not values.get(name), f".env.example gives {name} a value: secrets are never committed"
    # Compose refuses to start while any empty value of the example is still empty.
    resolve = Interpolation(values, set(), set())
    resolve.node(stack.raw)
    assert resolve.missing == {k for k, v in values.items() if not v}
    # And compose.yaml itself holds no secret: each comes from .env, required, without a default.
    for name, service in pg_stack.raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET.search(key) and value is not None:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", str(value)), f"{name}: {key}: {value}"


def test_dot_env_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git work tree")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=PROJECT_ROOT, check=False)
    assert ignored.returncode == 0, ".gitignore must cover .env"
    example = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=PROJECT_ROOT, check=False)
    assert example.returncode == 1, ".env.example is committed"


# Made by `uns make-certs` before the first start (never committed): the plant CA's certificate.
MADE_BY_MAKE_CERTS = {"./mosquitto/certs/ca.crt"}


def test_every_mounted_file_exists_or_is_made_at_start(stack: Stack, tmp_path: Path) -> None:
    volumes = set(stack.compose.get("volumes") or {})
    made = {f"./mosquitto/certs/{p.name}" for p in make_certs(tmp_path / "certs").files}
    assert made >= MADE_BY_MAKE_CERTS | {"./mosquitto/certs/server.crt", "./mosquitto/certs/server.key"}
    for name in stack.compose["services"]:
        for source, target in stack.mounts(name):
            if source in MADE_BY_MAKE_CERTS:
                # a file compose must not make a directory of when it is missing: it refuses instead
                [entry] = [v for v in stack.service(name)["volumes"] if isinstance(v, dict)]
                assert entry["type"] == "bind"
                assert entry["bind"]["create_host_path"] is False, name
            elif source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), f"{name}: {source} (mounted at {target})"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
    # Made at start: Mosquitto's password file and ACL copy, by the entrypoint, where its config reads them.
    mosquitto = stack.service("mosquitto")
    assert mosquitto["entrypoint"] == ["/bin/sh", "/uns/compose-entrypoint.sh"]
    assert ("./mosquitto/compose-entrypoint.sh", PurePosixPath("/uns/compose-entrypoint.sh")) in stack.mounts(
        "mosquitto"
    )
    assert ("./mosquitto/acl", PurePosixPath("/uns/acl")) in stack.mounts("mosquitto")  # its default source
    assert ("./mosquitto/certs", PurePosixPath("/uns/certs")) in stack.mounts("mosquitto")  # also
    # and the included files (a bridge to an enterprise broker), which the shipped config includes
    assert ("./mosquitto/conf.d", PurePosixPath("/uns/conf.d")) in stack.mounts("mosquitto")
    assert "confd_source=${UNS_MOSQUITTO_CONFD_SOURCE:-/uns/conf.d}" in ENTRYPOINT.read_text()
    conf = _conf(PROJECT_ROOT / "mosquitto" / "mosquitto.conf")
    assert conf["password_file"] == "/mosquitto/config/passwd"  # written there by the entrypoint
    assert conf["acl_file"] == "/mosquitto/config/acl"
    text = (PROJECT_ROOT / "mosquitto" / "mosquitto.conf").read_text()
    options = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert options[-1] == "include_dir /mosquitto/config/conf.d"  # made by the entrypoint, empty or not
    tls = _listeners(PROJECT_ROOT / "mosquitto" / "mosquitto.conf")[TLS_PORT]
    assert (tls["cafile"], tls["certfile"], tls["keyfile"]) == tuple(
        f"/mosquitto/config/certs/{n}" for n in ("ca.crt", "server.crt", "server.key")
    )  # copied there by the entrypoint
    assert mosquitto["command"] == ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
    # Grafana finds the dashboards where its provisioning looks for them.
    for provider_file in sorted((PROJECT_ROOT / "grafana" / "provisioning" / "dashboards").glob("*.y*ml")):
        for provider in yaml.safe_load(provider_file.read_text()).get("providers", []):
            source, rest = stack.host_path("grafana", provider["options"]["path"])
            assert (PROJECT_ROOT / source / rest).is_dir(), (
                f"{provider_file.name}: {provider['options']['path']}"
            )


def test_the_broker_acl_is_the_one_for_the_site(stack: Stack) -> None:
    assert (PROJECT_ROOT / "mosquitto" / "acl").read_text() == render_acl(stack.site("context"))


# -- commands --------------------------------------------------------------------------------------
def test_uns_services_run_commands_uns_takes_on_the_one_site(stack: Stack) -> None:
    sites = set()
    for name in UNS_IMAGE_SERVICES:
        service = stack.service(name)
        assert service["build"] == ".", f"{name}: the project's image (Dockerfile)"
        args = stack.args(name)  # exits (a test failure) on an argument `uns` does not take
        assert args.command == name, f"{name} runs `uns {args.command}`"
        sites.add(str(args.site))
        stack.site(name)  # loads and validates
    assert len(sites) == 1, f"every uns service reads the same site model: {sites}"
    records = {(name, *stack.host_path(name, stack.env(name)["UNS_RECORD"])) for name in RECORD_READERS}
    assert {(source, rest) for _, source, rest in records} == {("record", PurePosixPath("record.db"))}
    for name in RECORD_READERS:  # where the record is: UNS_RECORD (compose.postgres.yaml changes it)
        assert "--record" not in stack.service(name)["command"], name
    source, _ = stack.host_path("bridge", stack.args("bridge").buffer_dir)
    assert source in stack.compose["volumes"], "the bridge's buffer outlives its container"


def test_demo_profile_serves_the_bridges_machines(stack: Stack) -> None:
    profiled = {n for n, s in stack.compose["services"].items() if s.get("profiles")}
    assert profiled == {"sim"}, "everything but the simulator runs without a profile"
    sim = stack.service("sim")
    assert sim["profiles"] == ["demo"]
    # The simulator serves inside the bridge's network namespace: the machines the bridge reads on
    # loopback are the simulator's servers.
    assert sim["network_mode"] == "service:bridge"
    assert stack.args("sim").site == stack.args("bridge").site
    for machine in stack.site("bridge").machines:
        source = machine.source
        assert not isinstance(source, SparkplugSource)
        host = urlsplit(source.endpoint).hostname if isinstance(source, OpcUaSource) else source.host
        assert host in {"127.0.0.1", "localhost", "::1"}, (
            f"{machine.id}: {host} is not on the bridge's loopback"
        )
    assert f'load_site("{stack.args("sim").site}")' in healthcheck_code(stack, "sim")


# -- environment -----------------------------------------------------------------------------------
def _settings_names(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return {(prefix + field).upper() for field in settings.model_fields}


def _names_the_code_reads() -> set[str]:
    pattern = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["'](UNS_[A-Z0-9_]+)["']""")
    names: set[str] = set()
    for package in ("uns", "bridge", "services", "unscli"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            names |= set(pattern.findall(path.read_text()))
    return names


def test_every_environment_variable_is_one_its_service_reads(stack: Stack) -> None:
    site = stack.site("bridge")
    password_envs = {
        m.source.password_env
        for m in site.machines
        if isinstance(m.source, OpcUaSource) and m.source.password_env
    }
    edge_passwords = {password_env(e.user) for e in edge_node_users(site)}  # the bridge's, per edge node
    uns_reads = (
        _names_the_code_reads()
        | _settings_names(ApiSettings)
        | _settings_names(InfluxSettings)
        | password_envs
        | edge_passwords
    )
    assert {"UNS_MQTT_USERNAME", "UNS_MQTT_PASSWORD", "UNS_API_TOKEN", "UNS_INFLUX_TOKEN"} <= uns_reads
    assert set(processes.TLS_VARIABLES) <= uns_reads
    for name in UNS_IMAGE_SERVICES:
        unknown = set(stack.env(name)) - uns_reads
        assert not unknown, f"{name}: the project reads no {sorted(unknown)}"
    # Each uns service logs in to the broker as its own user: the context service and the API as
    # their roles, the bridge each edge node as itself (no shared login).
    roles = {n: stack.env(n).get("UNS_MQTT_USERNAME") for n in ("bridge", "context", "api")}
    assert roles == {"bridge": None, "context": "services", "api": "api"}
    for name in ("context", "api"):
        role = str(roles[name])
        assert stack.raw["services"][name]["environment"]["UNS_MQTT_PASSWORD"].startswith(
            f"${{{password_env(role)}:?"
        ), f"{name}: the password of {role}"
    bridge_env = stack.raw["services"]["bridge"]["environment"]
    assert "UNS_MQTT_PASSWORD" not in bridge_env
    for var in edge_passwords:
        assert bridge_env[var].startswith(f"${{{var}:?"), f"bridge: {var} from .env"

    # Mosquitto's entrypoint makes a user for every `user` of the ACL, from that user's variable.
    acl_users = re.findall(r"^user (\S+)$", (PROJECT_ROOT / "mosquitto" / "acl").read_text(), re.MULTILINE)
    assert tuple(acl_users) == broker_users(site)
    assert set(stack.env("mosquitto")) == {password_env(u) for u in acl_users}, (
        "Mosquitto gets the password of every user of its ACL, and nothing else"
    )
    for name, service in stack.raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_PASSWORD") and key.startswith("UNS_MQTT_") and key != "UNS_MQTT_PASSWORD":
                assert value == f"${{{key}:?set {key} in .env}}", f"{name}: {key} is the same in .env"

    influx = stack.env("influxdb")
    assert set(influx) <= INFLUX_INIT
    assert set(influx) >= INFLUX_REQUIRED
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    historian = stack.env("historian")
    assert influx["DOCKER_INFLUXDB_INIT_ORG"] == historian["UNS_INFLUX_ORG"]
    assert influx["DOCKER_INFLUXDB_INIT_BUCKET"] == historian["UNS_INFLUX_BUCKET"]
    assert influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == historian["UNS_INFLUX_TOKEN"]

    grafana = stack.env("grafana")
    for key in (k for k in grafana if k.startswith("GF_")):
        assert key in GRAFANA_SETTINGS, f"grafana: {key} is not a setting named in GRAFANA_SETTINGS"
        section, setting = GRAFANA_SETTINGS[key]
        assert key == f"GF_{section}_{setting}".upper().replace(".", "_"), key
    provisioning = PROJECT_ROOT / "grafana" / "provisioning"
    assert provisioning.is_dir(), "grafana/provisioning is mounted into Grafana"
    referenced = set()
    for path in provisioning.rglob("*.y*ml"):
        referenced |= set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    given = {k for k in grafana if not k.startswith("GF_")}
    assert referenced - set(grafana) == set(), "grafana/provisioning reads variables Grafana is not given"
    assert given - referenced == set(), "Grafana is given variables its provisioning does not read"
    for key in given & set(historian):
        assert grafana[key] == historian[key], f"Grafana and the historian agree on {key}"


async def test_the_apis_broker_login_may_send_commands_and_read_their_answers(
    stack: Stack, mosquitto: Mosquitto
) -> None:
    """The API's writes are commands to the context service (services/api/sender.py): its MQTT user
    may publish them and read the answers, under the project's ACL."""
    role = str(stack.env("api")["UNS_MQTT_USERNAME"])
    config = stack.site("api").config
    root = f"{config.enterprise}/{config.site}"
    host = await recorder(mosquitto, "services", f"{root}/_command/#")
    sender = CommandSender(address(mosquitto, role), root, timeout_s=5)
    sender.start(asyncio.get_running_loop())
    try:
        for _ in range(200):
            if sender._client is not None and sender._client.connected:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the SUBACK of its reply topic
        sent = asyncio.create_task(sender.send("hold", {"machine": "vf2-01"}))
        [(_, payload)] = await host.wait_for(lambda t, _: t == f"{root}/_command/hold")
        command = json.loads(payload)
        answer = CommandResult(id=command["id"], ok=True).model_dump_json().encode()
        assert host.client is not None
        assert host.client.publish(command["reply_to"], answer, 1)
        assert (await asyncio.wait_for(sent, 5)).ok
    finally:
        sender.stop()


def test_the_bridge_logs_each_edge_node_in_as_itself(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """`uns bridge` with the bridge's environment: one login per edge node, its own user."""
    site = stack.site("bridge")
    for key in [k for k in os.environ if k.startswith("UNS_MQTT_")]:
        monkeypatch.delenv(key)
    for key, value in stack.env("bridge").items():
        if key.startswith("UNS_MQTT_") and key != "UNS_MQTT_CA_FILE":  # (a path in the container)
            monkeypatch.setenv(key, str(value))
    url = stack.args("bridge").broker.replace("mqtts://", "mqtt://")
    logins = processes.edge_node_addresses(url, site, list(site.edge_nodes()))
    assert {e: a.username for e, a in logins.items()} == {
        e.edge_node_id: e.user for e in edge_node_users(site)
    }
    assert len({a.password for a in logins.values()}) == len(logins), "each its own password"


# -- ports -----------------------------------------------------------------------------------------
def _conf(path: Path) -> dict[str, str]:
    """The options before the first listener (the broker's own)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        parts = line.split(maxsplit=1)
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] == "listener":
            break
        found[parts[0]] = parts[1] if len(parts) > 1 else ""
    return found


def _listeners(path: Path) -> dict[int, dict[str, str]]:
    """Each listener's port, with its address (`listener`) and the options that follow it."""
    listeners: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in path.read_text().splitlines():
        parts = line.split(maxsplit=1)
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] == "listener":
            port, *address = parts[1].split()
            current = listeners[int(port)] = {"listener": address[0] if address else ""}
        elif current is not None:
            current[parts[0]] = parts[1] if len(parts) > 1 else ""
    return listeners


def _container_ports(stack: Stack, name: str) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in stack.service(name).get("ports", [])}


def test_every_port_is_the_one_its_service_listens_on(stack: Stack) -> None:
    listeners = _listeners(PROJECT_ROOT / "mosquitto" / "mosquitto.conf")
    assert set(listeners) == {PLAIN_PORT, TLS_PORT}
    assert listeners[PLAIN_PORT]["listener"] == "127.0.0.1", "plain MQTT on the loopback interface only"
    assert "cafile" not in listeners[PLAIN_PORT]
    assert listeners[TLS_PORT]["listener"] == "", "TLS on every interface"
    assert _container_ports(stack, "mosquitto") == {TLS_PORT}, "only the TLS port is published"
    assert stack.service("mosquitto")["ports"] == [f"{TLS_PORT}:{TLS_PORT}"]
    assert f"-h 127.0.0.1 -p {PLAIN_PORT} " in stack.service("mosquitto")["healthcheck"]["test"][1]
    assert f"port = {TLS_PORT}\n" in healthcheck_code(stack, "bridge")
    for name in ("bridge", "context", "api"):
        broker = urlsplit(stack.args(name).broker)
        assert (broker.scheme, broker.hostname, broker.port) == ("mqtts", "mosquitto", TLS_PORT), name
        assert "mosquitto" in stack.service(name)["depends_on"], f"{name} waits for the broker"
        ca = stack.env(name)["UNS_MQTT_CA_FILE"]
        assert ("./mosquitto/certs/ca.crt", PurePosixPath(ca)) in stack.mounts(name), f"{name}: the CA"
        assert not any("certs" in s and s != "./mosquitto/certs/ca.crt" for s, _ in stack.mounts(name)), (
            f"{name}: only the CA's certificate, never a key"
        )

    api = stack.args("api")
    assert api.host == "0.0.0.0", "the API takes connections from outside its container"
    assert _container_ports(stack, "api") == {api.port}
    assert stack.service("api")["ports"] == [f"127.0.0.1:{api.port}:{api.port}"], (
        "plain HTTP for the Docker host only: a TLS reverse proxy serves the plant"
    )
    assert f"http://127.0.0.1:{api.port}/" in healthcheck_code(stack, "api")

    assert "INFLUXD_HTTP_BIND_ADDRESS" not in stack.env("influxdb")
    assert _container_ports(stack, "influxdb") == {INFLUX_PORT}
    for name in ("historian", "grafana"):
        assert stack.env(name)["UNS_INFLUX_URL"] == f"http://influxdb:{INFLUX_PORT}", name

    assert "GF_SERVER_HTTP_PORT" not in stack.env("grafana")
    assert _container_ports(stack, "grafana") == {GRAFANA_PORT}
    assert f"http://127.0.0.1:{GRAFANA_PORT}/api/health" in stack.service("grafana")["healthcheck"]["test"]


# -- health checks ---------------------------------------------------------------------------------
def test_every_service_has_a_health_check(stack: Stack) -> None:
    for name, service in stack.compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name}: no health check"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: {test}"
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name}'s health check", "exec")


def _check(code: str, cwd: Path, env: Mapping[str, str] | None = None) -> int:
    run = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=30,
    )
    return run.returncode


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_context_health_check_wants_recent_connected_health_in_the_record(
    stack: Stack, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Against the record where the stack's UNS_RECORD puts it: the SQLite file on its volume, or
    (compose.postgres.yaml) the tests' own PostgreSQL."""
    code = healthcheck_code(stack, "context")
    (tmp_path / "var").mkdir()
    where = stack.env("context")["UNS_RECORD"] if backend == "sqlite" else request.getfixturevalue("pg_url")
    env = {"UNS_RECORD": where}
    store = open_record(tmp_path / where if backend == "sqlite" else where)
    try:
        assert _check(code, tmp_path, env) == 1  # no health yet
        now = int(time.time() * 1000)
        store.write_health([("host/uns-host", "connected", 1.0, now)])
        assert _check(code, tmp_path, env) == 0
        store.write_health([("host/uns-host", "connected", 0.0, now)])
        assert _check(code, tmp_path, env) == 1  # the host lost the broker
        store.write_health([("host/uns-host", "connected", 1.0, now - 120_000)])
        assert _check(code, tmp_path, env) == 1  # nothing written for two minutes
    finally:
        store.close()


def test_postgres_override_puts_the_record_of_every_service_in_one_postgresql(
    stack: Stack, pg_stack: Stack
) -> None:
    """compose.postgres.yaml: one PostgreSQL, healthy before the record's writer and readers start,
    reached on the stack's network only, its data on a volume; the writer and both readers at the
    same database as its user, with the password PostgreSQL was set up with; nothing else changed."""
    postgres = pg_stack.service("postgres")
    assert re.fullmatch(r"postgres:\d+", postgres["image"]), "a pinned major version"
    assert "ports" not in postgres, "PostgreSQL is reached on the stack's network only"
    [(source, target)] = pg_stack.mounts("postgres")
    assert source in pg_stack.compose["volumes"]
    assert target == PurePosixPath("/var/lib/postgresql/data")
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    pg_env = pg_stack.env("postgres")
    assert set(pg_env) == {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}
    urls = set()
    for name in RECORD_READERS:
        env = pg_stack.env(name)
        assert env["PGPASSWORD"] == pg_env["POSTGRES_PASSWORD"], f"{name}: the password PostgreSQL has"
        assert pg_stack.service(name)["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
        url = urlsplit(env["UNS_RECORD"])
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432), name
        assert (url.username, url.path) == (pg_env["POSTGRES_USER"], "/" + pg_env["POSTGRES_DB"]), name
        assert url.password is None, f"{name}: the password comes from PGPASSWORD, not the URL"
        urls.add(env["UNS_RECORD"])
        # the rest of each service as compose.yaml has it
        before = {k: v for k, v in stack.service(name).items() if k != "environment"}
        after = {k: v for k, v in pg_stack.service(name).items() if k != "environment"}
        before["depends_on"] = {**before["depends_on"], "postgres": {"condition": "service_healthy"}}
        assert after == before, name
        assert {k: v for k, v in env.items() if k not in ("UNS_RECORD", "PGPASSWORD")} == {
            k: v for k, v in stack.env(name).items() if k != "UNS_RECORD"
        }, name
    assert len(urls) == 1, "the writer and its readers share one record"
    assert set(pg_stack.compose["services"]) - set(stack.compose["services"]) == {"postgres"}
    for name in set(stack.compose["services"]) - set(RECORD_READERS):
        assert pg_stack.service(name) == stack.service(name), f"{name} is as compose.yaml has it"


def test_bridge_health_check_wants_a_connection_to_the_broker(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    code = healthcheck_code(stack, "bridge").replace(f"port = {TLS_PORT}\n", f"port = {port}\n")
    with socket.create_server(("127.0.0.1", port)) as server:
        assert _check(code, tmp_path) == 1
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                assert _check(code, tmp_path) == 0
            client.close()
    assert _check(code, tmp_path) == 1


@pytest.fixture
def api_process(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The API's own command, on a free loopback port, without a broker (reads only)."""
    command = list(stack.service("api")["command"])
    port = free_port()
    for option, value in (
        ("--host", "127.0.0.1"),
        ("--port", str(port)),
    ):
        command[command.index(option) + 1] = value
    broker = command.index("--broker")
    del command[broker : broker + 2]
    token = "t" * 24
    env = {**os.environ, "UNS_API_TOKEN": token, "UNS_RECORD": str(tmp_path / "r.db")}
    process = subprocess.Popen(  # the compose file's own command
        [str(Path(sys.executable).with_name("uns")), *command[1:]],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, "uns api exited"
                assert time.monotonic() < deadline, "uns api did not listen"
                time.sleep(0.1)
        yield token, port
    finally:
        process.terminate()
        process.wait(10)


def test_api_health_check_asks_the_api_with_its_token(
    stack: Stack, api_process: tuple[str, int], tmp_path: Path
) -> None:
    token, port = api_process
    code = healthcheck_code(stack, "api").replace(f":{stack.args('api').port}/", f":{port}/")
    assert _check(code, tmp_path, {"UNS_API_TOKEN": token}) == 0
    assert _check(code, tmp_path, {"UNS_API_TOKEN": "not-the-token-at-all"}) == 1


def test_historian_health_check_wants_its_own_recent_point(stack: Stack, tmp_path: Path) -> None:
    # InfluxDB 1.6 (Debian's influxdb) answers the same InfluxQL /query as InfluxDB 2's v1 API.
    influx = Influx16(tmp_path / "influx")
    influx.start()
    try:
        code = healthcheck_code(stack, "historian")
        env = {"UNS_INFLUX_URL": influx.url, "UNS_INFLUX_BUCKET": "uns", "UNS_INFLUX_TOKEN": "any"}
        assert _check(code, tmp_path, env) == 1  # nothing written yet
        now = int(time.time() * 1000)
        influx.write([f"historian,host=h written=1i,dropped=0i {now - 600_000}"])
        assert _check(code, tmp_path, env) == 1  # ten minutes old
        influx.write([f"historian,host=h written=5i,dropped=0i {now}"])
        assert _check(code, tmp_path, env) == 0
    finally:
        influx.stop()


# -- the image -------------------------------------------------------------------------------------
def test_dockerfile_installs_runtime_dependencies_only() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    steps = re.sub(r"\\\n\s*", " ", text).splitlines()
    installs = [s for s in steps if re.match(r"RUN\b.*\bpip install\b", s)]
    assert installs, "the Dockerfile installs the project"
    for step in installs:
        assert not re.search(r"(-r|--requirement)\s+\S*requirements\.lock", step), step  # it holds dev tools
        assert "[dev]" not in step, step
    assert any(re.search(r"(-c|--constraint)\s+\S*requirements\.lock", s) for s in installs)
    for step in steps:
        if step.startswith("COPY") and "--from=" not in step:
            *sources, _ = step.split()[1:]
            for source in sources:
                assert (PROJECT_ROOT / source).exists(), f"Dockerfile: COPY {source}"
                assert source != ".", "the Dockerfile copies what it needs, never the work tree (.env)"
