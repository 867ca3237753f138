"""The downtime taxonomy (a tree) and the rules that classify a stop from its story. Pure.

Every reason says whether it is planned, which OEE loss it counts against and which group it belongs
to. The rules look at the whole story of a stop (services/context/state.py `Story`: what the machine
did before it, since its program was loaded, earlier in the same stop) and at what people said (the
operation, the dispatch list, inspection verdicts: services/context/timeline.py), and every reason
they give comes with its evidence. A quality hold and then an operator override them: precedence
operator > quality hold > rule > default (services/context/timeline.py).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.context.state import MachineState, Story
from uns.site import DEFAULT_REASONS as _DEFAULT_TREE
from uns.site import DowntimeConfig, RulesConfig


class Loss(enum.StrEnum):
    AVAILABILITY = "availability"
    PERFORMANCE = "performance"
    QUALITY = "quality"
    PLANNED = "planned"  # planned downtime: not counted against OEE


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    name: str
    planned: bool
    loss: Loss
    parent: str | None = None  # the group it belongs to; groups are reasons too (parent None)


DEFAULT_REASONS: dict[str, Reason] = {
    r.code: Reason(r.code, r.name, r.planned, Loss(r.loss), r.parent) for r in _DEFAULT_TREE
}
DEFAULT_REASON = "unclassified"  # what a stop is when no rule, hold or operator says otherwise

MICRO_STOP_MS = 5 * 60_000  # idle stops shorter than this are micro-stops (a performance loss)
RULES = tuple(RulesConfig.model_fields)  # the rules' names (the order they are tried: `Rules`)


@dataclass(frozen=True, slots=True)
class Seen:
    """What the machine's context says about a piece of a stop (services/context/timeline.py)."""

    operation: tuple[str, str] | None = None  # the operation running
    in_break: bool = False  # inside a planned break of the shift calendar
    verdict_ms: int | None = None  # the first inspection verdict after the first part, if any
    no_work: str | None = None  # nothing dispatched or queued: what was last done (evidence)
    op_start: tuple[int, str] | None = None  # when the running operation started, and what started it


class Rules:
    """The rule classifier of one site: (state, story, piece) -> (reason code, evidence) or None.

    First match wins; `docs/reasons.md` has the table:
      machine_fault       down: an alarm or the emergency stop
      planned_break       idle inside a planned break
      fault_recovery      idle or setup after an alarm or e-stop earlier in the same stop
      setup               setup mode (MANUAL, MDI, EDIT); idle after setup in the same stop
      program_prove_out   idle while the first part after a program change is proved out (feed
                          override below the limit, feed holds, single block or optional stop)
      waiting_inspection  idle after that first part, until the next cycle or a verdict
      no_work             idle with nothing dispatched to the machine
      micro_stop          idle shorter than the micro-stop limit
    """

    def __init__(self, config: DowntimeConfig | None = None, timezone: str = "UTC") -> None:
        config = config or DowntimeConfig()
        rules = config.rules
        self.micro_stop_ms = int(config.micro_stop_minutes * 60_000)
        self.code = {name: getattr(rules, name).reason or name for name in RULES}
        self.enabled = {name: bool(getattr(rules, name).enabled) for name in RULES}
        prove_out = rules.program_prove_out
        looks_at = prove_out.signals
        self.override_below = (
            prove_out.feed_override_below if looks_at is None or "feed_override" in looks_at else None
        )
        self.checks = looks_at is None or bool({"single_block", "optional_stop"} & set(looks_at))
        self.inspection_min_ms = int(rules.waiting_inspection.min_minutes * 60_000)
        self.zone = ZoneInfo(timezone)

    def hm(self, ms: int) -> str:
        """A time of day in the site's zone, as a supervisor reads it."""
        return datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.zone).strftime("%H:%M")

    def _give(self, rule: str, evidence: str) -> tuple[str, str] | None:
        return (self.code[rule], evidence) if self.enabled[rule] else None

    def classify(
        self, state: MachineState, story: Story, memory: Story, run_ms: int, start_ms: int, seen: Seen
    ) -> tuple[str, str] | None:
        """The rule's reason for a piece of a stop beginning at `start_ms` of a state interval that
        lasted `run_ms`, with the evidence it went by; None: no rule applies (the default).

        `story` is what was known when the state began (what stopped it, earlier in the stop);
        `memory` when it ended (or now): the program and part facts come from it, so that a part
        counted a moment after the cycle ended counts as it should."""
        if state is MachineState.RUNNING or state is MachineState.COMMS_LOSS:
            return None
        if state is MachineState.DOWN:
            return self._give("machine_fault", story.alarm or "alarm")
        if state is MachineState.IDLE and seen.in_break and self.enabled["planned_break"]:
            return self.code["planned_break"], "idle in a planned break of the shift calendar"
        if story.fault is not None and story.fault_ms is not None and self.enabled["fault_recovery"]:
            return self.code["fault_recovery"], f"after {story.fault} at {self.hm(story.fault_ms)}"
        m = memory
        what = _what(m, seen)
        # where the first part began: the program change, or the operation its program started when
        # the machine was first seen with it loaded (the service came up during a setup)
        began = m.program_ms
        if began is None and m.program_seen_ms is not None and seen.op_start is not None:
            started, cause = seen.op_start
            if cause in ("program", "confirm") and started >= m.program_seen_ms:
                began = started
        if state is MachineState.SETUP:
            if m.program_ms is not None and m.counts == 0:
                since = f"{m.program} loaded at {self.hm(m.program_ms)}"
                was = f" (was {m.previous_program})" if m.previous_program else ""
                return self._give("setup", f"{story.mode or 'setup'} mode; {since}{was}")
            return self._give("setup", f"{story.mode or 'setup'} mode")
        # idle
        if story.setup_ms is not None and self.enabled["setup"]:
            return self.code["setup"], f"after setup since {self.hm(story.setup_ms)}, before a cycle ran"
        if began is not None and m.counts == 0 and m.ran:
            signs = []
            low = m.min_override
            if self.override_below is not None and low is not None and low < self.override_below:
                signs.append(f"feed override {low:g} %")
            holds = m.feed_holds
            if holds:
                signs.append(f"{holds} feed hold{'s' if holds > 1 else ''}")
            if self.checks and m.checks:
                signs.append("single block or optional stop")
            if signs and self.enabled["program_prove_out"]:
                return self.code["program_prove_out"], f"first part of {what}: {', '.join(signs)}"
        if (
            began is not None
            and m.counts == 1
            and not m.ran_since_part
            and m.first_part_ms is not None
            and run_ms >= self.inspection_min_ms
            and (seen.verdict_ms is None or start_ms < seen.verdict_ms)
            and self.enabled["waiting_inspection"]
        ):
            return (
                self.code["waiting_inspection"],
                f"waiting since the first part of {what} at {self.hm(m.first_part_ms)}",
            )
        if seen.no_work is not None and self.enabled["no_work"]:
            return self.code["no_work"], seen.no_work
        if run_ms < self.micro_stop_ms and self.enabled["micro_stop"]:
            return (
                self.code["micro_stop"],
                f"idle {_mss(run_ms)}, under the {self.micro_stop_ms / 60_000:g} min micro-stop limit",
            )
        return None


def _what(story: Story, seen: Seen) -> str:
    op = seen.operation
    if op is not None:
        return f"{op[0]}/{op[1]} ({story.program})" if story.program else f"{op[0]}/{op[1]}"
    return f"program {story.program}" if story.program else "the program"


def _mss(ms: int) -> str:
    seconds = round(ms / 1000)
    return f"{seconds // 60}:{seconds % 60:02d}"


class TaxonomyError(ValueError):
    """A site model's reason tree that does not hold together; the message names the reason."""


def taxonomy(config: DowntimeConfig) -> dict[str, Reason]:
    """The default reasons with the site model's additions and changes; parents must exist, no cycles."""
    reasons = dict(DEFAULT_REASONS)
    for r in config.reasons:
        reasons[r.code] = Reason(r.code, r.name, r.planned, Loss(r.loss), r.parent)
    for code, reason in reasons.items():
        seen = [code]
        parent = reason.parent
        while parent is not None:
            if parent not in reasons:
                raise TaxonomyError(f"downtime reason {code!r}: parent {parent!r} is not a reason")
            if parent in seen:
                raise TaxonomyError(f"downtime reason {code!r}: parents go round in a circle ({parent!r})")
            seen.append(parent)
            parent = reasons[parent].parent
    return reasons


def path(reasons: Mapping[str, Reason], code: str) -> list[str]:
    """The codes from the top of the tree down to `code`."""
    out = [code]
    while (parent := reasons[out[0]].parent) is not None:
        out.insert(0, parent)
    return out
