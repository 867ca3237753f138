"""Rule-based reasons for stops, from the machine's own signals and the shift calendar."""

from __future__ import annotations

import pytest

from services.context.reasons import DEFAULT_REASONS, Loss


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
