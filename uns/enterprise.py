"""Sites feeding an enterprise broker: the files that link them (`uns enterprise ...`).

Each site keeps its own broker and context service. Its broker sends the readable ISA-95 tree of
the site (`<enterprise>/<site>/<area>/#` for each area of the site model, and
`<enterprise>/<site>/_health/#`) to the enterprise broker through a Mosquitto bridge over TLS:

- `render_bridge` makes the site broker's `connection` section. Only the tree goes out, QoS 1 with
  the retain flag kept. Sparkplug stays at the site (its seq and bdSeq belong to one host's
  session), and so do `_command` and `_reply` (a command is for the site's own context service; the
  enterprise sends none). The session is kept on both sides (`cleansession false`, fixed client
  ids), so what the site publishes while the link is down waits in the site broker and is sent
  when it is back. The bridge logs in as the site's own user, `site.<site>`, with the password
  from that user's variable (`UNS_MQTT_SITE_<SITE>_PASSWORD`), read when the section is rendered:
  the rendered file holds a secret and is written readable by its owner only, never into the repo.
- `render_enterprise_acl` makes the enterprise broker's ACL: each site's user may write only its
  own `<enterprise>/<site>/#` (not its `_command` or `_reply`), `viewer` reads `<enterprise>/#`.

Nothing here talks to a broker; docs/enterprise.md says how the files are installed.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uns.broker import password_env
from uns.mqtt import TLS_PORT
from uns.paths import check_segment

if TYPE_CHECKING:
    from uns.site import Site

# The site broker's bridge publishes the link's state here on both brokers: "1" up, "0" down (the
# enterprise broker's copy is the bridge's Will, so it turns "0" when the site is lost).
LINK_TOPIC = "{enterprise}/{site}/_bridge/enterprise"
_HOST = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_PASSWORD = re.compile(r"[!-~]+")  # printable ASCII without spaces: Mosquitto's config splits on them


class EnterpriseError(ValueError):
    """An enterprise link that cannot be rendered; the message names what and where."""


def site_user(site: str) -> str:
    """The enterprise broker's user for a site's bridge."""
    check_segment("site", site)
    return f"site.{site}"


def client_id(enterprise: str, site: str) -> str:
    """The bridge's client id on the enterprise broker: fixed, so its session (and queue) is found
    again after a restart of either side, and unique per site."""
    return f"uns-bridge.{enterprise}.{site}"


@dataclass(frozen=True, slots=True)
class EnterpriseLink:
    """Where a site broker's bridge goes: the enterprise broker's TLS listener, the CA that signed
    its certificate, and a client certificate and key if it asks for one (`require_certificate`).
    File paths are as the site broker sees them; they must exist where the section is rendered."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def parse(
        cls,
        address: str,
        ca_file: str | Path,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> EnterpriseLink:
        """`host` or `host:port` (8883 by default); host a DNS name or an IPv4 address, which the
        enterprise broker's certificate must name (the bridge checks it)."""
        if "://" in address:
            raise EnterpriseError(
                f"enterprise broker address {address!r}: give host or host:port, not a URL"
                " (the bridge always uses TLS)"
            )
        host, sep, port_text = address.strip().rpartition(":")
        if not sep:
            host, port_text = port_text, str(TLS_PORT)
        if not host or not (_HOST.fullmatch(host) or _is_ipv4(host)):
            raise EnterpriseError(
                f"enterprise broker address {address!r}: give host or host:port, the host a DNS name"
                " or an IPv4 address (for IPv6, give a host name that resolves to it)"
            )
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise EnterpriseError(
                f"enterprise broker address {address!r}: the port must be a number from 1 to 65535"
            )
        return cls(host, int(port_text), Path(ca_file), _path(cert_file), _path(key_file))

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise EnterpriseError("bridge TLS: a client certificate needs its key, and a key its certificate")
        for what, path in (
            ("CA file", self.ca_file),
            ("client certificate", self.cert_file),
            ("client key", self.key_file),
        ):
            if path is None:
                continue
            if not path.is_absolute():
                raise EnterpriseError(
                    f"bridge TLS {what} {path}: give an absolute path (Mosquitto does not read it"
                    " from where you render)"
                )
            if not path.is_file():
                raise EnterpriseError(f"bridge TLS {what} {path}: no such file")
            if not os.access(path, os.R_OK):
                raise EnterpriseError(f"bridge TLS {what} {path}: not readable")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _is_ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def bridge_topics(site: Site) -> tuple[str, ...]:
    """What the site broker sends: each area's subtree (machines' state, job, intervals, health)
    and the site's health. Listed by area so that `_command` and `_reply` stay at the site; render
    the section again when an area is added."""
    root = f"{site.config.enterprise}/{site.config.site}"
    areas = [f"{root}/{a.name}/#" for a in site.config.areas]
    return (*dict.fromkeys(areas), f"{root}/_health/#")


def bridge_password(site: Site, env: Mapping[str, str] | None = None) -> str:
    """The site user's password, from its variable; an error naming the variable if it is unset."""
    env = os.environ if env is None else env
    var = password_env(site_user(site.config.site))
    password = env.get(var, "")
    if not password:
        raise EnterpriseError(
            f"site {site.config.site}: set {var} to the password of the enterprise broker's user"
            f" {site_user(site.config.site)} (the bridge logs in with it)"
        )
    if not _PASSWORD.fullmatch(password):
        raise EnterpriseError(
            f"{var}: the password must be printable ASCII without spaces (Mosquitto's config splits on them)"
        )
    return password


_BRIDGE = """\
# The bridge from the site broker of {enterprise}/{site} to the enterprise broker, rendered by
# `uns enterprise bridge` from {source}. Render it again when an area of the site changes.
# It holds the password of {user} (from {var}): keep it mode 600, beside the broker's config,
# never in a repository (docs/enterprise.md).
connection uns-enterprise
address {address}
bridge_protocol_version mqttv311
try_private {try_private}
remote_clientid {remote_id}
local_clientid {local_id}
remote_username {user}
remote_password {password}
# Keep the session on both sides: what is published while the link is down waits here.
cleansession false
local_cleansession false
start_type automatic
restart_timeout {restart}
keepalive_interval 30
# "1" while the link is up, "0" when it is lost (the enterprise broker's copy is the bridge's Will).
notifications true
notification_topic {link_topic}
bridge_attempt_unsubscribe false
bridge_cafile {ca_file}
{client_cert}bridge_tls_version tlsv1.2
bridge_insecure false
# The readable tree only, QoS 1, retain flags kept; not Sparkplug, _command or _reply.
{topics}
"""


def render_bridge(
    site: Site,
    link: EnterpriseLink,
    *,
    password: str | None = None,
    env: Mapping[str, str] | None = None,
    try_private: bool = True,
    restart_timeout: tuple[int, int] = (2, 30),
) -> str:
    """The site broker's `connection` section. The password is `password`, or read from the site
    user's variable in `env` (default: the process's environment). `try_private` tells a Mosquitto
    enterprise broker that this is a bridge (turn it off for brokers that refuse it)."""
    enterprise, name = site.config.enterprise, site.config.site
    user = site_user(name)
    if password is None:
        password = bridge_password(site, env)
    elif not _PASSWORD.fullmatch(password):
        raise EnterpriseError(f"the password of {user} must be printable ASCII without spaces")
    base, cap = restart_timeout
    if not 1 <= base <= cap:
        raise EnterpriseError(f"restart_timeout {base} {cap}: need 1 <= base <= cap (seconds)")
    client_cert = ""
    if link.cert_file is not None:
        client_cert = f"bridge_certfile {link.cert_file}\nbridge_keyfile {link.key_file}\n"
    return _BRIDGE.format(
        enterprise=enterprise,
        site=name,
        source=site.source_file or "the site model",
        user=user,
        var=password_env(user),
        address=link.address,
        try_private=str(try_private).lower(),
        remote_id=client_id(enterprise, name),
        local_id=client_id(enterprise, name) + ".local",
        password=password,
        restart=f"{base} {cap}",
        link_topic=LINK_TOPIC.format(enterprise=enterprise, site=name),
        ca_file=link.ca_file,
        client_cert=client_cert,
        topics="\n".join(f"topic {t} out 1" for t in bridge_topics(site)),
    )


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (it holds a password), replacing any before."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


_ACL_HEADER = """\
# Mosquitto ACL for the enterprise broker of "{enterprise}", rendered by `uns enterprise acl`
# from the site models of {sites}. Each site's bridge logs in as its own user and may write only
# its own tree; the viewer reads every site's. Nothing is anonymous; each user's password is in
# the variable named above it (mosquitto/make-passwd.sh makes the password file from them).
"""

_ACL_SITE = """
# site {site}: its broker's bridge writes the site's readable tree (and the link's state), never
# another site's, and no commands.
# password: {var}
user {user}
topic deny {enterprise}/{site}/_command/#
topic deny {enterprise}/{site}/_reply/#
topic write {enterprise}/{site}/#
"""

_ACL_VIEWER = """
# viewer: reads every site's tree (dashboards, the enterprise historian, people with mosquitto_sub).
# password: {var}
user viewer
topic read {enterprise}/#
"""


def enterprise_users(sites: Sequence[Site]) -> tuple[str, ...]:
    """The enterprise broker's users, in the ACL's order: one per site, then the viewer."""
    return (*(site_user(s.config.site) for s in sites), "viewer")


def render_enterprise_acl(sites: Sequence[Site]) -> str:
    """The enterprise broker's ACL for these sites, all of one enterprise, each site once."""
    if not sites:
        raise EnterpriseError("no site model given: the enterprise ACL needs at least one site")
    enterprise = sites[0].config.enterprise
    first = sites[0].source_file or sites[0].config.site
    seen: dict[str, Site] = {}
    for s in sites:
        where = s.source_file or s.config.site
        if s.config.enterprise != enterprise:
            raise EnterpriseError(
                f"{where}: enterprise {s.config.enterprise!r}, but {first} says {enterprise!r}:"
                " one enterprise broker serves one enterprise"
            )
        other = seen.setdefault(password_env(site_user(s.config.site)), s)
        if other is not s:
            raise EnterpriseError(
                f"{where}: site {s.config.site!r} and {other.source_file or other.config.site}: site"
                f" {other.config.site!r} would share the broker user or its password variable"
                f" {password_env(site_user(s.config.site))}: every site needs a name of its own"
            )
    names = ", ".join(f"{s.config.site} ({s.source_file})" if s.source_file else s.config.site for s in sites)
    parts = [_ACL_HEADER.format(enterprise=enterprise, sites=names)]
    for s in sites:
        user = site_user(s.config.site)
        parts.append(
            _ACL_SITE.format(enterprise=enterprise, site=s.config.site, user=user, var=password_env(user))
        )
    parts.append(_ACL_VIEWER.format(enterprise=enterprise, var=password_env("viewer")))
    return "".join(parts)
