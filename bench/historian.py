"""The historian's write rate to a local VictoriaMetrics (Debian's, started here on a free port),
points/s: ours (line protocol built by services/historian/lines.py, sent by InfluxWriter's batches)
side by side with influxdb-client's own batching writer fed its Point objects, in the same run, the
same points (signal values of 50 machines). The goal: at least 250k points/s from the historian."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from services.context.reasons import DEFAULT_REASONS
from services.historian.lines import Encoder, machine_tags
from services.historian.writer import InfluxSettings, InfluxWriter, batching_client_write
from services.oee.engine import Definition
from tests.historian.servers import VictoriaMetrics

POINTS = 300_000
MACHINES = 50
SIGNALS = ("spindle_speed", "spindle_load", "feed_override", "part_count")
T0 = int(time.time() * 1000) - 86_400_000
Points = list[tuple[dict[str, str], int, str, float]]


def _points() -> Points:
    wheres = [machine_tags(f"acme/dayton/machining/mills/cell-{m % 5}/m{m:02d}") for m in range(MACHINES)]
    return [
        (wheres[i % MACHINES], T0 + i * 7, SIGNALS[i % len(SIGNALS)], float(i % 9000)) for i in range(POINTS)
    ]


def ours(settings: InfluxSettings, points: Points) -> float:
    """As the historian sends signal values: a page of one machine's at a time."""
    encoder = Encoder(DEFAULT_REASONS, Definition())
    by_machine: dict[str, list[tuple[int, str, object]]] = {}
    wheres = {}
    for where, ts, name, value in points:
        by_machine.setdefault(where["machine"], []).append((ts, name, value))
        wheres[where["machine"]] = where
    chunk = 5_000
    pages = [(m, rows[i : i + chunk]) for m, rows in by_machine.items() for i in range(0, len(rows), chunk)]
    started = time.perf_counter()
    writer = InfluxWriter(settings, max_lines=200_000)
    for machine, page in pages:
        lines = encoder.signals(wheres[machine], page)
        while writer.room() < len(lines):
            time.sleep(0.001)
        writer.put(lines)
    assert writer.flush(120)
    seconds = time.perf_counter() - started
    writer.close()
    assert writer.counters.written == len(points), writer.counters
    return seconds


def theirs(settings: InfluxSettings, points: Points) -> float:
    return batching_client_write(
        settings, (("signal", {**w, "signal": name}, {"value": value}, ts) for w, ts, name, value in points)
    )


def report() -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = VictoriaMetrics(Path(folder) / "vm", dedup=False)
        server.start()
        try:
            points = _points()
            a = InfluxSettings(url=server.url, org="bench", bucket="a", token=SecretStr("x"))
            ours_s = ours(a, points)
            theirs_s = theirs(a.model_copy(update={"bucket": "b"}), points)
        finally:
            server.stop()
    print(
        f"historian: {POINTS:,} points to VictoriaMetrics: ours {POINTS / ours_s:,.0f} points/s;"
        f" influxdb-client's batching writer with Point objects {POINTS / theirs_s:,.0f} points/s"
    )


if __name__ == "__main__":
    report()
