"""Commands are applied exactly once, and no bad one costs another (issue #10), against a real
Mosquitto with the project's config and ACL and the context service on it:
- the same scrap report delivered three times (its sender retrying, a redelivery) counts once, and
  every delivery is answered with the first answer, also after the service restarted;
- a command published with the retain flag is refused with an answer that says why and is cleared
  from the broker, so a reconnect does not apply it again (it used to: one scrap became three);
- a megabyte of `[` and random or truncated payloads interleaved with good commands: every good one
  is applied, every bad one refused and counted;
- a stop while commands keep coming: the last ones are applied, nothing is written after the store
  is closed (it used to log `Cannot operate on a closed database`)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest

from services.context.app import ContextService
from services.context.record import RecordStore
from tests.helpers import Recorder, address, recorder
from tests.services.test_jobshop import SITE, T0, Clock
from uns.broker import Mosquitto
from uns.site import parse_site

pytestmark = pytest.mark.integration
ROOT = "acme/dayton"


async def started(mosquitto: Mosquitto, record: Path) -> tuple[ContextService, RecordStore]:
    store = RecordStore(record)
    service = ContextService(parse_site(SITE), store, address(mosquitto, "services"), Clock(T0))
    service.start(asyncio.get_running_loop())
    deadline = time.monotonic() + 10
    while service._client is None or not service._client.connected:
        assert time.monotonic() < deadline, "the context service never reached the broker"
        await asyncio.sleep(0.05)
    return service, store


async def stopped(service: ContextService, store: RecordStore) -> None:
    await service.stop()
    store.close()


@pytest.fixture
async def integration(mosquitto: Mosquitto) -> Recorder:
    client = await recorder(mosquitto, "integration", f"{ROOT}/_reply/#", client_id="erp")
    await client.wait_connected()
    return client


def scrap(n: int, **more: Any) -> bytes:
    body = {"machine": "vf2-01", "result": "scrap", "quantity": n, "by": "qms", **more}
    return json.dumps(body).encode()


def scrapped(store: RecordStore) -> int:
    return sum(q for *_, q in store.rejects("vf2-01", 0, 2**62))


async def answers(rec: Recorder, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    found = await rec.wait_for(lambda t, p: "/_reply/" in t, timeout=timeout, count=count)
    return [json.loads(p) for _, p in found]


async def test_the_same_command_three_times_counts_once(
    mosquitto: Mosquitto, integration: Recorder, tmp_path: Path
) -> None:
    service, store = await started(mosquitto, tmp_path / "record.db")
    assert integration.client is not None
    once = scrap(2, id="qms-4711", reply_to=f"{ROOT}/_reply/qms/4711", at="2026-11-18T12:30:00Z")
    try:
        for _ in range(3):
            integration.client.publish(f"{ROOT}/_command/parts", once, 1)
        replies = await answers(integration, 3)
        assert scrapped(store) == 2
        assert len({json.dumps(r, sort_keys=True) for r in replies}) == 1  # the first answer, each time
        assert replies[0]["ok"] is True
        assert service.host.counters["commands_repeated"] == 2
    finally:
        await stopped(service, store)
    # a restart remembers what it applied
    service, store = await started(mosquitto, tmp_path / "record.db")
    try:
        integration.client.publish(f"{ROOT}/_command/parts", once, 1)
        assert len(await answers(integration, 4)) == 4
        assert scrapped(store) == 2
    finally:
        await stopped(service, store)


async def test_a_retained_command_is_refused_cleared_and_never_applied(
    mosquitto: Mosquitto, integration: Recorder, tmp_path: Path
) -> None:
    assert integration.client is not None
    body = scrap(1, id="retained-1", reply_to=f"{ROOT}/_reply/qms/r1")
    integration.client.publish(f"{ROOT}/_command/parts", body, 1, retain=True)
    await asyncio.sleep(0.3)  # the broker keeps it; the context service is not running yet
    for restart in range(3):  # each start of the service (a reconnect) finds what is retained
        service, store = await started(mosquitto, tmp_path / "record.db")
        try:
            if restart == 0:
                [reply] = await answers(integration, 1)
                assert (reply["ok"], reply["status"], reply["id"]) == (False, 409, "retained-1")
                assert "retain" in reply["error"]
            await asyncio.sleep(0.5)
            assert scrapped(store) == 0
        finally:
            await stopped(service, store)
    # cleared: a new subscriber finds nothing retained on the command topics
    late = await recorder(mosquitto, "integration", f"{ROOT}/_command/#", client_id="late")
    await late.wait_connected()
    await asyncio.sleep(0.5)
    assert late.messages == []


async def test_bad_commands_interleaved_with_good_ones_cost_nothing(
    mosquitto: Mosquitto, integration: Recorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, store = await started(mosquitto, tmp_path / "record.db")
    assert integration.client is not None
    rng = random.Random(10)
    good_body = scrap(1, at="2026-11-18T12:30:00Z")
    bad: list[bytes] = [b"[" * 1_000_000, b"{" * 40 + b"}" * 40, b"", b"\xff\xfe", b"null", b"[]"]
    for _ in range(30):
        n = rng.randrange(1, len(good_body))
        bad.append(good_body[:n])  # truncated
        bad.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))  # noise
    sent_good = 0
    try:
        with caplog.at_level(logging.ERROR):
            for i, payload in enumerate(bad):
                integration.client.publish(f"{ROOT}/_command/parts", payload, 1)
                if i % 3 == 0:
                    integration.client.publish(f"{ROOT}/_command/parts", good_body, 1)
                    sent_good += 1
            integration.client.publish(
                f"{ROOT}/_command/parts", scrap(1, id="last", reply_to=f"{ROOT}/_reply/qms/last"), 1
            )
            await integration.wait_for(lambda t, p: t.endswith("/last"), timeout=20)
        assert scrapped(store) == sent_good + 1  # every good one applied
        refused = service.host.counters["commands_refused"]
        assert refused == len(bad)  # every bad one refused and counted
        assert service._client is not None
        assert service._client.handler_errors == 0  # refused cleanly: nothing escaped the service
        assert "could not be handled" not in caplog.text
    finally:
        await stopped(service, store)


async def test_a_stop_while_commands_keep_coming_writes_nothing_after_the_store_closed(
    mosquitto: Mosquitto, integration: Recorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, store = await started(mosquitto, tmp_path / "record.db")
    assert integration.client is not None
    with caplog.at_level(logging.WARNING):
        for _ in range(200):
            integration.client.publish(f"{ROOT}/_command/parts", scrap(1, at="2026-11-18T12:30:00Z"), 1)
        await asyncio.sleep(0.05)
        await stopped(service, store)
        for _ in range(200):
            integration.client.publish(f"{ROOT}/_command/parts", scrap(1, at="2026-11-18T12:30:00Z"), 1)
        await asyncio.sleep(1.0)  # anything left on the loop runs now
    assert "closed database" not in caplog.text
    assert "Traceback" not in caplog.text
    store = RecordStore(tmp_path / "record.db")
    try:
        applied = scrapped(store)
        assert 0 < applied <= 200
        assert applied == service.host.counters["commands_applied"]  # what was taken was kept
    finally:
        store.close()
