"""`/metrics` against a real SQLite record, read back with prometheus-client's own parser: every family
has help and type, counters end in `_total`, docs/metrics.md lists exactly what a fresh record shows,
and odd health rows do not break the scrape."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import SecretStr

from services.api.app import create_app
from services.api.metrics import KINDS, render
from services.api.settings import ApiSettings
from services.context.record import RecordStore
from services.context.state import Interval, MachineState, PartsMade

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_795_300_000_000  # 2026-11-21T22:26:40Z
DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
MACHINES = [
    ("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2"),
    ("st20-01", "acme/dayton/machining/lathes/cell-3/st20-01", "Haas ST-20"),
]


@dataclass(frozen=True)
class Documented:
    name: str  # as exposed: counters with their `_total`
    type: str
    labels: frozenset[str]


@dataclass(frozen=True)
class Family:
    type: str
    help: str
    samples: list[Sample]

    def value(self, **labels: str) -> float | None:
        found = [s.value for s in self.samples if s.labels == labels]
        assert len(found) <= 1, f"{labels} twice"
        return found[0] if found else None


def documented() -> dict[str, Documented]:
    rows = re.findall(r"^\| `(uns_\w+)` \| (gauge|counter) \| ([^|]*) \|", DOC.read_text(), re.MULTILINE)
    table = {
        name: Documented(name, kind, frozenset(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows
    }
    assert len(table) == len(rows), "a series is in docs/metrics.md twice"
    return table


def scrape(store: RecordStore) -> dict[str, Family]:
    """Series name as exposed (counters with `_total`) -> what the parser read."""
    families: dict[str, Family] = {}
    text = render(store).decode()
    for f in text_string_to_metric_families(text):
        name = f"{f.name}_total" if f.type == "counter" else f.name
        assert name not in families, f"{name} twice"
        families[name] = Family(f.type, f.documentation, list(f.samples))
    # the exposition itself: one HELP and one TYPE line per family, nothing else without a value
    assert text.count("# HELP ") == text.count("# TYPE ") == len(families)
    return families


@pytest.fixture
def store(make_record: Callable[..., RecordStore], tmp_path: Path) -> Iterator[RecordStore]:
    s = make_record("record")
    s.register_machines(MACHINES)
    yield s
    s.close()


def test_every_family_has_help_and_type_and_counters_end_in_total(store: RecordStore) -> None:
    store.write_health(
        [
            ("host/uns-host", "messages", 120.0, T0),
            ("edge/edge-1", "buffer_depth", 3.0, T0),
            ("machine/vf2-01", "samples", 900.0, T0),
            ("machine/vf2-01", "spindle_temp_c", 41.5, T0),  # not documented
        ]
    )
    families = scrape(store)
    assert families
    for name, f in families.items():
        assert f.help.strip(), f"{name} has no help"
        assert f.type in {"gauge", "counter"}, f"{name} is {f.type}"
        for sample in f.samples:
            if f.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            else:
                assert not sample.name.endswith("_created"), sample.name
    counters = {n for n, f in families.items() if f.type == "counter"}
    assert {"uns_host_messages_total", "uns_host_seq_gaps_total", "uns_machine_samples_total"} <= counters
    assert families["uns_edge_buffer_depth"].type == "gauge"
    assert families["uns_host_connected"].type == "gauge"


def test_a_fresh_record_exposes_every_documented_series(store: RecordStore) -> None:
    """Machines registered, no state and no health yet: every series of docs/metrics.md is there, with a
    0 for each machine where a 0 is true, and nothing is there that the page does not list."""
    doc = documented()
    families = scrape(store)
    assert set(families) == set(doc), "docs/metrics.md and /metrics disagree"
    for name, d in doc.items():
        f = families[name]
        assert f.type == d.type, name
        for sample in f.samples:
            assert set(sample.labels) == d.labels, f"{name}: labels {set(sample.labels)}, doc {d.labels}"
    machines = [m for m, *_ in MACHINES]
    of_the_state = {"uns_machine_state", "uns_machine_state_since_seconds", "uns_machine_part_counter"}
    for label, prefix, _ in KINDS.values():
        for name in (n for n in doc if n.startswith(prefix) and n not in of_the_state):
            ids = {s.labels[label] for s in families[name].samples}
            # the machines are known from the start; hosts and edge nodes from their first report
            assert ids == (set(machines) if label == "machine" else set()), name
            assert all(s.value == 0 for s in families[name].samples), name
    state = families["uns_machine_state"]
    for machine in machines:
        assert state.value(machine=machine, state="comms_loss") == 1  # nothing heard yet
        assert sum(state.value(machine=machine, state=s.value) or 0 for s in MachineState) == 1
    assert families["uns_machine_state_since_seconds"].samples == []  # not 0: it never began
    assert families["uns_machine_part_counter"].samples == []


def test_every_documented_series_is_labelled_and_named_by_the_conventions() -> None:
    for name, d in documented().items():
        assert name.startswith(("uns_host_", "uns_edge_", "uns_machine_")), name
        assert d.labels, name
        assert name.endswith("_total") == (d.type == "counter"), name
        assert not re.search(r"_(s|ms|per_s)$|_ms_", name), f"{name}: spell the unit out, in base units"


def test_health_written_later_shows_its_values(store: RecordStore) -> None:
    store.write(
        [Interval("vf2-01", T0, T0 + 60_000, MachineState.RUNNING)],
        [PartsMade("vf2-01", T0 + 60_000, 1, 11)],
        [("vf2-01", MachineState.IDLE, T0 + 60_000, T0 + 65_000, 11)],
    )
    store.write_health(
        [
            ("host/uns-host", "messages", 120.0, T0),
            ("host/uns-host", "seq_gaps", 2.0, T0),
            ("host/uns-host", "connected", 1.0, T0),
            ("edge/edge-1", "buffer_depth", 12.0, T0 + 1000),
            ("edge/edge-1", "buffer_age_s", 4.25, T0 + 2000),
            ("edge/edge-2", "buffer_dropped", 7.0, T0),
            ("machine/vf2-01", "samples_per_s", 3.5, T0),
            ("machine/vf2-01", "connected", 1.0, T0),
            ("machine/vf2-01", "losses", 1.0, T0),
        ]
    )
    f = scrape(store)
    assert f["uns_machine_state"].value(machine="vf2-01", state="idle") == 1
    assert f["uns_machine_state"].value(machine="vf2-01", state="running") == 0
    assert f["uns_machine_state_since_seconds"].value(machine="vf2-01") == (T0 + 60_000) / 1000
    assert f["uns_machine_part_counter"].value(machine="vf2-01") == 11
    assert f["uns_host_messages_total"].value(host="uns-host") == 120
    assert f["uns_host_seq_gaps_total"].value(host="uns-host") == 2
    assert f["uns_host_connected"].value(host="uns-host") == 1
    # counted nothing yet, so not in the host's report: 0, now that the host is known
    assert f["uns_host_rebirths_requested_total"].value(host="uns-host") == 0
    assert f["uns_edge_buffer_depth"].value(edge_node="edge-1") == 12
    assert f["uns_edge_buffer_depth"].value(edge_node="edge-2") == 0
    assert f["uns_edge_buffer_age_seconds"].value(edge_node="edge-1") == 4.25
    assert f["uns_edge_buffer_dropped_total"].value(edge_node="edge-2") == 7
    assert f["uns_edge_health_updated_seconds"].value(edge_node="edge-1") == (T0 + 2000) / 1000
    assert f["uns_machine_samples_per_second"].value(machine="vf2-01") == 3.5
    assert f["uns_machine_connected"].value(machine="vf2-01") == 1
    assert f["uns_machine_connected"].value(machine="st20-01") == 0
    assert f["uns_machine_losses_total"].value(machine="vf2-01") == 1
    assert f["uns_machine_health_updated_seconds"].value(machine="vf2-01") == T0 / 1000
    assert f["uns_machine_health_updated_seconds"].value(machine="st20-01") == 0  # never

    store.write_health([("host/uns-host", "messages", 180.0, T0 + 10_000)])  # the next report
    f = scrape(store)
    assert f["uns_host_messages_total"].value(host="uns-host") == 180
    assert f["uns_host_health_updated_seconds"].value(host="uns-host") == (T0 + 10_000) / 1000


def test_a_health_name_not_documented_is_still_exposed(store: RecordStore) -> None:
    store.write_health(
        [
            ("machine/vf2-01", "spindle_temp_c", 41.5, T0),
            ("edge/edge-1", "cpu.load-1m", 0.75, T0),
            ("historian/influx-1", "points_written", 5000.0, T0),  # a kind of scope of its own
        ]
    )
    f = scrape(store)
    assert f["uns_machine_spindle_temp_c"].type == "gauge"
    assert "spindle_temp_c" in f["uns_machine_spindle_temp_c"].help
    assert f["uns_machine_spindle_temp_c"].value(machine="vf2-01") == 41.5
    assert f["uns_machine_spindle_temp_c"].value(machine="st20-01") is None  # not invented
    assert f["uns_edge_cpu_load_1m"].value(edge_node="edge-1") == 0.75
    assert f["uns_historian_points_written"].value(scope="historian/influx-1") == 5000


ODD: list[tuple[Any, Any, Any, Any]] = [
    ("host/uns-host", "messages", None, T0),  # no value: no sample, and no invented 0 either
    ('edge/edge "1"\\\nx', "buffer_depth", 2.0, T0),  # quotes, backslash, newline in a label
    ("machine/vf2-01", 'temp "C"\n\\ °', 20.0, T0),  # and in a name
    ("machine/vf2-01", "temp__C_____", 21.0, T0),  # the same name once cleaned up
    ("machine/vf2-01", "state", 1.0, T0),  # a name that is another series' name
    ("host/uns-host", "messages_total", 3.0, T0),  # and the name a counter's samples have
    ("machine/vf2-01", "", 5.0, T0),  # no name at all
    ("machine/", "samples", 9.0, T0),  # no id
    ("edge", "buffer_depth", 1.0, T0),  # no slash
    ("weird kind!/a", "x-y", 1.0, T0),
    ("weird kind?/a", "x-y", 2.0, T0),  # a different kind, the same once cleaned up
    ("machine/ünïcødé", "samples", 4.0, T0),
    ("machine/st20-01", "samples_per_s", math.inf, T0),
    ("machine/st20-01", "bad_values", "not a number", T0),  # TEXT in a REAL column
    ("machine/st20-01", "bad_reads", -1.0, "later"),  # a timestamp that is not one
]


# SQLite only: its columns take a string where a number belongs, as another program may have written
# it; PostgreSQL's refuse it at the write
@pytest.mark.parametrize("record_backend", ["sqlite"])
def test_odd_health_rows_do_not_break_the_scrape(store: RecordStore) -> None:
    store.write_health(cast(list[tuple[str, str, float | None, int]], ODD))
    f = scrape(store)  # parses; every family once, with help and type
    assert f["uns_host_messages_total"].value(host="uns-host") is None
    assert f["uns_edge_buffer_depth"].value(edge_node='edge "1"\\\nx') == 2
    assert f["uns_edge_buffer_depth"].value(edge_node="") == 1
    assert f["uns_machine_samples_total"].value(machine="") == 9
    assert f["uns_machine_samples_total"].value(machine="ünïcødé") == 4
    assert f["uns_machine_samples_per_second"].value(machine="st20-01") == math.inf
    assert f["uns_machine_bad_values_total"].value(machine="st20-01") is None
    assert f["uns_machine_bad_reads_total"].value(machine="st20-01") == -1
    # the documented series keep their meaning; the odd names get one of their own each
    assert f["uns_machine_state"].value(machine="vf2-01", state="idle") is not None
    odd = {
        n: fam.value(machine="vf2-01") for n, fam in f.items() if "documented" in fam.help and "machine" in n
    }
    assert sorted(v for v in odd.values() if v is not None) == [1, 5, 20, 21]
    assert len([n for n, fam in f.items() if "'x-y'" in fam.help]) == 2
    extra_host = [n for n, fam in f.items() if "'messages_total'" in fam.help]
    assert len(extra_host) == 1
    assert f[extra_host[0]].value(host="uns-host") == 3
    for fam in f.values():
        keys = [(s.name, tuple(sorted(s.labels.items()))) for s in fam.samples]
        assert len(keys) == len(set(keys))


def test_the_route_answers_in_the_latest_text_format(store: RecordStore) -> None:
    store.write_health([("edge/edge-1", "buffer_depth", 12.0, T0)])
    with TestClient(create_app(ApiSettings(api_token=SecretStr(TOKEN)), store)) as client:
        assert client.get("/metrics").status_code == 401
        response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    [sample] = families["uns_edge_buffer_depth"].samples
    assert sample.labels == {"edge_node": "edge-1"}
    assert sample.value == 12
