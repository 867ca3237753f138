"""Debian's Chromium, headless, driven by playwright (which downloads no browser of its own here):
the pages a person opens (floor view, operator screen, printable review) are tested in it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

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


def screenshot(page: Page, name: str) -> Path:
    """Saves a screenshot under var/screenshots/ (for a person to look at) and returns its path."""
    out = Path("var/screenshots") / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    return out
