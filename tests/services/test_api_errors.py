"""The API's bad requests: the dispatch CSV as ERP exports write it (a BOM, Latin-1, bare carriage
returns), bounded bodies and rows, and one error model for every 4xx that the OpenAPI document
declares, route by route. (Against a live broker and a context service:
tests/integration/test_api_limits.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api.app import create_app
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.record import RecordStore
from uns.mqtt import BrokerAddress

ADMIN, VIEWER, PLANNER = "a" * 24, "v" * 24, "p" * 24
HEADER = "job,operation,machine,program,quantity\n"
GOOD = HEADER + "J1,10,vf2-01,O1,5\nJ2,10,vf2-01,O2,3\n"
NOT_CONNECTED = "the API is not connected to the broker"


class Unstarted(CommandSender):
    """A real command sender that never connects: whatever the API accepts ends in its 503, so a 503
    here means the request got past every check (the live path: tests/integration/test_api_limits.py)."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = RecordStore(tmp_path / "record.db")
    store.register_machines([("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2")])
    settings = ApiSettings(
        api_token=SecretStr(ADMIN),
        api_token_viewer=SecretStr(VIEWER),
        api_token_planner=SecretStr(PLANNER),
        max_body_bytes=64 * 1024,
        max_rows=100,
    )
    app = create_app(settings, store, commands=Unstarted(BrokerAddress("127.0.0.1", 1), "acme/dayton"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    store.close()


def post_csv(client: TestClient, body: bytes, content_type: str = "text/csv", token: str = PLANNER) -> Any:
    return client.post(
        "/api/v1/dispatch/csv",
        params={"machine": "vf2-01"},
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )


def assert_error(response: Any, status: int, *words: str) -> dict[str, Any]:
    """The one error model: status, what (`error`), why (`detail`, naming where), and each problem."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"status", "error", "detail", "errors"}
    assert body["status"] == status
    assert isinstance(body["detail"], str)
    assert body["errors"], body
    for problem in body["errors"]:
        assert set(problem) == {"loc", "msg", "type"}
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


# -- the dispatch CSV -------------------------------------------------------------------------------
def test_a_utf8_bom_is_not_part_of_the_first_column(client: TestClient) -> None:
    """Excel's "CSV UTF-8" starts with a byte order mark; it used to make the header `\\ufeffjob`."""
    assert_error(post_csv(client, b"\xef\xbb\xbf" + GOOD.encode()), 503, NOT_CONNECTED)


@pytest.mark.parametrize("end", ["\r", "\r\n", "\n"])
def test_lines_may_end_in_cr_crlf_or_lf(client: TestClient, end: str) -> None:
    """Excel for Mac writes bare carriage returns; Windows CR LF."""
    assert_error(post_csv(client, GOOD.replace("\n", end).encode()), 503, NOT_CONNECTED)


def test_a_bare_carriage_return_in_a_row_ends_the_line_and_the_error_names_it(client: TestClient) -> None:
    """It used to be a 500 (`new-line character seen in unquoted field`)."""
    body = (HEADER + "J1,10,vf2-01,O1,5\nJ2,10,vf2-01,O2\r3\n").encode()
    problem = assert_error(post_csv(client, body), 422, "dispatch CSV, line 3: quantity: Field required")
    assert problem["errors"][0]["loc"] == ["body", "line 3", "quantity"]


def test_a_latin1_file_is_refused_naming_the_line_and_the_byte(client: TestClient) -> None:
    """It used to be a 500. Without a declared charset the file must be UTF-8: the answer says where
    it is not, and how to send it."""
    body = (HEADER + "J1,10,vf2-01,O1,5\nJ2,10,vf2-01,Ölwanne,3\n").encode("latin-1")
    answer = assert_error(
        post_csv(client, body), 422, "line 3, byte 14", "0xd6", "UTF-8", "charset=windows-1252"
    )
    assert answer["errors"][0]["loc"] == ["body", "line 3"]


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252", "latin-1", '"ISO-8859-1"'])
def test_a_declared_charset_is_decoded(client: TestClient, charset: str) -> None:
    body = (HEADER + "J1,10,vf2-01,Ölwanne,5\n").encode("latin-1")
    assert_error(post_csv(client, body, f"text/csv; charset={charset}"), 503, NOT_CONNECTED)


def test_an_unknown_charset_is_415(client: TestClient) -> None:
    assert_error(post_csv(client, GOOD.encode(), "text/csv; charset=klingon"), 415, "klingon", "UTF-8")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (HEADER + "J1,10,vf2-01,O1,5\nJ2,10,vf2-01,O\x002,3\n", ("line 3", "NUL")),
        (HEADER + "J1,10,vf2-01,O1,5,extra\n", ("line 2", "6 cells", "the header has 5")),
        (HEADER + 'J1,10,vf2-01,"O1,5\n', ("line 2", "quote")),
        ("", ("line 1", "missing columns job")),
        ("\ufeff", ("line 1", "missing columns job")),
    ],
    ids=["nul", "extra-cells", "open-quote", "empty", "bom-only"],
)
def test_broken_csv_is_a_422_naming_the_line(client: TestClient, body: str, words: tuple[str, ...]) -> None:
    assert_error(post_csv(client, body.encode()), 422, *words)


def test_more_rows_than_allowed_is_413_with_the_limit(client: TestClient) -> None:
    rows = "".join(f"J{i},10,vf2-01,O{i},1\n" for i in range(101))
    answer = assert_error(post_csv(client, (HEADER + rows).encode()), 413, "101 operations", "at most 100")
    assert "UNS_MAX_ROWS" in answer["detail"]
    operations = [
        {"job": f"J{i}", "operation": "10", "machine": "vf2-01", "program": "O1", "quantity": 1}
        for i in range(101)
    ]
    put = client.put(
        "/api/v1/dispatch/machines/vf2-01",
        json={"operations": operations},
        headers={"Authorization": f"Bearer {PLANNER}"},
    )
    assert_error(put, 413, "101 operations", "at most 100")


# -- bounded bodies ---------------------------------------------------------------------------------
def test_a_body_above_the_limit_is_413_before_it_is_read(client: TestClient) -> None:
    big = (HEADER + "J1,10,vf2-01,O1,5\n" * 4000).encode()
    assert len(big) > 64 * 1024
    answer = assert_error(post_csv(client, big), 413, "65536 bytes", "UNS_MAX_BODY_BYTES")
    assert answer["errors"][0]["loc"] == ["body"]


def test_a_chunked_body_above_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield HEADER.encode()
        for _ in range(100):
            yield b"J1,10,vf2-01,O1,5\n" * 100

    answer = client.post(
        "/api/v1/dispatch/csv?machine=vf2-01",
        content=chunks(),
        headers={"Authorization": f"Bearer {PLANNER}", "Content-Type": "text/csv"},
    )
    assert_error(answer, 413, "65536 bytes")


def test_the_body_limit_applies_to_json_too(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/holds",
        content=b'{"action": "open", "hold": "N1", "note": "' + b"x" * 70_000 + b'"}',
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    assert_error(answer, 413, "65536 bytes")


# -- one error model --------------------------------------------------------------------------------
def test_every_4xx_has_the_one_error_model(client: TestClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    unauthorized = assert_error(client.get("/api/v1/machines"), 401, "bearer token")
    assert unauthorized["errors"][0]["loc"] == ["header", "Authorization"]
    assert client.get("/api/v1/machines").headers["www-authenticate"] == "Bearer"
    forbidden = client.post(
        "/api/v1/holds",
        json={"action": "open", "hold": "N1", "machine": "vf2-01"},
        headers={"Authorization": f"Bearer {VIEWER}"},
    )
    assert_error(forbidden, 403, "the viewer role may not do this")
    missing = client.get(
        "/api/v1/machines/nope/intervals",
        params={"start": "2026-11-22T03:00:00Z", "end": "2026-11-22T04:00:00Z"},
        headers=admin,
    )
    assert assert_error(missing, 404, "no machine 'nope'")["errors"][0]["loc"] == ["path", "machine_id"]
    assert_error(client.get("/api/v1/nothing-here", headers=admin), 404, "Not Found")
    assert_error(client.delete("/api/v1/machines", headers=admin), 405, "Method Not Allowed")
    invalid = client.get(
        "/api/v1/machines/vf2-01/intervals", params={"start": "2026-11-22T03:00:00"}, headers=admin
    )
    problem = assert_error(invalid, 422, "query.start: Input should have timezone info")
    assert [p["loc"] for p in problem["errors"]] == [["query", "start"]]  # no end: up to now
    window = client.get(
        "/api/v1/counts",
        params={"start": "2026-11-22T04:00:00Z", "end": "2026-11-22T03:00:00Z"},
        headers=admin,
    )
    assert assert_error(window, 422, "end must be after start")["errors"][0]["loc"] == ["query", "end"]
    body = client.post("/api/v1/holds", content=b"{not json", headers=admin)
    assert_error(body, 422, "body")
    unavailable = client.post("/api/v1/holds", json={"action": "open", "hold": "N1"}, headers=admin)
    assert_error(unavailable, 503, NOT_CONNECTED)


def test_a_validation_error_does_not_echo_undecodable_input(client: TestClient) -> None:
    """FastAPI's own 422 put the request's bytes into its answer and failed on Latin-1 ones (a 500)."""
    answer = client.post(
        "/api/v1/holds",
        content='{"action": "öffnen", "hold": "N1"}'.encode("latin-1"),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    assert_error(answer, 422, "body")


def _spec(client: TestClient) -> dict[str, Any]:
    spec: dict[str, Any] = client.get("/openapi.json", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    return spec


WRITES = {"401", "403", "404", "409", "413", "422", "503"}


@pytest.mark.parametrize(
    ("method", "path", "codes"),
    [
        ("get", "/api/v1/machines", {"401"}),
        ("get", "/api/v1/machines/{machine_id}/intervals", {"401", "404", "422"}),
        ("get", "/api/v1/machines/{machine_id}/reasons/audit", {"401", "404"}),
        ("get", "/api/v1/downtime", {"401", "404", "422"}),
        ("get", "/api/v1/counts", {"401", "422"}),
        ("get", "/api/v1/oee", {"401", "404", "422"}),
        ("get", "/api/v1/losses", {"401", "404", "422"}),
        ("get", "/api/v1/reasons", {"401"}),
        ("get", "/api/v1/operations", {"401", "404"}),
        ("get", "/api/v1/holds", {"401", "422"}),
        ("get", "/metrics", {"401"}),
        ("post", "/api/v1/holds", WRITES),
        ("put", "/api/v1/dispatch/machines/{machine_id}", WRITES),
        ("put", "/api/v1/dispatch/cells/{area}/{line}/{cell}", WRITES),
        ("post", "/api/v1/dispatch/operations", WRITES),
        ("post", "/api/v1/dispatch/csv", WRITES | {"415"}),
        ("post", "/api/v1/machines/{machine_id}/operation", WRITES),
        ("post", "/api/v1/machines/{machine_id}/operator", WRITES),
        ("post", "/api/v1/machines/{machine_id}/reasons", WRITES),
        ("post", "/api/v1/machines/{machine_id}/parts", WRITES - {"409"}),
    ],
)
def test_the_openapi_document_declares_each_routes_errors(
    client: TestClient, method: str, path: str, codes: set[str]
) -> None:
    responses = _spec(client)["paths"][path][method]["responses"]
    assert set(responses) - {"200"} == codes
    for code in codes:
        schema = responses[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}


def test_the_error_schema_is_the_one_returned(client: TestClient) -> None:
    spec = _spec(client)
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert set(schemas["Error"]["required"]) == {"status", "error", "detail", "errors"}
    assert schemas["Error"]["properties"]["detail"]["type"] == "string"
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert "401" in operation["responses"], (method, path)


# -- what the fuzz found (tests/services/test_api_fuzz.py) ------------------------------------------
@pytest.mark.parametrize(
    ("start", "words"),
    [
        ("0.5", "expected an ISO-8601 datetime with offset"),  # pydantic alone: Unix seconds, 1970
        ("1795300000", "expected an ISO-8601 datetime with offset"),
        ("0001-01-01T00:00:00Z", "expected a year from 1970 to 2999"),  # a 500 in the shift calendar
        ("9999-12-31T23:59:59-12:00", "expected a year from 1970 to 2999"),
    ],
)
def test_a_moment_is_iso_8601_in_a_sane_year(client: TestClient, start: str, words: str) -> None:
    answer = client.get(
        "/api/v1/counts",
        params={"start": start, "end": "2026-11-22T04:00:00Z"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert assert_error(answer, 422, f"query.start: {words}")["error"] == "invalid_request"
    at = client.post(
        "/api/v1/holds",
        json={"action": "open", "hold": "N1", "at": 0.5},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert_error(at, 422, "body.at: expected an ISO-8601 datetime")


def test_a_405_names_every_method_of_the_path(client: TestClient) -> None:
    """Starlette's own named the methods of the first route on the path only (`Allow: POST`)."""
    answer = client.delete("/api/v1/holds", headers={"Authorization": f"Bearer {ADMIN}"})
    assert_error(answer, 405, "Method Not Allowed")
    assert answer.headers["allow"] == "GET, HEAD, POST"


def test_a_refused_request_and_a_request_the_document_forbids_are_told_apart(client: TestClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    window = {"start": "2026-11-22T04:00:00Z", "end": "2026-11-22T03:00:00Z"}
    assert client.get("/api/v1/counts", params=window, headers=admin).json()["error"] == "invalid"
    forbidden = client.get("/api/v1/counts", params={"start": "yesterday"}, headers=admin)
    assert forbidden.json()["error"] == "invalid_request"
