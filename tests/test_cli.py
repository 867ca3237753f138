"""The `uns` command: the shipped ACL is the rendered one; a bad site file exits 2 with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from uns.broker import MOSQUITTO_DIR, render_acl
from uns.site import load_site
from unscli.cli import DEFAULT_SITE, main


def test_shipped_acl_is_the_rendered_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker-acl"]) == 0
    out = capsys.readouterr().out
    assert out == render_acl(load_site(DEFAULT_SITE)) == (MOSQUITTO_DIR / "acl").read_text()


def test_check_site_lists_machines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-site", "sites/example.yaml"]) == 0
    assert "acme/dayton/machining/mills/cell-1/vf2-01" in capsys.readouterr().out


def test_bad_site_exits_2_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plant.yaml"
    bad.write_text("enterprise: acme\nsite: x\nsparkplug: {group_id: g}\nareas: []\nextra: 1\n")
    assert main(["check-site", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5: extra: unknown field" in err
    assert f"{bad}:4: areas: List should have at least 1 item" in err


def test_shipped_mosquitto_config_never_allows_anonymous_and_raises_the_queue() -> None:
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text().splitlines()
    assert "allow_anonymous false" in conf
    queued = next(int(line.split()[1]) for line in conf if line.startswith("max_queued_messages "))
    assert queued > 1000
