"""An edge node on MQTT: `EdgeSession` (the rules) plus a connection and store-and-forward.

The Will is made anew before every CONNECT (bdSeq + 1, kept in the buffer file across restarts).
The node publishes only while it is connected and its primary host's STATE is online (Sparkplug
3.0); otherwise every change goes to the disk buffer as a snapshot of the device. When it can
publish again: births first, then the buffered snapshots in order as historical DDATA (original
timestamps), then live data. The last few seconds sent live are kept in memory and buffered again
when the connection drops, because QoS 0 messages in flight then may never have reached the host;
the host's backfill is idempotent, so sending them twice is harmless. A connection can be dead for
a while before the client knows (it hears nothing until its keep-alive gives up), so after a lost
connection everything sent since the broker was last heard from is sent again too. Each device with
such sends is buffered first as it stood before them (its last send before them, or its birth): the
host saw the loss before the first of them, and that snapshot tells it what the machine did from
then on (not comms_loss). A device that went offline meanwhile is buffered as unknown at that time.

A retained online STATE can be stale: a broker that dies with the host connected never publishes the
host's Will, and after its restart it hands out the online STATE it last saved while the host is not
back yet; what the node replayed then would reach nobody. So an online STATE that is not newer
than the one this node last trusted (kept in the buffer file across restarts) is trusted only after
`host_grace_s` without news: a host that connects again publishes a newer one, and the node goes on
at once. (A host that was connected all along sends nothing new: the node then goes on after the
grace; its births, its replay and its live data wait that long, buffered.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

from bridge.buffer import DiskBuffer
from uns.clock import Clock
from uns.mqtt import BrokerAddress, MqttClient, Will
from uns.sparkplug.edge import EdgeSession, Message, Sample
from uns.sparkplug.payload import Quality
from uns.sparkplug.topic import MessageType, SparkplugTopic, parse_state, state_topic

logger = logging.getLogger(__name__)

DRAIN_BATCH = 200
# When the connection turns out dead, what was sent since the broker was last heard from (less this
# margin, for what was in flight) may not have reached it: sent again, with the resend window's.
HEARD_MARGIN_S = 1.0
# How long an online STATE no newer than the last one seen waits for a newer one (see above).
HOST_GRACE_S = 10.0


class EdgeNode:
    def __init__(
        self,
        session: EdgeSession,
        address: BrokerAddress,
        clock: Clock,
        *,
        primary_host_id: str | None = None,
        buffer: DiskBuffer | None = None,
        resend_window_s: float = 3.0,
        host_grace_s: float = HOST_GRACE_S,
    ) -> None:
        self.session = session
        self.address = address
        self.clock = clock
        self.primary_host_id = primary_host_id
        self.buffer = buffer or DiskBuffer(":memory:")
        self._resend_window = resend_window_s
        self._lock = threading.Lock()  # the Will is made on paho's thread
        self._client: MqttClient | None = None
        self._host_online = primary_host_id is None
        self._host_online_ts = -1
        # the online STATE of the primary host last trusted (across restarts: in the buffer file)
        self._host_seen_ts = -1 if primary_host_id is None else self.buffer.host_state_ts(primary_host_id)
        self._host_grace_s = host_grace_s
        self._grace: asyncio.TimerHandle | None = None  # an online STATE not newer than that, waiting
        self._born = False  # births sent since we last could publish
        self._pending = self.buffer.devices()  # devices whose buffered rows go before their live data
        self._recent: deque[tuple[float, str, int, list[Sample]]] = deque()
        # device -> (payload time, snapshot) of its last message older than the resend window
        self._settled: dict[str, tuple[int, list[Sample]]] = {}
        self._last_sent: dict[str, int] = {}  # device -> payload time of the last message it had live
        self._drain_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.counters: dict[str, int] = {
            "births": 0,
            "data_sent": 0,
            "data_unsent": 0,
            "buffered": 0,
            "replayed": 0,
            "bad_commands": 0,
        }

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.session
        subs = [
            (str(SparkplugTopic(s.group_id, MessageType.NCMD, s.edge_node_id)), 1),
            (f"spBv1.0/{s.group_id}/DCMD/{s.edge_node_id}/+", 1),
        ]
        if self.primary_host_id is not None:
            subs.append((state_topic(self.primary_host_id), 1))
        self._client = MqttClient(
            f"{s.group_id}.{s.edge_node_id}",
            self.address,
            self,
            loop,
            will=self._will,
            subscriptions=tuple(subs),
        )
        self._client.start()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def publishable(self) -> bool:
        return self.connected and self._host_online

    def _will(self) -> Will:
        with self._lock:
            topic, payload = self.session.new_connection(self.clock.now_ms())
            self.buffer.last_bdseq = self.session.bdseq
        return Will(topic, payload, qos=1, retain=False)

    def _publish(self, message: Message | None) -> bool:
        assert self._client is not None
        return message is not None and self._client.publish(message[0], message[1])

    # -- going on and off line ----------------------------------------------------------------
    def _can_publish_now(self) -> None:
        with self._lock:
            now = self.clock.now_ms()
            births = self.session.births(now)
            self._last_sent = {d: now for d in self.session.devices if self.session.is_online(d)}
            self._settled = {d: (now, self.session.snapshot(d)) for d in self._last_sent}
        self.counters["births"] += 1
        for message in births:
            self._publish(message)
        self._born = True
        self._start_drain()

    def _unsure_from(self, connection_lost: bool) -> float:
        """Since when (monotonic) what was sent may not have reached the host: the resend window;
        after a lost connection, also everything since the broker was last heard from."""
        horizon = time.monotonic() - self._resend_window
        if connection_lost and self._client is not None:
            horizon = min(horizon, self._client.heard_at - HEARD_MARGIN_S)
        return horizon

    def _cannot_publish(self, connection_lost: bool = False) -> None:
        if not self._born or self._stopping:
            return
        self._born = False
        if self._drain_task is not None:
            self._drain_task.cancel()
        # what was sent lately may have died with the connection (or the host): send it again
        # later, then each online device as it stood when we last sent it: the host then knows we
        # saw everything from that moment on
        horizon = self._unsure_from(connection_lost)
        unsure = []
        for sent, d, ts, snap in self._recent:
            if sent >= horizon:
                unsure.append((d, ts, snap))
            else:
                self._settled[d] = (ts, snap)
        self._recent.clear()
        # ... each such device first as it stood before them (what the host had, if they were lost)
        before = {d: self._settled[d] for d, _, _ in unsure if d in self._settled}
        again = sorted(((d, ts, snap) for d, (ts, snap) in before.items()), key=lambda r: r[1]) + unsure
        self._settled.clear()
        with self._lock:
            for device, ts in sorted(self._last_sent.items(), key=lambda x: x[1]):
                if self.session.is_online(device):
                    again.append((device, ts, self.session.snapshot(device)))
        self._last_sent.clear()
        if again:
            self.buffer.append(again)
            self._pending.update(d for d, _, _ in again)
            self.counters["buffered"] += len(again)
        logger.warning("edge node %s: cannot publish; buffering on disk", self.session.edge_node_id)

    def _start_drain(self) -> None:
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"edge[{self.session.edge_node_id}].drain"
            )

    async def _drain(self) -> None:
        """Buffered snapshots of the online devices, oldest first, as historical DDATA."""
        assert self._client is not None
        while self.publishable and self._born:
            online = {d for d in self._pending if self.session.is_online(d)}
            rows = self.buffer.peek(online, DRAIN_BATCH)
            if not rows:
                self._pending -= online
                return
            with self._lock:
                messages = [self.session.historical(r.device, r.samples, r.ts_ms) for r in rows]
            for message in messages[:-1]:
                if not self._publish(message):
                    return
            topic, payload = messages[-1]
            if not await self._client.publish_and_wait(topic, payload, qos=0):
                return
            self.buffer.delete([r.id for r in rows])
            self.counters["replayed"] += len(rows)
            await asyncio.sleep(0)

    # -- MqttHandler ------------------------------------------------------------------------
    def on_connected(self) -> None:
        # A new connection: whatever we knew of the host is stale until its STATE arrives again
        # (retained, or published when it reconnects).
        self._host_online = self.primary_host_id is None
        self._host_online_ts = -1
        self._end_grace()
        if self._host_online:
            self._can_publish_now()

    def on_disconnected(self, reason: str) -> None:
        self._end_grace()
        self._cannot_publish(connection_lost=True)

    def _end_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def on_message(self, topic: str, payload: bytes) -> None:
        host = parse_state(topic)
        if host is not None:
            self._on_host_state(host, payload)
            return
        try:
            with self._lock:
                rebirth = self.session.is_rebirth_request(topic, payload)
        except ValueError as exc:
            self.counters["bad_commands"] += 1
            logger.warning("edge node %s: ignored a command on %s: %s", self.session.edge_node_id, topic, exc)
            return
        if rebirth and self.publishable:
            logger.info("edge node %s: rebirth requested", self.session.edge_node_id)
            self._can_publish_now()

    def _on_host_state(self, host: str, payload: bytes) -> None:
        if self._stopping:
            return  # (no births after our own death)
        try:
            state = json.loads(payload)
            online, ts = bool(state["online"]), int(state["timestamp"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("edge node %s: bad STATE of host %s: %s", self.session.edge_node_id, host, exc)
            return
        if online and ts > self._host_online_ts:
            self._host_online_ts = ts
            self._end_grace()
            if ts <= self._host_seen_ts and not self._host_online:
                # perhaps a retained STATE from before a broker restart: wait for a newer one
                logger.info(
                    "edge node %s: host %s online as of %d, as last seen: publishing in %.0f s unless it"
                    " connects again first",
                    self.session.edge_node_id,
                    host,
                    ts,
                    self._host_grace_s,
                )
                self._grace = asyncio.get_running_loop().call_later(
                    self._host_grace_s, self._host_trusted, ts
                )
                return
            self._host_trusted(ts)
        elif not online and ts >= self._host_online_ts:
            self._end_grace()
            self._host_online = False
            self._cannot_publish()

    def _host_trusted(self, ts: int) -> None:
        """The primary host is (back) online: it needs our births, then what we buffered."""
        self._grace = None
        if self._stopping:
            return
        if ts != self._host_seen_ts and self.primary_host_id is not None:
            # (after a grace, even an older one: a host whose clock stepped back waits once)
            self._host_seen_ts = ts
            self.buffer.set_host_state_ts(self.primary_host_id, ts)
        self._host_online = True
        if self.connected:
            self._can_publish_now()

    # -- what the bridge tells us -------------------------------------------------------------
    def _buffer(self, device_id: str, snapshot: list[Sample]) -> None:
        self.buffer.append([(device_id, self.clock.now_ms(), snapshot)])
        self._pending.add(device_id)
        self.counters["buffered"] += 1

    def device_online(self, device_id: str, samples: Iterable[Sample]) -> None:
        with self._lock:
            birth = self.session.device_online(device_id, self.clock.now_ms(), samples)
            snapshot = self.session.snapshot(device_id)
        if self.publishable and self._born:
            self._publish(birth)
            self._last_sent[device_id] = self.clock.now_ms()
            self._settled[device_id] = (self._last_sent[device_id], snapshot)
            if device_id in self._pending:
                self._start_drain()
        else:
            self._buffer(device_id, snapshot)

    def device_offline(self, device_id: str) -> None:
        with self._lock:
            now = self.clock.now_ms()  # (its death and its values unknown: one moment)
            death = self.session.device_offline(device_id, now)
            unknown = [Sample(s.name, None, now, Quality.BAD) for s in self.session.snapshot(device_id)]
        if self.publishable and self._born and device_id not in self._pending:
            self._publish(death)
            self._last_sent.pop(device_id, None)
            # (if the death is lost with the connection, its replay says so: unknown from now)
            self._recent.append((time.monotonic(), device_id, now, unknown))
        else:
            self._buffer(device_id, unknown)

    def data(self, device_id: str, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        with self._lock:
            now = self.clock.now_ms()
            live = self.publishable and self._born and device_id not in self._pending
            message = self.session.data(device_id, samples, now) if live else None
            if not live:
                self.session.record(device_id, samples)
            # every sample of this batch (a metric may change twice in one), then the rest as they stand
            changed = {s.name for s in samples}
            snapshot = samples + [s for s in self.session.snapshot(device_id) if s.name not in changed]
        if not live:
            self._buffer(device_id, snapshot)
            return
        if self._publish(message):
            self.counters["data_sent"] += 1
            sent = time.monotonic()
            self._recent.append((sent, device_id, now, snapshot))
            self._last_sent[device_id] = now
            keep_from = self._unsure_from(connection_lost=True)  # (the longer of the two spans)
            while self._recent and self._recent[0][0] < keep_from:
                _, d, ts, snap = self._recent.popleft()
                self._settled[d] = (ts, snap)
        else:  # the connection went in between: keep it
            self.counters["data_unsent"] += 1
            self._buffer(device_id, snapshot)

    def publish_health(self, node_samples: list[Sample], devices: dict[str, list[Sample]]) -> None:
        """Health is about now: sent while we can publish, never buffered."""
        if not (self.publishable and self._born):
            return
        with self._lock:
            now = self.clock.now_ms()
            messages = [self.session.data(None, node_samples, now)]
            messages += [
                self.session.data(d, samples, now)
                for d, samples in devices.items()
                if self.session.is_online(d) and d not in self._pending
            ]
        for message in messages:
            self._publish(message)

    async def stop(self) -> None:
        """Clean exit: publish our own NDEATH (QoS 1), then disconnect; the buffer stays on disk."""
        self._stopping = True
        self._end_grace()
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
        if self._client is not None:
            with self._lock:
                topic, payload = self.session.death(self.clock.now_ms())
            await self._client.publish_and_wait(topic, payload, qos=1)
            self._client.stop()
        self.buffer.close()
