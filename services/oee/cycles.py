"""The best observed cycle, the third source of an ideal cycle time (docs/oee.md). Pure.

A cycle is the running time of an operation between two consecutive part counts of it, per part (a
count of 2 at once is two cycles of half that time). Not a cycle: the time up to an operation's first
count (setup, prove-out: there is no count before it to measure from), a stretch with comms_loss in
it (how long the machine ran is not known), a stretch without running time. Only running time
counts: load/unload and other stops between the counts are not in the cycle (micro-stops are a
performance loss of their own, the six big losses' small stops).

Of the cycles observed, those shorter than half their median are dropped (a double count, a count
that came in two messages, a counter bumped by hand), and the ideal is the `percentile` of the rest
(nearest rank: 10 of 30 cycles is the third fastest), given at least `min_cycles` of them. A low
percentile rather than the fastest: one odd cycle does not set the standard for every later part.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence


def cycles_of(
    counts: Sequence[tuple[int, int]],
    running: Sequence[tuple[int, int]],
    lost: Sequence[tuple[int, int]] = (),
) -> list[tuple[int, float]]:
    """(when, ms a part) of each cycle an operation's part counts (when, parts), its running intervals
    and its comms_loss intervals (start, end) make, all in time order."""
    times = [ts for ts, _ in counts]
    ran = _spent(running, times)
    unknown = _spent(lost, times) if lost else None
    out: list[tuple[int, float]] = []
    for n in range(1, len(counts)):
        ts, delta = counts[n]
        run = ran[n] - ran[n - 1]
        if run > 0 and delta > 0 and (unknown is None or unknown[n] == unknown[n - 1]):
            out.append((ts, run / delta))
    return out


def _spent(spans: Sequence[tuple[int, int]], times: list[int]) -> list[int]:
    """Time spent in non-overlapping spans (in time order) up to each of `times`."""
    starts = [a for a, _ in spans]
    ends = [b for _, b in spans]
    total = [0, *itertools.accumulate(b - a for a, b in spans)]
    last = len(spans)
    out = []
    for ts in times:
        i = bisect.bisect_right(ends, ts)  # spans [0, i) ended by ts; span i may have begun
        out.append(total[i] + ts - starts[i] if i < last and starts[i] < ts else total[i])
    return out


def best_observed(cycles: Iterable[float], percentile: float, min_cycles: int) -> tuple[float | None, int]:
    """The ideal cycle (ms) the observed cycles (ms a part) give, and how many were used (None: fewer
    than `min_cycles` after the too-short ones are dropped)."""
    ordered = sorted(c for c in cycles if c > 0)
    if not ordered:
        return None, 0
    n = len(ordered)
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    kept = ordered[bisect.bisect_left(ordered, median / 2) :]
    if len(kept) < min_cycles:
        return None, len(kept)
    rank = max(math.ceil(percentile * len(kept) / 100), 1)  # (0.1 * 30 is 3.0000000000000004)
    return kept[rank - 1], len(kept)
