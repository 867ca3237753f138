"""The broker's users and ACL, generated from the site model (`uns broker-acl`), and running
Mosquitto with the project's own configuration (mosquitto/) for `uns demo`, the tests and benchmarks.

Users: one per Sparkplug edge node (`<group>.<edge node id>`: it may publish only as itself and read
only its own commands), and one per role: `services` (the host and the readable tree), `api` (the
HTTP API's commands and their answers), `viewer` (reads the tree), `integration` (ERP, QMS: reads
the tree, sends commands). Each user's password is in `UNS_MQTT_<USER>_PASSWORD` (`password_env`).

The shipped `mosquitto/mosquitto.conf` is used as it is, except for what must differ per run: the
listeners (loopback ports; the TLS one only when asked for), the password, ACL, certificate and
persistence paths, the log file, and the directory of included files (bridges: left out, or a run's).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uns.mqtt import TLS_PORT, BrokerAddress, TlsFiles
from uns.paths import check_segment

if TYPE_CHECKING:
    from uns.site import Site

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_DIR = PROJECT_ROOT / "mosquitto"
ROLES = ("services", "api", "viewer", "integration")
# One login that may publish as any edge node: only for the brokers the tests and benchmarks start
# without a site model (their edge nodes are made up). A site's ACL has a user per edge node instead.
ANY_EDGE_NODE = "bridge"
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def password_env(user: str) -> str:
    """The environment variable that holds a broker user's password, for Mosquitto's password file
    and for the process that logs in as it: `UNS_MQTT_<USER>_PASSWORD`, the user name in capitals
    with every character other than a letter or digit as `_` (mosquitto/*.sh derive it the same way)."""
    return f"UNS_MQTT_{re.sub(r'[^A-Z0-9]', '_', user.upper())}_PASSWORD"


@dataclass(frozen=True, slots=True)
class EdgeNodeUser:
    """The broker user of one Sparkplug edge node: `<group id>.<edge node id>`, which is how
    Sparkplug itself names an edge node (an edge node id is unique within its group only)."""

    group_id: str
    edge_node_id: str

    def __post_init__(self) -> None:
        if not _USER.fullmatch(self.user):
            raise ValueError(
                f"edge node {self.group_id}/{self.edge_node_id}: its broker user would be {self.user!r};"
                " group and edge node ids for a broker user may have letters, digits, '_', '-' and '.'"
            )

    @property
    def user(self) -> str:
        return f"{self.group_id}.{self.edge_node_id}"


def edge_node_users(site: Site) -> tuple[EdgeNodeUser, ...]:
    """Our bridges' edge nodes, then the foreign edge nodes that publish machines of the site (each
    logs in as itself, with the same rights: docs/adding-machines.md)."""
    ours = [EdgeNodeUser(site.group_id, edge) for edge in site.edge_nodes()]
    foreign = [EdgeNodeUser(group, edge) for group, edge in site.foreign_edge_nodes()]
    return tuple(dict.fromkeys([*ours, *foreign]))


def broker_users(site: Site) -> tuple[str, ...]:
    """Every user of the site's ACL, in its order: one per edge node, then the roles."""
    return _users(edge_node_users(site))


def _users(edge_nodes: Sequence[EdgeNodeUser] | None) -> tuple[str, ...]:
    edge_users = [e.user for e in edge_nodes] if edge_nodes is not None else [ANY_EDGE_NODE]
    users = (*edge_users, *ROLES)
    seen: dict[str, str] = {}
    for user in users:
        other = seen.setdefault(password_env(user), user)
        if other != user:
            raise ValueError(
                f"broker users {other!r} and {user!r} would share the password variable"
                f" {password_env(user)}: rename one of the edge nodes"
            )
    return users


_HEADER = """\
# Mosquitto ACL for the shop-floor UNS, rendered from the site model (enterprise "{enterprise}",
# Sparkplug group "{group}") by `uns broker-acl --site <site file>`: render it again when the
# enterprise or the edge nodes change. One user per edge node and per role, each limited to the
# topics under it; nothing is anonymous. Each user's password is in the variable named above it
# (mosquitto/make-passwd.sh and compose-entrypoint.sh make the password file from them).
"""

_EDGE_NODE = """
# edge node {group}/{edge}: publishes as itself only; reads its own commands and host STATE.
# password: {env}
user {user}
topic write spBv1.0/{group}/NBIRTH/{edge}
topic write spBv1.0/{group}/NDATA/{edge}
topic write spBv1.0/{group}/NDEATH/{edge}
topic write spBv1.0/{group}/DBIRTH/{edge}/+
topic write spBv1.0/{group}/DDATA/{edge}/+
topic write spBv1.0/{group}/DDEATH/{edge}/+
topic read spBv1.0/{group}/NCMD/{edge}
topic read spBv1.0/{group}/DCMD/{edge}/+
topic read spBv1.0/STATE/+
"""

_ANY_EDGE_NODE = """
# bridge: any edge node of any group (the brokers of the tests and benchmarks only; never rendered
# for a site).
# password: {env}
user bridge
topic write spBv1.0/+/NBIRTH/+
topic write spBv1.0/+/NDATA/+
topic write spBv1.0/+/NDEATH/+
topic write spBv1.0/+/DBIRTH/+/+
topic write spBv1.0/+/DDATA/+/+
topic write spBv1.0/+/DDEATH/+/+
topic read spBv1.0/+/NCMD/+
topic read spBv1.0/+/DCMD/+/+
topic read spBv1.0/STATE/+
"""

_ROLES = """
# services: the Sparkplug host (reads everything Sparkplug, sends commands, owns STATE) and the
# publisher of the readable ISA-95 tree.
# password: {services}
user services
topic read spBv1.0/#
topic write spBv1.0/+/NCMD/+
topic write spBv1.0/+/DCMD/+/+
topic readwrite spBv1.0/STATE/+
topic readwrite {enterprise}/#

# api: the HTTP API, whose writes are commands to the context service; it reads their answers only.
# password: {api}
user api
topic write {enterprise}/+/_command/#
topic read {enterprise}/+/_reply/#

# viewer: reads the readable tree only (dashboards, Node-RED, people with mosquitto_sub).
# password: {viewer}
user viewer
topic read {enterprise}/#

# integration: the ERP, QMS, inspection systems and Node-RED flows that tell the context service
# things (dispatch lists, holds, operators, reasons, scrap) on <enterprise>/<site>/_command/<kind>;
# they read the tree, and the answers on <enterprise>/<site>/_reply/...
# password: {integration}
user integration
topic read {enterprise}/#
topic write {enterprise}/+/_command/#
"""


def render_acl(site: Site) -> str:
    """The ACL for a site: its enterprise's tree, and a user for each of its edge nodes."""
    return _render_acl(site.config.enterprise, site.group_id, edge_node_users(site))


def _render_acl(enterprise: str, group: str, edge_nodes: Sequence[EdgeNodeUser] | None) -> str:
    check_segment("enterprise", enterprise)
    _users(edge_nodes)  # no two users share a password variable
    parts = [_HEADER.format(enterprise=enterprise, group=group)]
    if edge_nodes is None:
        parts.append(_ANY_EDGE_NODE.format(env=password_env(ANY_EDGE_NODE)))
    for e in edge_nodes or ():
        parts.append(
            _EDGE_NODE.format(group=e.group_id, edge=e.edge_node_id, user=e.user, env=password_env(e.user))
        )
    parts.append(_ROLES.format(enterprise=enterprise, **{r: password_env(r) for r in ROLES}))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Credentials:
    """One password per broker user; made fresh for every demo and test broker."""

    passwords: dict[str, str]

    @classmethod
    def generate(cls, users: Sequence[str] = (ANY_EDGE_NODE, *ROLES)) -> Credentials:
        return cls({user: secrets.token_urlsafe(18) for user in users})

    def password(self, user: str) -> str:
        return self.passwords[user]


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The broker's side of TLS: the CA its clients' certificates chain to, its own certificate and
    key, and whether a client must present a certificate (mutual TLS) besides its password."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_TLS_OPTIONS = {"cafile", "capath", "certfile", "keyfile", "crlfile", "ciphers", "tls_version"}
_TLS_OPTIONS |= {"require_certificate", "use_identity_as_username", "use_subject_as_username"}


def render_config(
    base: str,
    *,
    port: int,
    passwd: Path,
    acl: Path,
    data_dir: Path,
    log_file: Path,
    tls: ServerTls | None = None,
    tls_port: int | None = None,
    extra: str = "",
    conf_d: Path | None = None,
) -> str:
    """The shipped config with this run's listeners and paths: the plain listener on `port` of the
    loopback interface; the TLS listener on `tls_port`, also loopback, with `tls`'s files, or left
    out (with its options) when `tls` is None. `extra` goes at the end as it is (a bridge's
    `connection` section: uns/enterprise.py). `include_dir` is `conf_d`, or left out when that is
    None (a run's bridges come as `extra`)."""
    if tls is not None and tls_port is None:
        raise ValueError("render_config: a TLS listener needs its port")
    replaced = {
        "password_file": f"password_file {passwd}",
        "acl_file": f"acl_file {acl}",
        "persistence_location": f"persistence_location {data_dir}/",
        "log_dest": f"log_dest file {log_file}",
        "include_dir": f"include_dir {conf_d}" if conf_d is not None else "",
    }
    tls_lines = {}
    if tls is not None:
        tls_lines = {
            "cafile": f"cafile {tls.ca_file}",
            "certfile": f"certfile {tls.cert_file}",
            "keyfile": f"keyfile {tls.key_file}",
            "require_certificate": f"require_certificate {str(tls.require_certificate).lower()}",
        }
    lines = []
    in_tls = False  # the options after `listener 8883` are the TLS listener's
    for line in base.splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() and not line.startswith("#") else ""
        if key == "listener":
            in_tls = line.split()[1] == str(TLS_PORT)
            if not in_tls:
                lines.append(f"listener {port} 127.0.0.1")
            elif tls is not None:
                lines.append(f"listener {tls_port} 127.0.0.1")
        elif in_tls and key in _TLS_OPTIONS:
            if tls is not None:
                lines.append(tls_lines.get(key, line))
        elif key != "include_dir" or conf_d is not None:
            lines.append(replaced.get(key, line))
    if os.geteuid() == 0:
        # Started as root, Mosquitto drops to the `mosquitto` user; these files are ours.
        lines.insert(0, f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    if extra:
        lines += ["", extra.rstrip("\n")]
    return "\n".join(lines) + "\n"


def acl_users(acl: str) -> tuple[str, ...]:
    """The users an ACL names (its `user NAME` lines, in order), as compose-entrypoint.sh reads them."""
    users = tuple(
        dict.fromkeys(f[1] for line in acl.splitlines() if len(f := line.split()) == 2 and f[0] == "user")
    )
    if not users:
        raise ValueError("the ACL names no user (no `user NAME` line)")
    return users


def make_password_file(path: Path, creds: Credentials) -> None:
    path.write_text("")
    path.chmod(0o600)
    for user, password in creds.passwords.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True)


class Mosquitto:
    """A Mosquitto process on loopback ports with the project's config, ACL and fresh passwords.

    With `edge_nodes` (`for_site`), the ACL is the site's: a user per edge node. Without, it has the
    `bridge` user that may publish as any edge node, for tests and benchmarks with made-up ones.
    With `tls`, the shipped TLS listener is on too, on `tls_port`.
    With `acl_text`, that ACL instead (an enterprise broker's: uns/enterprise.py), its users those of
    its `user` lines. `extra_config` is appended to the config (a site broker's bridge section).
    Stopped and started again, it keeps its ports, passwords and persistence (a restart).
    """

    def __init__(
        self,
        workdir: Path,
        enterprise: str,
        *,
        port: int | None = None,
        creds: Credentials | None = None,
        group: str = "any",
        edge_nodes: Sequence[EdgeNodeUser] | None = None,
        tls: ServerTls | None = None,
        acl_text: str | None = None,
        extra_config: str = "",
    ) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (make test / make demo installs it with apt-get)")
        self.workdir = workdir
        self.port = port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.enterprise = enterprise
        self.group = group
        self.edge_nodes = tuple(edge_nodes) if edge_nodes is not None else None
        self.acl_text = acl_text
        self.extra_config = extra_config
        self.users = _users(self.edge_nodes) if acl_text is None else acl_users(acl_text)
        self.creds = creds or Credentials.generate(self.users)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / "mosquitto.log"

    @classmethod
    def for_site(
        cls,
        workdir: Path,
        site: Site,
        *,
        port: int | None = None,
        creds: Credentials | None = None,
        tls: ServerTls | None = None,
        extra_config: str = "",
    ) -> Mosquitto:
        """A broker with the site's ACL (what `uns broker-acl` renders) and a password per user."""
        return cls(
            workdir,
            site.config.enterprise,
            port=port,
            creds=creds,
            group=site.group_id,
            edge_nodes=edge_node_users(site),
            tls=tls,
            extra_config=extra_config,
        )

    def acl(self) -> str:
        if self.acl_text is not None:
            return self.acl_text
        return _render_acl(self.enterprise, self.group, self.edge_nodes)

    def write_files(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        passwd, acl, conf = self.workdir / "passwd", self.workdir / "acl", self.workdir / "mosquitto.conf"
        make_password_file(passwd, self.creds)
        acl.write_text(self.acl())
        base = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
        conf.write_text(
            render_config(
                base,
                port=self.port,
                passwd=passwd,
                acl=acl,
                data_dir=data,
                log_file=self.log_file,
                tls=self.tls,
                tls_port=self.tls_port,
                extra=self.extra_config,
            )
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        conf = self.workdir / "mosquitto.conf"
        if not conf.exists():
            conf = self.write_files()
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}{log[-2000:]}")
            try:
                for p in ports:
                    with socket.create_connection(("127.0.0.1", p), timeout=0.2):
                        pass
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on ports {ports} within {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """Stop without a goodbye (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None

    def url(self, user: str) -> str:
        return f"mqtt://{user}:{self.creds.password(user)}@127.0.0.1:{self.port}"

    def address(self, user: str, tls: TlsFiles | None = None) -> BrokerAddress:
        """Where `user` logs in: the plain listener, or with `tls` the TLS one."""
        if tls is None:
            return BrokerAddress("127.0.0.1", self.port, user, self.creds.password(user))
        if self.tls_port is None:
            raise RuntimeError("this Mosquitto has no TLS listener")
        return BrokerAddress("127.0.0.1", self.tls_port, user, self.creds.password(user), tls)
