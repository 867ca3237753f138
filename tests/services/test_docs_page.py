"""Swagger UI (/docs) in a real headless Chromium, from a real uvicorn: it renders every route of the
OpenAPI document with no token and no internet (its scripts come from the API itself), and a call
tried from it with a token is answered."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Page
from pydantic import SecretStr

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.context.record import RecordStore
from tests.browser import browser, page, screenshot

__all__ = ["browser", "page"]  # the fixtures, used by name
TOKEN = "d" * 24


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    store = RecordStore(tmp_path / "record.db")
    store.register_machines([("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "Haas VF-2")])
    app = create_app(ApiSettings(api_token=SecretStr(TOKEN)), store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
    store.close()


def test_swagger_ui_renders_every_route_without_internet(page: Page, api: str) -> None:
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(api) else outside.append(r.url))
    page.goto(f"{api}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=15_000)
    shown = {e.get_attribute("data-path") for e in page.query_selector_all(".opblock-summary-path")}
    document = page.evaluate("fetch('/openapi.json').then(r => r.json())")
    assert shown == set(document["paths"])
    assert page.inner_text(".info .title").startswith("Shop-floor UNS API")
    screenshot(page, "swagger-ui")
    assert outside == []  # nothing from a CDN


def test_a_call_tried_from_swagger_ui_with_a_token_is_answered(page: Page, api: str) -> None:
    page.goto(f"{api}/docs")
    page.click("button.authorize")
    page.fill(".auth-container input", TOKEN)
    page.click(".auth-btn-wrapper button.authorize")
    page.click("button.close-modal")
    block = page.locator("#operations-machines-list_machines_api_v1_machines_get")
    block.click()
    block.locator("button.try-out__btn").click()
    block.locator("button.execute").click()
    code = block.locator(".live-responses-table tbody .response-col_status").first
    code.wait_for(timeout=10_000)
    assert code.inner_text().strip() == "200"
    assert "vf2-01" in block.locator(".live-responses-table tbody .microlight").first.inner_text()
