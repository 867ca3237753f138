"""Bounded writes against a real Mosquitto and a context service in-process: a write too large for
the API or for the broker is 413 and never reaches (or loops on) MQTT, the next write goes through,
and the API's writes recover on their own after the broker was away. The dispatch CSV as ERP exports
write it (a byte order mark, CR line ends) is taken as a whole."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api.app import create_app
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.app import ContextService
from services.context.record import RecordStore
from tests.helpers import Recorder, address, recorder, track
from uns.broker import Mosquitto
from uns.clock import WallClock
from uns.site import parse_site

PLANNER = "p" * 24
SITE = """\
enterprise: acme
site: dayton
timezone: America/New_York
sparkplug: {group_id: dayton, edge_node_id: edge1, host_id: limits-host}
areas:
  - name: machining
    lines:
      - name: mills
        cells:
          - name: cell-1
            machines:
              - id: vf2-01
                source:
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:4840
                  signals: {execution: a, mode: b, program: p, part_count: c, alarm_code: d, estop: e}
"""
HEADER = "job,operation,machine,program,quantity\n"
Call = Callable[..., Any]


@asynccontextmanager
async def live_api(
    mosquitto: Mosquitto, tmp_path: Path, **limits: int
) -> AsyncIterator[tuple[Call, CommandSender, RecordStore]]:
    """The API with its command sender and a context service on the test broker; `call(method,
    path, **kw)` runs a request off the event loop (the context service answers on it)."""
    site = parse_site(SITE)
    store = RecordStore(tmp_path / "record.db")
    context = ContextService(site, store, address(mosquitto, "services"), WallClock())
    context.start(asyncio.get_running_loop())
    track(context._client)
    sender = CommandSender(address(mosquitto, "api"), "acme/dayton", timeout_s=5)
    settings = ApiSettings(
        api_token=SecretStr("a" * 24),
        api_token_planner=SecretStr(PLANNER),
        max_body_bytes=limits.get("max_body_bytes", 1_048_576),
        max_rows=limits.get("max_rows", 2_000),
    )
    try:
        with TestClient(create_app(settings, store, commands=sender)) as client:
            await until(lambda: sender._client is not None and sender._client.connected, "API connected")
            assert context._client is not None
            await until(lambda: context._client is not None and context._client.connected, "host connected")

            async def call(method: str, path: str, **kw: Any) -> Any:
                headers = {"Authorization": f"Bearer {PLANNER}", **kw.pop("headers", {})}
                return await asyncio.to_thread(lambda: client.request(method, path, headers=headers, **kw))

            yield call, sender, store
    finally:
        await context.stop()
        store.close()


async def until(done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.05)


def dispatch_commands(watch: Recorder) -> list[bytes]:
    return [p for t, p in watch.messages if t == "acme/dayton/_command/dispatch"]


def csv_rows(count: int, program: str = "O1") -> str:
    return HEADER + "".join(f"J{i},10,vf2-01,{program},1\n" for i in range(count))


async def test_a_10mb_dispatch_csv_is_413_and_the_next_write_goes_through(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """It used to become a 20 MB MQTT command: the broker dropped the API's connection, the client
    sent it again at every reconnect, and every later write was 503 until a restart."""
    watch = await recorder(mosquitto, "viewer", "acme/dayton/_command/#")
    async with live_api(mosquitto, tmp_path) as (call, sender, store):
        big = csv_rows(1).encode() + b"J2,10,vf2-01,O2,1\n" * (10 * 1_048_576 // 18)
        assert len(big) > 10 * 1_000_000
        answer = await call(
            "POST", "/api/v1/dispatch/csv?machine=vf2-01", content=big, headers={"Content-Type": "text/csv"}
        )
        assert answer.status_code == 413, answer.text
        assert f"is {len(big)} bytes, more than 1048576 bytes" in answer.json()["detail"]
        assert "UNS_MAX_BODY_BYTES" in answer.json()["detail"]
        # a normal write right after, as Excel writes it: a byte order mark and CR LF line ends
        normal = "\ufeff" + HEADER.replace("\n", "\r\n") + "J1,10,vf2-01,O1,5\r\nJ2,10,vf2-01,O2,3\r\n"
        sent = await call(
            "POST",
            "/api/v1/dispatch/csv?machine=vf2-01",
            content=normal.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["version"] == 1
        assert [(o.job, o.quantity) for o in store.operations("vf2-01")] == [("J1", 5), ("J2", 3)]
        await asyncio.sleep(0.3)
        assert sender.connects == 1  # the broker never dropped the API
        assert len(dispatch_commands(watch)) == 1  # only the normal one went over MQTT


async def test_a_command_above_the_broker_packet_limit_is_413_and_never_published(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Within the API's own limits but above the broker's 1 MiB packet (an API configured with a
    larger body limit): refused before it is published; the connection stays, the next write works."""
    watch = await recorder(mosquitto, "viewer", "acme/dayton/_command/#")
    async with live_api(mosquitto, tmp_path, max_body_bytes=8 * 1_048_576, max_rows=10_000) as (
        call,
        sender,
        store,
    ):
        operations = [
            {"job": f"J{i}", "operation": "10", "machine": "vf2-01", "program": "P" * 120, "quantity": 1}
            for i in range(8000)
        ]
        assert len(json.dumps(operations)) > 1_048_576
        answer = await call("PUT", "/api/v1/dispatch/machines/vf2-01", json={"operations": operations})
        assert answer.status_code == 413, answer.text
        assert "more than the broker takes in one message" in answer.json()["detail"]
        assert answer.json()["errors"][0]["loc"] == ["body"]
        assert sender.too_large == 1
        sent = await call("PUT", "/api/v1/dispatch/machines/vf2-01", json={"operations": operations[:3]})
        assert sent.status_code == 200, sent.text
        assert [o.job for o in store.operations("vf2-01")] == ["J0", "J1", "J2"]
        await asyncio.sleep(0.3)
        assert sender.connects == 1
        assert [len(p) < 10_000 for p in dispatch_commands(watch)] == [True]


async def test_writes_recover_on_their_own_after_the_broker_was_away(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with live_api(mosquitto, tmp_path) as (call, sender, store):
        sent = await call("POST", "/api/v1/dispatch/csv?machine=vf2-01", content=csv_rows(1))
        assert sent.status_code == 200, sent.text
        mosquitto.stop()
        assert sender._client is not None
        await until(lambda: sender._client is not None and not sender._client.connected, "API lost it")
        away = await call("POST", "/api/v1/dispatch/csv?machine=vf2-01", content=csv_rows(2))
        assert away.status_code == 503
        assert away.json()["error"] == "unavailable"
        mosquitto.start()
        deadline = time.monotonic() + 15
        while True:  # the API and the context service reconnect by themselves: no restart
            back = await call("POST", "/api/v1/dispatch/csv?machine=vf2-01", content=csv_rows(3))
            if back.status_code == 200:
                break
            assert back.status_code == 503, back.text
            assert time.monotonic() < deadline, "writes never came back"
            await asyncio.sleep(0.2)
        assert [o.job for o in store.operations("vf2-01")] == ["J0", "J1", "J2"]
        assert sender.connects == 2


async def test_the_sender_warns_of_a_lost_broker_and_not_of_its_own_stop(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    sender = CommandSender(address(mosquitto, "api"), "acme/dayton", timeout_s=5)
    sender.start(asyncio.get_running_loop())
    track(sender._client)

    def connected() -> bool:
        return sender._client is not None and sender._client.connected

    await until(connected, "API connected")
    with caplog.at_level(logging.INFO, logger="services.api.sender"):
        mosquitto.kill()
        await until(lambda: not connected(), "the API to notice the broker is gone")
        mosquitto.start()
        await until(connected, "the API to connect again", timeout=15)
        sender.stop()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "services.api.sender"]
    lost = [m for level, m in said if level == logging.WARNING]
    assert len(lost) == 1, said
    assert lost[0].startswith("API lost the broker: ")
    assert (logging.INFO, "API disconnected from the broker: stopped (normal disconnection)") in said
