"""The floor view and the operator's stop-reason screen (services/api/pages.py, stops.py), opened in
a real headless Chromium against the app under uvicorn: a tile for every machine of the site, grouped
by area and cell; a machine that stops changes its tile's colour and reason without a reload; a reason
tapped on the operator screen goes API -> Mosquitto -> context service -> record, with its audit row;
the display link opens the floor view and can do nothing else; a malformed link is a 401 naming `key`
and costs nothing else. Screenshots for a person: var/screenshots/floor.png, operator.png."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Page
from pydantic import SecretStr

from services.api import pages, tokens
from services.api.app import create_app
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.app import ContextService
from services.context.commands import CommandResult
from services.context.jobs import ACTIVE, Operation
from services.context.record import RecordStore
from services.context.state import Interval, MachineState, PartsMade, Story
from tests.browser import LiveServer, browser, page, page_errors, screenshot, tablet
from tests.helpers import address, track
from uns.broker import Mosquitto
from uns.clock import WallClock, iso
from uns.mqtt import BrokerAddress
from uns.site import parse_site

__all__ = ["browser", "page", "tablet"]  # the fixtures

S = MachineState
MIN = 60_000
HOUR = 60 * MIN
BOOTSTRAP = "b" * 24
ZONE = "America/New_York"
_SIGNALS = "{execution: a, mode: b, part_count: c, alarm_code: d, estop: e}"
_OPCUA = f"{{protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:4840', signals: {_SIGNALS}}}"
SITE = f"""\
enterprise: acme
site: dayton
timezone: {ZONE}
sparkplug: {{group_id: dayton, edge_node_id: edge1, host_id: floor-host}}
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - {{id: vf2-01, name: Haas VF-2 No. 1, source: {_OPCUA}}}
              - {{id: vf2-02, name: Haas VF-2 No. 2, source: {_OPCUA}}}
          - name: cell-2
            machines:
              - {{id: dnm-01, name: Doosan DNM 5700, source: {_OPCUA}}}
      - name: lathes
        cells:
          - name: cell-3
            machines:
              - {{id: st20-01, name: Haas ST-20, source: {_OPCUA}}}
              - {{id: lynx-01, name: Doosan Lynx 2100, source: {_OPCUA}}}
  - name: finishing
    lines:
      - name: grinding
        cells:
          - name: cell-4
            machines:
              - {{id: grind-01, name: Studer S33, source: {_OPCUA}}}
"""
MACHINES = [(m.id, str(m.path), m.name) for m in parse_site(SITE).machines]
# the state colours of the Grafana dashboards (grafana/generate.py STATES), as Chromium computes them
RGB = {"running": "rgb(115, 191, 105)", "down": "rgb(242, 73, 92)", "comms_loss": "rgb(142, 142, 142)"}


def piece(reason: str | None = None, source: str | None = None, **more: Any) -> dict[str, Any]:
    """The open interval's context, as the context service writes it into the record."""
    return {
        "reason": reason,
        "reason_source": source,
        "reason_evidence": more.pop("evidence", None),
        "stop_start": more.pop("stop_start", None),
        "job": more.pop("job", None),
        "operation": more.pop("operation", None),
        "operator": more.pop("operator", None),
        "shift": None,
        "hold": None,
    }


def fill_floor(store: RecordStore, now: int) -> None:
    """Six machines as a shift finds them: running, in setup, idle, down, and one never heard of."""
    store.register_machines(MACHINES)
    ops = [
        Operation("24173", "20", "vf2-01", "O5679", 50, ideal_cycle_ms=60_000, status=ACTIVE),
        Operation("24180", "10", "vf2-02", "O1200", 120, ideal_cycle_ms=30_000, status=ACTIVE),
    ]
    store.save_dispatch("test", "erp", "test", now - 4 * HOUR, "{}", ops, [])
    store.write(
        [
            Interval("vf2-01", now - 3 * HOUR, now - 42 * MIN, S.RUNNING, job="24173", operation="20"),
            Interval("vf2-02", now - 3 * HOUR, now - 65 * MIN, S.SETUP, reason="setup", source="rule"),
            Interval("st20-01", now - 2 * HOUR, now - 12 * MIN, S.RUNNING),
        ],
        [
            PartsMade("vf2-01", now - 50 * MIN, 37, 1037, "24173", "20"),
            PartsMade("vf2-02", now - 10 * MIN, 12, 512, "24180", "10"),
        ],
        [
            ("vf2-01", S.IDLE, now - 42 * MIN, now - 42 * MIN, 1037, None, None, piece(
                "micro_stop", "rule", job="24173", operation="20", stop_start=iso(now - 42 * MIN))),
            ("vf2-02", S.RUNNING, now - 65 * MIN, now - MIN, 512, None, None,
             piece(job="24180", operation="10")),
            ("dnm-01", S.SETUP, now - 25 * MIN, now - 25 * MIN, 0, None, None, piece("setup", "rule")),
            ("st20-01", S.IDLE, now - 12 * MIN, now - 12 * MIN, 7, None, None,
             piece("unclassified", "default")),
            ("lynx-01", S.DOWN, now - 8 * MIN, now - 8 * MIN, 3, Story(alarm="alarm 1010 SPINDLE OVERLOAD"),
             None, piece("machine_fault", "rule", evidence="alarm 1010 SPINDLE OVERLOAD")),
        ],
    )  # fmt: skip


def stop_with_alarm(store: RecordStore, now: int) -> None:
    """vf2-02 stops on an alarm, as the context service would write it."""
    alarm = "alarm 2105 TOOL BREAKAGE DETECTED"
    store.write(
        [Interval("vf2-02", now - 65 * MIN, now, S.RUNNING, job="24180", operation="10")],
        [],
        [
            (
                "vf2-02",
                S.DOWN,
                now,
                now,
                512,
                Story(stop_start_ms=now, alarm=alarm),
                Story(stop_start_ms=now, alarm=alarm),
                piece(
                    "machine_fault", "rule", evidence=alarm, stop_start=iso(now), job="24180", operation="10"
                ),
            )
        ],
    )


@dataclass
class Floor:
    store: RecordStore
    app: FastAPI
    display: str  # a display link's key
    viewer: str


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[Floor]:
    store = RecordStore(tmp_path / "record.db")
    now = int(time.time() * 1000)
    fill_floor(store, now)
    display = tokens.issue(store, "hall TV", "display", now)[1]
    viewer = tokens.issue(store, "shift lead", "viewer", now)[1]
    app = create_app(ApiSettings(api_token=SecretStr(BOOTSTRAP)), store, timezone=ZONE)
    yield Floor(store, app, display, viewer)
    store.close()


# (the pages' content security policy runs no string as script: wait_for_function takes functions)
def tile_state(page: Page, machine: str) -> dict[str, str]:
    result: dict[str, str] = page.eval_on_selector(
        f'.tile[data-machine="{machine}"]',
        """el => ({state: el.dataset.state, background: getComputedStyle(el).backgroundColor,
                   reason: el.querySelector('.reason').textContent,
                   alarm: el.querySelector('.alarm').textContent,
                   time: el.querySelector('.time').textContent,
                   count: el.querySelector('.count').textContent})""",
    )
    return result


# -- in the browser -------------------------------------------------------------------------------
@pytest.fixture
def served(floor: Floor) -> Iterator[LiveServer]:
    """The floor's app under uvicorn (ask for it before `page`: the page closes first)."""
    with LiveServer(floor.app) as live:
        yield live


def test_the_floor_view_has_a_tile_per_machine_and_follows_a_stop_live(
    floor: Floor, served: LiveServer, page: Page
) -> None:
    live = served
    errors = page_errors(page)
    page.goto(f"{live.url}/floor?key={floor.display}")
    page.wait_for_selector("#live:not(.off)")
    shown = page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.machine)")
    assert sorted(shown) == sorted(m for m, _, _ in MACHINES)
    areas = page.eval_on_selector_all(
        ".area",
        "els => els.map(a => [a.dataset.area, [...a.querySelectorAll('.cell')].map(c => c.dataset.cell)])",
    )
    assert areas == [
        ["finishing", ["grinding · cell-4"]],
        ["machining", ["lathes · cell-3", "mills · cell-1", "mills · cell-2"]],
    ]
    lynx = tile_state(page, "lynx-01")
    assert (lynx["state"], lynx["background"]) == ("down", RGB["down"])
    assert lynx["alarm"] == "alarm 1010 SPINDLE OVERLOAD"
    assert lynx["time"] == "0:08"
    assert tile_state(page, "vf2-01")["count"] == "37 / 50"
    assert tile_state(page, "grind-01")["background"] == RGB["comms_loss"]
    before = tile_state(page, "vf2-02")
    assert (before["state"], before["background"], before["reason"]) == ("running", RGB["running"], "")
    page.evaluate("window.notReloaded = true")

    stop_with_alarm(floor.store, int(time.time() * 1000))
    page.wait_for_function(
        """() => { const t = document.querySelector('.tile[data-machine="vf2-02"]');
                   return t.dataset.state === 'down'
                     && t.querySelector('.alarm').textContent !== ''; }""",
        timeout=5000,
    )
    after = tile_state(page, "vf2-02")
    assert after["background"] == RGB["down"]
    assert after["reason"] == "Machine fault (alarm or emergency stop)"
    assert after["alarm"] == "alarm 2105 TOOL BREAKAGE DETECTED"
    assert after["time"] == "0:00"
    assert page.evaluate("window.notReloaded") is True  # the same page: no reload
    screenshot(page, "floor")
    sizes = page.eval_on_selector(
        '.tile[data-machine="vf2-02"]',
        "el => [el.querySelector('.time'), el.querySelector('.name')]"
        ".map(e => parseFloat(getComputedStyle(e).fontSize))",
    )
    assert min(sizes) >= 40  # across a room on a 1080p TV
    assert page.evaluate("document.documentElement.scrollHeight") <= 1080  # no scrolling
    assert errors == []


def test_a_revoked_display_link_goes_dark_and_says_why(floor: Floor, served: LiveServer, page: Page) -> None:
    floor.app.state.floor_stream_s = 1.0  # streams end (and their link is checked again) each second
    page.goto(f"{served.url}/floor?key={floor.display}")
    page.wait_for_selector("#live:not(.off)")
    assert floor.store.revoke_tokens("hall TV", int(time.time() * 1000)) == 1
    page.wait_for_function(
        "() => document.body.classList.contains('stale')"
        " && document.querySelector('#live').textContent.includes('revoked')",
        timeout=10_000,
    )
    assert page.eval_on_selector_all(".tile", "els => els.length") == len(MACHINES)  # what it last knew


def test_the_state_colours_are_the_dashboards() -> None:
    from grafana.generate import STATES

    grafana_dark = {"green": "#73BF69", "yellow": "#FADE2A", "blue": "#5794F2", "red": "#F2495C"}
    assert {name: grafana_dark.get(colour, colour) for name, _, colour in STATES} == pages.STATE_COLOURS


@pytest.fixture
def shop(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[LiveServer, RecordStore, dict[str, str]]]:
    """The API under uvicorn with its command sender and the context service on the test broker,
    over a record where vf2-01 stood twice without a reason in the last hours."""
    now = int(time.time() * 1000)
    store = RecordStore(tmp_path / "record.db")
    store.register_machines(MACHINES)
    first, second = now - 2 * HOUR, now - 50 * MIN
    store.write(
        [
            Interval("vf2-01", now - 3 * HOUR, first, S.RUNNING),
            Interval(
                "vf2-01", first, first + 40 * MIN, S.IDLE, "unclassified", "default", stop_start_ms=first
            ),
            Interval("vf2-01", first + 40 * MIN, second, S.RUNNING),
            Interval(
                "vf2-01", second, second + 5 * MIN, S.IDLE, "unclassified", "default", stop_start_ms=second
            ),
        ],
        [],
        [("vf2-01", S.RUNNING, second + 5 * MIN, now - MIN, 100, None, None, piece())],
    )
    keys = {
        "maria": tokens.issue(store, "Maria Lopez", "operator", now, ["machining/mills/cell-1"])[1],
        "luis": tokens.issue(store, "Lathe Luis", "operator", now, ["machining/lathes/cell-3"])[1],
        "display": tokens.issue(store, "hall TV", "display", now)[1],
    }
    site = parse_site(SITE)
    context = ContextService(site, store, address(mosquitto, "services"), WallClock())
    sender = CommandSender(address(mosquitto, "api"), "acme/dayton", timeout_s=5)
    app = create_app(ApiSettings(api_token=SecretStr(BOOTSTRAP)), store, commands=sender, timezone=ZONE)
    with LiveServer(app) as live:
        live.call(lambda: context.start(asyncio.get_running_loop()))
        track(context._client)
        deadline = time.monotonic() + 10
        while not (
            sender._client and sender._client.connected and context._client and context._client.connected
        ):
            assert time.monotonic() < deadline, "the API or the context service never reached the broker"
            time.sleep(0.05)
        try:
            yield live, store, keys
        finally:
            live.run(context.stop())
    store.close()


def test_a_reason_tapped_on_the_operator_screen_reaches_the_record_with_its_audit_row(
    shop: tuple[LiveServer, RecordStore, dict[str, str]], tablet: Page
) -> None:
    live, store, keys = shop
    errors = page_errors(tablet)
    tablet.goto(f"{live.url}/operator/vf2-01?key={keys['maria']}")
    tablet.wait_for_function(
        "() => document.querySelectorAll('.stop').length === 2 && !document.querySelector('.reason:disabled')"
    )
    listed = tablet.eval_on_selector_all(".stop", "els => els.map(e => e.querySelector('.dur').textContent)")
    assert listed == ["0:40", "0:05"]  # longest first
    assert tablet.get_attribute(".stop >> nth=0", "aria-pressed") == "true"
    assert tablet.text_content("#who") == "entered as Maria Lopez"
    groups = tablet.eval_on_selector_all(".group legend", "els => els.map(e => e.textContent)")
    assert "Equipment" in groups
    assert tablet.query_selector('.reason[data-code="unclassified"]') is None
    assert tablet.query_selector('.reason[data-code="equipment"]') is None  # groups are headings
    assert tablet.evaluate("document.documentElement.scrollHeight") <= 800  # no scrolling to tap
    screenshot(tablet, "operator")

    tablet.tap('.reason[data-code="tooling"]')
    tablet.wait_for_function("() => document.querySelector('#answer').textContent.includes('saved')")
    tablet.wait_for_function("() => document.querySelectorAll('.stop').length === 1")
    assert tablet.text_content(".stop .dur") == "0:05"
    audit = store.reason_audit("vf2-01")
    first = int(time.time() * 1000) - 2 * HOUR
    assert len(audit) == 1
    stop, old, new, by, via, _, note = audit[0]
    assert (old, new, by, via, note) == ("unclassified", "tooling", "Maria Lopez", "api", "")
    assert abs(stop - first) < 60_000
    pieces = list(store.intervals("vf2-01", stop, stop + 1))
    assert [(i.reason, i.source) for i in pieces] == [("tooling", "operator")]
    screenshot(tablet, "operator-saved")
    assert errors == []


def test_the_operator_screen_refuses_a_display_link_and_other_cells(
    shop: tuple[LiveServer, RecordStore, dict[str, str]], tablet: Page
) -> None:
    live, store, keys = shop
    response = tablet.goto(f"{live.url}/operator/vf2-01?key={keys['display']}")
    assert response is not None
    assert response.status == 403
    assert "display link opens the floor view only" in (tablet.text_content("body") or "")
    response = tablet.goto(f"{live.url}/operator/vf2-01?key={keys['luis']}")
    assert response is not None
    assert response.status == 403
    assert "Lathe Luis may act on machining/lathes/cell-3 only, not vf2-01" in (
        tablet.text_content("body") or ""
    )
    assert store.reason_audit("vf2-01") == []


# -- the stream -----------------------------------------------------------------------------------
def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield kind, line.removeprefix("data: ")


def test_the_stream_sends_a_snapshot_then_changed_tiles_and_stops_with_its_last_view(floor: Floor) -> None:
    with LiveServer(floor.app) as live, httpx.Client(base_url=live.url, timeout=10) as client:
        with client.stream("GET", "/floor/events", params={"key": floor.display}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _events(response.iter_lines())
            kind, data = next(events)
            assert kind == "snapshot"
            snapshot = json.loads(data)
            assert len(snapshot["tiles"]) == len(MACHINES)
            assert snapshot["timezone"] == ZONE
            assert snapshot["colours"]["down"] == "#F2495C"
            feed = floor.app.state.floor_feed
            assert feed.task is not None
            assert len(feed.viewers) == 1
            stop_with_alarm(floor.store, int(time.time() * 1000))
            kind, data = next((k, d) for k, d in events if k == "tile")  # within a second or so
            tile = json.loads(data)["tile"]
            assert (tile["id"], tile["state"], tile["reason"]) == ("vf2-02", "down", "machine_fault")
            assert tile["alarm"] == "alarm 2105 TOOL BREAKAGE DETECTED"
        deadline = time.monotonic() + 5
        while feed.viewers or feed.task is not None:  # the poller stops with the last view
            assert time.monotonic() < deadline, "the floor poller outlived its last view"
            time.sleep(0.05)
        # a stream runs its time, says so, and ends: the view opens a new one (its link checked again)
        floor.app.state.floor_stream_s = 1.0
        with client.stream("GET", "/floor/events", params={"key": floor.display}) as response:
            kinds = [kind for kind, _ in _events(response.iter_lines())]
        assert kinds[0] == "snapshot"
        assert kinds[-1] == "reconnect"


def test_a_view_that_cannot_keep_up_is_dropped_not_buffered(floor: Floor) -> None:
    # on an event loop of its own: this module's browser (sync playwright) holds the main thread's
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _slow_view(floor)).result(30)


async def _slow_view(floor: Floor) -> None:
    feed = pages.floor_feed(floor.app)
    feed.queue_size, feed.poll_s = 3, 3600.0
    viewer = feed.subscribe()
    task = feed.task
    deadline = time.monotonic() + 5
    while not viewer.primed:  # the poller's first snapshot
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    snapshot = await asyncio.to_thread(feed.board.snapshot)
    for n in range(10):  # every tile changes ten times; nobody reads
        moved = [t.model_copy(update={"since_ms": n}) for t in snapshot.tiles]
        feed.publish(snapshot.model_copy(update={"tiles": moved}))
    assert viewer.dropped
    assert viewer not in feed.viewers
    assert viewer.queue.qsize() == 3  # bounded
    assert feed.dropped == 1
    feed.unsubscribe(viewer)  # its stream ends: the last view, the poller stops
    assert feed.task is None
    assert task is not None
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()


# -- what a link may do ------------------------------------------------------------------------------
class Recorder(CommandSender):
    """A command sender that keeps what it was given: nothing must reach it here."""

    def __init__(self) -> None:
        super().__init__(BrokerAddress("127.0.0.1", 1), "acme/dayton")
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def stop(self) -> None:
        pass

    async def send(self, kind: str, body: dict[str, Any]) -> CommandResult:
        self.sent.append((kind, body))
        return CommandResult(id="x", ok=True, detail={})


def test_a_display_link_opens_the_floor_view_and_nothing_else(floor: Floor) -> None:
    recorder = Recorder()
    app = create_app(
        ApiSettings(api_token=SecretStr(BOOTSTRAP)), floor.store, commands=recorder, timezone=ZONE
    )
    bearer = {"Authorization": f"Bearer {floor.display}"}
    with TestClient(app) as client:
        assert client.get("/floor", params={"key": floor.display}).status_code == 200
        assert client.get("/floor/state", params={"key": floor.display}).status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert "/floor" not in paths
        assert "/api/v1/machines/{machine_id}/stops" in paths
        routes = [
            (m, p) for p, item in paths.items() for m in item if p.startswith("/api/") or p == "/metrics"
        ]
        assert sum(1 for m, _ in routes if m != "get") >= 5
        for method, path in routes:
            url = path.replace("{machine_id}", "vf2-01").replace("{area}", "machining")
            url = url.replace("{line}", "mills").replace("{cell}", "cell-1")
            with_bearer = client.request(method, url, headers=bearer, json={})
            assert with_bearer.status_code == 403, f"{method} {path}: {with_bearer.text}"
            assert "display link" in with_bearer.json()["detail"]
            in_link = client.request(method, url, params={"key": floor.display}, json={})
            assert in_link.status_code == 401, f"{method} {path}: the API takes no link key"
        refused = client.get("/operator/vf2-01", params={"key": floor.display})
        assert refused.status_code == 403
        viewer = client.get("/operator/vf2-01", params={"key": floor.viewer})
        assert viewer.status_code == 403
        assert "the viewer role may not set reasons" in viewer.text
        assert client.post("/floor", params={"key": floor.display}).status_code == 405
        assert app.state.floor_feed.task is None  # a snapshot starts no poller
    assert recorder.sent == []
    assert floor.store.reason_audit("st20-01") == []


@pytest.mark.parametrize(
    "key", ["garbage", "", "uns_000000000000_" + "x" * 43, "uns_", BOOTSTRAP[:-1], None, "k" * 5000]
)
def test_a_malformed_link_is_a_401_naming_key_and_the_next_one_works(floor: Floor, key: str | None) -> None:
    params = {"key": key} if key is not None else {}
    before = floor.store.tokens()
    with TestClient(floor.app) as client:
        page = client.get("/floor", params=params)
        assert page.status_code == 401
        assert page.headers["content-type"].startswith("text/html")
        assert "field: query.key" in page.text
        assert "?key=" in page.text
        for path in ("/floor/state", "/floor/events"):
            answer = client.get(path, params=params)
            assert answer.status_code == 401, path
            assert answer.json()["errors"][0]["loc"] == ["query", "key"]
        tablet_page = client.get("/operator/vf2-01", params=params)
        assert tablet_page.status_code == 401
        assert "field: query.key" in tablet_page.text
        good = client.get("/floor/state", params={"key": floor.display})
        assert good.status_code == 200
        assert len(good.json()["tiles"]) == len(MACHINES)
        assert client.get("/floor", params={"key": floor.viewer}).status_code == 200  # any token opens it
    assert floor.store.tokens() == before


# -- the stops the operator screen lists ---------------------------------------------------------------
def test_unclassified_stops_are_whole_longest_first_and_within_the_reason_window(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "record.db")
    store.register_machines(MACHINES)
    now = int(time.time() * 1000)
    old, split, told, micro = now - 80 * HOUR, now - 5 * HOUR, now - 3 * HOUR, now - 2 * HOUR
    store.write(
        [
            Interval("vf2-01", old, old + 30 * MIN, S.IDLE, "unclassified", "default", stop_start_ms=old),
            # one stop cut in two pieces (down, then setup): one entry, 0:50 long
            Interval("vf2-01", split, split + 20 * MIN, S.DOWN, "machine_fault", "rule", stop_start_ms=split),
            Interval("vf2-01", split + 20 * MIN, split + 30 * MIN, S.COMMS_LOSS),
            Interval("vf2-01", split + 30 * MIN, split + 50 * MIN, S.IDLE, "unclassified", "default",
                     stop_start_ms=split, job="J1", operation="10"),
            Interval("vf2-01", told, told + 90 * MIN, S.IDLE, "tooling", "operator", stop_start_ms=told),
            Interval("vf2-01", micro, micro + 2 * MIN, S.IDLE, "micro_stop", "rule", stop_start_ms=micro),
        ],
        [],
        [("vf2-01", S.IDLE, now - 10 * MIN, now - 10 * MIN, 1, None, None, piece("unclassified", "default"))],
    )  # fmt: skip
    app = create_app(ApiSettings(api_token=SecretStr(BOOTSTRAP)), store, timezone=ZONE)
    auth = {"Authorization": f"Bearer {BOOTSTRAP}"}
    with TestClient(app) as client:
        body = client.get(
            "/api/v1/machines/vf2-01/stops", params={"unclassified": "true"}, headers=auth
        ).json()
        assert body["window_hours"] == 72.0
        assert [(s["start"], round(s["duration_s"] / 60)) for s in body["stops"]] == [
            (iso(split), 50),
            (iso(now - 10 * MIN), 10),
        ]
        whole = body["stops"][0]
        assert whole["states"] == ["down", "idle"]
        assert whole["unclassified_s"] == 20 * 60
        assert (whole["job"], whole["operation"]) == ("J1", "10")
        assert whole["end"] == iso(split + 50 * MIN)
        assert whole["start_local"].endswith(("-05:00", "-04:00"))
        assert body["stops"][1]["end"] is None  # still standing
        every = client.get("/api/v1/machines/vf2-01/stops", headers=auth).json()["stops"]
        assert [s["reason"] for s in every] == ["tooling", "unclassified", "unclassified", "micro_stop"]
        app.state.reason_window_hours = 2.0
        narrow = client.get("/api/v1/machines/vf2-01/stops", headers=auth).json()
        assert [s["reason"] for s in narrow["stops"]] == ["tooling", "unclassified", "micro_stop"]
        missing = client.get("/api/v1/machines/nope/stops", headers=auth)
        assert missing.status_code == 404
        assert missing.json()["errors"][0]["loc"] == ["path", "machine_id"]
        bad = client.get("/api/v1/machines/vf2-01/stops", params={"limit": 0}, headers=auth)
        assert bad.status_code == 422
    store.close()


def test_the_access_log_does_not_keep_a_links_key(caplog: pytest.LogCaptureFixture) -> None:
    """A page's token is in its link: uvicorn's access log shows `key=...` in its place."""
    from services.api.app import hide_link_keys

    hide_link_keys()
    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.9:5000", "GET", "/floor?key=uns_0a_secret", "1.1", 200)
    assert "secret" not in caplog.text
    assert '"GET /floor?key=... HTTP/1.1" 200' in caplog.text
