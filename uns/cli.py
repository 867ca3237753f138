"""The `uns` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from uns.broker import render_acl
from uns.site import SiteConfigError, load_site

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
        "--data-dir", type=Path, default=Path("var/demo"), help="record, broker files (var/demo)"
    )
    demo.add_argument(
        "--truth", type=Path, default=None, help="write the simulator's ground truth here on exit"
    )

    check = sub.add_parser("check-site", help="validate a site model and list its machines")
    check.add_argument("site", type=Path)

    acl = sub.add_parser("broker-acl", help="print the Mosquitto ACL for a site model")
    acl.add_argument("--site", type=Path, default=DEFAULT_SITE)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("asyncua", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if args.command == "check-site":
            site = load_site(args.site)
            for m in site.machines:
                print(f"{m.id:12} {m.path}  edge node {m.edge_node}  {m.source.endpoint}")
            return 0
        if args.command == "broker-acl":
            print(render_acl(load_site(args.site).config.enterprise), end="")
            return 0
        from uns.demo import DemoOptions, run_demo

        site = load_site(args.site)
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
        )
        asyncio.run(run_demo(opts))
        return 0
    except SiteConfigError as exc:
        print(f"uns: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
