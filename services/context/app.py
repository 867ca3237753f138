"""The context service: the Sparkplug host application that keeps the record.

It decodes every Sparkplug message (`HostSession`), derives each machine's state on event time
(`MachineTracker`), writes closed intervals and part counts to the record, and publishes each
machine's current state as retained JSON at `<enterprise>/<site>/<area>/<line>/<cell>/<machine>/state`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from services.context import reasons
from services.context.record import Event, RecordStore
from services.context.shifts import calendar_for
from services.context.state import LOST, Interval, MachineTracker, PartsMade, SignalValue, birth_time, replay
from uns.clock import Clock, iso
from uns.mqtt import BrokerAddress, MqttClient, Will
from uns.site import Machine, Signal, Site
from uns.sparkplug.host import Death, HostSession, MetricsUpdate, RebirthRequest, state_payload
from uns.sparkplug.payload import Metric, Quality
from uns.sparkplug.topic import state_topic

logger = logging.getLogger(__name__)

_GOOD = (None, Quality.GOOD)
HEALTH_PREFIX = "health/"  # the bridges' health metrics (bridge/health.py)


class ContextService:
    def __init__(self, site: Site, store: RecordStore, address: BrokerAddress, clock: Clock) -> None:
        self.site = site
        self.store = store
        self.address = address
        self.clock = clock
        self.host = HostSession()
        self._machines: dict[tuple[str, str, str], Machine] = {
            (site.group_id, m.edge_node, m.id): m for m in site.machines
        }
        store.register_machines((m.id, str(m.path), m.name) for m in site.machines)
        shifts = site.config.shifts
        calendar = calendar_for(shifts, site.config.timezone) if shifts is not None else None
        self.classify = reasons.rules(
            micro_stop_ms=int(site.config.downtime.micro_stop_minutes * 60_000),
            in_break=calendar.in_break if calendar is not None else None,
        )
        restored = {c.machine_id: c for c in store.current_states()}
        self.trackers: dict[str, MachineTracker] = {}
        for m in site.machines:
            c = restored.get(m.id)
            self.trackers[m.id] = (
                MachineTracker(
                    m.id,
                    state=c.state,
                    since_ms=c.since_ms,
                    counter=c.counter,
                    counter_rollover=m.counter_rollover,
                    classifier=self.classify,
                )
                if c is not None and c.since_ms is not None
                else MachineTracker(m.id, counter_rollover=m.counter_rollover, classifier=self.classify)
            )
        self._intervals: list[Interval] = []
        self._events: list[Event] = []
        self._history: dict[str, list[tuple[int, list[SignalValue]]]] = {}
        self._last_birth: dict[str, int] = {}
        self._health: dict[str, dict[str, bool | int | float | None]] = {}
        self._health_task: asyncio.Task[None] | None = None
        self.health_interval_s = 10.0
        self._parts: list[PartsMade] = []
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._client: MqttClient | None = None
        self._state_ts = 0
        self._unknown_devices: set[tuple[str, str, str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._client = MqttClient(
            f"uns-host.{self.site.host_id}",
            self.address,
            self,
            loop,
            will=self._will,
            subscriptions=(("spBv1.0/#", 0),),
        )
        self._client.start()
        self._health_task = loop.create_task(
            self._report_health(self.health_interval_s), name="context.health"
        )

    def _will(self) -> Will:
        # The Will and the online STATE of one connection carry the same timestamp.
        self._state_ts = self.clock.now_ms()
        return Will(state_topic(self.site.host_id), state_payload(False, self._state_ts), qos=1, retain=True)

    async def stop(self) -> None:
        """Clean exit: STATE offline first, then every machine to comms_loss, the record flushed."""
        if self._health_task is not None:
            self._health_task.cancel()
        client = self._client
        if client is not None:
            await client.publish_and_wait(
                state_topic(self.site.host_id), state_payload(False, self._state_ts), qos=1, retain=True
            )
        now = self.clock.now_ms()
        for tracker in self.trackers.values():
            self._intervals += tracker.lose(now)
            self._events.append(
                (tracker.machine_id, SignalValue(LOST, None, tracker.since_ms or now), "lost")
            )
            self._dirty.add(tracker.machine_id)
        self.flush()
        if client is not None:
            client.stop()

    # -- MqttHandler ----------------------------------------------------------------------------
    def on_connected(self) -> None:
        assert self._client is not None
        self._client.publish(
            state_topic(self.site.host_id), state_payload(True, self._state_ts), qos=1, retain=True
        )
        self._dirty.update(self.trackers)  # republish the retained tree
        self._schedule_flush()

    def on_disconnected(self, reason: str) -> None:
        now = self.clock.now_ms()
        for death in self.host.disconnected():
            self._death(Death(death.group_id, death.edge_node_id, None, now, death.devices))
        self._schedule_flush()

    def on_message(self, topic: str, payload: bytes) -> None:
        for event in self.host.handle(topic, payload, time.monotonic()):
            if isinstance(event, MetricsUpdate):
                self._update(event)
            elif isinstance(event, Death):
                self._death(event)
            elif isinstance(event, RebirthRequest) and self._client is not None:
                self._client.publish(*event.command(self.clock.now_ms()), qos=0)
        self._schedule_flush()

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
        if not values:
            return
        tracker = self.trackers[machine.id]
        closed, parts = tracker.apply(values)
        self._log_changes(closed, tracker)
        self._intervals += closed
        self._parts += parts
        source = "birth" if event.is_birth else "live"
        self._events += [(machine.id, v, source) for v in values]
        self._dirty.add(machine.id)

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
            now = self.clock.now_ms()
            scopes: dict[str, dict[str, bool | int | float | None]] = {
                f"host/{self.site.host_id}": {
                    **dict(self.host.counters),
                    "connected": self._client is not None and self._client.connected,
                    "nodes_online": len(self.host.nodes),
                    "late_values": sum(t.late_values for t in self.trackers.values()),
                },
                **self._health,
            }
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
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what changed to the record, then publish the changed machines' state."""
        self._flush_scheduled = False
        if not (self._intervals or self._parts or self._dirty or self._history):
            return
        dirty = sorted(self._dirty)
        current = [
            (m, t.state, t.since_ms, t.updated_ms, t.counter)
            for m in dirty
            if (t := self.trackers[m]).since_ms
        ]
        self.store.write(self._intervals, self._parts, current, self._events)
        self._intervals, self._parts, self._dirty, self._events = [], [], set(), []
        history, self._history = self._history, {}
        for machine_id, batches in history.items():
            self._backfill(machine_id, batches)
            dirty.append(machine_id)
        client = self._client
        if client is None or not client.connected:
            return
        for machine_id in sorted(set(dirty)):
            machine = self.site.machine(machine_id)
            client.publish(
                machine.path.topic("state"), json.dumps(self.state_json(machine)).encode(), 1, True
            )

    def _backfill(self, machine_id: str, batches: list[tuple[int, list[SignalValue]]]) -> None:
        """Historical values: into the event log, and the record recomputed from where they begin."""
        cover_from = min(ts for ts, _ in batches)
        cover_to = self._last_birth.get(machine_id, self.clock.now_ms())
        values = [v for _, vs in batches for v in vs]
        if not self.store.backfill(machine_id, values, cover_from, cover_to):
            self.host.counters["history_repeated"] += len(values)
            return  # seen all of it before: nothing changes
        self.host.counters["history_applied"] += len(values)
        old = self.trackers[machine_id]
        start = self.store.rebuild_start(machine_id, min(cover_from, *(v.timestamp for v in values)))
        tracker = MachineTracker(
            machine_id,
            state=start.previous_state,
            since_ms=start.previous_start,
            counter=start.counter,
            counter_rollover=old.counter_rollover,
            signals=start.signals,
            classifier=self.classify,
        )
        closed, parts = replay(tracker, start.events)
        self.store.replace_from(
            machine_id,
            start,
            closed,
            parts,
            (tracker.state, tracker.since_ms, tracker.updated_ms, tracker.counter),
        )
        self.trackers[machine_id] = tracker
        logger.info(
            "%s: backfilled %d historical values from %s; now %s since %s",
            machine_id,
            len(values),
            iso(cover_from),
            tracker.state.value,
            iso(tracker.since_ms or cover_from),
        )

    def state_json(self, machine: Machine) -> dict[str, Any]:
        t = self.trackers[machine.id]
        sig = t.signals
        alarm = sig.get(Signal.ALARM_CODE)
        return {
            "machine": machine.id,
            "name": machine.name,
            "path": str(machine.path),
            "state": t.state.value,
            "since": iso(t.since_ms) if t.since_ms is not None else None,
            "updated": iso(t.updated_ms) if t.updated_ms is not None else None,
            "execution": sig.get(Signal.EXECUTION),
            "mode": sig.get(Signal.MODE),
            "program": sig.get(Signal.PROGRAM),
            "alarm": {"code": alarm, "text": sig.get(Signal.ALARM_TEXT)} if alarm else None,
            "emergency_stop": sig.get(Signal.ESTOP),
            "part_count": t.counter,
            "reason": t.reason(t.updated_ms) if t.updated_ms is not None else None,
        }
