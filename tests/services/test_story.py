"""The rules that classify a stop from its story (services/context/reasons.py), each with the signal
pattern that triggers it, the near-miss that must not, and how it meets operators' reasons, quality
holds, planned breaks and the site model's settings. Pure: a tracker and the timeline, no service."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import time
from pathlib import Path
from typing import Any

import pytest

from services.context.reasons import Rules
from services.context.shifts import BreakDef, ShiftCalendar, ShiftDef
from services.context.state import Interval, MachineTracker, SignalValue, replay
from services.context.timeline import Hold, MachineContext, OpEvent, enrich
from tests.uns.test_site import GOOD
from uns.site import SiteConfigError, parse_site

MIN = 60_000
T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z
BASE: dict[str, Any] = {
    "execution": "READY",
    "mode": "AUTOMATIC",
    "program": "O1",
    "part_count": 0,
    "alarm_code": 0,
    "alarm_text": "",
    "estop": False,
    "feed_override": 100.0,
}
Row = tuple[float, float, str, str | None, str | None]


def at(minute: float) -> int:
    return T0 + round(minute * MIN)


def play(script: Sequence[tuple[float, dict[str, Any]]]) -> list[Interval]:
    """The closed state intervals of a scripted machine: (minute, values that change)."""
    tracker = MachineTracker("m")
    closed: list[Interval] = []
    for minute, values in script:
        closed += tracker.apply([SignalValue(k, v, at(minute)) for k, v in values.items()])[0]
    return closed


def pieces(
    closed: list[Interval],
    ctx: MachineContext | None = None,
    calendar: ShiftCalendar | None = None,
    rules: Rules | None = None,
) -> list[Interval]:
    ctx = ctx or MachineContext("m")
    return [p for i in closed for p in enrich(i, ctx, calendar, rules)]


def rows(out: list[Interval]) -> list[Row]:
    return [((p.start_ms - T0) / MIN, (p.end_ms - T0) / MIN, p.state.value, p.reason, p.source) for p in out]


def stops(out: list[Interval]) -> list[Row]:
    return [r for r in rows(out) if r[2] != "running"]


def evidence(out: list[Interval], minute: float) -> str:
    found = next(p for p in out if p.start_ms == at(minute))
    assert found.evidence is not None
    return found.evidence


# A new program: setup, a first part proved out at 60 % feed override with two feed holds, the wait for
# the first article's inspection, then production with a load/unload stop, a feed hold to clear chips
# (a micro-stop, not prove-out) and a long idle after the third part (not waiting on inspection).
NEW_JOB: list[tuple[float, dict[str, Any]]] = [
    (0, BASE),
    (10, {"program": "O2", "mode": "MANUAL"}),
    (30, {"mode": "AUTOMATIC", "execution": "ACTIVE", "feed_override": 60.0}),
    (34, {"execution": "FEED_HOLD"}),
    (36, {"execution": "ACTIVE"}),
    (38, {"execution": "FEED_HOLD"}),
    (39, {"execution": "ACTIVE"}),
    (42, {"execution": "READY", "part_count": 1, "feed_override": 100.0}),
    (67, {"execution": "ACTIVE"}),
    (72, {"execution": "READY", "part_count": 2}),
    (73, {"execution": "ACTIVE"}),
    (75, {"execution": "FEED_HOLD"}),
    (76, {"execution": "ACTIVE"}),
    (80, {"execution": "READY", "part_count": 3}),
    (105, {"execution": "ACTIVE"}),
    (110, {"execution": "READY", "part_count": 4}),
]


def test_a_new_program_is_set_up_proved_out_and_waits_for_its_first_article() -> None:
    out = pieces(play(NEW_JOB))
    assert stops(out) == [
        (0, 10, "idle", "unclassified", "default"),  # before anything was said: for an operator
        (10, 30, "setup", "setup", "rule"),
        (34, 36, "idle", "program_prove_out", "rule"),
        (38, 39, "idle", "program_prove_out", "rule"),
        (42, 67, "idle", "waiting_inspection", "rule"),
        (72, 73, "idle", "micro_stop", "rule"),
        (75, 76, "idle", "micro_stop", "rule"),  # a feed hold in production is not prove-out
        (80, 105, "idle", "unclassified", "default"),  # idle after the third part is not inspection
    ]
    assert evidence(out, 10) == "MANUAL mode; O2 loaded at 00:10 (was O1)"
    assert evidence(out, 34) == "first part of program O2: feed override 60 %, 1 feed hold"
    assert evidence(out, 38) == "first part of program O2: feed override 60 %, 2 feed holds"
    assert evidence(out, 42) == "waiting since the first part of program O2 at 00:42"
    assert evidence(out, 72) == "idle 1:00, under the 5 min micro-stop limit"
    assert evidence(out, 80) == "no rule applies: for an operator to say"
    assert all(p.reason is None and p.evidence is None for p in out if p.state.value == "running")


def test_the_evidence_names_the_operation_and_a_verdict_ends_the_wait() -> None:
    ctx = MachineContext("m")
    ctx.add_op(OpEvent("m", at(10), "J24173", "10", "start", "program"))
    ctx.add_verdict(at(50))  # the inspector's pass, 8 minutes into the wait
    out = pieces(play(NEW_JOB), ctx)
    assert evidence(out, 34) == "first part of J24173/10 (O2): feed override 60 %, 1 feed hold"
    assert [r for r in stops(out) if 42 <= r[0] < 67] == [
        (42, 50, "idle", "waiting_inspection", "rule"),
        (50, 67, "idle", "unclassified", "default"),  # after the verdict it is not the inspection
    ]
    assert {p.stop_start_ms for p in out if 42 <= (p.start_ms - T0) / MIN < 67} == {at(42)}


def test_a_short_wait_after_the_first_part_is_load_unload_and_full_feed_without_holds_is_no_prove_out() -> (
    None
):
    script = [
        (0, BASE),
        (10, {"program": "O2", "mode": "MANUAL"}),
        (20, {"mode": "AUTOMATIC", "execution": "ACTIVE"}),
        (25, {"execution": "STOPPED"}),  # a stop in the first part at 100 %, no hold: no sign of prove-out
        (26, {"execution": "ACTIVE"}),
        (30, {"execution": "READY", "part_count": 1}),
        (31, {"execution": "ACTIVE"}),  # a minute: under waiting_inspection's 2 minutes
        (35, {"execution": "READY", "part_count": 2}),
    ]
    assert stops(pieces(play(script)))[2:] == [
        (25, 26, "idle", "micro_stop", "rule"),
        (30, 31, "idle", "micro_stop", "rule"),
    ]


def test_single_block_or_optional_stop_in_the_first_part_is_prove_out_where_the_controller_says() -> None:
    script = [
        (0, BASE),
        (10, {"program": "O2", "mode": "MANUAL"}),
        (20, {"mode": "AUTOMATIC", "execution": "ACTIVE", "single_block": True}),
        (21, {"execution": "STOPPED"}),
        (22, {"execution": "ACTIVE"}),
    ]
    out = pieces(play(script))
    assert stops(out)[-1] == (21, 22, "idle", "program_prove_out", "rule")
    assert evidence(out, 21).endswith("single block or optional stop")


RECOVERY: list[tuple[float, dict[str, Any]]] = [
    (0, {**BASE, "execution": "ACTIVE"}),
    (10, {"alarm_code": 2105, "alarm_text": "TOOL BREAKAGE DETECTED", "execution": "INTERRUPTED"}),
    (20, {"alarm_code": 0, "alarm_text": "", "mode": "MANUAL", "execution": "READY"}),  # the tool change
    (26, {"mode": "AUTOMATIC"}),  # the reset
    (27, {"execution": "ACTIVE"}),
    (30, {"estop": True, "execution": "STOPPED"}),
    (32, {"estop": False, "execution": "READY"}),  # the reset after the e-stop: a minute
    (33, {"execution": "ACTIVE"}),
    (40, {"mode": "MANUAL", "execution": "READY"}),  # no alarm, no new program: an adjustment
    (45, {"mode": "AUTOMATIC", "execution": "ACTIVE"}),
    (50, {"execution": "READY", "part_count": 1}),
    (52, {"execution": "ACTIVE"}),
]


def test_recovery_after_an_alarm_or_e_stop_counts_against_the_fault_until_it_runs_again() -> None:
    out = pieces(play(RECOVERY))
    assert stops(out) == [
        (10, 20, "down", "machine_fault", "rule"),
        (20, 26, "setup", "fault_recovery", "rule"),  # the tool change in MANUAL is not setup of the job
        (26, 27, "idle", "fault_recovery", "rule"),
        (30, 32, "down", "machine_fault", "rule"),
        (32, 33, "idle", "fault_recovery", "rule"),  # not a micro-stop
        (40, 45, "setup", "setup", "rule"),  # after it ran again: no longer recovery
        (50, 52, "idle", "micro_stop", "rule"),
    ]
    assert evidence(out, 10) == "alarm 2105 TOOL BREAKAGE DETECTED"
    assert evidence(out, 20) == "after alarm 2105 TOOL BREAKAGE DETECTED at 00:10"
    assert evidence(out, 32) == "after emergency stop at 00:30"
    assert evidence(out, 40) == "MANUAL mode"
    # one stop from the alarm until it ran again, however many states it went through
    assert {p.stop_start_ms for p in out if at(10) <= p.start_ms < at(27)} == {at(10)}


def test_idle_with_nothing_dispatched_is_no_work_and_not_when_work_waits() -> None:
    script = [
        (0, {**BASE, "execution": "ACTIVE"}),
        (30, {"execution": "READY", "part_count": 1}),
        (70, {"execution": "ACTIVE"}),
        (80, {"execution": "READY", "part_count": 2}),
    ]
    ctx = MachineContext("m", dispatched={("J1", "10"): at(-10), ("J2", "10"): at(50)})
    ctx.add_op(OpEvent("m", at(-5), "J1", "10", "start", "program"))
    ctx.add_op(OpEvent("m", at(30), "J1", "10", "complete", "quantity"))
    ctx.add_op(OpEvent("m", at(70), "J2", "10", "start", "manual"))
    out = pieces(play(script), ctx)
    assert stops(out) == [
        (30, 50, "idle", "no_work", "rule"),
        (50, 70, "idle", "unclassified", "default"),  # J2 came at 50: the machine waited with work there
    ]
    assert evidence(out, 30) == "nothing dispatched to m or queued since J1/10 completed at 00:30"
    # a machine nothing was ever dispatched to (a site without an ERP link) has no idea of no work
    assert stops(pieces(play(script)))[0] == (30, 70, "idle", "unclassified", "default")


def test_a_stop_is_one_stop_for_operators_holds_breaks_and_shifts() -> None:
    """One idle stop cut by a shift change, a break, an operator's login and a hold that closes before
    the restart: every piece is the same stop; the hold that caused it keeps it until the restart."""
    calendar = ShiftCalendar(
        "UTC",
        [
            ShiftDef(
                "first", time(6), time(14), frozenset(range(7)), (BreakDef("lunch", time(11), time(11, 30)),)
            ),
            ShiftDef("second", time(14), time(22), frozenset(range(7))),
        ],
    )
    h = 60.0
    script = [
        (10 * h, {**BASE, "execution": "ACTIVE"}),
        (10.5 * h, {"execution": "READY", "part_count": 1}),  # 10:30: stops
        (14.5 * h, {"execution": "ACTIVE"}),  # 14:30: runs again
        (15 * h, {"execution": "READY", "part_count": 2}),
    ]
    ctx = MachineContext("m")
    ctx.add_operator(at(13 * h), "maria")  # she logs in during the stop
    ctx.holds.append(Hold("NCR-7", at(10 * h + 40), at(14 * h + 20), "m", None, None, "bore oversize"))
    out = pieces(play(script), ctx, calendar)
    stop = [p for p in out if p.state.value == "idle" and p.start_ms < at(14.5 * h)]
    assert [(p.start_ms - T0) / MIN / h for p in stop][:2] == [10.5, 10 + 40 / 60]
    assert len(stop) >= 6  # cut at the hold, the break, the login, the shift change, the hold's close
    assert {p.stop_start_ms for p in stop} == {at(10.5 * h)}
    # before the hold opened the stop was whatever the rules say; from then on it is the hold's, also
    # in the break and after the hold closed at 14:20, until the machine ran at 14:30
    assert stop[0].reason == "unclassified"
    assert {(p.reason, p.hold) for p in stop[1:]} == {("quality_hold", "NCR-7")}
    assert evidence(out, 10 * h + 40) == "hold NCR-7 opened 10:40: bore oversize"
    assert stop[-1].start_ms == at(14 * h + 20)
    assert stop[-1].operator == "maria"
    # an operator's reason given for it covers every piece, whatever cut it
    ctx.overrides[at(10.5 * h)] = ("starved", "maria via api at 2026-11-22T14:35:00.000Z")
    again = [p for p in pieces(play(script), ctx, calendar) if p.stop_start_ms == at(10.5 * h)]
    assert {(p.reason, p.source) for p in again} == {("starved", "operator")}
    # the next stop is a stop of its own
    assert [p.stop_start_ms for p in out if p.start_ms == at(15 * h)] == []  # still open


def test_an_operator_overrides_any_rule_and_a_hold_any_rule() -> None:
    ctx = MachineContext("m")
    ctx.overrides[at(34)] = ("tooling", "ann via tablet at 2026-11-22T00:50:00.000Z")
    ctx.holds.append(Hold("H1", at(45), None, "m", None, None))
    out = pieces(play(NEW_JOB), ctx)
    by_start = {r[0]: r for r in stops(out)}
    assert by_start[34][3:] == ("tooling", "operator")  # not prove-out: she said what it was
    assert by_start[38][3:] == ("program_prove_out", "rule")
    assert by_start[42][3:] == ("waiting_inspection", "rule")  # the hold came at 45
    assert by_start[45][3:] == ("quality_hold", "hold")
    assert evidence(out, 34) == "ann via tablet at 2026-11-22T00:50:00.000Z"


def test_the_site_model_turns_rules_off_changes_thresholds_and_codes() -> None:
    site = parse_site(
        GOOD
        + """
downtime:
  reasons: [{code: recovery, name: Recovery, parent: equipment}]
  rules:
    program_prove_out: {feed_override_below: 50}
    fault_recovery: {reason: recovery}
    waiting_inspection: {enabled: false}
"""
    )
    rules = Rules(site.config.downtime)
    new_job = {r[0]: r[3] for r in stops(pieces(play(NEW_JOB), rules=rules))}
    assert new_job[34] == "program_prove_out"  # 60 % is no longer reduced, but it was a feed hold
    assert new_job[42] == "unclassified"
    recovery = {r[0]: r[3] for r in stops(pieces(play(RECOVERY), rules=rules))}
    assert recovery[20] == recovery[32] == "recovery"
    off = parse_site(GOOD + "downtime: {rules: {fault_recovery: {enabled: false}}}\n")
    assert stops(pieces(play(RECOVERY), rules=Rules(off.config.downtime)))[1][3] == "setup"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "downtime:\n  rules:\n    no_work:\n      reason: idle_no_jobs\n",
            r"<site>:4: downtime.rules.no_work.reason: unknown reason code 'idle_no_jobs'",
        ),
        (
            "downtime:\n  rules:\n    waiting_inspection: {min_minutes: -3}\n",
            r"<site>:3: downtime.rules.waiting_inspection.min_minutes: Input should be greater than or equal",
        ),
        (
            "downtime:\n  rules:\n    program_prove_out: {feed_override_below: 500}\n",
            r"<site>:3: downtime.rules.program_prove_out.feed_override_below: Input should be less than",
        ),
        (
            "downtime:\n  rules:\n    program_prove_out:\n      signals: [single_block]\n",
            r"<site>:4: downtime.rules.program_prove_out.signals: machine 'vf2-01' \(areas\[0\].lines\[0\]"
            r".cells\[0\].machines\[0\]\) does not report single_block",
        ),
        (
            "downtime:\n  rules:\n    prove_out: {enabled: false}\n",
            r"<site>:3: downtime.rules.prove_out: unknown field \(a typo\?\)",
        ),
    ],
)
def test_bad_rules_in_the_site_model_name_file_line_and_field(extra: str, message: str) -> None:
    """Line numbers in the messages above count from the end of the good site model."""
    offset = GOOD.count("\n")
    with pytest.raises(SiteConfigError) as err:
        parse_site(GOOD + extra)
    relative = [
        re.sub(r"^<site>:(\d+):", lambda m: f"<site>:{int(m.group(1)) - offset}:", p)
        for p in err.value.problems
    ]
    assert any(re.match(message, p) for p in relative), relative


def test_the_site_rules_example_in_the_docs_is_a_valid_site_model() -> None:
    text = (Path(__file__).parents[2] / "docs" / "reasons.md").read_text()
    example = text.split("## Your site's rules", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    site = parse_site(GOOD + example)
    rules = site.config.downtime.rules
    assert (rules.program_prove_out.feed_override_below, rules.fault_recovery.reason) == (90, "machine_fault")
    assert not rules.no_work.enabled


def test_values_of_one_instant_in_two_messages_or_a_part_counted_a_moment_late_are_the_same_story() -> None:
    """A controller may report the end of a cycle and its part count in two messages with the same
    stamp, or the count a few milliseconds after; live, and replayed in one go, the wait after the
    first part is the wait after the first part."""
    head = NEW_JOB[:7]  # up to the first part's last stretch of cutting
    for late_ms in (0, 5):
        tracker = MachineTracker("m")
        live: list[Interval] = []
        events: list[SignalValue] = []
        for minute, values in [*head, (42, {"execution": "READY"}), (67, {"execution": "ACTIVE"})]:
            batch = [SignalValue(k, v, at(minute)) for k, v in values.items()]
            live += tracker.apply(batch)[0]
            events += batch
            if minute == 42:  # the count: in a message of its own, at the same instant or 5 ms on
                count = [SignalValue("part_count", 1, at(42) + late_ms)]
                live += tracker.apply(count)[0]
                events += count
        replayed, _ = replay(MachineTracker("m"), events)
        for closed in (live, replayed):
            assert stops(pieces(closed))[-1] == (42, 67, "idle", "waiting_inspection", "rule"), late_ms


def test_a_program_reported_just_after_the_cycle_started_still_begins_a_first_part() -> None:
    script = [
        (0, BASE),
        (10, {"mode": "AUTOMATIC", "execution": "ACTIVE", "feed_override": 50.0}),
        (10.01, {"program": "O2"}),  # the controller says which program a moment later
        (15, {"execution": "FEED_HOLD"}),
        (16, {"execution": "ACTIVE"}),
    ]
    assert stops(pieces(play(script)))[-1] == (15, 16, "idle", "program_prove_out", "rule")


def test_a_job_hold_holds_the_stop_it_caused_and_no_stop_it_did_not() -> None:
    idle = play(
        [(0, {**BASE, "execution": "ACTIVE"}), (1, {"execution": "READY"}), (61, {"execution": "ACTIVE"})]
    )
    ctx = MachineContext("m")
    ctx.add_op(OpEvent("m", at(-30), "J", "10", "start", "program"))
    ctx.add_op(OpEvent("m", at(20), "J", "10", "pause", "manual"))  # paused while held
    ctx.holds.append(Hold("H1", at(5), None, None, "J", None, "gauge"))
    assert {r[3] for r in stops(pieces(idle, ctx)) if r[0] >= 5} == {"quality_hold"}
    other = MachineContext("m")  # a hold on job K, opened and closed while K ran elsewhere
    other.add_op(OpEvent("m", at(30), "K", "20", "start", "manual"))
    other.holds.append(Hold("H2", at(5), at(10), None, "K", None, "other machine"))
    assert {r[3] for r in stops(pieces(idle, other))} == {"unclassified"}


def test_a_paused_operation_is_work_on_the_machine() -> None:
    script = [
        (0, {**BASE, "execution": "ACTIVE"}),
        (10, {"execution": "READY"}),
        (40, {"execution": "ACTIVE"}),
    ]
    ctx = MachineContext("m", dispatched={("J", "10"): at(-60)})
    ctx.add_op(OpEvent("m", at(-30), "J", "10", "start", "program"))
    ctx.add_op(OpEvent("m", at(10), "J", "10", "pause", "manual"))
    assert stops(pieces(play(script), ctx)) == [(10, 40, "idle", "unclassified", "default")]


def test_a_comms_loss_in_the_middle_does_not_cut_a_stop_in_two() -> None:
    tracker = MachineTracker("m")
    closed: list[Interval] = []
    alarm = {"alarm_code": 2105, "alarm_text": "TOOL BREAKAGE DETECTED", "execution": "STOPPED"}
    before: list[tuple[float, dict[str, Any]]] = [(0, {**BASE, "execution": "ACTIVE"}), (10, alarm)]
    for minute, values in before:
        closed += tracker.apply([SignalValue(k, v, at(minute)) for k, v in values.items()])[0]
    closed += tracker.lose(at(12))  # the service restarts, or the broker blinks
    after: list[tuple[float, dict[str, Any]]] = [
        (12.1, {**BASE, **alarm}),
        (13, {"alarm_code": 0, "mode": "MANUAL"}),
        (21, {"mode": "AUTOMATIC", "execution": "ACTIVE"}),
    ]
    for minute, values in after:
        closed += tracker.apply([SignalValue(k, v, at(minute)) for k, v in values.items()])[0]
    out = [p for p in pieces(closed) if p.state.value not in ("running", "comms_loss")]
    assert [(p.reason, p.stop_start_ms) for p in out] == [
        ("machine_fault", at(10)),
        ("machine_fault", at(10)),
        ("fault_recovery", at(10)),  # the tool change is still the recovery from the alarm at 10
    ]


def test_a_setup_going_on_when_the_service_came_up_is_the_first_part_of_the_operation_it_started() -> None:
    """The program was loaded before the service saw the machine, but the dispatch list had it queued
    and it started the operation at that moment: its first part is proved out and inspected as any."""
    script = [(10, {**BASE, "program": "O2", "mode": "MANUAL"}), *NEW_JOB[2:9]]
    ctx = MachineContext("m")
    ctx.add_op(OpEvent("m", at(10), "J7", "10", "start", "program"))
    assert [r[3] for r in stops(pieces(play(script), ctx))] == [
        "setup",
        "program_prove_out",
        "program_prove_out",
        "waiting_inspection",
    ]
    # started by hand on a program that was already there: nothing says this is its first part
    by_hand = MachineContext("m")
    by_hand.add_op(OpEvent("m", at(10), "J7", "10", "start", "manual"))
    assert [r[3] for r in stops(pieces(play(script), by_hand))][1:] == [
        "micro_stop",
        "micro_stop",
        "unclassified",
    ]
