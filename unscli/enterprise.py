"""`uns enterprise`: the files that link sites' brokers to an enterprise broker (docs/enterprise.md).

    uns enterprise bridge --site sites/dayton.yaml --enterprise-broker ent.example.com:8883 \\
        --cafile /etc/mosquitto/certs/enterprise-ca.crt --output /etc/mosquitto/conf.d/enterprise.conf
    uns enterprise acl --site sites/dayton.yaml --site sites/toledo.yaml > enterprise-acl
    uns enterprise users --site sites/dayton.yaml --site sites/toledo.yaml

The bridge section holds the site user's password (from UNS_MQTT_SITE_<SITE>_PASSWORD), so it is
only ever written to a file, mode 600, never printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uns.broker import password_env
from uns.enterprise import (
    EnterpriseError,
    EnterpriseLink,
    enterprise_users,
    render_bridge,
    render_enterprise_acl,
    write_private,
)
from uns.site import SiteConfigError, load_site


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`uns enterprise {bridge,acl,users}` on the `uns` command's subparsers."""
    p = subparsers.add_parser(
        "enterprise", help="link sites' brokers to an enterprise broker: bridge config, enterprise ACL"
    )
    sub = p.add_subparsers(dest="enterprise_action", required=True)
    bridge = sub.add_parser(
        "bridge",
        help="write a site broker's bridge to the enterprise broker (TLS; the site's readable tree only)",
    )
    bridge.add_argument("--site", type=Path, required=True, help="the site model of the site broker")
    bridge.add_argument(
        "--enterprise-broker",
        required=True,
        metavar="HOST[:PORT]",
        help="the enterprise broker's TLS listener (port 8883 by default)",
    )
    bridge.add_argument(
        "--cafile", type=Path, required=True, help="the CA that signed the enterprise broker's certificate"
    )
    bridge.add_argument("--certfile", type=Path, help="a client certificate, if the enterprise asks for one")
    bridge.add_argument("--keyfile", type=Path, help="the client certificate's key")
    bridge.add_argument(
        "--output",
        type=Path,
        required=True,
        help="the file to write (mode 600: it holds the site user's password); include it in the"
        " site broker's config",
    )
    bridge.add_argument(
        "--no-try-private",
        action="store_true",
        help="do not announce the bridge as one (for enterprise brokers that refuse Mosquitto's bridge flag)",
    )
    acl = sub.add_parser("acl", help="print the enterprise broker's ACL for the sites")
    acl.add_argument("--site", type=Path, action="append", required=True, help="a site model (repeat)")
    users = sub.add_parser(
        "users", help="list the enterprise broker's users and the variable with each one's password"
    )
    users.add_argument("--site", type=Path, action="append", required=True, help="a site model (repeat)")


def run(args: argparse.Namespace) -> int:
    """Carry out `uns enterprise ...`: 0 done, 2 bad input (said on stderr, naming what)."""
    try:
        if args.enterprise_action == "bridge":
            site = load_site(args.site)
            link = EnterpriseLink.parse(
                args.enterprise_broker, args.cafile.absolute(), _abs(args.certfile), _abs(args.keyfile)
            )
            text = render_bridge(site, link, try_private=not args.no_try_private)
            if not args.output.parent.is_dir():
                raise EnterpriseError(f"--output {args.output}: no directory {args.output.parent}")
            write_private(args.output, text)
            print(f"wrote {args.output} (mode 600: it holds the password of site.{site.config.site})")
            return 0
        sites = [load_site(path) for path in args.site]
        if args.enterprise_action == "acl":
            print(render_enterprise_acl(sites), end="")
            return 0
        render_enterprise_acl(sites)  # the same checks: one enterprise, no two sites alike
        for user in enterprise_users(sites):
            print(f"{user} {password_env(user)}")
        return 0
    except (SiteConfigError, EnterpriseError, ValueError) as exc:
        print(f"uns enterprise: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"uns enterprise: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2


def _abs(path: Path | None) -> Path | None:
    return path.absolute() if path is not None else None
