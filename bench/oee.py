"""OEE for 50 machines x 30 days of record, by machine and shift (the goal: under a second, so a wall
display can ask every minute). The record is written directly: a day of each machine is 160 state
intervals (running and stops with reasons, cut at shift edges by the calendar) and a part a cycle."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from services.context.reasons import DEFAULT_REASONS
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar, calendar_for
from services.context.state import Interval, MachineState, PartsMade
from services.oee.engine import Definition
from services.oee.report import oee
from uns.site import OeeConfig, parse_site

MACHINES = 50
DAYS = 30
T0 = 1_793_000_000_000
CYCLE_MS = 9 * 60_000  # 160 intervals a day: 80 cycles of 6 min cutting and 3 min standing
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
        for k in range(DAYS * 24 * 3_600_000 // CYCLE_MS):
            job = f"J{k // 40}"
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
        store.write(intervals, parts, [(m, MachineState.RUNNING, t, t, DAYS)])


def run() -> tuple[float, int]:
    site = parse_site(SHIFTS)
    assert site.config.shifts is not None
    calendar = calendar_for(site.config.shifts, site.config.timezone)
    definition = Definition.from_config(OeeConfig(), DEFAULT_REASONS)
    with tempfile.TemporaryDirectory() as tmp:
        store = RecordStore(Path(tmp) / "record.db")
        build(store, calendar)
        start = time.perf_counter()
        groups = oee(store, calendar, definition, T0, T0 + DAYS * 86_400_000, ("machine", "shift"))
        elapsed = time.perf_counter() - start
        store.close()
    return elapsed, len(groups)


def report() -> None:
    elapsed, groups = run()
    print(f"OEE of {MACHINES} machines x {DAYS} days by machine and shift: {elapsed:.2f} s ({groups} groups)")


if __name__ == "__main__":
    report()
