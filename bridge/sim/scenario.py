"""A seeded, deterministic job-shop scenario for one CNC machine, with its own ground truth.

A machine goes through jobs: setup (manual and MDI), program prove-out (reduced feed override,
feed holds), the wait for the first article's inspection, production cycles with load/unload between
them, micro-stops, alarms (a tool breakage means a tool change in MANUAL) and the reset after them,
the odd emergency stop, and idle time between jobs (no work released: the simulated ERP releases a
job just before it begins, bridge/sim/erp.py). Each stretch of time is a `Segment` holding every
controller signal, the state a person watching the machine would write down and the reason a
supervisor would give for a stop (`PHASE_REASONS`); `changes()` turns segments into what the
controller shows (only the signals that changed), `truth()` into the intervals that really happened,
and `reasons()` into the stops with their reasons. Pure: no clock, no sockets.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from uns.site import Signal

Value = bool | int | float | str

# Expected machine states (see services/context/state.py for how the service derives them).
RUNNING, IDLE, SETUP, DOWN = "running", "idle", "setup", "down"

# The reason a supervisor would write down for each phase that is a stop (services/context/reasons.py);
# phases of running time have none.
PHASE_REASONS: dict[str, str] = {
    "setup": "setup",
    "prove_out": "program_prove_out",  # the feed holds while the first part is proved out
    "first_article": "waiting_inspection",
    "load_unload": "micro_stop",
    "micro_stop": "micro_stop",
    "alarm": "machine_fault",
    "emergency_stop": "machine_fault",
    "tool_change": "fault_recovery",  # a broken tool replaced in MANUAL after the alarm
    "alarm_reset": "fault_recovery",
    "estop_reset": "fault_recovery",
    "idle": "no_work",  # between jobs: the next one is not released yet
}


@dataclass(frozen=True, slots=True)
class Controller:
    execution: str = "READY"
    mode: str = "AUTOMATIC"
    program: str = ""
    alarm_code: int = 0
    alarm_text: str = ""
    estop: bool = False
    spindle_speed: float = 0.0
    spindle_load: float = 0.0
    feed_override: float = 100.0

    def signals(self) -> dict[str, Value]:
        return {
            Signal.EXECUTION: self.execution,
            Signal.MODE: self.mode,
            Signal.PROGRAM: self.program,
            Signal.ALARM_CODE: self.alarm_code,
            Signal.ALARM_TEXT: self.alarm_text,
            Signal.ESTOP: self.estop,
            Signal.SPINDLE_SPEED: self.spindle_speed,
            Signal.SPINDLE_LOAD: self.spindle_load,
            Signal.FEED_OVERRIDE: self.feed_override,
        }


@dataclass(frozen=True, slots=True)
class Segment:
    start_ms: int
    duration_ms: int
    controller: Controller
    state: str
    phase: str
    parts_at_end: int = 0  # parts the counter adds when this segment ends
    load_samples: tuple[tuple[int, float], ...] = ()  # (offset ms, spindle load) while cutting
    job: int = 0  # the how-manieth job of the machine this segment belongs to (from 1)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_ms


@dataclass(frozen=True, slots=True)
class Change:
    """What the controller shows at `t_ms`: the signals that changed."""

    t_ms: int
    values: dict[str, Value]


@dataclass(frozen=True, slots=True)
class TruthInterval:
    machine: str
    start_ms: int
    end_ms: int
    state: str
    phases: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class TruthStop:
    """A stretch of stopped time with the reason a supervisor would give (merged by state and reason)."""

    machine: str
    start_ms: int
    end_ms: int
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class SimJob:
    """One job of the scenario: its program, the parts it makes, and when its work began and ended
    (setup to the last part; the idle wait after it is not work)."""

    number: int
    program: str
    quantity: int
    start_ms: int
    work_end_ms: int
    cycle_ms: int


_ALARMS = (
    (1021, "SPINDLE OVERLOAD"),
    (2105, "TOOL BREAKAGE DETECTED"),
    (1094, "LOW LUBE PRESSURE"),
    (9150, "X AXIS SERVO OVERLOAD"),
    (3310, "COOLANT LEVEL LOW"),
)

_S = 1000
_MIN = 60 * _S


class MachineScenario:
    """The endless, seeded scenario of one machine, starting at `origin_ms` (UTC ms)."""

    def __init__(self, machine_id: str, seed: int, origin_ms: int) -> None:
        self.machine_id = machine_id
        self.origin_ms = origin_ms
        self._seed_key = f"{seed}:{machine_id}"
        self.initial_part_count = random.Random(f"{self._seed_key}:counter").randrange(0, 5000)

    # -- segments ----------------------------------------------------------------------------
    def segments(self) -> Iterator[Segment]:
        """The machine's segments in time order, the same every time for the same seed."""
        rng = random.Random(self._seed_key)
        t = self.origin_ms
        job = 0
        while True:
            job += 1
            program = f"O{rng.randrange(1000, 9999)}"
            parts = rng.randrange(3, 14)
            cycle_ms = rng.randrange(90, 600) * _S
            rpm = float(rng.choice((2500, 4000, 6000, 8000, 10000)))
            for seg in self._job(rng, t, program, parts, cycle_ms, rpm):
                yield replace(seg, job=job)
                t = seg.end_ms
            # waiting for the next job (material, paperwork, an operator)
            idle = Segment(t, rng.randrange(1, 30) * _MIN, Controller(program=program), IDLE, "idle", job=job)
            yield idle
            t = idle.end_ms

    def _job(
        self, rng: random.Random, t: int, program: str, parts: int, cycle_ms: int, rpm: float
    ) -> Iterator[Segment]:
        # setup: jogging in manual, touching off tools in MDI, editing offsets
        for _ in range(rng.randrange(2, 5)):
            mode = rng.choice(("MANUAL", "MANUAL", "MDI", "EDIT"))
            execution = "ACTIVE" if mode == "MDI" else "READY"
            seg = Segment(
                t,
                rng.randrange(3, 15) * _MIN,
                Controller(execution, mode, program, spindle_speed=1000.0 if mode == "MDI" else 0.0),
                SETUP,
                "setup",
            )
            yield seg
            t = seg.end_ms
        # prove-out: the first part at reduced feed override, stopping to check
        override = float(rng.choice((25, 50, 60, 80)))
        cutting = Controller(
            "ACTIVE", "AUTOMATIC", program, spindle_speed=rpm, spindle_load=20.0, feed_override=override
        )
        for _ in range(rng.randrange(1, 3)):
            seg = Segment(t, cycle_ms // 2, cutting, RUNNING, "prove_out")
            yield seg
            t = seg.end_ms
            seg = Segment(
                t,
                rng.randrange(30, 300) * _S,
                replace(cutting, execution="FEED_HOLD", spindle_speed=0.0),
                IDLE,
                "prove_out",
            )
            yield seg
            t = seg.end_ms
        seg = Segment(t, cycle_ms // 2, cutting, RUNNING, "prove_out", parts_at_end=1)
        yield seg
        t = seg.end_ms
        # the first article goes to inspection; the machine waits, program loaded, for the verdict
        seg = Segment(t, rng.randrange(4, 30) * _MIN, Controller(program=program), IDLE, "first_article")
        yield seg
        t = seg.end_ms
        for n in range(parts - 1):
            for seg in self._cycle(rng, t, program, cycle_ms, rpm, load=n > 0):
                yield seg
                t = seg.end_ms

    def _cycle(
        self, rng: random.Random, t: int, program: str, cycle_ms: int, rpm: float, *, load: bool = True
    ) -> Iterator[Segment]:
        auto = Controller("READY", "AUTOMATIC", program)
        if load:  # load / unload between cycles (after the first article it was done while waiting)
            seg = Segment(t, rng.randrange(15, 90) * _S, auto, IDLE, "load_unload")
            yield seg
            t = seg.end_ms
        if rng.random() < 0.03:
            estop = Segment(
                t,
                rng.randrange(1, 5) * _MIN,
                replace(auto, execution="STOPPED", estop=True, alarm_text="EMERGENCY STOP"),
                DOWN,
                "emergency_stop",
            )
            yield estop
            t = estop.end_ms
            reset = Segment(t, rng.randrange(10, 60) * _S, auto, IDLE, "estop_reset")
            yield reset
            t = reset.end_ms
        cutting = replace(auto, execution="ACTIVE", spindle_speed=rpm)
        length = int(cycle_ms * rng.uniform(0.97, 1.05))
        if rng.random() < 0.12:  # a micro-stop: feed hold to clear chips, check a dimension
            first = rng.randrange(length // 4, length // 2)
            yield self._cutting(rng, t, first, cutting, "cycle")
            t += first
            hold = Segment(
                t,
                rng.randrange(5, 90) * _S,
                replace(cutting, execution="FEED_HOLD", spindle_speed=0.0),
                IDLE,
                "micro_stop",
            )
            yield hold
            t = hold.end_ms
            length -= first
        if rng.random() < 0.05:  # an alarm in the middle of the cycle; the cycle starts over
            first = rng.randrange(length // 4, length // 2)
            yield self._cutting(rng, t, first, cutting, "cycle")
            t += first
            code, text = rng.choice(_ALARMS)
            alarm = Segment(
                t,
                rng.randrange(3, 25) * _MIN,
                replace(auto, execution="INTERRUPTED", alarm_code=code, alarm_text=text),
                DOWN,
                "alarm",
            )
            yield alarm
            t = alarm.end_ms
            if code == 2105:  # a broken tool: replaced and touched off in MANUAL
                change = Segment(
                    t, rng.randrange(3, 10) * _MIN, replace(auto, mode="MANUAL"), SETUP, "tool_change"
                )
                yield change
                t = change.end_ms
            reset = Segment(t, rng.randrange(20, 120) * _S, auto, IDLE, "alarm_reset")
            yield reset
            t = reset.end_ms
        seg = self._cutting(rng, t, length, cutting, "cycle")
        yield replace(seg, parts_at_end=1)

    @staticmethod
    def _cutting(rng: random.Random, t: int, length: int, cutting: Controller, phase: str) -> Segment:
        samples = tuple(
            (offset, round(rng.uniform(15.0, 85.0), 1)) for offset in range(7 * _S, length - _S, 30 * _S)
        )
        return Segment(t, length, replace(cutting, spindle_load=35.0), RUNNING, phase, load_samples=samples)

    # -- what the controller shows, and what really happened -------------------------------
    def run(self, end_ms: int) -> tuple[list[Change], list[TruthInterval], int]:
        """Changes and truth from the origin up to `end_ms`, and the parts made in that time."""
        changes = list(self.changes(end_ms))
        return changes, self.truth(end_ms), self.parts_until(end_ms)

    def changes(self, end_ms: int | None = None) -> Iterator[Change]:
        """The controller's signal changes in time order (the first holds every signal)."""
        previous: dict[str, Value] = {}
        count = self.initial_part_count
        pending_parts = 0
        for seg in self.segments():
            if end_ms is not None and seg.start_ms >= end_ms:
                return
            now = seg.controller.signals()
            diff = {k: v for k, v in now.items() if previous.get(k) != v}
            if pending_parts or not previous:
                count += pending_parts
                diff[Signal.PART_COUNT] = count
            previous = now
            pending_parts = seg.parts_at_end
            if diff:
                yield Change(seg.start_ms, diff)
            for offset, load in seg.load_samples:
                if end_ms is None or seg.start_ms + offset < end_ms:
                    yield Change(seg.start_ms + offset, {Signal.SPINDLE_LOAD: load})
            previous[Signal.SPINDLE_LOAD] = (
                seg.load_samples[-1][1] if seg.load_samples else now[Signal.SPINDLE_LOAD]
            )

    def truth(self, end_ms: int) -> list[TruthInterval]:
        """The intervals that really happened from the origin to `end_ms`, merged by state."""
        out: list[TruthInterval] = []
        for seg in self.segments():
            if seg.start_ms >= end_ms:
                break
            end = min(seg.end_ms, end_ms)
            if out and out[-1].state == seg.state:
                last = out[-1]
                phases = last.phases if seg.phase in last.phases else (*last.phases, seg.phase)
                out[-1] = TruthInterval(self.machine_id, last.start_ms, end, seg.state, phases)
            else:
                out.append(TruthInterval(self.machine_id, seg.start_ms, end, seg.state, (seg.phase,)))
        return out

    def reasons(self, end_ms: int) -> list[TruthStop]:
        """The stopped time from the origin to `end_ms`, with the reason a supervisor would give."""
        out: list[TruthStop] = []
        for seg in self.segments():
            if seg.start_ms >= end_ms:
                break
            if seg.state == RUNNING:
                continue
            end = min(seg.end_ms, end_ms)
            reason = PHASE_REASONS[seg.phase]
            last = out[-1] if out else None
            if last is not None and (last.end_ms, last.state, last.reason) == (
                seg.start_ms,
                seg.state,
                reason,
            ):
                out[-1] = replace(last, end_ms=end)
            else:
                out.append(TruthStop(self.machine_id, seg.start_ms, end, seg.state, reason))
        return out

    def jobs(self, end_ms: int) -> list[SimJob]:
        """The jobs that begin before `end_ms`: what an ERP would have dispatched to this machine."""
        out: list[SimJob] = []
        for seg in self.segments():
            if seg.start_ms >= end_ms and (not out or seg.job != out[-1].number):
                return out
            if not out or seg.job != out[-1].number:
                out.append(SimJob(seg.job, seg.controller.program, 0, seg.start_ms, seg.end_ms, 0))
            last = out[-1]
            if seg.phase != "idle":
                out[-1] = replace(last, quantity=last.quantity + seg.parts_at_end, work_end_ms=seg.end_ms)
            out[-1] = replace(
                out[-1], cycle_ms=max(last.cycle_ms, seg.duration_ms if seg.phase == "cycle" else 0)
            )
        raise AssertionError("unreachable: segments() never ends")

    def parts_until(self, end_ms: int) -> int:
        """Parts the counter shows as made before `end_ms` (it counts when a cycle ends)."""
        total = 0
        for seg in self.segments():
            if seg.end_ms >= end_ms:
                return total
            total += seg.parts_at_end
        raise AssertionError("unreachable: segments() never ends")
