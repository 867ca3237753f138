"""Running Mosquitto with the project's own configuration (mosquitto/): for `uns demo` and the tests.

The shipped `mosquitto/mosquitto.conf` is used as it is, except for what must differ per run: the
listener (a loopback port), the password, ACL and persistence paths, and the log file.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from uns.paths import check_segment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_DIR = PROJECT_ROOT / "mosquitto"
ROLES = ("bridge", "services", "viewer", "integration")

_ACL = """\
# Mosquitto ACL for the shop-floor UNS (rendered for the example site, enterprise "{enterprise}", by
# `uns broker-acl --site sites/example.yaml`; render it again for your own enterprise name).
# Each role has its own user; nothing is anonymous.

# bridge: publishes Sparkplug births, data and deaths; reads commands and host STATE
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

# services: the Sparkplug host (reads everything Sparkplug, sends commands, owns STATE)
# and the publisher of the readable ISA-95 tree
user services
topic read spBv1.0/#
topic write spBv1.0/+/NCMD/+
topic write spBv1.0/+/DCMD/+/+
topic readwrite spBv1.0/STATE/+
topic readwrite {enterprise}/#

# viewer: reads the readable tree only (dashboards, Node-RED, people with mosquitto_sub)
user viewer
topic read {enterprise}/#

# integration: the ERP, QMS, inspection systems and Node-RED flows that tell the context service
# things (dispatch lists, holds, operators, reasons, scrap) on <enterprise>/<site>/_command/<kind>;
# they read the tree, and the answers on <enterprise>/<site>/_reply/...
user integration
topic read {enterprise}/#
topic write {enterprise}/+/_command/#
"""


def render_acl(enterprise: str) -> str:
    """The ACL for a site whose UNS tree starts at `enterprise`."""
    return _ACL.format(enterprise=check_segment("enterprise", enterprise))


@dataclass(frozen=True, slots=True)
class Credentials:
    """One password per role; made fresh for every demo and test broker."""

    passwords: dict[str, str]

    @classmethod
    def generate(cls) -> Credentials:
        return cls({role: secrets.token_urlsafe(18) for role in ROLES})

    def password(self, role: str) -> str:
        return self.passwords[role]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def render_config(base: str, *, port: int, passwd: Path, acl: Path, data_dir: Path, log_file: Path) -> str:
    """The shipped config with this run's listener and paths."""
    replaced = {
        "listener": f"listener {port} 127.0.0.1",
        "password_file": f"password_file {passwd}",
        "acl_file": f"acl_file {acl}",
        "persistence_location": f"persistence_location {data_dir}/",
        "log_dest": f"log_dest file {log_file}",
    }
    lines = []
    for line in base.splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() and not line.startswith("#") else ""
        lines.append(replaced.get(key, line))
    if os.geteuid() == 0:
        # Started as root, Mosquitto drops to the `mosquitto` user; these files are ours.
        lines.insert(0, f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(lines) + "\n"


def make_password_file(path: Path, creds: Credentials) -> None:
    path.write_text("")
    path.chmod(0o600)
    for role, password in creds.passwords.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), role, password], check=True, capture_output=True)


class Mosquitto:
    """A Mosquitto process on a loopback port with the project's config, ACL and fresh passwords."""

    def __init__(
        self, workdir: Path, enterprise: str, *, port: int | None = None, creds: Credentials | None = None
    ) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (make test / make demo installs it with apt-get)")
        self.workdir = workdir
        self.port = port or free_port()
        self.creds = creds or Credentials.generate()
        self.enterprise = enterprise
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / "mosquitto.log"

    def write_files(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        passwd, acl, conf = self.workdir / "passwd", self.workdir / "acl", self.workdir / "mosquitto.conf"
        make_password_file(passwd, self.creds)
        acl.write_text(render_acl(self.enterprise))
        base = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
        conf.write_text(
            render_config(base, port=self.port, passwd=passwd, acl=acl, data_dir=data, log_file=self.log_file)
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        conf = self.workdir / "mosquitto.conf"
        if not conf.exists():
            conf = self.write_files()
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}{log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")

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

    def url(self, role: str) -> str:
        return f"mqtt://{role}:{self.creds.password(role)}@127.0.0.1:{self.port}"
