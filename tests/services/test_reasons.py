"""Rule-based reasons for stops, from the machine's own signals and the shift calendar."""

from __future__ import annotations

from datetime import time

import pytest

from services.context.reasons import DEFAULT_REASONS, Loss, rules
from services.context.shifts import BreakDef, ShiftCalendar, ShiftDef
from services.context.state import Interval, MachineState, MachineTracker, SignalValue

S = MachineState
MIN = 60_000


def test_the_default_taxonomy_says_what_is_planned_and_which_loss() -> None:
    assert {
        "setup",
        "program_prove_out",
        "waiting_inspection",
        "blocked",
        "starved",
        "quality_hold",
        "tooling",
        "maintenance_planned",
        "maintenance_unplanned",
        "machine_fault",
        "no_operator",
        "planned_break",
    } <= set(DEFAULT_REASONS)
    assert DEFAULT_REASONS["planned_break"].planned
    assert DEFAULT_REASONS["planned_break"].loss is Loss.PLANNED
    assert DEFAULT_REASONS["micro_stop"].loss is Loss.PERFORMANCE
    assert not DEFAULT_REASONS["machine_fault"].planned


def test_rules() -> None:
    classify = rules()
    assert classify(S.DOWN, 0, 10 * MIN, {"alarm_code": 1021}) == "machine_fault"
    assert classify(S.SETUP, 0, 30 * MIN, {"mode": "MANUAL"}) == "setup"
    assert classify(S.IDLE, 0, 2 * MIN, {}) == "micro_stop"
    assert classify(S.IDLE, 0, 20 * MIN, {}) == "unclassified"
    assert classify(S.RUNNING, 0, 20 * MIN, {}) is None
    assert classify(S.COMMS_LOSS, 0, 20 * MIN, {}) is None


def test_idle_inside_a_planned_break_is_the_break() -> None:
    cal = ShiftCalendar(
        "UTC",
        [
            ShiftDef(
                "first", time(6), time(14), frozenset(range(7)), (BreakDef("lunch", time(11, 30), time(12)),)
            )
        ],
    )
    day = 1_795_305_600_000  # 2026-11-22T00:00:00Z
    classify = rules(in_break=cal.in_break)
    lunch = day + (11 * 60 + 35) * MIN
    assert classify(S.IDLE, lunch, lunch + 20 * MIN, {}) == "planned_break"
    assert classify(S.IDLE, lunch + 20 * MIN, lunch + 40 * MIN, {}) == "unclassified"  # ran past the break


def test_closed_intervals_carry_their_reason() -> None:
    t = MachineTracker("m", classifier=rules())
    base = [
        SignalValue("execution", "ACTIVE", 0),
        SignalValue("mode", "AUTOMATIC", 0),
        SignalValue("alarm_code", 0, 0),
        SignalValue("estop", False, 0),
    ]
    closed = t.apply(base)[0]
    closed += t.apply(
        [SignalValue("alarm_code", 2105, 10 * MIN), SignalValue("execution", "INTERRUPTED", 10 * MIN)]
    )[0]
    closed += t.apply([SignalValue("alarm_code", 0, 25 * MIN), SignalValue("execution", "READY", 25 * MIN)])[
        0
    ]
    closed += t.apply([SignalValue("execution", "ACTIVE", 27 * MIN)])[0]
    assert [(i.start_ms // MIN, i.end_ms // MIN, i.state, i.reason) for i in closed] == [
        (0, 10, S.RUNNING, None),
        (10, 25, S.DOWN, "machine_fault"),
        (25, 27, S.IDLE, "micro_stop"),
    ]
    assert t.reason(30 * MIN) is None  # running: no reason
    assert closed[1] == Interval("m", 10 * MIN, 25 * MIN, S.DOWN, "anything")  # the reason is not identity


def test_the_site_model_adds_reasons_and_sets_the_micro_stop_limit() -> None:
    from services.context.reasons import taxonomy
    from tests.uns.test_site import GOOD
    from uns.site import SiteConfigError, parse_site

    site = parse_site(
        GOOD
        + """
downtime:
  micro_stop_minutes: 2
  reasons:
    - {code: waiting_crane, name: Waiting on the crane}
    - {code: setup, name: Changeover (SMED), planned: true, loss: planned}
"""
    )
    reasons = taxonomy(site.config.downtime)
    assert reasons["waiting_crane"].loss is Loss.AVAILABILITY
    assert reasons["setup"].planned
    assert reasons["machine_fault"] == DEFAULT_REASONS["machine_fault"]
    assert site.config.downtime.micro_stop_minutes == 2
    with pytest.raises(SiteConfigError, match="reason codes given twice: a"):
        parse_site(GOOD + "downtime: {reasons: [{code: a, name: A}, {code: a, name: B}]}\n")
    with pytest.raises(SiteConfigError, match=r"downtime\.reasons\[0\]\.loss"):
        parse_site(GOOD + "downtime: {reasons: [{code: a, name: A, loss: morale}]}\n")


def test_the_reason_tree_needs_parents_that_exist_and_no_circles() -> None:
    from services.context.reasons import DEFAULT_REASONS, TaxonomyError, path, taxonomy
    from tests.uns.test_site import GOOD
    from uns.site import parse_site

    assert path(DEFAULT_REASONS, "waiting_inspection") == ["quality", "waiting_inspection"]
    site = parse_site(GOOD + "downtime: {reasons: [{code: crane, name: Crane, parent: equipment}]}\n")
    assert taxonomy(site.config.downtime)["crane"].parent == "equipment"
    orphan = parse_site(GOOD + "downtime: {reasons: [{code: crane, name: Crane, parent: cranes}]}\n")
    with pytest.raises(TaxonomyError, match="downtime reason 'crane': parent 'cranes' is not a reason"):
        taxonomy(orphan.config.downtime)
    circle = parse_site(
        GOOD + "downtime: {reasons: [{code: a, name: A, parent: b}, {code: b, name: B, parent: a}]}\n"
    )
    with pytest.raises(TaxonomyError, match="go round in a circle"):
        taxonomy(circle.config.downtime)
