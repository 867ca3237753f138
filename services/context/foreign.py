"""The metrics of a machine that a foreign Sparkplug edge node publishes (a `sparkplug` source in
the site model), as ours: the edge's metric names to our signals, its values through the site
model's value maps and into our types. The edge's other metrics are left out; a value that no map
names, or that does not fit the signal, is refused and logged (once per metric and value), and
counted: the rest of the message goes on."""

from __future__ import annotations

import logging
from collections import Counter

from bridge.signals import coerce
from uns.site import SparkplugSource, value_key
from uns.sparkplug.payload import Metric

logger = logging.getLogger(__name__)


class ForeignMetrics:
    def __init__(self, machine_id: str, source: SparkplugSource) -> None:
        self.machine_id = machine_id
        self.source = source
        self.signal_of = {metric: signal for signal, metric in source.signals.items()}
        self.refused: Counter[str] = Counter()  # metric name -> values refused
        self._told: set[tuple[str, str]] = set()

    def translate(self, metrics: list[Metric]) -> list[Metric]:
        out = []
        for m in metrics:
            name = m.name or ""
            signal = self.signal_of.get(name)
            if signal is None:
                continue  # a metric of the edge's that the site model does not map
            value = m.value
            if value is not None:
                mapping = self.source.values.get(signal)
                try:
                    if mapping is not None:
                        key = value_key(value)
                        if key not in mapping:
                            raise ValueError(f"{value!r} is not in values.{signal} ({', '.join(mapping)})")
                        value = mapping[key]
                    value = coerce(signal, value)
                except ValueError as e:
                    self._refuse(name, value, str(e))
                    continue
            out.append(m._replace(name=signal.value, value=value))
        return out

    def _refuse(self, metric: str, value: object, why: str) -> None:
        self.refused[metric] += 1
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
