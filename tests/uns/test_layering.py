"""The core package imports nothing above it: `uns/` (paths, the site model, Sparkplug, MQTT, the
broker's files, clocks) never imports `bridge/`, `services/` or `unscli/` (the `uns` command's
wiring), at module level or inside a function; `bridge/` and `services/` never import each other or
`unscli/` (what both need, as the signals' types, is in `uns/`). Read from the source with `ast`, so a
lazy import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABOVE = {
    "uns": {"bridge", "services", "unscli"},
    "bridge": {"services", "unscli"},
    "services": {"bridge", "unscli"},
}


def imported(path: Path) -> set[str]:
    """The top-level packages a module imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_a_package_imports_nothing_above_it(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported(path) & ABOVE[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in wrong.items() if v} == {}
    assert wrong  # (the package has modules)


READERS = ("services/api", "services/oee", "services/historian")


def test_the_readers_of_the_record_see_its_reader_interface_only() -> None:
    """The API, the OEE engine and the historian take the record as `RecordReader` (its reads and the
    API's tokens): mypy then refuses any write through it; none names the writer, `RecordStore`."""
    naming = sorted(
        str(path.relative_to(ROOT))
        for folder in READERS
        for path in (ROOT / folder).rglob("*.py")
        if any(
            isinstance(node, ast.Name | ast.alias)
            and "RecordStore" in (getattr(node, "id", None), getattr(node, "name", None))
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
        )
    )
    assert naming == []
