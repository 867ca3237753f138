"""Exports (GET /api/v1/export/intervals) of 50 machines' record, streamed through the API's ASGI app
with the body counted and dropped as it comes (what a client that writes it to disk sees, without
the disk). The record is written directly: an interval about every 10 minutes a machine (running
and stops of 4 to 16 minutes with reason, evidence, job, operation, operator, cut at the shift
calendar's edges), a part count a running interval: a year is about 2.6 million intervals.

A year takes minutes to write, so by default `DAYS` (30) are written and exported, and the figures
for a year are extrapolated from the measured rate (the export's memory does not grow with the
range: see the peaks for two weeks and for 30 days, and tests/services/test_exports.py).
`UNS_BENCH_EXPORT_DAYS=365 python -m bench.exports` writes and exports the whole year instead."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import tempfile
import time
import tracemalloc
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr

from bench.oee import SHIFTS
from services.api.app import create_app
from services.api.exports import PAGE
from services.api.settings import ApiSettings
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar, calendar_for
from services.context.state import Interval, MachineState, PartsMade, Story
from uns.clock import iso
from uns.site import parse_site

MACHINES = 50
DAYS = int(os.environ.get("UNS_BENCH_EXPORT_DAYS", "30"))
YEAR_DAYS = 365
T0 = 1_767_243_600_000  # 2026-01-01T05:00:00Z, midnight in Dayton
DAY_MS = 86_400_000
TOKEN = "x" * 32
PEAK_DAYS = (14, 30)  # the tracemalloc peak for these ranges (tracemalloc makes an export ~5x slower)
PEAK_MACHINES = 5  # ... of this many machines
RUN = (MachineState.RUNNING, None, None, None)
STOPS = (
    (MachineState.IDLE, "micro_stop", "rule", "idle 3 min after part 12 of 24173/20: no alarm"),
    (MachineState.DOWN, "machine_fault", "rule", "alarm 2105 TOOL BREAKAGE DETECTED at 06:41"),
    (MachineState.SETUP, "setup", "rule", "setup mode after program change O5679 -> O5680"),
    (MachineState.IDLE, "waiting_inspection", "operator", "maria via api at 2026-01-01T12:00:00.000Z: CMM"),
)


def build(store: RecordStore, calendar: ShiftCalendar, days: int) -> int:
    """The record of `days` days of every machine, written a machine at a time; how many intervals."""
    rng = random.Random(11)
    store.register_machines((f"m{n:02d}", f"acme/bench/a/l/c/m{n:02d}", f"m{n:02d}") for n in range(MACHINES))
    end_ms = T0 + days * DAY_MS
    written = 0
    for n in range(MACHINES):
        m = f"m{n:02d}"
        t, k, counter = T0 + rng.randrange(0, 600_000), 0, 0
        intervals: list[Interval] = []
        parts: list[PartsMade] = []
        while t < end_ms:
            job, operator = f"J{n}-{k // 48}", ("ann", "bob", "chen")[k // 48 % 3]
            end = min(t + rng.randrange(240_000, 960_000), end_ms)
            running = k % 2 == 0
            state, reason, source, evidence = (
                (MachineState.RUNNING, None, None, None) if running else STOPS[k % 8 // 2]
            )
            story = (
                Story(program=f"O{5000 + k // 48}", parts=k // 2 % 48, execution="ACTIVE")
                if running
                else None
            )
            for a, b, shift in calendar.split(t, end):
                key = shift.key if shift else None
                intervals.append(
                    Interval(
                        *(m, a, b, state, reason, source, job, "20", key, operator, None, t, evidence),
                        *(
                            None if running else t,
                            story if running and b == end else None,
                        ),  # story: last piece
                    )
                )
            if running:
                counter += 1
                parts.append(PartsMade(m, end, 1, counter, job, "20", key))
            t, k = end, k + 1
            if len(intervals) >= 20_000:
                store.write(intervals, parts)
                written, intervals, parts = written + len(intervals), [], []
        store.write(intervals, parts)
        written += len(intervals)
    return written


@dataclass
class Streamed:
    status: int = 0
    size: int = 0
    rows: int = 0


async def _get(app: FastAPI, query: str) -> Streamed:
    """GET /api/v1/export/intervals over ASGI; the body counted and dropped."""
    path = "/api/v1/export/intervals"
    scope = {
        **{"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET"},
        **{"scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode()},
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {TOKEN}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    got, asked = Streamed(), False
    end = b"\r\n" if "format=csv" in query else b"\n"

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got.status = message["status"]
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            got.size += len(chunk)
            got.rows += chunk.count(end)

    await app(scope, receive, send)
    got.rows -= 1 if "format=csv" in query else 0  # the header row
    return got


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _peak_mb(app: FastAPI, query: str) -> float:
    tracemalloc.start()
    try:
        asyncio.run(_get(app, query))
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def report(days: int = DAYS) -> None:
    site = parse_site(SHIFTS)
    assert site.config.shifts is not None
    calendar = calendar_for(site.config.shifts, site.config.timezone)
    with tempfile.TemporaryDirectory() as tmp:
        store = RecordStore(Path(tmp) / "record.db")
        started = time.perf_counter()
        count = build(store, calendar, days)
        built_s = time.perf_counter() - started
        app = create_app(
            ApiSettings(api_token=SecretStr(TOKEN)), store, calendar, timezone="America/New_York"
        )
        whole = f"start={iso(T0)}&end={iso(T0 + days * DAY_MS)}"
        some = "".join(f"&machine=m{n:02d}" for n in range(PEAK_MACHINES))
        spans = {
            f"{d} days": f"start={iso(T0)}&end={iso(T0 + d * DAY_MS)}{some}" for d in PEAK_DAYS if d <= days
        }
        asyncio.run(_get(app, f"format=csv&start={iso(T0)}&end={iso(T0 + DAY_MS)}"))  # imports, caches
        figures = {}
        for fmt in ("csv", "jsonl"):
            rss = _rss_mb()
            started = time.perf_counter()
            got = asyncio.run(_get(app, f"format={fmt}&{whole}"))
            seconds = time.perf_counter() - started
            assert got.status == 200
            assert got.rows == count, (got.rows, count)
            figures[fmt] = (got, seconds, _rss_mb() - rss)
        peaks = {span: _peak_mb(app, f"format=csv&{query}") for span, query in spans.items()}
        store.close()
    print(f"exports: {MACHINES} machines x {days} days = {count:,} intervals (written in {built_s:.0f} s)")
    for fmt, (got, seconds, rss) in figures.items():
        rate = got.rows / seconds
        year_rows, year_gb = count * YEAR_DAYS / days, got.size * YEAR_DAYS / days / 1e9
        year = f"; a year ({year_rows / 1e6:.1f}M intervals, ~{year_gb:.1f} GB) at this rate:"
        print(
            f"exports: {fmt.upper()} {got.size / 1e6:.0f} MB in {seconds:.1f} s: {rate:,.0f} intervals/s,"
            f" {got.size / 1e6 / seconds:.1f} MB/s; max RSS grew {rss:.1f} MB"
            + ("" if days >= YEAR_DAYS else f"{year} ~{year_rows / rate:.0f} s (extrapolated)")
        )
    print(
        f"exports: tracemalloc peak of the CSV export of {PEAK_MACHINES} machines, "
        + ", ".join(f"{span} {peak:.1f} MB" for span, peak in peaks.items())
        + f" (a machine's rows are read {PAGE:,} at a time: past that the peak stays)"
    )


if __name__ == "__main__":
    report()
