"""The context service: the Sparkplug host application that keeps the record.

A payload's way, each stage in the module that owns it:

1. decode: `on_message` hands a Sparkplug message to `HostSession.handle` (uns/sparkplug/host.py:
   topic, protobuf, aliases, seq and bdSeq, births and deaths, rebirth requests), which gives
   `MetricsUpdate`, `Death` and `RebirthRequest` events (`_host_events`);
2. state: `_update` gives a machine's values to its `MachineTracker` (state.py), which derives its
   state on event time and closes intervals and part counts; historical values wait for the flush;
3. context: `_follow_operations` moves the machine's `OperationBook` (jobs.py); at the flush
   `timeline.enrich` and `timeline.attribute` give closed intervals and counts their job,
   operation, shift, operator, hold and reason (timeline.py, reasons.py);
4. record: `flush` writes them, the open pieces and the event log in one transaction
   (record.py; `_backfill` recomputes from history); under load the event loop's flushes gather
   what came in for up to RECORD_GAP_S (50 ms), so that a transaction takes more rows (explicit
   flushes write at once); a record that cannot be written sends the host offline until it can
   (`_record_unavailable`);
5. publish: the changed machines' `state` (at most every FLUSH_GAP_S, before the record write: the
   UNS does not wait for the disk), `job` and `intervals` (after it), documents shaped by tree.py,
   under `<enterprise>/<site>/<area>/<line>/<cell>/<machine>/`. A machine's `state` goes out when
   it differs from the last one in more than `updated`, and otherwise at most once a second while
   values come (and once after the last), so `updated` is at most about a second behind; a
   reconnect, a command, a rebuild or backfill, a job change, a stop that grew into another reason
   (`_refresh_stops`) publish it in any case. Its current_state row in the record follows the
   same rule.

Commands (dispatch lists, operators, holds, reasons, scrap) come on
`<enterprise>/<site>/_command/<kind>` and are applied by services/context/intake.py.

A site model with `context.workers` splits it: each worker keeps the machines of its edge nodes only,
is a Sparkplug host of its own (its own host id and STATE, which its edge nodes take as their primary
host), subscribes to its edge nodes' topics only, and answers the commands about its machines
(services/context/intake.py `Intake.owner`). `check_unheld` refuses a second worker for a partition
that a live one holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from services.context import reasons, timeline, tree
from services.context.commands import CommandError, CommandResult, parse, shape_problem
from services.context.foreign import ForeignMetrics
from services.context.intake import Intake
from services.context.jobs import OperationBook
from services.context.record import Event, RecordStore, RecordUnavailableError
from services.context.shifts import calendar_for
from services.context.state import (
    LOST,
    Interval,
    MachineState,
    MachineTracker,
    PartsMade,
    SignalValue,
    Story,
    birth_time,
    replay,
)
from services.context.tree import context_json, interval_json
from uns.clock import Clock, iso
from uns.mqtt import BrokerAddress, MqttClient, Will
from uns.site import Machine, Partition, Signal, Site, SparkplugSource
from uns.sparkplug.host import Death, HostSession, MetricsUpdate, RebirthRequest, state_payload
from uns.sparkplug.host import Event as HostEvent
from uns.sparkplug.payload import Metric, Quality
from uns.sparkplug.topic import state_topic

logger = logging.getLogger(__name__)

_GOOD = (None, Quality.GOOD)
HEALTH_PREFIX = "health/"  # the bridges' health metrics (bridge/health.py)
# Under load, a flush (the changed machines' `state`) at most this often (seconds): the first change
# after a quiet spell goes out at once, the rest wait at most this long (bench/load.py).
FLUSH_GAP_S = 0.01
# A machine whose values changed nothing in its `state` JSON but `updated` publishes it again (and
# writes its current_state row) at most this often (seconds), and once more after its last value.
STATE_REFRESH_S = 1.0
# The record is written with a flush when the last write is at least this long ago (after a quiet
# spell: at once) or when this many values wait; under load the flushes in between gather for it,
# so that one transaction takes more rows (SQLite writes every page a commit dirtied, and the event
# log's keys are spread over every machine). A write holds the event loop while it runs (15-20 us a
# value on 2 busy cores), so a longer gap delays the state changes that come meanwhile. At 500
# machines, 2,000 msg/s (bench/load.py), against 10 ms: 100 ms cut the write's cost a value by
# 15-25 % and added about 20 ms to the state p99; 50 ms, up to 10 % and about 10 ms. RECORD_BATCH
# bounds one write to some 25-35 ms there.
RECORD_GAP_S = 0.05
RECORD_BATCH = 1_500
# While the record cannot be written, what comes in is held in memory. Our edge nodes (and every one
# that follows the host's STATE) buffer on their own disks meanwhile; an edge node that ignores STATE
# keeps sending. Past this many values held (some 250 bytes each), a machine's live data is no longer
# taken in until its rebirth: it is comms_loss from its first value not kept (written with the rest
# once the record is back), what it sends is counted (`values_dropped`), and its edge node is asked
# for a rebirth once the host is online again, so that its values come whole.
OUTAGE_VALUES_MAX = 500_000
# Rebirth requests to an edge node whose machine was not kept, before its data is taken unborn.
REBIRTH_ASKS = 3
_TIMER_SLACK_S = 0.002  # (the event loop may run a timer this much before its time)
_REFRESH_SLACK_S = 0.05  # the trailing refreshes of machines gone quiet: together, this much late


@dataclass(slots=True)
class _Said:
    """What was last said of a machine, on the tree (its `state` document) and to the record (its
    current_state row), each without its `updated`, when (time.monotonic), and what both were made
    of (`tree.state_key`)."""

    key: tuple[Any, ...] | None = None
    doc: dict[str, Any] | None = None
    doc_at: float = -math.inf
    row: tuple[Any, ...] | None = None
    row_at: float = -math.inf


class ContextService:
    def __init__(
        self,
        site: Site,
        store: RecordStore,
        address: BrokerAddress,
        clock: Clock,
        worker: str | None = None,
    ) -> None:
        """`worker`: the context worker of a partitioned site (`context.workers`) this is; None for
        a site without workers. ValueError names the workers there are."""
        self.site = site
        self.store = store
        self.address = address
        self.clock = clock
        self.partition: Partition = site.partition(worker)
        self.host_id = self.partition.host_id
        # the machines this one keeps: all of them, or those of its partition's edge nodes
        owned = tuple(m for m in site.machines if site.edge_key(m) in self.partition.edge_nodes)
        self.host = HostSession()
        self._machines: dict[tuple[str, str, str], Machine] = {site.sparkplug_key(m): m for m in owned}
        # machines of foreign edge nodes: their metric names and values, as ours
        self._foreign = {
            m.id: ForeignMetrics(m.id, m.source, self.host.counters)
            for m in owned
            if isinstance(m.source, SparkplugSource)
        }
        store.register_machines((m.id, str(m.path), m.name) for m in owned)
        shifts = site.config.shifts
        self.calendar = calendar_for(shifts, site.config.timezone) if shifts is not None else None
        self.taxonomy = reasons.taxonomy(site.config.downtime)
        self.rules = reasons.Rules(site.config.downtime, site.config.timezone)
        self.root = f"{site.config.enterprise}/{site.config.site}"
        self.holds = store.holds()  # one list for every machine: a hold on a job follows the job
        self.contexts: dict[str, timeline.MachineContext] = {}
        self.books: dict[str, OperationBook] = {}
        for m in owned:
            ctx = timeline.MachineContext(
                m.id, holds=self.holds, overrides=store.overrides(m.id), verdicts=store.verdicts(m.id)
            )
            for ts, operator in store.operator_events(m.id):
                ctx.add_operator(ts, operator)
            book = OperationBook(m.id, {o.key: o for o in store.operations(m.id)}, store.pending(m.id))
            ctx.dispatched = {k: o.dispatched_ms for k, o in book.ops.items()}
            ctx.dropped = store.dropped(m.id)
            for event in store.op_events(m.id):
                ctx.add_op(event)
            self.contexts[m.id], self.books[m.id] = ctx, book
        restored = {c.machine_id: c for c in store.current_states()}
        self.trackers: dict[str, MachineTracker] = {}
        for m in owned:
            c = restored.get(m.id)
            self.trackers[m.id] = (
                MachineTracker(
                    m.id,
                    state=c.state,
                    since_ms=c.since_ms,
                    counter=c.counter,
                    counter_rollover=m.counter_rollover,
                    story=c.memory,
                    story_at_start=c.story,
                )
                if c is not None and c.since_ms is not None
                else MachineTracker(m.id, counter_rollover=m.counter_rollover)
            )
        self._intervals: list[Interval] = []
        self._events: list[Event] = []
        self._history: dict[str, list[tuple[int, list[SignalValue]]]] = {}
        self._last_birth: dict[str, int] = {}
        self._health: dict[str, dict[str, bool | int | float | None]] = {}
        self._health_task: asyncio.Task[None] | None = None
        self.health_interval_s = 10.0
        self._parts: list[PartsMade] = []
        self._dirty: set[str] = set()  # machines to publish (state) and write (current row): all of them
        self._moved: set[str] = set()  # machines whose values came in: those they changed (`_Said`)
        self._stale: dict[str, float] = {}  # machines whose last `updated` is not said: when it is due
        self._said: dict[str, _Said] = {}
        self._rows: dict[str, tuple[Any, ...]] = {}  # current rows for the next record write
        self._early: set[str] = set()  # machines whose state went out since the last record write
        self._flush_scheduled = False
        self._write_scheduled = False
        self._refresh_scheduled = False
        self._last_flush = 0.0
        self._last_write = -math.inf
        self.flush_gap_s = FLUSH_GAP_S
        self.state_refresh_s = STATE_REFRESH_S
        self.record_gap_s = RECORD_GAP_S
        self.record_batch = RECORD_BATCH
        self.outage_values_max = OUTAGE_VALUES_MAX
        # machines whose live data is not taken in (the bound above) until their rebirth: their edge nodes
        self._not_kept: dict[str, tuple[str, str]] = {}
        self._rebirth_asks: dict[tuple[str, str], int] = {}  # their requests sent, per edge node
        self._rebirth_retry = False  # a retry of the rebirths due is scheduled
        self._client: MqttClient | None = None
        self._state_ts = 0
        self._unknown_devices: set[tuple[str, str, str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs_dirty: set[str] = set()
        self._published: list[tuple[Interval, bool]] = []  # closed record intervals to announce
        self._written: dict[str, dict[str, Any] | None] = {}  # the open pieces' context as last written
        self._stopped = False  # after stop(): nothing more is taken or written
        self._record_retry: float | None = None  # while the record cannot be written: the next wait
        self._rebuilds: dict[str, int] = {}  # rebuilds the record could not take yet: machine, from
        self._stopping = False
        self.intake = Intake(self)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._client = self._connect(loop)
        self._health_task = loop.create_task(
            self._report_health(self.health_interval_s), name="context.health"
        )

    def _connect(self, loop: asyncio.AbstractEventLoop) -> MqttClient:
        client = MqttClient(
            f"uns-host.{self.host_id}",
            self.address,
            self,
            loop,
            will=self._will,
            subscriptions=(*self._sparkplug_filters(), (f"{self.root}/_command/+", 1)),
        )
        client.start()
        return client

    # -- the record cannot be written ------------------------------------------------------------
    # The host goes offline (STATE), so that the edge nodes buffer on their disks instead of sending
    # into a service that cannot keep what they send; what it holds is tried again with backoff
    # (0.5 s doubling to 30 s), and once written it comes back online on a new connection (a new
    # Will and STATE timestamp): the edge nodes send their births and then what they buffered.
    def _record_unavailable(self, exc: RecordUnavailableError) -> None:
        client = self._client
        if self._record_retry is None:
            self._record_retry = 0.5
            self.host.counters["record_outages"] += 1
            logger.error(
                "the record cannot be written (%s): offline as Sparkplug host %s, the edge nodes buffer;"
                " what came in is kept and tried again",
                exc,
                self.host_id,
            )
            if client is not None and client.connected:
                client.publish(
                    state_topic(self.host_id), state_payload(False, self._state_ts), qos=1, retain=True
                )
        else:
            self._record_retry = min(self._record_retry * 2, 30.0)
            logger.warning(
                "the record still cannot be written (%s); next try in %.1f s", exc, self._record_retry
            )
        if self._loop is not None:
            self._loop.call_later(self._record_retry, self._try_record)

    def _try_record(self) -> None:
        if not self._stopped and self._loop is not None:
            self._loop.create_task(self._retry_record(), name="context.record-retry")

    async def _retry_record(self) -> None:
        """Whether the record answers is asked off the loop (a database that is gone can take
        seconds to say so); only then is what was kept written, and the host back online."""
        if self._stopped or self._stopping or self._record_retry is None:
            return
        if not await asyncio.to_thread(self.store.answers):
            self._record_unavailable(RecordUnavailableError("it does not answer"))
            return
        try:
            self.flush(retry=True)
        except Exception as exc:  # a fault of another kind: logged, and tried again all the same
            logger.exception("the kept writes failed on the record")
            self._record_unavailable(RecordUnavailableError(f"{type(exc).__name__}: {exc}"))
            return
        if self._record_retry is None and not (self._stopped or self._stopping):
            await self._online_again()

    async def _online_again(self) -> None:
        """A new connection, so that the Will and the online STATE carry a timestamp later than the
        offline one the edge nodes saw."""
        old = self._client
        if old is not None:
            old.stop()
            old.drain()
        if self._stopped or self._stopping or self._loop is None:
            return
        logger.info("the record is written again: Sparkplug host %s comes back online", self.host_id)
        self._client = self._connect(self._loop)

    def _sparkplug_filters(self) -> tuple[tuple[str, int], ...]:
        """Everything Sparkplug, or (a worker of a partitioned site) its edge nodes' topics only:
        node messages `spBv1.0/<group>/+/<edge>` and device messages `.../<edge>/+`."""
        if not self.site.partitioned:
            return (("spBv1.0/#", 0),)
        nodes = sorted(self.partition.edge_nodes)
        return tuple(
            (f"spBv1.0/{group}/+/{edge}{devices}", 0) for group, edge in nodes for devices in ("", "/+")
        )

    def _will(self) -> Will:
        # The Will and the online STATE of one connection carry the same timestamp.
        self._state_ts = self.clock.now_ms()
        return Will(state_topic(self.host_id), state_payload(False, self._state_ts), qos=1, retain=True)

    async def stop(self) -> None:
        """Clean exit: STATE offline first, then every machine to comms_loss, the record flushed.
        In order: stop taking messages (the last ones paho handed over are applied), flush, and only
        then may the owner close the store."""
        self._stopping = True  # no retry of the record brings the host back online from here
        if self._health_task is not None:
            self._health_task.cancel()
        client = self._client
        if client is not None:
            await client.publish_and_wait(
                state_topic(self.host_id), state_payload(False, self._state_ts), qos=1, retain=True
            )
            client.stop()
            client.drain()
        now = self.clock.now_ms()
        for tracker in self.trackers.values():
            self._intervals += tracker.lose(now)
            self._events.append(
                (tracker.machine_id, SignalValue(LOST, None, tracker.since_ms or now), "lost")
            )
            self._dirty.add(tracker.machine_id)
        self._client = None  # nothing more is published: the tree keeps what was last said
        self.flush(retry=True)  # (while the record could not be written: one last try)
        if self._record_retry is not None:
            logger.error(
                "stopped while the record cannot be written: %d intervals, %d part counts and %d values"
                " that came in live are not in the record",
                len(self._intervals),
                len(self._parts),
                len(self._events),
            )
        self._stopped = True

    # -- MqttHandler ----------------------------------------------------------------------------
    def on_connected(self) -> None:
        assert self._client is not None
        online = self._record_retry is None  # (a reconnect while the record cannot be written: offline)
        self._client.publish(
            state_topic(self.host_id), state_payload(online, self._state_ts), qos=1, retain=True
        )
        self._dirty.update(self.trackers)  # republish the retained tree
        if online:
            self._ask_rebirths_due()
        self._schedule_flush()

    def _ask_rebirths_due(self) -> None:
        """The edge nodes of the machines not kept: asked for a rebirth (their values whole again),
        again every two throttle intervals until they are born (a request held back by the host
        session, or lost, or not answered), and after REBIRTH_ASKS unanswered ones their data is
        taken as it comes (a node that ignores requests would stay comms_loss until its next birth)."""
        client = self._client
        if client is None or not client.connected or self._record_retry is not None or self._stopping:
            return  # (asked when the host is online again: on_connected)
        why = "its data was not all kept while the record could not be written"
        conflicts = set(self.host.conflicts)  # (asked once the conflict is over: nothing to ask now)
        due = set(self._not_kept.values())
        self._rebirth_asks = {node: n for node, n in self._rebirth_asks.items() if node in due}
        for node in sorted(due - conflicts):
            if self._rebirth_asks.get(node, 0) >= REBIRTH_ASKS:
                machines = sorted(m for m, n in self._not_kept.items() if n == node)
                logger.warning(
                    "%s/%s did not answer %d rebirth requests: the data of %s is taken as it comes again"
                    " (its values may be partial until its next birth)",
                    *node,
                    REBIRTH_ASKS,
                    ", ".join(machines),
                )
                for m in machines:
                    del self._not_kept[m]
                del self._rebirth_asks[node]
                continue
            asked = self.host.ask_rebirth(*node, why, time.monotonic())
            if asked:
                self._rebirth_asks[node] = self._rebirth_asks.get(node, 0) + 1
            self._host_events(asked)
        if self._not_kept and self._loop is not None and not self._rebirth_retry:
            self._rebirth_retry = True
            self._loop.call_later(2 * self.host.rebirth_interval_s, self._rebirths_retry_due)

    def _rebirths_retry_due(self) -> None:
        self._rebirth_retry = False
        self._ask_rebirths_due()

    def on_disconnected(self, reason: str) -> None:
        now = self.clock.now_ms()
        for death in self.host.disconnected():
            self._death(Death(death.group_id, death.edge_node_id, None, now, death.devices))
        self._schedule_flush()

    def on_retained(self, topic: str, payload: bytes) -> None:
        """A retained message: the broker sends it again to every new subscriber, so a retained
        command would be applied at every reconnect. Refused (with an answer where it asks for one)
        and cleared; Sparkplug's retained messages (host STATE) are taken as they are."""
        if topic.startswith("spBv1.0/"):
            self.on_message(topic, payload)
            return
        if not payload or self._stopped:
            return  # the empty message that cleared one
        if not self.intake.lead:
            return  # the lead worker clears it and answers
        self.host.counters["commands_retained"] += 1
        command_id, reply_to = _envelope(payload)
        logger.warning(
            "retained command on %s refused and cleared: commands must be published without the retain flag",
            topic,
        )
        error = "a retained command is refused: publish commands without the retain flag (it was cleared)"
        result = CommandResult(id=command_id, ok=False, status=409, error=error)
        client = self._client
        if client is not None:
            client.publish(topic, b"", 1, True)  # clear it (the services user may write the tree)
            self._reply(topic.rpartition("/")[2], reply_to, result)

    def on_message(self, topic: str, payload: bytes) -> None:
        if self._stopped:
            return
        if not topic.startswith("spBv1.0/"):
            kind = topic.rpartition("/")[2]
            if not self.intake.mine(kind, payload):
                self.host.counters["commands_for_other_workers"] += 1
                return
            self.command(kind, payload, via="mqtt")
            self._schedule_flush()
            return
        self._host_events(self.host.handle(topic, payload, time.monotonic()))
        self._schedule_flush()

    def _host_events(self, events: list[HostEvent]) -> None:
        for event in events:
            if isinstance(event, MetricsUpdate):
                self._update(event)
            elif isinstance(event, Death):
                self._death(event)
            elif isinstance(event, RebirthRequest) and self._client is not None:
                self._client.publish(*event.command(self.clock.now_ms()), qos=0)

    # -- events -------------------------------------------------------------------------------
    def _machine(self, group: str, edge: str, device: str) -> Machine | None:
        key = (group, edge, device)
        machine = self._machines.get(key)
        if machine is None and key not in self._unknown_devices:
            self._unknown_devices.add(key)
            self.host.counters["unknown_devices"] += 1
            logger.warning("device %s/%s/%s is not in the site model; its data is not recorded", *key)
        return machine

    def _update(self, event: MetricsUpdate) -> None:
        if event.device_id is None:
            self._keep_health(f"edge/{event.edge_node_id}", event.metrics)
            return  # node metrics carry no machine state
        machine = self._machine(event.group_id, event.edge_node_id, event.device_id)
        if machine is None:
            return
        metrics = [m for m in event.metrics if not (m.name or "").startswith(HEALTH_PREFIX)]
        if len(metrics) < len(event.metrics):
            self._keep_health(f"machine/{machine.id}", event.metrics)
        foreign = self._foreign.get(machine.id)
        if foreign is not None:
            metrics = foreign.translate(metrics)
            if event.is_birth:  # no bridge of ours reports its health: its births say it is connected
                self._health.setdefault(f"machine/{machine.id}", {})["connected"] = True
        values = [
            SignalValue(m.name or "", m.value if m.quality in _GOOD else None, m.timestamp)
            for m in metrics
            if not m.is_historical
        ]
        if len(values) < len(metrics):
            # buffered by the edge node while we could not hear it: goes into the past, at flush
            history = [
                SignalValue(m.name or "", m.value if m.quality in _GOOD else None, m.timestamp)
                for m in metrics
                if m.is_historical
            ]
            self._history.setdefault(machine.id, []).append((event.timestamp, history))
        if event.is_birth:
            self._last_birth[machine.id] = event.timestamp
            if values:
                at = birth_time(values)
                values = [SignalValue(v.name, v.value, at) for v in values]
            if self._record_retry is None:
                self._not_kept.pop(machine.id, None)  # whole again: taken from here on
        if not values:
            return
        if machine.id in self._not_kept or (
            self._record_retry is not None and len(self._events) >= self.outage_values_max
        ):
            self._not_taken(machine, event, values)
            return
        tracker = self.trackers[machine.id]
        closed, parts = tracker.apply(values)
        self._log_changes(closed, tracker)
        self._intervals += closed
        self._parts += parts
        source = "birth" if event.is_birth else "live"
        self._events += [(machine.id, v, source) for v in values]
        self._moved.add(machine.id)  # published and written if this changed more than `updated`
        self._follow_operations(machine.id, values, parts)

    def _not_taken(self, machine: Machine, event: MetricsUpdate, values: list[SignalValue]) -> None:
        """Live values that come while the record cannot be written and holds too many already
        (OUTAGE_VALUES_MAX): counted; the machine is comms_loss from the first of them, and what its
        edge node sends is not taken until the machine's rebirth (asked for once the host is online)."""
        self.host.counters["values_dropped"] += len(values)
        if machine.id in self._not_kept:
            return
        self._not_kept[machine.id] = (event.group_id, event.edge_node_id)
        tracker = self.trackers[machine.id]
        closed = tracker.lose(min(v.timestamp for v in values))
        self._events.append((machine.id, SignalValue(LOST, None, tracker.since_ms or 0), "lost"))
        self._log_changes(closed, tracker)
        self._intervals += closed
        self._dirty.add(machine.id)
        logger.error(
            "%s: %d values are held while the record cannot be written; its edge node %s/%s sends on"
            " (it does not follow the host's STATE): what it sends is not kept from %s (comms_loss) until"
            " its rebirth, which it is asked for once the record is back",
            machine.id,
            len(self._events),
            event.group_id,
            event.edge_node_id,
            iso(tracker.since_ms or 0),
        )

    def _follow_operations(self, machine_id: str, values: list[SignalValue], parts: list[PartsMade]) -> None:
        """Program changes and part counts, in time order, to the machine's operation book (parts
        counted at the moment a program changes belong to the operation before)."""
        book = self.books[machine_id]
        steps = sorted(
            [(p.timestamp, 0, p.delta, None) for p in parts]
            + [(v.timestamp, 1, 0, v.value) for v in values if v.name == Signal.PROGRAM],
            key=lambda s: (s[0], s[1]),
        )
        pending = book.pending
        decided = []
        for ts, kind, delta, program in steps:
            if kind == 0:
                decided += book.on_parts(ts, delta)
            else:
                decided += book.on_program(ts, program if isinstance(program, str) else None)
        if parts or decided or book.pending != pending:
            self._jobs_dirty.add(machine_id)
        if book.pending != pending:
            self.store.set_pending(machine_id, book.pending)
            if book.pending is not None:
                logger.info(
                    "%s: program %s could be %s: waiting for a confirmation",
                    machine_id,
                    book.pending.program,
                    ", ".join(f"{j}/{o}" for j, o in book.pending.candidates),
                )
        if decided:
            self.record_op_events(machine_id, decided)

    def record_op_events(self, machine_id: str, events: list[timeline.OpEvent]) -> None:
        """Store the book's decisions and put them on the machine's timeline."""
        book, ctx = self.books[machine_id], self.contexts[machine_id]
        self.store.add_op_events(events, [book.ops[(e.job, e.operation)] for e in events])
        for e in events:
            ctx.add_op(e)
            logger.info(
                "%s: %s %s/%s (%s) at %s", machine_id, e.action, e.job, e.operation, e.cause, iso(e.ts)
            )
        self._jobs_dirty.add(machine_id)
        self._dirty.add(machine_id)

    # -- commands -----------------------------------------------------------------------------
    def command(self, kind: str, payload: bytes, via: str) -> CommandResult:
        """A command from `<enterprise>/<site>/_command/<kind>`: applied, or refused with a reason.
        The answer goes to the command's `reply_to` (under `<enterprise>/<site>/_reply/`), if any."""
        command_id, reply_to = _envelope(payload)
        if reply_to is not None and reply_to.startswith(f"{self.root}/_reply/api/"):
            via = "api"
        if self._record_retry is not None:  # what it changes could not be kept: said, not half done
            self.host.counters["commands_refused"] += 1
            result = CommandResult(
                id=command_id,
                ok=False,
                status=503,
                error="the record cannot be written now: send it again later",
            )
            self._reply(kind, reply_to, result)
            return result
        first = self.store.applied(command_id) if command_id is not None else None
        if first is not None:  # delivered again (a QoS 1 redelivery, a sender's retry): the first answer
            self.host.counters["commands_repeated"] += 1
            logger.info("command %s %s: applied before, answered as then", kind, command_id)
            result = CommandResult.model_validate_json(first)
        else:
            try:
                cmd = parse(kind, payload)
                detail = self.intake.apply(cmd, via)
                result = CommandResult(id=command_id, ok=True, detail=detail)
                self.host.counters["commands_applied"] += 1
                if command_id is not None:
                    self.store.mark_applied(command_id, kind, self.clock.now_ms(), result.model_dump_json())
            except CommandError as exc:
                self.host.counters["commands_refused"] += 1
                logger.warning("command %s refused: %s", kind, exc)
                result = CommandResult(id=command_id, ok=False, status=exc.status, error=str(exc))
        self._reply(kind, reply_to, result)
        return result

    def _reply(self, kind: str, reply_to: str | None, result: CommandResult) -> None:
        if reply_to is not None and self._client is not None:
            if reply_to.startswith(f"{self.root}/_reply/") and "+" not in reply_to and "#" not in reply_to:
                self._client.publish(reply_to, result.model_dump_json().encode(), 1, False)
            else:
                self.host.counters["commands_bad_reply_to"] += 1
                logger.warning("command %s: reply_to %r is not under %s/_reply/", kind, reply_to, self.root)

    def touch(self, machine_id: str) -> None:
        """Republish the machine's `state` and `job` at the next flush."""
        self._dirty.add(machine_id)
        self._jobs_dirty.add(machine_id)

    def rebuild(self, machine_id: str, from_ms: int, *, flush: bool = True) -> None:
        """Recompute a machine's record from `from_ms` (what was said about the past changed)."""
        if flush:
            self.flush()  # what is still in memory goes to the record first
        old = self.trackers[machine_id]
        try:
            self._recompute(machine_id, from_ms, old)
        except RecordUnavailableError:
            self.trackers[machine_id] = old  # as the record still has it; redone with the retry
            self._rebuilds[machine_id] = min(from_ms, self._rebuilds.get(machine_id, from_ms))
            raise

    def _recompute(self, machine_id: str, from_ms: int, old: MachineTracker) -> None:
        start = self.store.rebuild_start(machine_id, from_ms)
        program = start.signals.get(Signal.PROGRAM)
        # a record from before stories were kept: at least the program loaded then is known
        known = Story(program=program if isinstance(program, str) and program else None)
        tracker = MachineTracker(
            machine_id,
            state=start.previous_state,
            since_ms=start.previous_start,
            counter=start.counter,
            counter_rollover=old.counter_rollover,
            signals=start.signals,
            story=start.memory or known,
            story_at_start=start.story or known,
        )
        closed, parts = replay(tracker, start.events)
        intervals = self._enrich(machine_id, closed)
        tracker.late_values = old.late_values
        self.trackers[machine_id] = tracker
        row = self._current_row(machine_id)
        self.store.replace_from(
            machine_id,
            start,
            intervals,
            timeline.attribute(parts, self.contexts[machine_id], self.calendar),
            row,
        )
        self._rows.pop(machine_id, None)  # (from before: the record has this one now)
        self._written[machine_id] = row[-1]
        said = self._said.setdefault(machine_id, _Said())
        said.key, said.row, said.row_at = None, _bare_row(row), time.monotonic()
        self._published += [(i, True) for i in intervals]
        self._dirty.add(machine_id)
        self._jobs_dirty.add(machine_id)

    def _enrich(self, machine_id: str, closed: list[Interval]) -> list[Interval]:
        ctx = self.contexts[machine_id]
        return [piece for run in closed for piece in timeline.enrich(run, ctx, self.calendar, self.rules)]

    def current(self, machine_id: str) -> Interval | None:
        """The open interval as the record will have it (its current piece), or None before any data."""
        t = self.trackers[machine_id]
        if t.since_ms is None:
            return None
        now = max(self.clock.now_ms(), t.updated_ms or t.since_ms)
        return timeline.current(
            machine_id,
            t.state,
            t.since_ms,
            now,
            t.story_at_start,
            self.contexts[machine_id],
            self.calendar,
            self.rules,
            t.story,
        )

    def _current_row(self, machine_id: str, piece: Interval | None = None) -> tuple[Any, ...]:
        """The machine's current state for the record, with its story and its open piece's context."""
        t = self.trackers[machine_id]
        piece = piece or self.current(machine_id)
        return (
            t.state,
            t.since_ms,
            t.updated_ms,
            t.counter,
            t.story_at_start,
            t.story,
            None if piece is None else context_json(piece),
        )

    def _refresh_stops(self) -> None:
        """A standing machine's reason can change with time alone (a micro-stop that grew long, a
        break that began): rewrite and republish the open interval of those whose context did."""
        for machine_id, t in self.trackers.items():
            if t.since_ms is None or t.state is MachineState.RUNNING:
                continue
            piece = self.current(machine_id)
            if piece is not None and context_json(piece) != self._written.get(machine_id):
                self._dirty.add(machine_id)
        self._schedule_flush()

    def _keep_health(self, scope: str, metrics: tuple[Metric, ...]) -> None:
        values = {
            m.name.removeprefix(HEALTH_PREFIX): m.value
            for m in metrics
            if m.name and m.name.startswith(HEALTH_PREFIX) and isinstance(m.value, bool | int | float)
        }
        if values:
            self._health.setdefault(scope, {}).update(values)

    async def _report_health(self, interval_s: float) -> None:
        """Every `interval_s`: the host's own counters, and the bridges' and machines' health, into the
        record (for the API's /metrics) and as retained JSON under `<enterprise>/<site>/_health/`."""
        root = f"{self.site.config.enterprise}/{self.site.config.site}/_health"
        while True:
            await asyncio.sleep(interval_s)
            # held data released, conflicts that went quiet ended, without waiting for a message
            self._host_events(self.host.tick(time.monotonic()))
            self._refresh_stops()
            now = self.clock.now_ms()
            scopes: dict[str, dict[str, bool | int | float | None]] = {
                f"host/{self.host_id}": {
                    **dict(self.host.counters),
                    "connected": self._client is not None and self._client.connected,
                    "nodes_online": len(self.host.nodes),
                    "late_values": sum(t.late_values for t in self.trackers.values()),
                    # messages that failed in the hand-over, and publishes too big to send
                    "handler_errors": self._client.handler_errors if self._client is not None else 0,
                    "refused_publishes": self._client.refused_publishes if self._client is not None else 0,
                },
                **self._health,
            }
            # while the record cannot be written the retained JSON below still says it
            with contextlib.suppress(RecordUnavailableError):
                self.store.write_health(
                    (scope, name, None if value is None else float(value), now)
                    for scope, values in scopes.items()
                    for name, value in values.items()
                )
            client = self._client
            if client is None or not client.connected:
                continue
            for scope, values in scopes.items():
                kind, _, name = scope.partition("/")
                topic = (
                    self.site.machine(name).path.topic("health")
                    if kind == "machine"
                    else f"{root}/{kind}/{name}"
                )
                payload = {"updated": iso(now), **values}
                client.publish(topic, json.dumps(payload).encode(), 1, True)

    def _death(self, event: Death) -> None:
        # A node's death payload was made when it connected: stamp the loss with our own clock.
        ts = event.timestamp if event.device_id is not None else self.clock.now_ms()
        devices = (event.device_id,) if event.device_id is not None else event.devices
        for device in devices:
            machine = self._machine(event.group_id, event.edge_node_id, device)
            if machine is not None:
                self._health.setdefault(f"machine/{machine.id}", {})["connected"] = False
                tracker = self.trackers[machine.id]
                closed = tracker.lose(ts)
                self._events.append((machine.id, SignalValue(LOST, None, tracker.since_ms or ts), "lost"))
                self._log_changes(closed, tracker)
                self._intervals += closed
                self._dirty.add(machine.id)

    @staticmethod
    def _log_changes(closed: list[Interval], tracker: MachineTracker) -> None:
        if closed and tracker.since_ms is not None:
            last = closed[-1]
            logger.info(
                "%s: %s since %s (was %s for %.1f min)",
                tracker.machine_id,
                tracker.state.value,
                iso(tracker.since_ms),
                last.state.value,
                (last.end_ms - last.start_ms) / 60_000,
            )

    # -- output ----------------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        """Flush once the messages at hand are taken; under load, at most once per `flush_gap_s`."""
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            wait = self._last_flush + self.flush_gap_s - time.monotonic()
            if wait > 0:
                self._loop.call_later(wait, self._flush_due)
            else:
                self._loop.call_soon(self._flush_due)

    def _flush_due(self) -> None:
        self.flush(gather=True)

    def _write_due(self) -> None:
        self._write_scheduled = False
        self.flush(gather=True)

    def _refresh_due(self) -> None:
        """The machines whose last `updated` was not said and is due now: at the next flush."""
        self._refresh_scheduled = False
        if self._stopped:
            return
        now = time.monotonic()
        due = [m for m, at in self._stale.items() if at <= now]
        for machine_id in due:
            del self._stale[machine_id]
        self._moved.update(due)
        self._schedule_flush()
        self._schedule_refresh(now)

    def _schedule_refresh(self, now: float) -> None:
        if self._stale and not self._refresh_scheduled and self._loop is not None:
            self._refresh_scheduled = True
            wait = max(0.0, min(self._stale.values()) - now) + _REFRESH_SLACK_S
            self._loop.call_later(wait, self._refresh_due)

    def flush(self, *, retry: bool = False, gather: bool = False) -> None:
        """Publish the changed machines' state, write what changed to the record, then publish what
        the record now says (intervals, jobs, and the state of machines whose history came in). The
        state goes out first so the UNS does not wait for the disk; the record is written whatever
        happens to the publish. While the record cannot be written, only the retry (`retry`) writes:
        until then everything is kept as it is.

        `gather`: the event loop's own flushes (`_schedule_flush`). A machine whose values changed
        nothing but `updated` publishes its state and writes its current row at most once per
        `state_refresh_s` (and once more after its last value); the record is written only once
        `record_gap_s` passed since the last write or `record_batch` values wait (else later, by
        itself): what waits is kept in order and goes in one transaction. Without it (everything
        else that flushes: a rebuild, a stop, the record's retry), all of it now."""
        self._flush_scheduled = False
        if self._stopped or (self._record_retry is not None and not retry):
            return
        if self._dirty or self._moved:
            self._last_flush = time.monotonic()
            self._publish_states(gather)
        if not retry and not (
            self._events
            or self._rows
            or self._intervals
            or self._parts
            or self._history
            or self._jobs_dirty
            or self._published
            or self._rebuilds
        ):
            return
        if gather and not self._record_due():
            if not self._write_scheduled and self._loop is not None:
                self._write_scheduled = True
                wait = max(0.0, self._last_write + self.record_gap_s - time.monotonic())
                self._loop.call_later(wait, self._write_due)
            return
        self._write_record()

    def _record_due(self) -> bool:
        """Whether a gathering flush writes the record now (history to backfill does not wait)."""
        return (
            bool(self._history)
            or len(self._events) >= self.record_batch
            or time.monotonic() - self._last_write >= self.record_gap_s - _TIMER_SLACK_S
        )

    def _publish_states(self, gather: bool) -> None:
        """The state of the machines that changed (`_dirty`: all of them; `_moved`, when gathering:
        those whose state document changed in more than `updated`, or whose last one is
        `state_refresh_s` old), and their current rows for the next record write (the same rule: a
        crash loses at most the last second's `updated_ms`, never a state or a count, and the event
        log has every value)."""
        now = time.monotonic()
        forced, self._dirty = self._dirty, set()
        moved, self._moved = self._moved - forced, set()
        if not gather:
            forced |= moved
            moved = set()
        client = self._client
        connected = client is not None and client.connected
        refresh = self.state_refresh_s
        for machine_id in sorted(forced | moved):
            tracker = self.trackers[machine_id]
            key = tree.state_key(tracker)
            said = self._said.get(machine_id)
            if said is None:
                said = self._said[machine_id] = _Said()
            force = machine_id in forced
            last = min(said.doc_at, said.row_at)
            if not force and key == said.key and now - last < refresh - _TIMER_SLACK_S:
                self._stale[machine_id] = last + refresh  # nothing but `updated` changed
                continue
            self._stale.pop(machine_id, None)
            said.key = key
            piece = self.current(machine_id)  # the open interval, for the record and the tree
            if connected and machine_id not in self._history:  # (its state: once its history is in)
                assert client is not None
                machine = self.site.machine(machine_id)
                doc = self.state_json(machine, piece)
                bare = {**doc, "updated": None}
                if force or bare != said.doc or now - said.doc_at >= refresh - _TIMER_SLACK_S:
                    client.publish(machine.path.topic("state"), json.dumps(doc).encode(), 1, True)
                    said.doc, said.doc_at = bare, now
                    self._early.add(machine_id)
            if tracker.since_ms is not None:
                row = self._current_row(machine_id, piece)
                bare_row = _bare_row(row)
                if force or bare_row != said.row or now - said.row_at >= refresh - _TIMER_SLACK_S:
                    self._rows[machine_id] = row
                    said.row, said.row_at = bare_row, now
        self._schedule_refresh(now)

    def _write_record(self) -> None:
        """What waits, in one transaction; then the rebuilds and history that wait for it, and what
        the record now says to the tree."""
        current = [(m, *row) for m, row in sorted(self._rows.items())]
        intervals = [
            p
            for i in self._intervals
            for p in timeline.enrich(i, self.contexts[i.machine_id], self.calendar, self.rules)
        ]
        parts = [
            a
            for p in self._parts
            for a in timeline.attribute([p], self.contexts[p.machine_id], self.calendar)
        ]
        try:
            self.store.write(intervals, parts, current, self._events)
        except RecordUnavailableError as exc:
            self._record_unavailable(exc)
            return
        self._last_write = time.monotonic()
        self._written.update((row[0], row[-1]) for row in current)
        self._published += [(i, False) for i in intervals]
        self._intervals, self._parts, self._rows, self._events = [], [], {}, []
        revised: set[str] = set()  # machines whose record was recomputed: their state is new
        for machine_id, from_ms in sorted(self._rebuilds.items()):
            del self._rebuilds[machine_id]
            try:
                self.rebuild(machine_id, from_ms, flush=False)
            except RecordUnavailableError as exc:  # (it put itself back)
                self._record_unavailable(exc)
                return
            revised.add(machine_id)
        history, self._history = self._history, {}
        for machine_id, batches in list(history.items()):
            try:
                self._backfill(machine_id, batches)
            except RecordUnavailableError as exc:  # this machine's history and the rest wait with the retry
                self._history = {**history, **self._history}
                self._record_unavailable(exc)
                return
            del history[machine_id]
            revised.add(machine_id)
        self._record_retry = None
        # (machines not kept stay so until their rebirth, asked for once online: on_connected)
        published, self._published = self._published, []
        jobs, self._jobs_dirty = self._jobs_dirty, set()
        early, self._early = self._early, set()
        client = self._client
        if client is None or not client.connected:
            return
        for machine_id in sorted(revised | (jobs - early)):
            self._publish_state(client, machine_id)
        for machine_id in sorted(jobs):
            machine = self.site.machine(machine_id)
            client.publish(machine.path.topic("job"), json.dumps(self.job_json(machine)).encode(), 1, True)
        for interval, revised_ in published:
            topic = self.site.machine(interval.machine_id).path.topic("intervals")
            client.publish(topic, json.dumps(interval_json(interval, revised=revised_)).encode(), 1, False)

    def _publish_state(self, client: MqttClient, machine_id: str) -> None:
        machine = self.site.machine(machine_id)
        doc = self.state_json(machine)
        client.publish(machine.path.topic("state"), json.dumps(doc).encode(), 1, True)
        said = self._said.get(machine_id)
        if said is None:
            said = self._said[machine_id] = _Said()
        said.doc, said.doc_at = {**doc, "updated": None}, time.monotonic()

    def _backfill(self, machine_id: str, batches: list[tuple[int, list[SignalValue]]]) -> None:
        """Historical values: into the event log, and the record recomputed from where they begin."""
        cover_from = min(ts for ts, _ in batches)
        cover_to = self._last_birth.get(machine_id, self.clock.now_ms())
        values = [v for _, vs in batches for v in vs]
        if not self.store.backfill(machine_id, values, cover_from, cover_to):
            self.host.counters["history_repeated"] += len(values)
            return  # seen all of it before: nothing changes
        self.host.counters["history_applied"] += len(values)
        self.rebuild(machine_id, min(cover_from, *(v.timestamp for v in values)), flush=False)
        tracker = self.trackers[machine_id]
        logger.info(
            "%s: backfilled %d historical values from %s; now %s since %s",
            machine_id,
            len(values),
            iso(cover_from),
            tracker.state.value,
            iso(tracker.since_ms or cover_from),
        )

    def state_json(self, machine: Machine, piece: Interval | None = None) -> dict[str, Any]:
        """The retained `state` JSON (`piece`: the open interval's current piece, if known)."""
        return tree.state_document(machine, self.trackers[machine.id], piece or self.current(machine.id))

    def job_json(self, machine: Machine) -> dict[str, Any]:
        return tree.job_document(machine, self.books[machine.id], self.clock.now_ms())


def _bare_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A current row (`_current_row`) without its `updated_ms`."""
    return row[:2] + row[3:]


def _envelope(payload: bytes) -> tuple[str | None, str | None]:
    """A command's id and reply topic, read leniently: a refusal should still reach the sender."""
    if shape_problem(payload) is not None:
        return None, None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    command_id, reply_to = doc.get("id"), doc.get("reply_to")
    return (
        command_id if isinstance(command_id, str) else None,
        reply_to if isinstance(reply_to, str) else None,
    )
