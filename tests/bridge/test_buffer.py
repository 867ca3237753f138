"""The disk buffer: survives a reopen, keeps order, drops the oldest beyond its bounds and counts it."""

from __future__ import annotations

from pathlib import Path

from bridge.buffer import DiskBuffer
from uns.sparkplug.edge import Sample


def snap(ts: int) -> list[Sample]:
    return [Sample("execution", "ACTIVE", ts), Sample("part_count", ts, ts, None)]


def test_rows_survive_a_reopen_in_order_with_bdseq(tmp_path: Path) -> None:
    buffer = DiskBuffer(tmp_path / "b.db")
    buffer.append([("m1", 1, snap(1)), ("m2", 2, snap(2)), ("m1", 3, snap(3))])
    buffer.last_bdseq = 7
    buffer.close()
    again = DiskBuffer(tmp_path / "b.db")
    assert again.depth == 3
    assert again.last_bdseq == 7
    assert again.devices() == {"m1", "m2"}
    rows = again.peek({"m1"})
    assert [(r.device, r.ts_ms) for r in rows] == [("m1", 1), ("m1", 3)]
    assert rows[1].samples == snap(3)
    again.delete([rows[0].id])
    assert again.depth == 2
    assert again.oldest_ms() == 2


def test_bounded_by_rows_and_age_and_what_is_dropped_is_counted(tmp_path: Path) -> None:
    buffer = DiskBuffer(tmp_path / "b.db", max_rows=3, max_age_ms=100)
    for ts in range(5):
        buffer.append([("m1", ts, snap(ts))])
    assert buffer.depth == 3
    assert buffer.dropped == 2
    assert [r.ts_ms for r in buffer.peek({"m1"})] == [2, 3, 4]
    buffer.append([("m1", 150, snap(150))])  # rows older than 100 ms before the newest go
    assert [r.ts_ms for r in buffer.peek({"m1"})] == [150]
    assert buffer.dropped == 5
    assert buffer.oldest_ms() == 150
