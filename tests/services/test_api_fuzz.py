"""A property-based fuzz of the whole API from its own OpenAPI document (schemathesis): valid and
invalid requests to every route, in-process against the ASGI app over a record with data in it
(machines, intervals, parts, a dispatch list, a hold, a reason change, made by a real context service
without a broker). No answer may be a 5xx other than the declared 503, and every answer must match
what the document declares for its route: status code, content type and body schema.

Writes go to a command sender that never connects, so a write that passes every check of the API
ends in its declared 503 (a live broker and context service: tests/integration/test_api_limits.py).
Bounded to about a minute on two cores: MAX_EXAMPLES per route and per generation mode."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, positive_data_acceptance
from schemathesis.python import asgi

from services.api.app import create_app
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.app import ContextService
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar, ShiftDef
from services.context.state import Interval, MachineState, PartsMade
from uns.clock import parse_iso
from uns.mqtt import BrokerAddress
from uns.site import parse_site

MAX_EXAMPLES = 60
TOKEN = "f" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = parse_iso("2026-11-18T13:00:00.000Z")
SITE = """\
enterprise: acme
site: dayton
timezone: America/New_York
sparkplug: {group_id: dayton, edge_node_id: edge1, host_id: fuzz-host}
shifts:
  pattern:
    - {name: first, start: "06:00", end: "14:00", days: [mon, tue, wed, thu, fri, sat, sun]}
    - {name: second, start: "14:00", end: "22:00", days: [mon, tue, wed, thu, fri, sat, sun]}
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - id: vf2-01
                source: &src
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {execution: a, mode: b, program: p, part_count: c, alarm_code: d, estop: e}
              - id: vf2-02
                source: *src
"""


class FixedClock:
    speed = 1.0

    def now_ms(self) -> int:
        return T0 + 4 * 3_600_000


class Unstarted(CommandSender):
    """A real command sender that never connects: a write that passes the API's checks is 503."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass


def _record(path: Path) -> RecordStore:
    """A record with something in every table the API reads."""
    store = RecordStore(path)
    context = ContextService(parse_site(SITE), store, BrokerAddress("127.0.0.1", 1), FixedClock())
    minute = 60_000
    store.write(
        [
            Interval("vf2-01", T0, T0 + 20 * minute, MachineState.SETUP),
            Interval("vf2-01", T0 + 20 * minute, T0 + 80 * minute, MachineState.RUNNING),
            Interval("vf2-01", T0 + 80 * minute, T0 + 95 * minute, MachineState.DOWN, "machine_fault"),
        ],
        [PartsMade("vf2-01", T0 + 50 * minute, 3, 103)],
        [("vf2-01", MachineState.RUNNING, T0 + 95 * minute, T0 + 120 * minute, 103)],
    )
    operation = {"job": "J1", "operation": "10", "machine": "vf2-01", "program": "O1", "quantity": 5}
    commands: list[tuple[str, dict[str, Any]]] = [
        ("dispatch", {"machine": "vf2-01", "operations": [operation]}),
        ("hold", {"action": "open", "hold": "NCR-1", "machine": "vf2-02", "note": "gauge"}),
        ("reason", {"machine": "vf2-01", "stop_at": "2026-11-18T14:25:00Z", "reason": "tooling"}),
    ]
    for kind, body in commands:
        context.command(kind, json.dumps({**body, "by": "fuzz"}).encode(), via="test")
    context.flush()
    store.write_health([("machine/vf2-01", "samples_per_s", 2.5, T0), ("host/fuzz-host", "seq_gaps", 0, T0)])
    return store


def _app(record: Path) -> FastAPI:
    week = frozenset(range(7))
    calendar = ShiftCalendar(
        "America/New_York",
        [ShiftDef("first", time(6), time(14), week), ShiftDef("second", time(14), time(22), week)],
    )
    return create_app(
        ApiSettings(api_token=SecretStr(TOKEN), max_body_bytes=64 * 1024, max_rows=50),
        _record(record),
        calendar,
        commands=Unstarted(BrokerAddress("127.0.0.1", 1), "acme/dayton"),
        timezone="America/New_York",
        clock=FixedClock().now_ms,
    )


# schemathesis makes one test per route when the module is collected, so the app is made then;
# its lazy loading from a fixture does not work with this pytest (9.2)
_DIR = Path(tempfile.mkdtemp(prefix="uns-api-fuzz-"))
APP = _app(_DIR / "record.db")
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers=AUTH)
schema.config.update(headers=AUTH)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES
)
schema.config.seed = int(os.environ.get("UNS_FUZZ_SEED", "10"))  # reproducible; set it to explore


@pytest.fixture(scope="module", autouse=True)
def _close_the_app() -> Iterator[None]:
    yield
    asgi.shutdown_lifespans()  # schemathesis keeps an app's lifespan running until told
    APP.state.store.close()
    shutil.rmtree(_DIR, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_keeps_its_openapi_promises(case: schemathesis.Case[Any]) -> None:
    """schemathesis' own checks (status codes, content types, bodies and headers as declared, invalid
    data refused, auth not ignored, Allow on 405), except two that are said here more exactly:
    - the only 5xx is the declared 503 of a write (no broker here)
    - a request the document allows may be refused for what it says (422 `invalid`: a window too
      long, a CSV line), never by the request validation (422 `invalid_request`): that would mean
      the document allows what the API's models do not"""
    response = case.call_and_validate(
        headers=AUTH, excluded_checks=[not_a_server_error, positive_data_acceptance]
    )
    if response.status_code >= 500:
        assert (response.status_code, case.method) != (503, "GET"), response.text
        assert response.status_code == 503, response.text
    positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
    if positive and response.status_code == 422:
        assert response.json()["error"] != "invalid_request", (case.as_curl_command(), response.text)
