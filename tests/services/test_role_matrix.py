"""Every API route with every role (and without a token, with a display link, and as an operator
outside its cells): who may read, who may write, and whom the audit names.

The routes come from the OpenAPI document, so a new route fails this test until the matrix below
says who may call it. The writes go to a stand-in for the command sender that answers like the
context service (`Recorder`): this test is about the API's door; the way through the broker to the
record is tested in tests/integration/test_commands_once.py and test_jobshop.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api import tokens
from services.api.app import create_app
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.commands import CommandResult
from services.context.record import RecordStore
from uns.mqtt import BrokerAddress

NOW = int(time.time() * 1000)
BOOTSTRAP = "b" * 24
READERS = {"viewer", "operator", "planner", "quality", "admin"}
ROLES = (*sorted(READERS), "display")

# (method, path) -> the roles that may call it (admin may do everything)
WRITES: dict[tuple[str, str], set[str]] = {
    ("post", "/api/v1/machines/{machine_id}/operation"): {"operator", "planner", "admin"},
    ("post", "/api/v1/machines/{machine_id}/operator"): {"operator", "admin"},
    ("post", "/api/v1/machines/{machine_id}/reasons"): {"operator", "quality", "admin"},
    ("post", "/api/v1/machines/{machine_id}/parts"): {"operator", "quality", "admin"},
    ("post", "/api/v1/holds"): {"quality", "admin"},
    ("put", "/api/v1/dispatch/machines/{machine_id}"): {"planner", "admin"},
    ("put", "/api/v1/dispatch/cells/{area}/{line}/{cell}"): {"planner", "admin"},
    ("post", "/api/v1/dispatch/operations"): {"planner", "admin"},
    ("post", "/api/v1/dispatch/csv"): {"planner", "admin"},
}
OPERATOR_WRITES = [key for key in WRITES if "{machine_id}" in key[1] and "operator" in WRITES[key]]
PLANNED = {"job": "J1", "operation": "10", "machine": "vf2-01", "program": "O1001", "quantity": 5}
BODIES: dict[str, dict[str, Any]] = {
    "/operation": {"action": "start", "job": "J1", "operation": "10"},
    "/operator": {"action": "login", "operator": "Ann Smith"},
    "/reasons": {"stop_at": "2026-11-21T22:30:00Z", "reason": "setup", "by": "Ann Smith"},
    "/parts": {"result": "scrap"},
    "/holds": {"action": "open", "hold": "H1", "machine": "vf2-01"},
    "/dispatch/operations": {"operation": PLANNED},
}
AT = "2026-11-21T22:30:00.000Z"
ANSWERS: dict[str, dict[str, Any]] = {  # what the context service answers (services/api/answers.py)
    "operation": {"events": [{"job": "J1", "operation": "10", "action": "start", "at": AT}]},
    "operator": {"machine": "vf2-01", "operator": "Ann Smith", "previous": None},
    "reason": {"machine": "vf2-01", "stop_start": AT, "old": None, "new": "setup"},
    "parts": {"machine": "vf2-01", "job": None, "operation": None, "shift": None},
    "hold": {"hold": "H1", "machines": ["vf2-01"]},
    "dispatch": {"version": 2, "operations": 1, "dropped": []},
    "dispatch_update": {"version": 3, "cancelled": False},
}
PATH_VALUES = {
    "machine_id": "vf2-01",
    "area": "machining",
    "line": "mills",
    "cell": "cell-1",
    "kind": "intervals",
}


class Recorder(CommandSender):
    """Answers every command as applied and keeps what it was sent."""

    def __init__(self) -> None:
        super().__init__(BrokerAddress("127.0.0.1", 1), "acme/dayton")
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def stop(self) -> None:
        pass

    async def send(self, kind: str, body: dict[str, Any]) -> CommandResult:
        self.sent.append((kind, body))
        return CommandResult(id="x", ok=True, detail=ANSWERS[kind])


World = tuple[TestClient, Recorder, dict[str, str]]  # the API, what it sent, a token per role


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = RecordStore(tmp_path / "record.db")
    store.register_machines(
        [
            ("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2"),
            ("st20-01", "acme/dayton/machining/lathes/cell-3/st20-01", "Haas ST-20"),
        ]
    )
    keys = {role: tokens.issue(store, f"{role} user", role, NOW)[1] for role in ROLES}
    keys["lathe operator"] = tokens.issue(store, "Lathe Luis", "operator", NOW, ["machining/lathes/cell-3"])[
        1
    ]
    keys["mill operator"] = tokens.issue(store, "Mill Mia", "operator", NOW, ["machining/mills/cell-1"])[1]
    recorder = Recorder()
    app = create_app(ApiSettings(api_token=SecretStr(BOOTSTRAP)), store, commands=recorder)
    with TestClient(app) as c:
        yield c, recorder, keys
    store.close()


def routes(client: TestClient) -> list[tuple[str, str]]:
    paths = client.get("/openapi.json").json()["paths"]
    return sorted((method, path) for path, item in paths.items() for method in item)


def call(client: TestClient, method: str, path: str, token: str | None) -> Any:
    url = path.format(**PATH_VALUES)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if path.endswith("/csv"):
        csv = "job,operation,machine,program,quantity\nJ1,10,vf2-01,O1001,5\n"
        return client.request(
            method,
            url,
            params={"machine": "vf2-01"},
            content=csv,
            headers={**headers, "Content-Type": "text/csv"},
        )
    body = next((b for suffix, b in BODIES.items() if path.endswith(suffix)), {"operations": [PLANNED]})
    if method == "get":
        return client.get(url, headers=headers)
    return client.request(method, url, json=body, headers=headers)


def test_the_matrix_covers_every_route(world: World) -> None:
    client, _, _ = world
    writes = {r for r in routes(client) if r[0] != "get"}
    assert writes == set(WRITES), "a write route the matrix does not know, or one that went away"


@pytest.mark.parametrize("role", [*ROLES, None])
def test_every_route_with_every_role(world: World, role: str | None) -> None:
    client, recorder, keys = world
    token = keys[role] if role is not None else None
    for method, path in routes(client):
        allowed = WRITES.get((method, path), READERS)
        response = call(client, method, path, token)
        where = f"{method.upper()} {path} as {role or 'nobody'}"
        if role is None:
            assert response.status_code == 401, where
        elif role not in allowed:
            assert response.status_code == 403, where
            assert role in response.json()["detail"], where
        else:
            assert response.status_code not in (401, 403), f"{where}: {response.text}"
            if method != "get":
                assert response.status_code == 200, f"{where}: {response.text}"
    if role is None or role == "display":
        assert recorder.sent == []  # nothing got through


def test_the_audit_names_the_tokens_user(world: World) -> None:
    client, recorder, keys = world
    call(client, "post", "/api/v1/machines/{machine_id}/parts", keys["quality"])
    call(client, "post", "/api/v1/machines/{machine_id}/reasons", keys["operator"])  # by: Ann Smith
    call(client, "post", "/api/v1/dispatch/csv", keys["planner"])
    call(client, "post", "/api/v1/machines/{machine_id}/parts", BOOTSTRAP)
    assert [body["by"] for _, body in recorder.sent] == [
        "quality user",
        "Ann Smith (token operator user)",  # a system's token entering for a person says both
        "planner user",
        "api:admin",  # the bootstrap token names its role
    ]


@pytest.mark.parametrize(("method", "path"), OPERATOR_WRITES)
def test_an_operator_acts_only_on_its_cells(world: World, method: str, path: str) -> None:
    client, recorder, keys = world
    outside = call(client, method, path, keys["lathe operator"])  # vf2-01 is in mills/cell-1
    assert outside.status_code == 403
    assert outside.json()["detail"] == (
        "Lathe Luis may act on machining/lathes/cell-3 only, not vf2-01 (cell machining/mills/cell-1)"
    )
    assert recorder.sent == []
    inside = call(client, method, path, keys["mill operator"])
    assert inside.status_code == 200, inside.text
    assert recorder.sent[-1][1]["machine"] == "vf2-01"
    assert recorder.sent[-1][1]["by"].startswith(("Mill Mia", "Ann Smith"))
