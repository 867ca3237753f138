"""docs/asyncapi.yaml describes every kind of topic the services publish (the topics below are ones
the integration tests see on the broker)."""

from __future__ import annotations

import re

import yaml

from uns.broker import PROJECT_ROOT

PUBLISHED = [
    "spBv1.0/dayton/NBIRTH/edge-machining",
    "spBv1.0/dayton/DDATA/edge-machining/vf2-01",
    "spBv1.0/STATE/uns-host",
    "acme/dayton/machining/mills/cell-1/vf2-01/state",
    "acme/dayton/machining/mills/cell-1/vf2-01/job",
    "acme/dayton/machining/mills/cell-1/vf2-01/intervals",
    "acme/dayton/_command/hold",
    "acme/dayton/_reply/api/3f2a/9c1d",
    "acme/dayton/finishing/grinding/cell-4/grind-01/health",
    "acme/dayton/_health/edge/edge-finishing",
    "acme/dayton/_health/host/uns-host",
]


def test_every_published_topic_has_a_channel() -> None:
    doc = yaml.safe_load((PROJECT_ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    patterns = {}
    for name, channel in doc["channels"].items():
        address = channel["address"].replace("{replyPath}", "\0")  # a reply path may have several levels
        regex = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]+\}", address)).replace(
            "\x00", ".+"
        )
        patterns[name] = re.compile(f"^{regex}$")
    for op in doc["operations"].values():
        assert op["channel"]["$ref"].split("/")[-1] in doc["channels"]
    for topic in PUBLISHED:
        assert any(p.match(topic) for p in patterns.values()), topic
    assert not patterns["machineState"].match("spBv1.0/dayton/DDATA/edge/vf2-01")  # 5 levels, not 7
