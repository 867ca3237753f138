"""OEE from the record: availability x performance x quality, summed over times and counts. Pure.

    planned production time = record time in shifts - planned stops - time nothing was known (comms_loss)
    run time                = planned production time - availability losses (stops that are not
                              planned and not performance losses: faults, setup, waiting, unclassified)
    availability            = run time / planned production time
    performance             = ideal cycle time x total count / run time (micro-stops stay in run time)
    quality                 = good count / total count
    OEE                     = availability x performance x quality
                            = fully productive time (ideal time of the good parts) / planned production time

Which stops are planned, whether setup is a loss, how micro-stops count, where the ideal cycle comes
from (the dispatch list, the part master, the best observed cycle: `IDEAL_SOURCES`) and which rejects
are startup rejects are the site model's `oee:` definition (a `Definition`, named by its version in
every result). Groups are rolled up by adding their `Tally`s (times and counts), never by averaging
percentages; every tally keeps how many of its parts took their ideal cycle from which source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.context.reasons import Loss, Reason
from services.context.state import Interval, MachineState
from uns.site import OeeConfig, RulesConfig

# Where a part's ideal cycle time came from, in the order they are tried; NONE: it has none.
DISPATCH, PART_MASTER, BEST_OBSERVED, NONE = "dispatch", "part_master", "best_observed", "none"
IDEAL_SOURCES = (DISPATCH, PART_MASTER, BEST_OBSERVED, NONE)


@dataclass(frozen=True, slots=True)
class Definition:
    """What the figures mean at this site; `version` goes with every result."""

    version: str = "1"
    planned: frozenset[str] = frozenset()  # reason codes out of planned production time
    performance: frozenset[str] = frozenset()  # reason codes whose time stays in run time
    part_cycles_ms: Mapping[str, int] = field(default_factory=dict)  # part number -> ideal cycle
    best_observed_days: float = 0.0  # the best observed cycle over this many days (0: not a source)
    best_observed_percentile: float = 10.0  # that percentile of the cycles (services/oee/cycles.py)
    best_observed_min_cycles: int = 5  # fewer cycles observed: no ideal from them
    startup_parts: int = 1  # rejects while an operation has made no more parts are startup rejects

    @classmethod
    def from_config(
        cls, config: OeeConfig, taxonomy: Mapping[str, Reason], rules: RulesConfig | None = None
    ) -> Definition:
        """`rules`: the site's downtime rules, for the codes its setup and micro-stop rules give."""
        rules = rules or RulesConfig()
        planned = {code for code, r in taxonomy.items() if r.planned or r.loss is Loss.PLANNED}
        planned |= set(config.planned)
        performance = {code for code, r in taxonomy.items() if r.loss is Loss.PERFORMANCE}
        if config.setup == "planned":
            planned.update(("setup", rules.setup.reason or "setup"))
        if config.micro_stops == "availability":
            performance.difference_update(("micro_stop", rules.micro_stop.reason or "micro_stop"))
        ideal = config.ideal_cycle
        return cls(
            config.version,
            frozenset(planned),
            frozenset(performance - planned),
            {p.part_number: round(p.ideal_cycle_s * 1000) for p in config.parts},
            ideal.best_observed_days,
            ideal.best_observed_percentile,
            ideal.best_observed_min_cycles,
            config.startup_rejects.first_parts,
        )


# What a tally knows of its parts' ideal cycles: (operation, source) -> (parts, ideal seconds, note),
# the note saying where a best observed cycle came from, or why a part has no ideal cycle.
Ideals = dict[tuple[str, str], tuple[int, float, str | None]]


@dataclass(slots=True)
class Tally:
    """Times (seconds) and counts of one group; add two to roll up."""

    planned_s: float = 0.0  # planned production time
    planned_stop_s: float = 0.0  # out of it: breaks, planned maintenance (and setup, if so defined)
    availability_loss_s: float = 0.0
    performance_stop_s: float = 0.0  # micro-stops: inside run time
    unknown_s: float = 0.0  # comms_loss: not known, not counted
    made: int = 0
    rejected: int = 0  # scrap and rework reported
    ideal_s: float = 0.0  # ideal cycle time x the parts that have one
    made_without_ideal: int = 0  # parts whose operation has no ideal cycle time
    stops_s: dict[str, float] | None = None  # stopped time in shifts by reason (where asked for)
    startup_rejected: int = 0  # of `rejected`: startup rejects (an operation's first parts)
    ideals: Ideals | None = None  # parts by operation and ideal cycle source

    def __add__(self, other: Tally) -> Tally:
        out = Tally()
        out += self
        out += other
        return out

    def __iadd__(self, other: Tally) -> Tally:
        self.planned_s += other.planned_s
        self.planned_stop_s += other.planned_stop_s
        self.availability_loss_s += other.availability_loss_s
        self.performance_stop_s += other.performance_stop_s
        self.unknown_s += other.unknown_s
        self.made += other.made
        self.rejected += other.rejected
        self.ideal_s += other.ideal_s
        self.made_without_ideal += other.made_without_ideal
        self.startup_rejected += other.startup_rejected
        if other.stops_s:
            mine = self.stops_s if self.stops_s is not None else {}
            for reason, seconds in other.stops_s.items():
                mine[reason] = mine.get(reason, 0.0) + seconds
            self.stops_s = mine
        if other.ideals:
            ideals = self.ideals if self.ideals is not None else {}
            for key, (parts, ideal_s, note) in other.ideals.items():
                had = ideals.get(key)
                ideals[key] = (
                    (parts, ideal_s, note) if had is None else (had[0] + parts, had[1] + ideal_s, note)
                )
            self.ideals = ideals
        return self

    @property
    def run_s(self) -> float:
        return self.planned_s - self.availability_loss_s

    @property
    def good(self) -> int:
        return max(self.made - self.rejected, 0)

    @property
    def availability(self) -> float | None:
        return self.run_s / self.planned_s if self.planned_s > 0 else None

    @property
    def performance(self) -> float | None:
        """None when some parts have no ideal cycle time (see `performance_missing`) or nothing ran."""
        if self.made_without_ideal or self.run_s <= 0:
            return None
        return self.ideal_s / self.run_s

    @property
    def quality(self) -> float | None:
        return self.good / self.made if self.made > 0 else None

    @property
    def oee(self) -> float | None:
        a, p, q = self.availability, self.performance, self.quality
        return a * p * q if a is not None and p is not None and q is not None else None

    @property
    def production_rejected(self) -> int:
        return self.rejected - self.startup_rejected

    @property
    def ideal_sources(self) -> dict[str, int]:
        """Parts by where their ideal cycle time came from (`IDEAL_SOURCES`; `none`: it has none)."""
        out = dict.fromkeys(IDEAL_SOURCES, 0)
        for (_, source), (parts, _, _) in (self.ideals or {}).items():
            out[source] = out.get(source, 0) + parts
        out[NONE] = self.made_without_ideal
        return out

    @property
    def performance_missing(self) -> str | None:
        if self.made_without_ideal:
            why = sorted(
                (f"{what}: {note}" if note else what, parts)
                for (what, source), (parts, _, note) in (self.ideals or {}).items()
                if source == NONE
            )
            listed = "; ".join(text for text, _ in why[:3]) + ("; ..." if len(why) > 3 else "")
            return f"{self.made_without_ideal} of {self.made} parts have no ideal cycle time" + (
                f" ({listed})" if listed else " (dispatch list ideal_cycle_s, or the site model's oee.parts)"
            )
        if self.run_s <= 0:
            return "no run time"
        return None

    @property
    def reduced_speed_s(self) -> float | None:
        """Run time lost to running slower than the ideal cycle (run time less micro-stops less the
        ideal time of the parts); None where performance is not known, 0 above 100 %."""
        if self.performance is None:
            return None
        return max(self.run_s - self.performance_stop_s - self.ideal_s, 0.0)

    @property
    def performance_above_100(self) -> bool:
        """More parts than the ideal cycle time allows: that ideal cycle time is wrong. Not capped."""
        p = self.performance
        return p is not None and p > 1.0


def time_of(piece: Interval, definition: Definition, in_shift: bool, by_reason: bool = False) -> Tally:
    """One record piece's time: planned production, or planned stop, or loss, or not known.
    Outside every shift only running time counts (it made parts); stops there were not planned work."""
    seconds = (piece.end_ms - piece.start_ms) / 1000
    return time_in(piece.state, piece.reason, seconds, definition, in_shift, by_reason)


def time_in(
    state: MachineState,
    reason: str | None,
    seconds: float,
    definition: Definition,
    in_shift: bool,
    by_reason: bool = False,
) -> Tally:
    """`seconds` of a state (with a reason, for a stop), as `time_of` counts them (`by_reason`: and
    the stop's time under its reason, for the losses)."""
    if state is MachineState.COMMS_LOSS:
        return Tally(unknown_s=seconds if in_shift else 0.0)
    if state is MachineState.RUNNING:
        return Tally(planned_s=seconds)
    if not in_shift:
        return Tally()
    reason = reason or "unclassified"
    stops = {reason: seconds} if by_reason else None
    if reason in definition.planned:
        return Tally(planned_stop_s=seconds, stops_s=stops)
    if reason in definition.performance:
        return Tally(planned_s=seconds, performance_stop_s=seconds, stops_s=stops)
    return Tally(planned_s=seconds, availability_loss_s=seconds, stops_s=stops)


def parts_of(
    made: int,
    ideal_cycle_ms: int | None,
    rejected: int = 0,
    *,
    source: str | None = None,
    what: str = "-",
    note: str | None = None,
) -> Tally:
    """Parts made (with the ideal cycle time of their operation, if known) and rejects reported.
    `source` says where the ideal came from (one of `IDEAL_SOURCES`), `what` names the operation,
    `note` says where a best observed cycle came from or why there is no ideal."""
    ideal_s = 0.0 if ideal_cycle_ms is None else made * ideal_cycle_ms / 1000
    ideals: Ideals | None = None
    if source is not None and made:
        ideals = {(what, NONE if ideal_cycle_ms is None else source): (made, ideal_s, note)}
    without = made if ideal_cycle_ms is None else 0
    return Tally(made=made, rejected=rejected, ideal_s=ideal_s, made_without_ideal=without, ideals=ideals)


def rejects_of(quantity: int, startup: bool) -> Tally:
    """Scrap or rework reported: startup rejects (the operation's first parts) or production rejects."""
    return Tally(rejected=quantity, startup_rejected=quantity if startup else 0)
