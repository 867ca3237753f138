"""The record's sums by shift (`shift_time`, kept by triggers) against the pieces they sum: after
appends, rewrites of a piece (INSERT OR REPLACE), rebuilds (delete and insert), operators' reasons
(UPDATE) and a record opened from before the sums existed; and the reports that read them (downtime's
`stopped_by_shift`, OEE's `oee_time`) against the same figures computed here from the pieces, for
windows that start and end inside shifts, on their edges, in the gaps between them and around pieces
outside every shift longer than a day. A real SQLite file, seeded."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.context.record import DAY_MS, RecordStore
from services.context.state import Interval, MachineState

S = MachineState
T0 = 1_793_000_000_000  # 2026-10-26 (a Monday) 21:33 UTC
HOUR = 3_600_000
MACHINES = ("m1", "m2")
STATES = (S.RUNNING, S.IDLE, S.DOWN, S.SETUP, S.COMMS_LOSS)
REASONS = (None, "setup", "micro_stop", "machine_fault", "unclassified")


def shift_of(t: int) -> str | None:
    """Two 8-hour shifts a day from 06:00 UTC, none at night (so pieces outside every shift abound)."""
    day, ms = divmod(t, DAY_MS)
    hour = ms // HOUR
    date = datetime.fromtimestamp(day * 86_400, UTC).date().isoformat()
    return f"{date}/first" if 6 <= hour < 14 else f"{date}/second" if 14 <= hour < 22 else None


def next_edge(t: int) -> int:
    day = t - t % DAY_MS
    return min(e for e in (day + h * HOUR for h in (6, 14, 22, 30)) if e > t)


def pieces(rng: random.Random, machine: str, start: int, end: int) -> list[Interval]:
    """Pieces from `start` to `end`, cut at the shifts' edges; now and then a night outside every
    shift stood through as one piece longer than a day (a long weekend)."""
    out = []
    t = start
    while t < end:
        shift = shift_of(t)
        if shift is None and rng.random() < 0.1:
            stop = t + rng.randint(DAY_MS + 1, 5 * DAY_MS)
            shift = None
        else:
            stop = min(t + rng.randint(60_000, 2 * HOUR), next_edge(t))
        stop = min(stop, end)
        state = rng.choice(STATES)
        running = state is S.RUNNING
        out.append(
            Interval(
                machine,
                t,
                stop,
                state,
                reason=None if running else rng.choice(REASONS),
                job=rng.choice((None, "J1", "J2")),
                operation="10",
                shift=shift,
                run_start_ms=t - rng.randint(0, 30_000),
                stop_start_ms=None if running or rng.random() < 0.5 else t - rng.randint(0, HOUR),
            )
        )
        t = stop
    return out


def sums(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return sorted(db.execute("SELECT * FROM shift_time").fetchall())


def fresh_sums(path: Path) -> list[tuple[Any, ...]]:
    """The sums of the record's pieces now, as a record from before the sums would get them."""
    copy = sqlite3.connect(":memory:")
    sqlite3.connect(path).backup(copy)
    copy.execute("DROP TABLE shift_time")
    for (name,) in copy.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        copy.execute(f"DROP TRIGGER {name}")
    copy.execute("PRAGMA user_version = 0")  # records from before shift_time had no schema version
    copy.commit()
    backup = path.parent / "from-before.db"
    backup.unlink(missing_ok=True)
    with sqlite3.connect(backup) as target:
        copy.backup(target)
    reopened = RecordStore(backup)  # fills shift_time from the pieces, once
    try:
        return sums(reopened._db)
    finally:
        reopened.close()


@pytest.fixture
def record(tmp_path: Path) -> tuple[RecordStore, random.Random]:
    store = RecordStore(tmp_path / "record.db")
    store.register_machines((m, f"a/l/c/{m}", m) for m in MACHINES)
    rng = random.Random(7)
    for m in MACHINES:
        store.write(intervals=pieces(rng, m, T0, T0 + 12 * DAY_MS))
    return store, rng


def test_the_sums_follow_every_write_of_the_pieces(
    record: tuple[RecordStore, random.Random], tmp_path: Path
) -> None:
    store, rng = record
    db = store._db
    assert sums(db) == fresh_sums(tmp_path / "record.db")
    assert db.execute("SELECT count(*) FROM shift_time WHERE shift LIKE '%/'").fetchone()[0] > 0
    assert (
        db.execute("SELECT count(*) FROM state_interval WHERE end_ms - start_ms > 86400000").fetchone()[0] > 0
    )
    # a piece written again with another reason (INSERT OR REPLACE deletes the old row)
    for i in store.intervals("m1", T0 + 3 * DAY_MS, T0 + 4 * DAY_MS)[:3]:
        store.write(intervals=[dataclasses.replace(i, reason="tooling", shift=i.shift)])
    night0 = T0 + 12 * DAY_MS - (T0 + 12 * DAY_MS) % DAY_MS + 22 * HOUR  # after the generated pieces
    alike = [  # a group of four (as the generated pieces outside every shift before them)
        Interval(
            "m1",
            night0 + n * HOUR,
            night0 + (n + 1) * HOUR,
            S.IDLE,
            reason="micro_stop",
            job="J1",
            operation="10",
        )
        for n in range(4)
    ]
    morning = night0 + 8 * HOUR  # and the first shift after that night
    alike += [
        Interval("m1", morning + n * HOUR, morning + (n + 1) * HOUR, S.IDLE, reason="micro_stop", job="J1")
        for n in range(3)
    ]
    alike.append(dataclasses.replace(alike[4], start_ms=morning - DAY_MS, end_ms=morning - DAY_MS + 1000))
    alike = [dataclasses.replace(i, operation="10", shift=shift_of(i.start_ms)) for i in alike]
    store.write(intervals=alike)  # groups of two and three: their first and last pieces are rewritten
    store.write(intervals=[dataclasses.replace(alike[n], reason="no_work") for n in (0, 3, 4, 6)])
    night = [i for i in store.intervals("m1", T0 + 4 * DAY_MS, T0 + 6 * DAY_MS) if i.shift is None]
    for i in night[:4]:  # pieces outside every shift too, each its group's first or last now and then
        store.write(intervals=[dataclasses.replace(i, reason="no_work")])
    # a rebuild: everything from day 8 on replaced by another stretch
    start = store.rebuild_start("m2", T0 + 8 * DAY_MS)
    store.replace_from(
        "m2",
        start,
        pieces(rng, "m2", start.previous_start or start.start_ms, T0 + 13 * DAY_MS),
        [],
        (S.IDLE, T0, T0, 0, None, None, None),
    )
    # an operator's reason for one stop (an UPDATE of its pieces)
    stopped = next(
        i for i in store.intervals("m1", T0 + 5 * DAY_MS, T0 + 6 * DAY_MS) if i.state is not S.RUNNING
    )
    store.set_reason("m1", stopped.stop_of, stopped.reason, "waiting_material", "ann", "test", T0, "")
    assert sums(db) == fresh_sums(tmp_path / "record.db")
    assert db.execute("SELECT count(*) FROM shift_time WHERE pieces <= 0").fetchone()[0] == 0


def naive(store: RecordStore, start: int, end: int) -> tuple[dict[Any, list[int]], dict[Any, int]]:
    """Downtime (ms, stops, first piece's start) by machine, shift, state and reason, and OEE's time
    (ms) by machine, shift, job, operation, state and reason (outside every shift: running only), from
    the pieces."""
    down: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 1 << 62])
    time: dict[Any, int] = defaultdict(int)
    for m in MACHINES:
        for i in store.intervals(m, start, end):
            a, b = max(i.start_ms, start), min(i.end_ms, end)
            if b <= a:
                continue
            if i.shift is not None or i.state is S.RUNNING:
                time[(m, i.shift, i.job, i.operation, i.state.value, i.reason)] += b - a
            if i.state is not S.RUNNING:
                d = down[(m, i.shift, i.state.value, i.reason)]
                counted = max(i.stop_of, start)
                d[0] += b - a
                d[1] += int(i.start_ms <= counted < i.end_ms)
                d[2] = min(d[2], a)
    return dict(down), dict(time)


def windows() -> list[tuple[int, int]]:
    rng = random.Random(11)
    out = [(T0, T0 + 12 * DAY_MS), (T0 - DAY_MS, T0 + 20 * DAY_MS)]
    day = T0 - T0 % DAY_MS + 2 * DAY_MS
    out += [
        (day + 6 * HOUR, day + 8 * DAY_MS + 14 * HOUR),
        (day, day + DAY_MS),
        (day + 23 * HOUR, day + 30 * HOUR),
    ]
    out += [
        (a, a + rng.randint(1, 9 * DAY_MS)) for a in (rng.randint(T0, T0 + 10 * DAY_MS) for _ in range(25))
    ]
    return out


@pytest.mark.parametrize("window", windows())
def test_the_reports_read_from_the_sums_what_the_pieces_say(
    record: tuple[RecordStore, random.Random], window: tuple[int, int]
) -> None:
    check(record[0], *window)


def test_windows_that_begin_days_into_a_long_piece_outside_every_shift(
    record: tuple[RecordStore, random.Random],
) -> None:
    store, _ = record
    long = [
        i
        for m in MACHINES
        for i in store.intervals(m, T0, T0 + 12 * DAY_MS)
        if i.end_ms - i.start_ms > 3 * DAY_MS
    ]
    assert long
    for i in long:
        for start in (i.start_ms + 2 * DAY_MS + HOUR, i.end_ms - HOUR):
            check(store, start, start + 2 * DAY_MS)


def check(store: RecordStore, start: int, end: int) -> None:
    down, time = naive(store, start, end)
    summed, uncut = store.stopped_by_shift(MACHINES, start, end)
    got_down: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 1 << 62])
    for m, shift, state, reason, ms, stops, first in summed:
        d = got_down[(m, shift, state, reason)]
        d[0] += ms
        d[1] += stops
        d[2] = min(d[2], first)
    # a machine whose record names no shift in the window (one piece through it): its pieces, to cut
    for m, a, b, state, reason, stop in uncut:
        d = got_down[(m, None, state, reason)]
        d[0] += min(b, end) - max(a, start)
        d[1] += int(a <= max(stop, start) < b)
        d[2] = min(d[2], max(a, start))
    assert dict(got_down) == down
    got_time: dict[Any, int] = defaultdict(int)
    for m, shift, job, operation, state, reason, ms, _ in store.oee_time(
        MACHINES, start, end, by_operation=True, by_start=False, running_outside=True
    ):
        got_time[(m, shift, job, operation, state, reason)] += ms
    assert {k: v for k, v in got_time.items() if v} == time
    by_piece: dict[Any, int] = defaultdict(int)
    for m, shift, job, operation, state, reason, ms, _ in store.oee_time(
        MACHINES, start, end, by_operation=True, by_start=True, running_outside=True
    ):
        by_piece[(m, shift, job, operation, state, reason)] += ms
    assert {k: v for k, v in by_piece.items() if v} == time
