"""The context service while its record cannot be written, the cases around the clean cut of
tests/integration/test_record_outage.py: a rebuild (from a backfill) the record could not take is
done with the retry, not forgotten; commands are refused with 503 (nothing half done); the health
tick goes on; a stop while the record is back writes what was kept. On both real stores; the outage
is the store's own RecordUnavailableError raised by a switch on the real store's connection (a real
database cannot be made to fail at one chosen call)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.context.record import RecordStore, RecordUnavailableError
from services.context.state import Interval, MachineState
from tests.services.test_backfill import history, reconnect, setup

S = MachineState


class Outage:
    """Makes the store's connections fail while `down` (as a database gone would)."""

    def __init__(self, store: RecordStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        use, transaction = store._use, store._transaction

        @contextlib.contextmanager
        def failing(real: Callable[..., Any], *args: Any) -> Iterator[Any]:
            if self.down:
                raise RecordUnavailableError("the test's outage")
            with real(*args) as db:
                yield db

        monkeypatch.setattr(store, "_use", lambda: failing(use))
        monkeypatch.setattr(store, "_transaction", lambda *a: failing(transaction, *a))


EXPECTED = [
    Interval("vf2-01", 1000, 2000, S.IDLE),
    Interval("vf2-01", 2000, 3000, S.RUNNING),
    Interval("vf2-01", 3000, 5000, S.IDLE),
    Interval("vf2-01", 5000, 9000, S.RUNNING),
]


def test_a_rebuild_the_record_could_not_take_is_done_with_the_retry(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, edge, clock = setup(make_record, tmp_path)
    reconnect(service, edge, clock)
    real = store.replace_from
    calls = []

    def once(*args: Any) -> None:  # the backfill is in; the recomputation after it cannot be written
        calls.append(args[0])
        if len(calls) == 1:
            raise RecordUnavailableError("the test's outage")
        real(*args)

    monkeypatch.setattr(store, "replace_from", once)
    for message in history(edge):
        service.on_message(*message)
    service.flush()
    assert service._record_retry is not None  # offline, waiting to try again
    assert store.intervals("vf2-01", 0, 20_000)[-1].state is S.COMMS_LOSS  # not recomputed yet
    assert service.trackers["vf2-01"].state is S.IDLE  # the tracker as the record has it
    service.flush(retry=True)
    assert service._record_retry is None
    assert store.intervals("vf2-01", 0, 20_000) == EXPECTED
    assert (service.trackers["vf2-01"].state, service.trackers["vf2-01"].since_ms) == (S.IDLE, 9000)
    assert calls == ["vf2-01", "vf2-01"]


def test_while_the_record_cannot_be_written_commands_are_refused_and_health_goes_on(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, edge, clock = setup(make_record, tmp_path)
    outage = Outage(store, monkeypatch)
    outage.down = True
    reconnect(service, edge, clock)  # births: a closed interval the record cannot take
    assert service._record_retry is not None
    body = {"id": "c-1", "action": "login", "machine": "vf2-01", "operator": "ann"}
    refused = service.command("operator", json.dumps(body).encode(), via="test")
    assert (refused.ok, refused.status) == (False, 503)
    assert refused.error == "the record cannot be written now: send it again later"

    async def one_tick() -> None:
        service.health_interval_s = 0.01
        task = asyncio.create_task(service._report_health(0.01))
        await asyncio.sleep(0.1)
        assert not task.done()  # the record's copy of health skipped; the task lives on
        task.cancel()

    asyncio.run(one_tick())
    outage.down = False
    service.flush(retry=True)
    assert service._record_retry is None
    assert store.intervals("vf2-01", 0, 20_000)[-1] == Interval("vf2-01", 2500, 9000, S.COMMS_LOSS)
    again = service.command("operator", json.dumps(body).encode(), via="test")
    assert again.ok, again.error  # the same id: not applied before (it was refused)


def test_a_stop_writes_what_was_kept_when_the_record_is_back(
    make_record: Callable[..., RecordStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, edge, clock = setup(make_record, tmp_path)
    outage = Outage(store, monkeypatch)
    outage.down = True
    reconnect(service, edge, clock)
    assert service._record_retry is not None
    outage.down = False  # back, before the retry's time came
    clock.now = 12_000
    asyncio.run(service.stop())
    recorded = store.intervals("vf2-01", 0, 20_000)
    assert recorded[-2:] == [
        Interval("vf2-01", 2500, 9000, S.COMMS_LOSS),
        Interval("vf2-01", 9000, 12_000, S.IDLE),
    ]
