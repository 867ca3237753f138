"""Identical report requests in flight share one computation (services/api/coalesce.py): the
coalescer alone with threads, and the downtime, OEE and losses routes over a real uvicorn with eight
clients."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Response
from pydantic import SecretStr

from services.api.app import create_app
from services.api.coalesce import COALESCER, Coalescer
from services.api.settings import ApiSettings
from services.context.record import DAY_MS, RecordStore
from tests.browser import LiveServer
from tests.services.test_shift_time import MACHINES, T0, pieces
from uns.clock import iso


def test_requests_in_flight_share_and_later_ones_compute_again() -> None:
    c = Coalescer()
    release = threading.Event()
    calls: list[int] = []

    def compute() -> Response:
        calls.append(1)
        release.wait(5)
        return Response(b'{"rows": []}', media_type="application/json", headers={"X-Range": "shift"})

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(c.run, ("k",), compute) for _ in range(4)]
        deadline = time.monotonic() + 5
        while c.shared < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        answers = [f.result() for f in futures]
    assert len(calls) == 1
    assert c.shared == 3
    assert {bytes(a.body) for a in answers} == {b'{"rows": []}'}
    assert {a.media_type for a in answers} == {"application/json"}
    assert {a.headers["x-range"] for a in answers} == {"shift"}  # the owner's own headers too
    c.run(("k",), compute)  # nothing is kept: the next one computes
    assert len(calls) == 2


def test_a_failure_reaches_every_request_that_waited_for_it_and_other_keys_do_not_wait() -> None:
    c = Coalescer()
    release = threading.Event()

    def broken() -> Response:
        release.wait(5)
        raise RuntimeError("the record is locked")

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(c.run, ("a",), broken)
        while not c._running:
            time.sleep(0.01)
        second = pool.submit(c.run, ("a",), broken)
        other = c.run(("b",), lambda: Response(b"b"))  # another key: computed at once
        assert bytes(other.body) == b"b"
        deadline = time.monotonic() + 5
        while c.shared < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        for f in (first, second):
            with pytest.raises(RuntimeError, match="locked"):
                f.result()
    assert c._running == {}


def test_the_record_changed_by_another_process_is_a_new_key(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "record.db")
    other = RecordStore(tmp_path / "record.db")  # as the context service would hold it
    try:
        before = store.data_version()
        other.register_machines([("m1", "a/l/c/m1", "m1")])
        assert store.data_version() != before
    finally:
        store.close()
        other.close()


@pytest.mark.parametrize("report", ["downtime", "oee", "losses"])
def test_eight_clients_asking_the_same_report_share_one_computation(
    live_record: str, report: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request's computation is held at its start (the routes' first read, which all
    three make) until the seven others have joined it: one computation, eight equal answers."""
    import services.api.downtime
    import services.api.oee

    url = live_record.format(report=report)
    alone = httpx.get(url, headers={"Authorization": "Bearer " + "t" * 32}, timeout=30)
    alone.raise_for_status()
    release, entered = threading.Event(), []
    real = services.api.oee.known_machines

    def held(*args: Any) -> list[str]:
        entered.append(1)
        assert release.wait(30), "never released"
        return real(*args)

    monkeypatch.setattr(services.api.oee, "known_machines", held)
    monkeypatch.setattr(services.api.downtime, "known_machines", held)
    shared_before = COALESCER.shared

    def ask(_: int) -> bytes:
        r = httpx.get(url, headers={"Authorization": "Bearer " + "t" * 32}, timeout=30)
        r.raise_for_status()
        assert r.headers["content-type"] == "application/json"
        return r.content

    with ThreadPoolExecutor(8) as pool:
        asked = [pool.submit(ask, n) for n in range(8)]
        deadline = time.monotonic() + 15
        while COALESCER.shared - shared_before < 7:
            assert time.monotonic() < deadline, f"{COALESCER.shared - shared_before} of 7 joined"
            time.sleep(0.01)
        release.set()
        answers = [a.result() for a in asked]
    assert len(entered) == 1, "one computation"
    assert set(answers) == {alone.content}, "a shared answer is the one a request alone gets"
    assert b'"rows"' in answers[0]


def test_a_shared_report_is_the_route_model_s_answer(live_record: str) -> None:
    """The routes send their answer themselves (to share it): it is still exactly their documented
    model, every field as the OpenAPI document says."""
    from services.api.losses import LossesOut
    from services.api.oee import OeeOut

    for report, model in (("oee", OeeOut), ("losses", LossesOut)):
        r = httpx.get(live_record.format(report=report), headers={"Authorization": "Bearer " + "t" * 32})
        r.raise_for_status()
        answer = r.json()
        assert model.model_validate(answer).model_dump(mode="json") == answer, report
        assert answer["rows"], report


@pytest.fixture
def live_record(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn over a record of two machines and twelve days (tests/services/test_shift_time.py
    writes its pieces); the URL of a report (`{report}`: downtime, oee, losses) over those days."""
    store = RecordStore(tmp_path / "record.db")
    store.register_machines((m, f"acme/dayton/a/l/c/{m}", m) for m in MACHINES)
    rng = random.Random(3)
    for m in MACHINES:
        store.write(intervals=pieces(rng, m, T0, T0 + 12 * DAY_MS))
    app = create_app(ApiSettings(api_token=SecretStr("t" * 32)), store, clock=lambda: T0 + 13 * DAY_MS)
    try:
        with LiveServer(app) as live:
            yield f"{live.url}/api/v1/{{report}}?start={iso(T0)}&end={iso(T0 + 12 * DAY_MS)}"
    finally:
        store.close()
