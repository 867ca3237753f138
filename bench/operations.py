"""The operations with their part counts, as the context service reads them at its start (every
machine's) and when a dispatch list comes, and the floor view every few seconds (the operations its
tiles show), from a record of a plant's year: 50 machines, 10,000 operations, 2,000,000 part counts.
Each operation's parts are summed for that operation only (the index `part_count_job`, schema
version 2); before, every call summed every part of the record."""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services.context.record import RecordStore

MACHINES = 50
OPS_PER_MACHINE = 200
PARTS = 2_000_000
RUNS = 5
T0 = 1_790_000_000_000


def _record(path: Path) -> None:
    store = RecordStore(path)
    store.register_machines((f"m{i:02d}", f"acme/bench/a/l/c/m{i:02d}", f"m{i:02d}") for i in range(MACHINES))
    store.close()
    with sqlite3.connect(path) as db:  # written directly: the figures are the reads'
        db.execute(
            "INSERT INTO dispatch_version (ts_ms, scope, via, body) VALUES (0, 'bench', 'bench', '{}')"
        )
        row = "(" + ", ".join("?" * 15) + ")"
        db.executemany(
            f"INSERT INTO operation VALUES {row}",  # noqa: S608 (placeholders only)
            [
                (
                    f"J{m}-{k}",
                    "10",
                    f"m{m:02d}",
                    "O1",
                    100,
                    k,
                    "P1",
                    None,
                    None,
                    None,
                    "completed",
                    None,
                    None,
                    1,
                    None,
                )
                for m in range(MACHINES)
                for k in range(OPS_PER_MACHINE)
            ],
        )
        db.executemany(
            "INSERT INTO part_count VALUES (?, ?, 1, ?, ?, '10', NULL)",
            (
                (f"m{n % MACHINES:02d}", T0 + n, n, f"J{n % MACHINES}-{n // MACHINES % OPS_PER_MACHINE}")
                for n in range(PARTS)
            ),
        )


def _ms(call: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def report() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "record.db"
        _record(path)
        store = RecordStore(path)
        try:
            shown = {(f"J{m}-{OPS_PER_MACHINE - 1}", "10") for m in range(MACHINES)}
            one = _ms(lambda: store.operations("m07"))
            start = _ms(lambda: [store.operations(f"m{m:02d}") for m in range(MACHINES)])
            floor = _ms(lambda: store.operations(keys=shown))
            every = _ms(store.operations)
        finally:
            store.close()
    print(
        f"operations: {PARTS:,} part counts, {MACHINES * OPS_PER_MACHINE:,} operations (median of {RUNS}):"
        f" one machine's {one:.1f} ms; every machine's, as the context service starts, {start:.0f} ms;"
        f" the floor view's {MACHINES} shown {floor:.1f} ms; all of them {every:.0f} ms"
    )


if __name__ == "__main__":
    report()
