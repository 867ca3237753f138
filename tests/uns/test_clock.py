"""uns/clock.py `iso`: the text every document and report carries for a time, against the
standard library's own formatting of the same instants."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from uns.clock import iso, parse_iso


def _reference(ms: int) -> str:
    """In integers: datetime's own ISO text, with milliseconds and a Z."""
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_iso_is_the_standard_text_of_the_instant() -> None:
    rng = random.Random(7)
    instants = [0, 1, 999, 1000, -1, -999, -1000, -1001, 1_764_633_599_999, 1_764_633_600_000]
    instants += [rng.randrange(-2_000_000_000_000, 4_000_000_000_000) for _ in range(5_000)]
    instants += [1_764_633_600_000 + rng.randrange(0, 3_000) for _ in range(2_000)]  # the same few seconds
    for ms in instants:
        assert iso(ms) == _reference(ms), ms
        assert parse_iso(iso(ms)) == ms


def test_iso_keeps_milliseconds_exact_where_floats_would_round() -> None:
    # a float of seconds cannot hold every millisecond of the year 9999
    assert iso(253_402_300_799_999) == "9999-12-31T23:59:59.999Z"
