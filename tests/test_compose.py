"""compose.yaml is for plants and cannot run here (no Docker engine): check it statically."""

from __future__ import annotations

from pathlib import Path

import yaml

from uns.broker import PROJECT_ROOT
from uns.cli import build_parser


def test_compose_is_consistent_with_the_project() -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"mosquitto", "bridge", "context", "api"} <= set(services)
    for mount in services["mosquitto"]["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./") and not source.endswith("passwd"):  # passwd is made, never committed
            assert (PROJECT_ROOT / source).exists(), source
    parser = build_parser()
    for name in ("bridge", "context", "api"):
        command = services[name]["command"]
        assert command[0] == "uns"
        parser.parse_args(command[1:])  # the arguments are ones `uns` takes
        for key, value in services[name].get("environment", {}).items():
            secret = "PASSWORD" in key or "TOKEN" in key
            assert not secret or str(value).startswith("${"), key
    assert (PROJECT_ROOT / Path("Dockerfile")).exists()
