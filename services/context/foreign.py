"""The metrics of a machine that a foreign Sparkplug edge node publishes (a `sparkplug` source in
the site model), as ours: the edge's metric names to our signals, its values through the site
model's value maps and into our types. The edge's other metrics are left out; a value that no map
names, or that does not fit the signal, is refused and logged (once per metric and value), and
counted: the rest of the message goes on."""

from __future__ import annotations

import logging
from collections import Counter

from uns.signals import coerce
from uns.site import Signal, SparkplugSource, value_key
from uns.sparkplug.payload import Metric, Quality

GOOD = (None, Quality.GOOD)  # a metric without a quality property is good

logger = logging.getLogger(__name__)


class ForeignMetrics:
    """`counters`: where the values refused are counted (the host's `foreign_values_refused`)."""

    def __init__(
        self, machine_id: str, source: SparkplugSource, counters: Counter[str] | None = None
    ) -> None:
        self.machine_id = machine_id
        self.source = source
        self.signal_of = {metric: signal for signal, metric in source.signals.items()}
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._told: set[tuple[str, str]] = set()

    def translate(self, metrics: list[Metric]) -> list[Metric]:
        out = []
        for m in metrics:
            name = m.name or ""
            signal = self.signal_of.get(name)
            if signal is None:
                continue  # a metric of the edge's that the site model does not map
            value = m.value
            if value is not None and m.quality in GOOD:  # a bad or stale value is unknown, whatever it is
                mapping = self.source.values.get(signal)
                try:
                    if mapping is not None:
                        key = value_key(value)
                        if key not in mapping:
                            raise ValueError(f"{value!r} is not in values.{signal} ({', '.join(mapping)})")
                        value = mapping[key]
                    value = _counter(value) if signal is Signal.PART_COUNT else coerce(signal, value)
                except ValueError as e:
                    self._refuse(name, value, str(e))
                    continue
            out.append(m._replace(name=signal.value, value=value))
        return out

    def _refuse(self, metric: str, value: object, why: str) -> None:
        self.counters["foreign_values_refused"] += 1
        told = (metric, value_key(value))
        if told not in self._told:
            self._told.add(told)
            logger.warning(
                "machine %s: metric %r of edge node %s: value refused: %s (the site model's source.values"
                " maps the edge's values to ours)",
                self.machine_id,
                metric,
                self.source.edge_node,
                why,
            )


def _counter(value: object) -> int:
    """A part counter of any integer type (an edge's Int64 as well), not negative."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
        raise ValueError(f"part_count: expected a whole number not below 0, got {value!r}")
    return int(value)
