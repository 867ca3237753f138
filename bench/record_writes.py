"""Record writes per second, SQLite against PostgreSQL, for the context service's write shape: one
`store.write(intervals, parts, current, events)` per flush, as services/context/app.py `flush` makes
it. 50 machines; each message closes one interval, logs two signal values and updates its machine's
current state, and every fifth makes a part. Batches of 1, 10, 100 and 1,000 messages' worth (one
transaction each; under load the context service's writes gather for up to RECORD_GAP_S, 50 ms, or
RECORD_BATCH values: 500 messages at 10,000 msg/s). SQLite: a temporary file (WAL,
synchronous=NORMAL, as the store sets it). PostgreSQL: a database of the bench's own on
UNS_BENCH_POSTGRES, created and dropped here."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.context.record import Current, Event, RecordStore, open_record
from services.context.state import Interval, MachineState, PartsMade, SignalValue

POSTGRES = os.environ.get("UNS_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
MACHINES = [f"m{i:02d}" for i in range(50)]
BATCHES = (1, 10, 100, 1_000)
BUDGET_S = 4.0  # per backend and batch size, at most (the run stays well under a minute)
MAX_MESSAGES = 20_000
T0 = 1_795_100_000_000
STEP_MS = 20_000


class Writer:
    """The context's flushes for 50 machines: message `n` is on machine n % 50."""

    def __init__(self) -> None:
        self.n = 0
        self.counts = dict.fromkeys(MACHINES, 0)

    def batch(self, size: int) -> tuple[list[Interval], list[PartsMade], list[Current], list[Event]]:
        intervals, parts, events = [], [], []
        current: dict[str, Current] = {}
        for _ in range(size):
            n, self.n = self.n, self.n + 1
            m = MACHINES[n % len(MACHINES)]
            round_ = n // len(MACHINES)
            start, end = T0 + round_ * STEP_MS, T0 + (round_ + 1) * STEP_MS
            state = MachineState.RUNNING if round_ % 2 else MachineState.IDLE
            after = MachineState.IDLE if round_ % 2 else MachineState.RUNNING
            reason = None if state is MachineState.RUNNING else "unclassified"
            intervals.append(
                Interval(
                    m,
                    start,
                    end,
                    state,
                    reason,
                    "default",
                    f"J{round_ // 50}",
                    "10",
                    "2026-11-18/first",
                    "ann",
                    run_start_ms=start,
                    stop_start_ms=start if reason else None,
                )
            )
            events.append((m, SignalValue("execution", after.name, end), "live"))
            events.append((m, SignalValue("spindle_load", 12.5, end), "live"))
            if n % 5 == 0:
                self.counts[m] += 1
                parts.append(
                    PartsMade(m, end, 1, self.counts[m], f"J{round_ // 50}", "10", "2026-11-18/first")
                )
            current[m] = (m, after, end, end, self.counts[m], None, None, {"job": f"J{round_ // 50}"})
        return intervals, parts, list(current.values()), events


def rate(store: RecordStore, size: int) -> tuple[float, float]:
    """(messages/s, transactions/s) writing batches of `size` messages for up to BUDGET_S."""
    store.register_machines((m, f"acme/bench/a/l/c/{m}", m) for m in MACHINES)
    writer = Writer()
    store.write(*writer.batch(len(MACHINES)))  # every machine has a current row: updates from here on
    written = flushes = 0
    start = time.perf_counter()
    while written < MAX_MESSAGES and time.perf_counter() - start < BUDGET_S:
        store.write(*writer.batch(size))
        written += size
        flushes += 1
    elapsed = time.perf_counter() - start
    return written / elapsed, flushes / elapsed


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database of the bench's own on UNS_BENCH_POSTGRES (its URL), dropped at the end."""
    import psycopg

    name = f"uns_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield psycopg.conninfo.make_conninfo(POSTGRES, dbname=name)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def pg_record(url: str, schema: str) -> str:
    """A URL of the bench database whose record lives in a fresh schema (search_path)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    parts: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(url)
    user, host, port = parts.get("user", "postgres"), parts.get("host", "127.0.0.1"), parts.get("port", 5432)
    return f"postgresql://{user}@{host}:{port}/{parts['dbname']}?options=-csearch_path%3D{schema}"


def run() -> dict[int, dict[str, tuple[float, float]]]:
    out: dict[int, dict[str, tuple[float, float]]] = {size: {} for size in BATCHES}
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as url:
        for size in BATCHES:
            for backend in ("sqlite", "postgresql"):
                where = str(Path(tmp) / f"b{size}.db") if backend == "sqlite" else pg_record(url, f"b{size}")
                store = open_record(where)
                try:
                    out[size][backend] = rate(store, size)
                finally:
                    store.close()
    return out


def report() -> None:
    figures = run()
    print(f"record writes ({len(MACHINES)} machines; one store.write per flush):")
    head = ("messages/flush", "SQLite msg/s", "flush/s", "PostgreSQL msg/s", "flush/s")
    print("  {:>14}  {:>12}  {:>8}  {:>16}  {:>8}".format(*head))
    for size, by in figures.items():
        (s_msg, s_tx), (p_msg, p_tx) = by["sqlite"], by["postgresql"]
        print(f"  {size:>14}  {s_msg:>12,.0f}  {s_tx:>8,.0f}  {p_msg:>16,.0f}  {p_tx:>8,.0f}")


if __name__ == "__main__":
    report()
