"""The `uns` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from uns.broker import broker_users, password_env, render_acl
from uns.site import SiteConfigError, load_site

if TYPE_CHECKING:
    from uns.clock import Clock

DEFAULT_SITE = Path(__file__).resolve().parent.parent / "sites" / "example.yaml"


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return value


def _instant(text: str) -> int:
    from uns.clock import parse_iso

    try:
        return parse_iso(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time with an offset ({exc})") from None


def _record(text: str) -> str | Path:
    """--record: a PostgreSQL URL as it is, anything else a SQLite file's path."""
    return text if text.startswith(("postgresql://", "postgres://")) else Path(text)


RECORD_HELP = (
    "the record: a SQLite file, or a PostgreSQL URL (postgresql://user@host/db; the password from"
    " PGPASSWORD or ~/.pgpass); default UNS_RECORD, else var/record.db"
)


def _record_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record",
        type=_record,
        default=_record(os.environ.get("UNS_RECORD", "var/record.db")),
        help=RECORD_HELP,
    )


def _clock_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "simulated clock (the same on every process of one run: docs/operations.md, 'Replaying')"
    )
    group.add_argument(
        "--speed",
        type=_positive,
        default=1.0,
        help="simulated seconds per real second (default 1: the wall clock)",
    )
    group.add_argument(
        "--clock-start",
        type=_instant,
        default=None,
        metavar="TIME",
        help="the moment (UTC ISO-8601) the simulated clock starts from, also on the wall clock:"
        " event time = start + (now - start) x speed (default: now, to the minute)",
    )


def clock_of(args: argparse.Namespace) -> Clock:
    """The wall clock, or the simulated one `--speed` and `--clock-start` ask for."""
    import time

    from uns.clock import ScaledClock, WallClock

    if args.speed == 1.0 and args.clock_start is None:
        return WallClock()
    start = args.clock_start if args.clock_start is not None else int(time.time() // 60 * 60_000)
    return ScaledClock(start, args.speed, wall_start=start / 1000)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uns", description="Shop-floor unified namespace on MQTT and Sparkplug B"
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole stack with a simulated job shop")
    demo.add_argument(
        "--site", type=Path, default=DEFAULT_SITE, help="site model (default: the example shop)"
    )
    demo.add_argument(
        "--speed", type=_positive, default=1.0, help="simulated time per real second (default 1)"
    )
    demo.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    demo.add_argument("--duration", type=_positive, default=None, help="stop after this many seconds")
    demo.add_argument("--broker", default=None, help="use this broker (mqtt://host:port) instead of our own")
    demo.add_argument(
        "--mqtt-port", type=_port, default=None, help="port for our Mosquitto (default: a free one)"
    )
    demo.add_argument("--api-port", type=_port, default=None, help="port for the API (default: a free one)")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var/demo"),
        help="the record, the banner (banner.txt), the broker's files (default var/demo)",
    )
    demo.add_argument(
        "--truth", type=Path, default=None, help="write the simulator's ground truth here on exit"
    )
    demo.add_argument(
        "--keep-record",
        action="store_true",
        help="go on with the data dir's record (default: a fresh one; the previous run's goes to"
        " <data dir>/previous/)",
    )

    sim = sub.add_parser("sim", help="serve the simulated machines of a site model (OPC UA, Modbus)")
    sim.add_argument("--site", type=Path, default=DEFAULT_SITE)
    _clock_options(sim)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--truth", type=Path, default=None, help="write the ground truth here on exit")

    bridge = sub.add_parser(
        "bridge",
        help="run the bridges (a login per edge node: UNS_MQTT_<USER>_PASSWORD)",
    )
    bridge.add_argument("--site", type=Path, default=DEFAULT_SITE)
    bridge.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    bridge.add_argument(
        "--edge-node", action="append", default=None, help="only these edge nodes (repeatable)"
    )
    bridge.add_argument("--buffer-dir", type=Path, default=Path("var/buffer"), help="store-and-forward files")
    _clock_options(bridge)

    context = sub.add_parser(
        "context",
        help="run the Sparkplug host that keeps the record (UNS_MQTT_PASSWORD)",
    )
    context.add_argument("--site", type=Path, default=DEFAULT_SITE)
    context.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    _record_option(context)
    context.add_argument(
        "--worker",
        default=None,
        metavar="NAME",
        help="run as this worker of the site model's context.workers (its edge nodes only)",
    )
    _clock_options(context)

    api = sub.add_parser("api", help="serve the HTTP API over the record (UNS_API_TOKEN)")
    _record_option(api)
    api.add_argument("--site", type=Path, default=None, help="site model, for its shift calendar")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=_port, default=8000)
    api.add_argument(
        "--broker",
        default=None,
        help="mqtt://host:port or mqtts://host:8883 (UNS_MQTT_CA_FILE): take writes as commands",
    )
    _clock_options(api)

    historian = sub.add_parser(
        "historian",
        help="write the record to InfluxDB (UNS_INFLUX_URL, _ORG, _BUCKET, _TOKEN)",
    )
    historian.add_argument("--site", type=Path, default=DEFAULT_SITE)
    _record_option(historian)
    historian.add_argument(
        "--memory", type=Path, default=None, help="where it is in the record (default: beside the record)"
    )

    token = sub.add_parser("token", help="the API's named tokens: issue, list, revoke")
    token_sub = token.add_subparsers(dest="action", required=True)
    issue = token_sub.add_parser("issue", help="a new token for a person or a system (printed once)")
    issue.add_argument("name", help="who it is for: a person's name or badge, or a system (erp, qms)")
    issue.add_argument(
        "--role",
        required=True,
        choices=["viewer", "operator", "planner", "quality", "admin", "display"],
        help="display: a wall display's link, which opens the floor view and nothing else",
    )
    issue.add_argument(
        "--api-url", default="http://127.0.0.1:8000", help="where the API answers, for the printed links"
    )
    issue.add_argument("--cell", action="append", default=[], help="an operator's cell, area/line/cell")
    issue.add_argument("--machine", action="append", default=[], help="an operator's machine")
    issue.add_argument("--expires-days", type=_positive, default=None, help="valid for this many days")
    listing = token_sub.add_parser("list", help="every token: who, role, scope, issued, expires, revoked")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id, or every token of a name")
    revoke.add_argument("who", help="a token id (the 12 hex digits after uns_) or a name")
    for cmd in (issue, listing, revoke):
        _record_option(cmd)
        cmd.add_argument(
            "--site", type=Path, default=DEFAULT_SITE, help="checks an operator's cells and machines"
        )

    check = sub.add_parser("check-site", help="validate a site model and list its machines")
    check.add_argument("site", type=Path)

    probe = sub.add_parser(
        "probe",
        help="connect to a machine, list what it offers, print a site-model entry for it",
        description="Exit 0: a complete machine entry; 1: connected, but required signals were not"
        " recognised (the entry says which); 2: could not connect (the cause is printed).",
    )
    probe.add_argument(
        "endpoint",
        help="opc.tcp://host:port[/path], modbus://host:port[?unit=N] (or modbus+tcp://),"
        " http://agent:port[/path] (an MTConnect agent)",
    )
    probe.add_argument("--id", dest="machine_id", default=None, help="the machine id for the entry")
    probe.add_argument("--timeout", type=_positive, default=4.0, help="seconds to wait for answers (4)")
    ua_opts = probe.add_argument_group("OPC UA (as in the site model's source)")
    ua_opts.add_argument("--username", default=None)
    ua_opts.add_argument("--password-env", default=None, help="the variable that holds the password")
    ua_opts.add_argument("--certificate", type=Path, default=None, help="our application certificate")
    ua_opts.add_argument("--private-key", type=Path, default=None)
    ua_opts.add_argument("--server-certificate", type=Path, default=None)
    ua_opts.add_argument("--mode", choices=["Sign", "SignAndEncrypt"], default="SignAndEncrypt")
    ua_opts.add_argument("--depth", type=int, default=5, help="levels below Objects to browse (5)")
    ua_opts.add_argument("--max-nodes", type=int, default=2000, help="nodes to browse at most (2000)")
    mb_opts = probe.add_argument_group("Modbus")
    mb_opts.add_argument("--unit", type=int, default=None, help="unit (device) id (default ?unit=, else 1)")
    mb_opts.add_argument("--start", type=int, default=0, help="first address to read (0)")
    mb_opts.add_argument("--count", type=int, default=16, help="addresses to read per table (16)")
    mt_opts = probe.add_argument_group("MTConnect")
    mt_opts.add_argument(
        "--device", default=None, help="the agent's device (name or uuid) to make the entry for"
    )

    acl = sub.add_parser("broker-acl", help="print the Mosquitto ACL for a site model")
    acl.add_argument("--site", type=Path, default=DEFAULT_SITE)

    users = sub.add_parser(
        "broker-users", help="list the site's broker users and the variable with each one's password"
    )
    users.add_argument("--site", type=Path, default=DEFAULT_SITE)

    certs = sub.add_parser(
        "make-certs",
        help="make the plant CA (once), the broker's TLS certificate and client certificates",
    )
    certs.add_argument(
        "--dir", type=Path, default=Path("mosquitto/certs"), help="where (default mosquitto/certs)"
    )
    certs.add_argument(
        "--server-name",
        action="append",
        default=[],
        help="a host name or IP address clients use for the broker (repeatable; mosquitto, localhost"
        " and 127.0.0.1 are always in)",
    )
    certs.add_argument(
        "--client", action="append", default=[], help="make a client certificate for this name (repeatable)"
    )
    certs.add_argument(
        "--no-server", action="store_true", help="only client certificates (the server's is kept)"
    )
    certs.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="ec (P-256, default) or rsa")
    certs.add_argument(
        "--days", type=_positive, default=825, help="validity of the certificates it makes (825)"
    )
    from unscli import enterprise

    enterprise.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        # asyncua warns about every unsecured endpoint and revised session timeout; our bridge logs
        # what matters (a machine lost, a bad value) itself.
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        if args.command == "check-site":
            from services.context.reasons import taxonomy  # the services load lazily

            site = load_site(args.site)
            taxonomy(site.config.downtime)  # a reason tree that does not hold together
            for m in site.machines:
                print(f"{m.id:12} {m.path}  edge node {m.edge_node}  {m.where}")
            return 0
        if args.command == "enterprise":
            from unscli import enterprise

            return enterprise.run(args)
        if args.command == "token":
            return _token(args)
        if args.command == "probe":
            from unscli import probe

            return probe.main(
                probe.ProbeOptions(
                    args.endpoint,
                    args.machine_id,
                    args.timeout,
                    args.username,
                    args.password_env,
                    args.certificate,
                    args.private_key,
                    args.server_certificate,
                    args.mode,
                    args.depth,
                    args.max_nodes,
                    args.unit,
                    args.start,
                    args.count,
                    args.device,
                )
            )
        if args.command == "broker-acl":
            print(render_acl(load_site(args.site)), end="")
            return 0
        if args.command == "broker-users":
            for user in broker_users(load_site(args.site)):
                print(f"{user} {password_env(user)}")
            return 0
        if args.command == "make-certs":
            from uns.certs import make_certs

            made = make_certs(
                args.dir,
                server_names=args.server_name,
                clients=args.client,
                server=not args.no_server,
                key_type=args.key_type,
                days=int(args.days),
            )
            if not made.ca_created:
                print(f"uns make-certs: the CA in {args.dir} signs them (kept as it was)")
            for path in made.files:
                print(f"wrote {path}")
            return 0
        from unscli import processes

        if args.command == "api":
            processes.api(
                args.record,
                args.host,
                args.port,
                load_site(args.site) if args.site else None,
                args.broker,
                clock_of(args),
            )
            return 0
        site = load_site(args.site)
        if args.command == "sim":
            asyncio.run(processes.sim(site, clock_of(args), args.seed, args.truth))
            return 0
        if args.command == "bridge":
            asyncio.run(processes.bridge(site, args.broker, args.edge_node, args.buffer_dir, clock_of(args)))
            return 0
        if args.command == "context":
            asyncio.run(processes.context(site, args.broker, args.record, clock_of(args), args.worker))
            return 0
        if args.command == "historian":
            asyncio.run(processes.historian(site, args.record, args.memory))
            return 0
        from unscli.demo import DemoOptions, run_demo

        opts = DemoOptions(
            site,
            args.data_dir,
            args.speed,
            args.seed,
            args.duration,
            args.broker,
            args.mqtt_port,
            args.api_port,
            args.truth,
            keep_record=args.keep_record,
        )
        asyncio.run(run_demo(opts))
        return 0
    except (SiteConfigError, ValueError) as exc:
        print(f"uns: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a missing setting (ConfigError) or a broker that will not start
        print(f"uns: {exc}", file=sys.stderr)
        return 1


def _token(args: argparse.Namespace) -> int:
    import time

    from services.api import tokens
    from services.context.record import open_record
    from uns.clock import iso

    store = open_record(args.record, wait_s=10.0)  # a person waits, not forever
    now = int(time.time() * 1000)
    try:
        if args.action == "issue":
            site = load_site(args.site)
            cells = {"/".join(str(m.path).split("/")[2:5]) for m in site.machines}
            machines = {m.id for m in site.machines}
            unknown = [c for c in args.cell if c not in cells] + [
                m for m in args.machine if m not in machines
            ]
            if unknown:
                raise tokens.TokenError(f"not in the site model {args.site}: {', '.join(unknown)}")
            expires = now + int(args.expires_days * 86_400_000) if args.expires_days else None
            token_id, token = tokens.issue(
                store, args.name, args.role, now, [*args.cell, *args.machine], expires
            )
            print(f"token {token_id} for {args.name} ({args.role}); shown this once, keep it safe:")
            print(token)
            base = args.api_url.rstrip("/")
            if args.role == tokens.DISPLAY:
                print(f"floor view: {base}/floor?key={token}")
            elif args.role in ("operator", "quality", "admin"):  # who may give stops a reason
                limits = {*args.cell, *args.machine}
                for m in site.machines:
                    if not limits or m.id in limits or "/".join(str(m.path).split("/")[2:5]) in limits:
                        print(f"operator screen for {m.id}: {base}/operator/{m.id}?key={token}")
            return 0
        if args.action == "list":
            for token_id, name, role, scope, issued, expires, revoked in store.tokens():
                state = (
                    f"revoked {iso(revoked)}" if revoked else (f"expires {iso(expires)}" if expires else "")
                )
                where = ",".join(scope) or "-"
                print(f"{token_id}  {name:24} {role:9} {where:30} issued {iso(issued)}  {state}")
            return 0
        count = store.revoke_tokens(args.who, now)
        if not count:
            print(f"uns: no valid token with id or name {args.who!r}", file=sys.stderr)
            return 2
        print(f"revoked {count} token(s) of {args.who}")
        return 0
    except tokens.TokenError as exc:
        print(f"uns: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
