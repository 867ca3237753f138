"""Debian's Chromium, headless, driven by playwright (which downloads no browser of its own here):
the pages a person opens (floor view, operator screen, printable review) are tested in it, against
the app under a real uvicorn (`LiveServer`: a browser cannot use TestClient)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, sync_playwright

from uns.broker import free_port

T = TypeVar("T")

FLAGS = [
    "--no-sandbox",  # the tests run as root on CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # the machine's closed network refuses Chromium's own calls
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("chromium not found: install Debian's chromium package (make test does)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh 1080p page (the TV on the wall)."""
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    p = context.new_page()
    yield p
    context.close()


@pytest.fixture
def tablet(browser: Browser) -> Iterator[Page]:
    """A fresh page the size of a tablet at the cell, landscape, touch."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, has_touch=True)
    p = context.new_page()
    yield p
    context.close()


class LiveServer:
    """The app under uvicorn on a free port of the loopback interface, in a thread with its own event
    loop (the app's lifespan runs on it: its command sender starts there). `run(coro)` runs a
    coroutine on that loop, for what must share it (a context service). Stopped on leaving `with`;
    a stream still open is cut after `grace_s`."""

    def __init__(self, app: FastAPI, grace_s: float = 2.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=int(grace_s),
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=f"uvicorn:{self.port}", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def run(self, coro: Awaitable[T], timeout: float = 10.0) -> T:
        async def wrapped() -> T:
            return await coro

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return future.result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """`fn()` on the server's loop (for what must be started from it)."""

        async def on_loop() -> T:
            return fn()

        return self.run(on_loop(), timeout)

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        assert not self._thread.is_alive(), "uvicorn did not stop"


def page_errors(page: Page) -> list[str]:
    """What goes wrong in the page from now on: uncaught errors and console errors (a refused
    content security policy is one); the test asserts the list stays empty."""
    found: list[str] = []
    page.on("pageerror", lambda error: found.append(f"uncaught: {error}"))
    page.on("console", lambda m: found.append(f"console: {m.text}") if m.type == "error" else None)
    return found


def screenshot(page: Page, name: str) -> Path:
    """Saves a screenshot under var/screenshots/ (for a person to look at) and returns its path."""
    out = Path("var/screenshots") / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    return out
