"""OEE for 50 machines x 30 days of record, by machine and shift (the goal: under a second, so a wall
display can ask every minute). The record is written directly: a day of each machine is 160 state
intervals (running and stops with reasons, cut at shift edges by the calendar) and a part a cycle;
each machine runs a new job every 6 hours, of 20 part numbers it makes again and again.

Figures (medians of `RUNS`): the ideal cycle times from the part master (as from the dispatch list:
nothing to observe); from the best observed cycle of every part, asked the first time (every
operation's cycles read from the record) and asked again after new data came (the cycles kept,
those of the operations that changed read again); and the current shift alone, asked the first time."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services.context.jobs import Operation
from services.context.reasons import DEFAULT_REASONS
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar, calendar_for
from services.context.state import Interval, MachineState, PartsMade
from services.oee.engine import Definition
from services.oee.observed import ObservedCycles
from services.oee.report import oee
from uns.site import OeeConfig, PartConfig, parse_site

MACHINES = 50
DAYS = 30
T0 = 1_793_000_000_000
CYCLE_MS = 9 * 60_000  # 160 intervals a day: 80 cycles of 6 min cutting and 3 min standing
PARTS = 20  # part numbers each machine makes, a job of 40 after another
RUNS = 5
REASONS = ("micro_stop", "setup", "machine_fault", "unclassified", "waiting_inspection")
SHIFTS = """
enterprise: acme
site: bench
timezone: America/New_York
sparkplug: {group_id: bench, edge_node_id: edge, host_id: bench-host}
shifts:
  pattern:
    - name: first
      start: "06:00"
      end: "14:00"
      days: [mon, tue, wed, thu, fri]
      breaks: [{name: lunch, start: "11:30", end: "12:00"}]
    - {name: second, start: "14:00", end: "22:00", days: [mon, tue, wed, thu, fri]}
areas:
  - name: a
    lines:
      - name: l
        cells:
          - name: c
            machines:
              - id: m0
                source:
                  protocol: opcua
                  endpoint: opc.tcp://h:1
                  signals: {execution: a, mode: b, part_count: c, alarm_code: d, estop: e}
"""


def build(store: RecordStore, calendar: ShiftCalendar) -> None:
    store.register_machines((f"m{n}", f"acme/bench/a/l/c/m{n}", f"m{n}") for n in range(MACHINES))
    for n in range(MACHINES):
        m = f"m{n}"
        intervals, parts = [], []
        t = T0
        cycles = DAYS * 24 * 3_600_000 // CYCLE_MS
        for k in range(cycles):
            job = f"J{n}-{k // 40}"
            for a, b, shift in calendar.split(t, t + 360_000):
                key = shift.key if shift else None
                intervals.append(Interval(m, a, b, MachineState.RUNNING, None, None, job, "10", key))
            stop = REASONS[k % len(REASONS)]
            for a, b, shift in calendar.split(t + 360_000, t + CYCLE_MS):
                key = shift.key if shift else None
                intervals.append(Interval(m, a, b, MachineState.IDLE, stop, "rule", job, "10", key))
            made_in = calendar.shift_at(t + 360_000)
            parts.append(PartsMade(m, t + 360_000, 1, k + 1, job, "10", made_in.key if made_in else None))
            t += CYCLE_MS
        store.write(intervals, parts, [(m, MachineState.RUNNING, t, t, cycles)])
        ops = [
            Operation(f"J{n}-{j}", "10", m, f"O{j % PARTS}", 40, j, f"P-{n}-{j % PARTS}")
            for j in range(cycles // 40 + 1)
        ]
        store.save_dispatch(m, "bench", "bench", T0, "{}", ops, [])


def more(store: RecordStore, calendar: ShiftCalendar, end_ms: int) -> int:
    """A minute of new record on every machine (running on, and a part): returns the new end."""
    key = calendar.shift_at(end_ms)
    shift = key.key if key else None
    for n in range(MACHINES):
        m = f"m{n}"
        job = f"J{n}-{(end_ms - T0) // CYCLE_MS // 40}"
        store.write(
            [Interval(m, end_ms, end_ms + 60_000, MachineState.RUNNING, None, None, job, "10", shift)],
            [PartsMade(m, end_ms + 60_000, 1, 100_000 + end_ms // 60_000, job, "10", shift)],
            [(m, MachineState.RUNNING, end_ms + 60_000, end_ms + 60_000, 0)],
        )
    return end_ms + 60_000


def _timed(ask: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    groups = ask()
    return time.perf_counter() - start, groups


def run(runs: int = RUNS) -> dict[str, tuple[float, int]]:
    """Median seconds (and groups) of each way of asking."""
    site = parse_site(SHIFTS)
    assert site.config.shifts is not None
    calendar = calendar_for(site.config.shifts, site.config.timezone)
    master = OeeConfig(
        parts=[
            PartConfig(part_number=f"P-{n}-{p}", ideal_cycle_s=330.0)
            for n in range(MACHINES)
            for p in range(PARTS)
        ]
    )
    by_master = Definition.from_config(master, DEFAULT_REASONS)
    observed = Definition.from_config(OeeConfig(), DEFAULT_REASONS)
    times: dict[str, list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = RecordStore(Path(tmp) / "record.db")
        build(store, calendar)
        end = T0 + DAYS * 86_400_000
        kept = ObservedCycles(store)

        def ask(definition: Definition, cycles: ObservedCycles | None = None, start: int = T0) -> int:
            by = ("machine", "shift")
            return len(oee(store, calendar, definition, start, end, by, now_ms=end, cycles=cycles))

        oee(store, calendar, observed, T0, end, cycles=kept)  # the API's first ask after it started
        for _ in range(runs):
            times.setdefault("ideal cycles from the part master", []).append(_timed(lambda: ask(by_master)))
            times.setdefault("best observed, first ask", []).append(_timed(lambda: ask(observed)))
            end = more(store, calendar, end)
            times.setdefault("best observed, asked again", []).append(_timed(lambda: ask(observed, kept)))
            shift = calendar.shift_at(end - 1) or calendar.shifts(end - 86_400_000, end)[-1]
            now = _timed(lambda: ask(observed, None, shift.start_ms))  # noqa: B023 (called here)
            times.setdefault("the current shift, best observed, first ask", []).append(now)
        store.close()
    return {name: (statistics.median(s for s, _ in got), got[0][1]) for name, got in times.items()}


def report() -> None:
    for name, (seconds, groups) in run().items():
        print(
            f"OEE of {MACHINES} machines x {DAYS} days by machine and shift, {name}: {seconds:.2f} s"
            f" ({groups} groups, median of {RUNS})"
        )


if __name__ == "__main__":
    report()
