"""`/metrics`: Prometheus exposition of machine states and the health of host, bridges and machines.

Every scrape reads the record afresh (a collector on a private registry, no process-wide state). The
series are listed, with their meaning, in docs/metrics.md; the tests hold that page and this module
to each other. Health values the record holds under names not listed here are still exposed, as
gauges with a generic help text, so that nothing new is silently left out."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from services.api.deps import Store
from services.context.record import CurrentState, RecordReader
from services.context.state import MachineState

router = APIRouter(tags=["metrics"])

_NAME = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class Series:
    """One health value of the record (`name` in a `<kind>/<id>` scope) as a Prometheus series."""

    name: str
    help: str
    counter: bool = False  # only grows (a restart of its source may reset it)
    metric: str = ""  # the series' name after `uns_<kind>_`, when it is not `name`


HOST = (
    Series("connected", "1 while the context service is connected to the broker, else 0."),
    Series("nodes_online", "Edge nodes with a live Sparkplug session."),
    Series("nodes_in_conflict", "Edge nodes that two sessions claim now."),
    Series("messages", "Messages under spBv1.0/ the host handled, STATE included.", True),
    Series("state", "Host STATE messages seen.", True),
    Series("not_sparkplug", "Messages under spBv1.0/ whose topic is not Sparkplug (ignored).", True),
    Series("commands_seen", "NCMD and DCMD messages seen.", True),
    Series("malformed", "Sparkplug messages that could not be decoded or were rejected.", True),
    Series("malformed_metrics", "Metric values dropped because their type disagrees with the birth.", True),
    Series("metrics", "Metric values taken from data messages.", True),
    Series("unknown_metrics", "Metric values dropped because the birth did not declare them.", True),
    Series("before_birth", "Data messages that came before their NBIRTH or DBIRTH.", True),
    Series("seq_gaps", "Gaps in an edge node's seq: messages lost on the way.", True),
    Series("foreign_seq", "Seq numbers that looked like a second session's stream.", True),
    Series("probations", "Times an edge node's data was held on suspicion of a second session.", True),
    Series("probations_passed", "Probations that ended with no second session: the held data applied.", True),
    Series(
        "unconfirmed_dropped", "Messages held on probation and dropped: the session never confirmed.", True
    ),
    Series("conflicts", "Times two sessions were found claiming one edge node id.", True),
    Series("conflict_dropped", "Messages dropped from edge nodes in conflict.", True),
    Series("rebirths_requested", "Rebirth requests (NCMD Node Control/Rebirth) sent.", True),
    Series("rebirths_throttled", "Rebirth requests not sent: one went to that node moments before.", True),
    Series("rebirths_withheld", "Rebirth requests not sent: the node is in conflict.", True),
    Series("births", "NBIRTH and DBIRTH messages accepted.", True),
    Series("deaths", "NDEATH messages that ended a session.", True),
    Series("stale_deaths", "NDEATH messages of an older connection (another bdSeq), ignored.", True),
    Series("unreadable_deaths", "NDEATH messages without a readable bdSeq.", True),
    Series("unknown_devices", "Devices seen that are not in the site model (once per device).", True),
    Series("foreign_values_refused", "Values of foreign edge nodes' metrics no value map names.", True),
    Series("late_values", "Machine values older than the state they came after.", True),
    Series("history_applied", "Store-and-forward (historical) values applied to the record.", True),
    Series("history_repeated", "Historical values received again and already in the record.", True),
    Series(
        "record_outages", "Times the record could not be written (the host went offline meanwhile).", True
    ),
    Series(
        "values_dropped",
        "Live values not kept: sent on while the record could not be written, past its bound.",
        True,
    ),
    Series("commands_applied", "Commands (reasons, dispatch, holds, ...) applied.", True),
    Series("commands_refused", "Commands refused as invalid.", True),
    Series("commands_repeated", "Commands delivered again, answered as the first time.", True),
    Series("commands_retained", "Retained commands, refused and cleared.", True),
    Series("commands_bad_reply_to", "Command answers not sent: reply_to outside _reply/.", True),
    Series("handler_errors", "Messages the MQTT message handler failed on.", True),
    Series("refused_publishes", "Publishes too big for the broker, never sent.", True),
)
EDGE = (
    Series("buffer_depth", "Rows in the edge node's store-and-forward buffer."),
    Series(
        "buffer_age_s",
        "Age of the oldest buffered row in seconds (0 when empty).",
        metric="buffer_age_seconds",
    ),
    Series("devices_online", "The edge node's machines that are connected."),
    Series("conflict", "1 while two sessions claim this edge node id, else 0."),
    Series("buffer_dropped", "Buffered rows dropped because the buffer was full or too old.", True),
    Series("buffered", "Data messages written to the buffer instead of sent.", True),
    Series("replayed", "Buffered rows replayed to the broker.", True),
    Series("unsent", "Data messages whose publish failed; they went to the buffer.", True),
)
MACHINE = (
    Series("connected", "1 while the bridge is connected to the machine, else 0."),
    Series("samples_per_s", "Samples read per second over the last report.", metric="samples_per_second"),
    Series("samples", "Samples read from the machine.", True),
    Series("bad_values", "Values read that could not be used (bad quality or type).", True),
    Series("bad_reads", "Reads of the machine that failed.", True),
    Series("losses", "Times the bridge lost the machine's connection.", True),
    Series("agent_restarts", "Restarts of the machine's MTConnect agent seen (0 for other readers).", True),
    Series(
        "sequence_gaps", "Gaps in the MTConnect agent's sequence: its buffer wrapped before we read it.", True
    ),
    Series("observations_lost", "Observations lost in those gaps (the agent no longer had them).", True),
)
# health scope kind -> (label, the prefix of its series, what it documents)
KINDS: dict[str, tuple[str, str, tuple[Series, ...]]] = {
    "host": ("host", "uns_host_", HOST),
    "edge": ("edge_node", "uns_edge_", EDGE),
    "machine": ("machine", "uns_machine_", MACHINE),
}
_WHO = {"host": "the host", "edge": "the edge node", "machine": "the machine"}

HealthRow = tuple[str, str, float | None, int]


def _number(value: object) -> float | None:
    """A health value as a sample, or None for what is not a number (no sample is better than 0)."""
    if isinstance(value, int | float):
        return float(value)
    return None


class _Names:
    """Series names given out in one scrape: two families never share one."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def take(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._used or f"{candidate}_total" in self._used:
            n += 1
            candidate = f"{name}_{n}"
        self._used.update((candidate, f"{candidate}_total"))
        return candidate


class RecordCollector:
    """Yields every series from the record at each scrape."""

    def __init__(self, store: RecordReader) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        states = self.store.current_states()
        health = self.store.health()
        names = _Names()
        families = list(_machine_families(states, names))
        families += _health_families(health, [c.machine_id for c in states], names)
        yield from families


def _machine_families(states: Sequence[CurrentState], names: _Names) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        names.take("uns_machine_state"),
        "1 for the state each machine is in now, 0 for the others.",
        labels=["machine", "state"],
    )
    since = GaugeMetricFamily(
        names.take("uns_machine_state_since_seconds"),
        "When the machine's current state began (Unix time, event time).",
        labels=["machine"],
    )
    counter = GaugeMetricFamily(
        names.take("uns_machine_part_counter"),
        "The machine's own part counter as last seen (it may be reset at the machine).",
        labels=["machine"],
    )
    for c in states:
        for s in MachineState:
            state.add_metric([c.machine_id, s.value], float(c.state is s))
        if c.since_ms is not None:
            since.add_metric([c.machine_id], c.since_ms / 1000)
        if c.counter is not None:
            counter.add_metric([c.machine_id], float(c.counter))
    yield from (state, since, counter)


def _health_families(rows: Iterable[HealthRow], machines: Sequence[str], names: _Names) -> list[Metric]:
    # kind -> id -> name -> value, kind -> id -> when it was last written, and the scopes of other kinds
    values: dict[str, dict[str, dict[str, float | None]]] = {kind: {} for kind in KINDS}
    updated: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
    other: dict[tuple[str, str], list[tuple[str, float | None]]] = defaultdict(list)
    for row_scope, row_name, value, updated_ms in rows:
        scope, name = str(row_scope), str(row_name)  # TEXT columns: str unless someone wrote a blob
        kind, _, ident = scope.partition("/")
        if kind not in KINDS:
            other[kind, name].append((scope, _number(value)))
            continue
        values[kind].setdefault(ident, {})[name] = _number(value)
        ms = _number(updated_ms)
        if ms is not None and math.isfinite(ms):
            updated[kind][ident] = max(updated[kind].get(ident, 0.0), ms / 1000)
    for machine in machines:  # every machine of the record, health or not yet
        values["machine"].setdefault(machine, {})

    families: list[Metric] = []
    for kind, (label, prefix, documented) in KINDS.items():
        health = values[kind]
        ids = sorted(health)
        for series in documented:
            metric = names.take(prefix + (series.metric or series.name))
            family = (CounterMetricFamily if series.counter else GaugeMetricFamily)(
                metric, series.help, labels=[label]
            )
            # an id that has not reported this value yet shows 0; one the record holds no number for, nothing
            _add(family, ((ident, health[ident].get(series.name, 0.0)) for ident in ids))
            families.append(family)
        seen = GaugeMetricFamily(
            names.take(f"{prefix}health_updated_seconds"),
            f"When the health of {_WHO[kind]} was last written to the record (Unix time; 0: never).",
            labels=[label],
        )
        _add(seen, ((ident, updated[kind].get(ident, 0.0)) for ident in ids))
        families.append(seen)
        known = {s.name for s in documented}
        for name in sorted({n for values_of in health.values() for n in values_of} - known):
            family = _undocumented(prefix + _NAME.sub("_", name), f"{kind}/<id>", name, label, names)
            _add(family, ((ident, health[ident].get(name)) for ident in ids))
            families.append(family)

    # scopes of a kind this module does not know: `uns_<kind>_<name>{scope="<scope>"}`
    for (kind, name), samples in sorted(other.items()):
        metric = f"uns_{_NAME.sub('_', kind)}_{_NAME.sub('_', name)}"
        family = _undocumented(metric, f"{kind}/<id>", name, "scope", names)
        _add(family, sorted(samples, key=lambda s: s[0]))
        families.append(family)
    return families


def _add(
    family: GaugeMetricFamily | CounterMetricFamily, samples: Iterable[tuple[str, float | None]]
) -> None:
    for ident, value in samples:
        if value is not None:
            family.add_metric([ident], value)


def _undocumented(metric: str, scope: str, name: str, label: str, names: _Names) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        names.take(metric),
        f"Health value {name!r} of {scope} scopes, not documented in docs/metrics.md.",
        labels=[label],
    )


def render(store: RecordReader) -> bytes:
    """The Prometheus text exposition of the record, as of now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecordCollector(store))
    return generate_latest(registry)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(store: Store) -> PlainTextResponse:
    """Machine states and the health of host, edge nodes and machines (docs/metrics.md)."""
    return PlainTextResponse(render(store), media_type=CONTENT_TYPE_LATEST)
