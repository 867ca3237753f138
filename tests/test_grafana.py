"""Grafana: the committed dashboards are what grafana/generate.py makes now; every panel, query and
variable is on the provisioned InfluxDB data source and reads the historian's measurement schema; and
every dashboard is valid for Grafana's own dashboard and panel types, published in the @grafana/schema
npm package (checked with the TypeScript compiler, which the test installs with `npm ci` when it is
missing: grafana/package.json pins both).

Running the queries against a real InfluxDB is another test's job: `grafana.generate.panel_queries()`
lists them and `interpolate()` fills in the variables as Grafana does.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.generate import (
    DASHBOARDS,
    DASHBOARDS_DIR,
    DATASOURCE_FILE,
    DATASOURCE_UID,
    generate,
    interpolate,
    panel_queries,
)
from uns.broker import PROJECT_ROOT

GRAFANA = PROJECT_ROOT / "grafana"
REGENERATE = "run `python -m grafana.generate` and commit grafana/dashboards"
ALWAYS_THERE = {"timeFilter", "__interval"}  # Grafana's own variables the queries use
INFLUXQL_1_6 = {"sum", "last", "mean", "count", "time", "fill", "tz"}  # the functions the queries use

Board = dict[str, Any]


def committed() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def boards() -> dict[str, Board]:
    return {name: json.loads(text) for name, text in committed().items()}


def panels_of(panels: list[Board]) -> Iterator[Board]:
    for panel in panels:
        yield panel
        yield from panels_of(panel.get("panels", []))


# -- the committed files are the generator's output ----------------------------------------------------


def test_the_committed_dashboards_are_what_the_generator_makes() -> None:
    fresh = generate()
    assert fresh == generate(), "the generator must give the same bytes every run"
    files = committed()
    missing = sorted(set(fresh) - set(files))
    extra = sorted(set(files) - set(fresh))
    stale = sorted(name for name in set(fresh) & set(files) if fresh[name] != files[name])
    assert not missing, f"grafana/dashboards lacks {missing}: {REGENERATE}"
    assert not extra, f"grafana/dashboards has {extra}, which the generator does not make: {REGENERATE}"
    assert not stale, f"grafana/dashboards is stale ({stale} differ from a fresh run): {REGENERATE}"
    for name, text in files.items():
        assert text.endswith("}\n"), f"{name}: {REGENERATE}"
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert set(files) == set(DASHBOARDS)


# -- provisioning and data source --------------------------------------------------------------------


def provisioned_datasource() -> Board:
    config = yaml.safe_load(DATASOURCE_FILE.read_text())
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    assert isinstance(datasource, dict)
    return datasource


def test_the_datasource_is_influxql_with_the_token_from_the_environment() -> None:
    ds = provisioned_datasource()
    assert ds["uid"] == DATASOURCE_UID
    assert ds["type"] == "influxdb"
    assert ds["access"] == "proxy"
    assert ds["url"] == "${UNS_INFLUX_URL}"
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["dbName"] == "${UNS_INFLUX_BUCKET}"  # InfluxDB 2 maps the bucket to a database
    assert ds["jsonData"]["httpMode"] in {"GET", "POST"}
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"] == {"httpHeaderValue1": "Token ${UNS_INFLUX_TOKEN}"}
    # nothing secret or plant-specific in the repo: every value that names a place or a secret is ${...}
    text = DATASOURCE_FILE.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == {
        "UNS_INFLUX_URL",
        "UNS_INFLUX_BUCKET",
        "UNS_INFLUX_TOKEN",
    }
    assert "password" not in ds
    assert "basicAuthPassword" not in ds["secureJsonData"]


def test_the_dashboards_are_provisioned_from_the_mounted_folder() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "uns.yaml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"  # compose mounts grafana/dashboards
    assert provider["allowUiUpdates"] is False  # generated: changes go into grafana/generate.py


def test_every_panel_target_and_variable_uses_the_provisioned_datasource() -> None:
    uid = provisioned_datasource()["uid"]
    expected = {"type": "influxdb", "uid": uid}
    for name, board in boards().items():
        panels = list(panels_of(board["panels"]))
        assert panels, name
        for panel in panels:
            where = f"{name}: panel {panel.get('title') or panel['id']}"
            if panel["type"] == "row":
                continue
            assert panel.get("datasource") == expected, where
            assert panel.get("targets"), f"{where} has no query"
            for target in panel["targets"]:
                assert target.get("datasource") == expected, f"{where}, query {target['refId']}"
                assert target["rawQuery"] is True, where
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable.get("datasource") == expected, f"{name}: variable {variable['name']}"
        assert len({p["id"] for p in panels}) == len(panels), f"{name}: panel ids must be unique"


# -- the queries read the historian's schema ------------------------------------------------------------


def historian_schema() -> dict[str, set[str]]:
    """Measurement -> its tags and fields, from the table in docs/historian.md (the contract)."""
    text = (PROJECT_ROOT / "docs" / "historian.md").read_text(encoding="utf-8")
    tags_line = re.search(r"as tags:(.*?)\.\s", text, re.DOTALL)
    assert tags_line is not None, "docs/historian.md no longer names the tags every point carries"
    common = set(re.findall(r"`(\w+)`", tags_line.group(1)))
    assert {"site", "machine"} <= common
    schema: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 5 and cells[0].startswith("`"):
            measurement = cells[0].strip("`")
            schema[measurement] = common | set(re.findall(r"`(\w+)`", cells[3] + cells[4]))
    assert {"machine_state", "state_interval", "part_count", "oee", "loss", "signal"} <= set(schema)
    return schema


def test_every_query_reads_the_historian_schema_and_knows_its_variables() -> None:
    schema = historian_schema()
    queries = panel_queries(committed())
    variables = {
        name: {v["name"] for v in board["templating"]["list"]} | ALWAYS_THERE
        for name, board in boards().items()
    }
    for q in queries:
        where = f"{q.dashboard}: {q.panel} {q.ref_id}: {q.query}"
        (measurement,) = re.findall(r'FROM "(\w+)"', q.query)
        assert measurement in schema, where
        aliases = set(re.findall(r'AS "(\w+)"', q.query))
        unknown = set(re.findall(r'"(\w+)"', q.query)) - schema[measurement] - aliases - {measurement}
        assert not unknown, f"{where}: {sorted(unknown)} not in docs/historian.md's {measurement}"
        assert set(q.variables) <= variables[q.dashboard], where
        functions = set(re.findall(r"(\w+)\(", q.query))
        assert functions <= INFLUXQL_1_6, f"{where}: {sorted(functions - INFLUXQL_1_6)}"
        if q.ref_id == "variable":
            assert q.query.startswith("SHOW TAG VALUES"), where
            continue
        assert "$timeFilter" in q.query, where
        if measurement in {"machine_state", "state_interval"}:
            assert '"code" >= 0' in q.query, f"{where}: leaves in points a correction took back"
    panels = [p for board in boards().values() for p in panels_of(board["panels"]) if p["type"] != "row"]
    assert len([q for q in queries if q.ref_id != "variable"]) == sum(len(p["targets"]) for p in panels)


def test_interpolate_fills_in_the_variables_as_grafana_does() -> None:
    (query,) = [
        q.query for q in panel_queries(committed()) if q.dashboard == "shifts.json" and "tz(" in q.query
    ]
    start = datetime(2026, 11, 20, 5, tzinfo=UTC)
    text = interpolate(
        query,
        start=start,
        end=datetime(2026, 11, 27, 5, tzinfo=UTC),
        values={"site": "dayton", "machine": ["vf2-01", "lathe.2"], "shift_name": ["first"], "tz": "UTC"},
    )
    assert '"machine" =~ /^(vf2-01|lathe\\.2)$/' in text
    assert '"site" =~ /^dayton$/' in text
    assert f"time >= {int(start.timestamp()) * 1000}ms and time <= " in text
    assert text.endswith("tz('UTC')")
    assert not re.search(r"\$\{?\w", text), text  # no variable left (the $ of /^...$/ stays)
    with pytest.raises(KeyError, match="shift_name"):
        interpolate(
            query, start=start, end=start, values={"site": "dayton", "machine": "vf2-01", "tz": "UTC"}
        )


# -- Grafana's own types: @grafana/schema, checked by tsc ------------------------------------------------


def tsc() -> Path:
    """The TypeScript compiler of grafana/node_modules, installed from the lock file when missing."""
    package = json.loads((GRAFANA / "package.json").read_text())
    wanted = package["devDependencies"]["@grafana/schema"]
    installed = GRAFANA / "node_modules" / "@grafana" / "schema" / "package.json"
    compiler = GRAFANA / "node_modules" / ".bin" / "tsc"
    if (
        not compiler.exists()
        or not installed.exists()
        or json.loads(installed.read_text())["version"] != wanted
    ):
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip(
                "npm (Node.js) is not installed, so the dashboards cannot be checked against "
                "@grafana/schema: install nodejs and npm, then `npm ci --prefix grafana`"
            )
        done = subprocess.run(
            [npm, "ci", "--prefix", str(GRAFANA), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci --prefix grafana failed:\n{done.stdout}\n{done.stderr}"
    return compiler


def panel_check(panel: Board) -> Board:
    """What schema.ts's PanelCheck types of a panel: its plugin's options, custom field config and
    overrides, and its queries."""
    field_config = panel.get("fieldConfig", {})
    check: Board = {
        "type": panel["type"],
        "options": panel.get("options", {}),
        "overrides": field_config.get("overrides", []),
        "targets": panel.get("targets", []),
    }
    if "custom" in field_config.get("defaults", {}):
        check["custom"] = field_config["defaults"]["custom"]
    return check


def check_source(board: Board, schema_import: str) -> str:
    """A TypeScript module that type-checks one dashboard: the whole of it against @grafana/schema's
    Dashboard, and every panel against its plugin's types (object literals: unknown properties are
    errors)."""
    lines = [
        f'import type {{ DashboardJson, PanelCheck }} from "{schema_import}";',
        "",
        f"export const dashboard = {json.dumps(board, indent=2, ensure_ascii=False)}"
        " satisfies DashboardJson;",
    ]
    for number, panel in enumerate(panels_of(board.get("panels", []))):
        if panel.get("type") == "row":
            continue
        check = json.dumps(panel_check(panel), indent=2, ensure_ascii=False)
        lines.append(
            f"export const panel{number} = {check} satisfies PanelCheck<{json.dumps(panel.get('type'))}>;"
        )
    return "\n".join(lines) + "\n"


TS_ERROR = re.compile(r"^(?P<file>[^\s(]+\.ts)\(\d+,\d+\): error (?P<message>.*)$", re.MULTILINE)


def type_check(boards_by_name: Mapping[str, Board], workdir: Path) -> dict[str, list[str]]:
    """Module name -> the tsc errors of its dashboard (none: valid)."""
    compiler = tsc()
    workdir.mkdir(parents=True, exist_ok=True)
    schema = os.path.relpath(GRAFANA / "schema.ts", workdir)
    schema_import = schema if schema.startswith(".") else f"./{schema}"
    files = []
    for name, board in boards_by_name.items():
        path = workdir / f"{name}.ts"
        path.write_text(check_source(board, schema_import), encoding="utf-8")
        files.append(path.name)
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "ES2022",
            "module": "ESNext",
            "moduleResolution": "Bundler",
            "allowImportingTsExtensions": True,
            "skipLibCheck": True,
            "types": [],
        },
        "files": files,
    }
    (workdir / "tsconfig.json").write_text(json.dumps(config, indent=2))
    done = subprocess.run(
        [str(compiler), "-p", "tsconfig.json", "--pretty", "false"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    errors: dict[str, list[str]] = {name: [] for name in boards_by_name}
    for m in TS_ERROR.finditer(done.stdout):
        errors.setdefault(Path(m.group("file")).stem, []).append(m.group("message"))
    found = sum(len(e) for e in errors.values())
    assert (done.returncode == 0) == (found == 0), f"tsc said:\n{done.stdout}\n{done.stderr}"
    return errors


def test_every_dashboard_is_valid_for_grafanas_dashboard_schema(tmp_path: Path) -> None:
    errors = type_check({Path(n).stem: b for n, b in boards().items()}, tmp_path)
    bad = {name: messages for name, messages in errors.items() if messages}
    assert not bad, "not valid for @grafana/schema:\n" + "\n".join(
        f"{name}: {m}" for name, messages in bad.items() for m in messages[:5]
    )


def first_panel(board: Board, panel_type: str) -> Board:
    return next(p for p in panels_of(board["panels"]) if p["type"] == panel_type)


def _misspelt_panel_property(b: Board) -> None:
    panel = b["panels"][0]
    panel["gridpos"] = panel.pop("gridPos")


def _wrong_type(b: Board) -> None:
    b["refresh"] = 30  # a number where Grafana wants an interval text


def _misspelt_option(b: Board) -> None:
    options = first_panel(b, "stat")["options"]
    options["colourMode"] = options.pop("colorMode")


def _unknown_enum_value(b: Board) -> None:
    first_panel(b, "stat")["options"]["textMode"] = "value_and_title"


def _misspelt_query_property(b: Board) -> None:
    target = first_panel(b, "stat")["targets"][0]
    target["rawquery"] = target.pop("rawQuery")


def _unknown_override_property(b: Board) -> None:
    first_panel(b, "stat")["fieldConfig"]["overrides"][0]["properties"][0]["id"] = "displayname"


def _wrong_custom_type(b: Board) -> None:
    first_panel(b, "barchart")["fieldConfig"]["defaults"]["custom"]["fillOpacity"] = "85"


def _unknown_panel_type(b: Board) -> None:
    first_panel(b, "stat")["type"] = "stats"


def _bad_variable(b: Board) -> None:
    b["templating"]["list"][0]["type"] = "tag"


# mistake -> (the dashboard it is made in, how, what tsc's error names)
MISTAKES: dict[str, tuple[str, Callable[[Board], None], str]] = {
    "misspelt_panel_property": ("plant-wall.json", _misspelt_panel_property, "'\"gridpos\"' does not exist"),
    "wrong_type": ("machine-detail.json", _wrong_type, "'number' is not assignable to type 'string'"),
    "misspelt_option": ("oee.json", _misspelt_option, "'\"colourMode\"' does not exist"),
    "unknown_enum_value": ("plant-wall.json", _unknown_enum_value, "'\"value_and_title\"' is not assignable"),
    "misspelt_query_property": ("losses.json", _misspelt_query_property, "'\"rawquery\"' does not exist"),
    "unknown_override_property": ("plant-wall.json", _unknown_override_property, "'\"displayname\"'"),
    "wrong_custom_type": ("shifts.json", _wrong_custom_type, "'string' is not assignable to type 'number'"),
    "unknown_panel_type": ("oee.json", _unknown_panel_type, "'\"stats\"' does not satisfy"),
    "bad_variable": (
        "machine-detail.json",
        _bad_variable,
        "'\"tag\"' is not assignable to type 'VariableType'",
    ),
}


def test_the_schema_check_catches_mistakes(tmp_path: Path) -> None:
    """The validator bites: each of these small mistakes in an otherwise valid dashboard fails it."""
    originals = boards()
    mutants = {}
    for mistake, (name, make, _) in MISTAKES.items():
        board = copy.deepcopy(originals[name])
        make(board)
        mutants[mistake] = board
    errors = type_check(mutants, tmp_path)
    passed = sorted(mistake for mistake in MISTAKES if not errors[mistake])
    assert not passed, f"the schema check let these through: {passed}"
    for mistake, (_, _, says) in MISTAKES.items():
        assert any(says in message for message in errors[mistake]), f"{mistake}: {errors[mistake]}"
