"""The host's per-message path: values stored as the JSON they always were, and flushes that share
one record write under load while the first change after a quiet spell goes out at once."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.context.app import ContextService
from services.context.record import RecordStore, value_json
from tests.integration.test_sparkplug_mqtt import DEFS, SITE
from tests.services.test_backfill import Clock, ready
from uns.mqtt import BrokerAddress
from uns.site import parse_site
from uns.sparkplug.edge import EdgeSession, Sample


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        0,
        -7,
        2**70,
        1.5,
        -0.0,
        1e300,
        3.0,
        math.inf,
        -math.inf,
        "FEED_HOLD",
        'a"b\\é\n',
        "",
        None,
    ],
)
def test_values_are_stored_as_json_would_write_them(value: object) -> None:
    assert value_json(value) == json.dumps(value)  # type: ignore[arg-type]


def test_nan_is_stored_as_json_would_write_it() -> None:
    assert value_json(math.nan) == json.dumps(math.nan) == "NaN"


class _Loop:
    """Records what the service asks of its event loop (nothing runs by itself)."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []
        self.later: list[float] = []

    def call_soon(self, fn: Callable[[], None], *args: Any) -> None:
        self.soon.append(fn)

    def call_later(self, delay: float, fn: Callable[[], None], *args: Any) -> None:
        self.later.append(delay)


def test_a_burst_shares_a_flush_and_a_quiet_one_goes_at_once(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "record.db")
    service = ContextService(parse_site(SITE), store, BrokerAddress("127.0.0.1", 1), Clock())
    loop = _Loop()
    service._loop = loop  # type: ignore[assignment]  # (what start() sets)
    edge = EdgeSession("dayton", "edge1", DEFS)
    edge.new_connection(0)
    edge.device_online("vf2-01", 1000, ready(1000))
    for message in edge.births(1000):
        service.on_message(*message)
    assert len(loop.soon) == 1
    assert not loop.later
    service.flush_gap_s = 60.0  # (a gap no busy machine's scheduling outlasts between two lines)
    service.flush()
    for i in range(5):  # straight after that flush: the next waits for the gap, and once
        msg = edge.data(
            "vf2-01", [Sample("execution", "ACTIVE" if i % 2 == 0 else "READY", 2000 + i)], 2000 + i
        )
        assert msg is not None
        service.on_message(*msg)
    assert len(loop.soon) == 1
    assert len(loop.later) == 1
    assert 0 < loop.later[0] <= service.flush_gap_s
    service.flush()  # (as the loop would, after the gap) one write takes all five changes
    assert [i.end_ms for i in store.intervals("vf2-01", 0, 10_000)] == [2000, 2001, 2002, 2003, 2004]
    service.flush_gap_s = 0.0  # no gap: every hand-over flushes at once
    msg = edge.data("vf2-01", [Sample("execution", "READY", 3000)], 3000)
    assert msg is not None
    service.on_message(*msg)
    assert len(loop.soon) == 2
    assert len(loop.later) == 1
    store.close()
