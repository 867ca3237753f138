"""The scenario engine: deterministic per seed, covers a job shop's day, and its truth is consistent."""

from __future__ import annotations

import itertools

from bridge.sim.scenario import MachineScenario

ORIGIN = 1_795_300_000_000
DAY = 24 * 3600 * 1000


def test_same_seed_same_day_other_seed_other_day() -> None:
    a = MachineScenario("vf2-01", 7, ORIGIN).run(ORIGIN + DAY)
    b = MachineScenario("vf2-01", 7, ORIGIN).run(ORIGIN + DAY)
    c = MachineScenario("vf2-01", 8, ORIGIN).run(ORIGIN + DAY)
    assert a == b
    assert a != c
    assert MachineScenario("vf2-02", 7, ORIGIN).run(ORIGIN + DAY) != a  # machines differ too


def test_a_day_has_every_kind_of_event_and_the_truth_tiles_the_day() -> None:
    scenario = MachineScenario("vf2-01", 3, ORIGIN)
    truth = scenario.truth(ORIGIN + DAY)
    assert truth[0].start_ms == ORIGIN
    assert truth[-1].end_ms == ORIGIN + DAY
    for before, after in itertools.pairwise(truth):
        assert before.end_ms == after.start_ms
        assert before.state != after.state  # merged by state
    phases = {p for i in truth for p in i.phases}
    assert {"setup", "prove_out", "cycle", "load_unload", "micro_stop", "alarm", "idle"} <= phases
    assert {i.state for i in truth} == {"running", "idle", "setup", "down"}
    assert scenario.parts_until(ORIGIN + DAY) > 20


def test_changes_start_with_every_signal_and_are_in_time_order() -> None:
    changes = list(MachineScenario("st20-01", 1, ORIGIN).changes(ORIGIN + DAY))
    assert len(changes[0].values) == 10
    assert all(a.t_ms <= b.t_ms for a, b in itertools.pairwise(changes))
    counts = [int(c.values["part_count"]) for c in changes if "part_count" in c.values]
    assert all(b > a for a, b in itertools.pairwise(counts))
