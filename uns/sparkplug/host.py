"""The host-application side of a Sparkplug B 3.0 session, without sockets.

`HostSession.handle(topic, payload, now)` decodes one message, checks it against the edge node's
session (bdSeq, seq, aliases) and returns what happened as events. It never raises for bad input:
a malformed payload, an unknown alias, a seq gap or a topic that is not Sparkplug is counted,
logged and, where the specification says so, answered with a (throttled) rebirth request.
`uns.sparkplug.host_app` puts this on MQTT.

What it accepts from edge nodes of other makes: an NDEATH needs no timestamps at all (the
specification asks for none in a death), and an NBIRTH's `bdSeq` and `Node Control/...` metrics
may come without one (they take the payload's), as Eclipse Tahu's JavaScript client sends them. A
death that cannot be read still ends the node's data, and the node is asked for a rebirth in case
it lives.

Two sessions claiming one edge node id (a cloned gateway) are told apart from one node that
reconnects by what one node cannot do (docs/topics.md, "Two edge nodes with one id"):

- its bdSeq never goes back: an NBIRTH whose bdSeq is behind (by 1 to 127, modulo 256) that of
  another NBIRTH of the last `conflict_window_s` is a second session (0 after a death is a restart);
- its seq never repeats (a seq 1 to 8 behind the expected one), and a seq stream the host left (at
  a birth, or at a gap of more than 8) does not go on;
- it does not rebirth unasked, over and over: `storm_births` NBIRTHs within `conflict_window_s` that
  no rebirth request (ours, or one seen on the wire) asked for.

What may be a second session is on probation for `hold_s`: its events are held, and released in
order only if no sign of another session comes meanwhile. After a birth (an NBIRTH with a new bdSeq
while the node's session has not died, an NBIRTH nobody asked for, the first NBIRTH after a
conflict) one sign tells; after a seq gap of more than 8, two (a node that lost many messages may
land near a stream it left once, hardly twice in `hold_s`).

In conflict, the node's devices are dead (comms_loss: the host does not know which data is true),
every message of the node is dropped and counted, and no rebirth is requested. The conflict ends
when an NDEATH leaves one of two sessions, or when for `quiet_s` nothing showed two (births with
one bdSeq only, one seq stream); the host then asks for one rebirth, and the next session starts
on probation unless it is the one that remained.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from uns.clock import iso
from uns.sparkplug.edge import BDSEQ, REBIRTH
from uns.sparkplug.payload import (
    DataType,
    Metric,
    Payload,
    PayloadError,
    decode,
    decode_untimed,
    encode,
    typed_value,
)
from uns.sparkplug.topic import MessageType, SparkplugTopic, TopicError, parse, parse_state

logger = logging.getLogger(__name__)

NodeKey = tuple[str, str]

# NBIRTH metrics that may come without a timestamp (the payload's is theirs): the session's own
# bookkeeping, which Eclipse Tahu's JavaScript client adds without one.
CONTROL_METRICS = frozenset(
    {BDSEQ, REBIRTH, "Node Control/Reboot", "Node Control/Next Server", "Node Control/Scan Rate"}
)
# The host's own health metric of a node, carried like the bridges' `health/...` node metrics.
CONFLICT_METRIC = "health/conflict"

_SMALL_GAP = 8  # a seq this far ahead is a loss in the followed stream; this far behind, a repeat
_CONTINUES = 3  # a left stream goes on if a seq is this close after where it was left


@dataclass(frozen=True, slots=True)
class MetricsUpdate:
    """Named, typed metrics of a node (device None) or a device, from a birth or a data message.

    The host adds `health/conflict` (Boolean) to a node's metrics when two sessions claim it,
    and takes it back (False) when one remains.
    """

    group_id: str
    edge_node_id: str
    device_id: str | None
    metrics: tuple[Metric, ...]
    is_birth: bool
    timestamp: int = 0  # the payload's: when the edge node sent (or, for historical data, buffered) it


@dataclass(frozen=True, slots=True)
class Death:
    """A node (device None) or a device is gone: its metrics (all of a node's devices') are stale.

    `timestamp` is the message's; `devices` lists the devices that were online under a dying node.
    """

    group_id: str
    edge_node_id: str
    device_id: str | None
    timestamp: int
    devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RebirthRequest:
    group_id: str
    edge_node_id: str
    reason: str

    def command(self, now_ms: int) -> tuple[str, bytes]:
        """The NCMD that asks the node for a rebirth."""
        topic = SparkplugTopic(self.group_id, MessageType.NCMD, self.edge_node_id)
        payload = Payload(now_ms, (Metric(REBIRTH, None, now_ms, DataType.BOOLEAN, True),))
        return str(topic), encode(payload)


Event = MetricsUpdate | Death | RebirthRequest


# -- who claims an edge node id ----------------------------------------------------------------
@dataclass(slots=True)
class _Claimant:
    """A session seen claiming the node: what the log can tell two of them apart by."""

    bdseq: int
    born: float  # monotonic time of its last NBIRTH
    born_ms: int  # that NBIRTH's payload timestamp (the edge node's clock)
    births: int = 1
    devices: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Left:
    """A seq stream the host stopped following (at a gap, or when a birth began a new one)."""

    seq: int  # the next seq that stream would send
    at: float
    advance: int  # how far the followed stream had gone when this one was left
    budget: int  # how far it may go on before it could come to `seq` itself
    bdseq: int | None


@dataclass(slots=True)
class _Probation:
    why: str
    until: float
    strict: bool  # after a birth: one sign of a second session tells; after a seq: two
    shown: tuple[str, ...]  # the devices passed on as online when it began
    held: list[Event] = field(default_factory=list)
    messages: int = 0
    points: int = 0  # signs of a second seq stream so far


@dataclass(slots=True)
class _Conflict:
    since: float
    last_evidence: float
    live: Counter[int]  # bdSeq -> sessions thought connected
    seen: set[int]
    last_bdseq: int | None
    cursor: int | None = None  # the next seq if only one stream were left
    dropped: int = 0


@dataclass(slots=True)
class _Claims:
    """What the host has seen of one edge node id, across its sessions."""

    born: dict[int, _Claimant] = field(default_factory=dict)
    dead: dict[int, float] = field(default_factory=dict)  # bdSeq -> when its NDEATH came
    left: list[_Left] = field(default_factory=list)
    unasked: list[float] = field(default_factory=list)  # NBIRTHs of a live session nobody asked for
    asked: float | None = None  # the last rebirth request (ours or one seen on the wire)
    last_birth: float | None = None
    suspects: dict[int, float] = field(default_factory=dict)  # bdSeq -> when its conflict ended
    after_conflict: bool = False
    survivor: int | None = None  # the session that remained when the last conflict ended
    probation: _Probation | None = None
    conflict: _Conflict | None = None

    def prune(self, now: float, window_s: float, suspect_s: float) -> None:
        self.born = {b: c for b, c in self.born.items() if now - c.born <= window_s}
        self.dead = {b: t for b, t in self.dead.items() if now - t <= window_s}
        self.left = [s for s in self.left if now - s.at <= window_s]
        self.unasked = [t for t in self.unasked if now - t <= window_s]
        self.suspects = {b: t for b, t in self.suspects.items() if now - t <= suspect_s}

    def is_live(self, bdseq: int) -> bool:
        c = self.born.get(bdseq)
        return c is not None and self.dead.get(bdseq, -1.0) < c.born

    def leave(self, seq: int, followed_next: int, advance: int, now: float, bdseq: int | None) -> None:
        budget = (seq - followed_next) % 256
        if budget > 0:
            self.left = [*self.left[-3:], _Left(seq, now, advance, budget, bdseq)]


@dataclass(slots=True)
class _Node:
    bdseq: int
    expected_seq: int
    claims: _Claims
    # alias -> (device id or None, name, datatype); aliases are unique per edge node
    aliases: dict[int, tuple[str | None, str, DataType]] = field(default_factory=dict)
    # (device id or None, name) -> datatype, for data that uses names instead of aliases
    types: dict[tuple[str | None, str], DataType] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)
    advance: int = 0  # how far seq went since the NBIRTH (in order and across gaps)


def state_payload(online: bool, timestamp: int) -> bytes:
    """The Sparkplug 3.0 STATE payload of a host application."""
    return json.dumps({"online": online, "timestamp": timestamp}, separators=(",", ":")).encode()


def _bdseq_of(payload: Payload | None) -> int | None:
    if payload is None:
        return None
    value = next((m.value for m in payload.metrics if m.name == BDSEQ), None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _shown(node: _Node) -> tuple[str, ...]:
    """The node's devices that were passed on as online (probation holds back the births)."""
    probation = node.claims.probation
    return probation.shown if probation is not None else tuple(sorted(node.devices))


def _ahead(a: int, b: int) -> int:
    """How far bdSeq or seq `a` is ahead of `b`, modulo 256."""
    return (a - b) % 256


class HostSession:
    """Tracks every edge node's session and turns its messages into events."""

    def __init__(
        self,
        *,
        rebirth_interval_s: float = 5.0,
        conflict_window_s: float = 60.0,
        hold_s: float = 10.0,
        quiet_s: float = 60.0,
        suspect_s: float = 600.0,
        storm_births: int = 3,
    ) -> None:
        self.rebirth_interval_s = rebirth_interval_s
        self.conflict_window_s = conflict_window_s
        self.hold_s = hold_s
        self.quiet_s = quiet_s
        self.suspect_s = suspect_s
        self.storm_births = storm_births
        self.counters: Counter[str] = Counter()
        self._nodes: dict[NodeKey, _Node] = {}
        self._asked: dict[NodeKey, float] = {}
        self._claims: dict[NodeKey, _Claims] = {}
        self._timed: set[NodeKey] = set()  # nodes on probation or in conflict: they end with time

    # -- queries ---------------------------------------------------------------------------
    def is_online(self, group_id: str, edge_node_id: str, device_id: str | None = None) -> bool:
        node = self._nodes.get((group_id, edge_node_id))
        if node is None:
            return False
        return device_id is None or device_id in node.devices

    @property
    def nodes(self) -> tuple[NodeKey, ...]:
        return tuple(self._nodes)

    @property
    def conflicts(self) -> tuple[NodeKey, ...]:
        """The edge node ids that two sessions claim now."""
        return tuple(k for k, c in self._claims.items() if c.conflict is not None)

    def on_probation(self, group_id: str, edge_node_id: str) -> bool:
        claims = self._claims.get((group_id, edge_node_id))
        return claims is not None and claims.probation is not None

    # -- input -----------------------------------------------------------------------------
    def handle(self, topic: str, data: bytes, now: float) -> list[Event]:
        """Process one message. `now` is a monotonic wall-clock second, used only for liveness:
        throttling rebirths, probation and conflicts."""
        self.counters["messages"] += 1
        events = self.tick(now) if self._timed else []
        if parse_state(topic) is not None:
            self.counters["state"] += 1
            return events
        try:
            t = parse(topic)
        except TopicError as exc:
            self.counters["not_sparkplug"] += 1
            logger.warning("ignored a message on %s: %s", topic, exc)
            return events
        mt = t.message_type
        if mt in (MessageType.NCMD, MessageType.DCMD):
            self.counters["commands_seen"] += 1
            if mt is MessageType.NCMD:
                self._seen_command(t.node_key, data, now)
            return events
        if mt is MessageType.NDEATH:
            try:
                death = decode_untimed(data)
            except PayloadError as exc:
                self.counters["malformed"] += 1
                logger.warning("malformed payload on %s (%d bytes): %s", topic, len(data), exc)
                return events + self._node_death(t, None, now)
            return events + self._node_death(t, death, now)
        try:
            payload = decode(data, untimed=CONTROL_METRICS) if mt is MessageType.NBIRTH else decode(data)
        except PayloadError as exc:
            self.counters["malformed"] += 1
            logger.warning("malformed payload on %s (%d bytes): %s", topic, len(data), exc)
            return events
        try:
            return events + self._dispatch(t, payload, now)
        except PayloadError as exc:
            self.counters["malformed"] += 1
            logger.warning("rejected %s: %s", topic, exc)
            return events + self._ask_rebirth(t.node_key, f"rejected {mt}: {exc}", now)

    def tick(self, now: float) -> list[Event]:
        """Release what probation held once it is over, and end conflicts that went quiet.
        `handle` does this too; call it when no messages may come for a while."""
        events: list[Event] = []
        for key in sorted(self._timed):
            claims = self._claims[key]
            probation = claims.probation
            if probation is not None and now >= probation.until:
                claims.probation = None
                self.counters["probations_passed"] += 1
                logger.info(
                    "%s/%s: no sign of a second session in %.0f s (%s): its data is applied",
                    *key,
                    self.hold_s,
                    probation.why,
                )
                events += probation.held
            conflict = claims.conflict
            if conflict is not None and now - conflict.last_evidence >= self.quiet_s:
                events += self._end_conflict(
                    key, claims, None, f"nothing showed two for {self.quiet_s:.0f} s", now
                )
            if claims.probation is None and claims.conflict is None:
                self._timed.discard(key)
        return events

    def _seen_command(self, key: NodeKey, data: bytes, now: float) -> None:
        claims = self._claims.get(key)
        if claims is None:
            return
        try:
            asks = any(m.name == REBIRTH and m.value is True for m in decode_untimed(data).metrics)
        except PayloadError:
            return
        if asks:
            claims.asked = now

    def _dispatch(self, t: SparkplugTopic, payload: Payload, now: float) -> list[Event]:
        mt = t.message_type
        if mt is MessageType.NBIRTH:
            return self._node_birth(t, payload, now)
        node = self._nodes.get(t.node_key)
        if node is None:  # a node in conflict has no session
            claims = self._claims.get(t.node_key)
            if claims is not None and claims.conflict is not None:
                return self._in_conflict(t, claims, payload, now)
            self.counters["before_birth"] += 1
            logger.info("%s from %s/%s before its NBIRTH", mt, t.group_id, t.edge_node_id)
            return self._ask_rebirth(t.node_key, f"{mt} before NBIRTH", now)
        events, keep = self._check_seq(t, node, payload, now)
        if not keep:
            return events
        if mt is MessageType.DBIRTH:
            assert t.device_id is not None
            events += self._device_birth(t, node, payload)
        elif mt is MessageType.DDEATH:
            assert t.device_id is not None
            node.devices.discard(t.device_id)
            events.append(Death(t.group_id, t.edge_node_id, t.device_id, payload.timestamp))
        elif t.device_id is not None and t.device_id not in node.devices:
            self.counters["before_birth"] += 1
            events += self._ask_rebirth(t.node_key, f"DDATA for {t.device_id!r} before its DBIRTH", now)
        else:
            events += self._data(t, node, payload, now)
        return self._hold(node.claims, events)

    def _hold(self, claims: _Claims, events: list[Event]) -> list[Event]:
        """On probation, what the message says is kept back (rebirth requests go out)."""
        probation = claims.probation
        if probation is None:
            return events
        probation.messages += 1
        probation.held += [e for e in events if not isinstance(e, RebirthRequest)]
        return [e for e in events if isinstance(e, RebirthRequest)]

    # -- seq -------------------------------------------------------------------------------
    def _check_seq(
        self, t: SparkplugTopic, node: _Node, payload: Payload, now: float
    ) -> tuple[list[Event], bool]:
        """What a seq mismatch calls for, and whether the message is this session's to apply."""
        seq = payload.seq
        if seq is None or not 0 <= seq <= 255:
            raise PayloadError(f"{t.message_type} needs a seq from 0 to 255, got {seq}")
        expected = node.expected_seq
        if seq == expected:
            node.expected_seq = (seq + 1) % 256
            node.advance += 1
            return [], True
        claims = node.claims
        key = t.node_key
        ahead = _ahead(seq, expected)
        left = self._continued(node, seq, now - self.conflict_window_s)
        probation = claims.probation
        strict = probation is not None and probation.strict
        if ahead <= _SMALL_GAP and not (strict and left is not None):  # a few lost on the way
            self.counters["seq_gaps"] += 1
            logger.warning(
                "seq gap from %s/%s: expected %d, got %d (%s)", *key, expected, seq, t.message_type
            )
            node.expected_seq = (seq + 1) % 256
            node.advance += ahead + 1
            return self._ask_rebirth(key, f"seq gap: expected {expected}, got {seq}", now), True
        # Many lost, or another session's stream: which one shows in the messages to come.
        behind = _ahead(expected, seq)
        if left is not None or behind <= _SMALL_GAP:
            self.counters["foreign_seq"] += 1
            if left is not None:
                what = f"seq {seq} goes on from a stream left at {left.seq} while this one is at {expected}"
            else:
                what = f"seq {seq} came after {(expected - 1) % 256}"
            if probation is not None and (strict or probation.points > 0):
                involved = {node.bdseq} | {b for b in claims.born if claims.is_live(b)}
                if left is not None and left.bdseq is not None:
                    involved.add(left.bdseq)
                why = f"seq streams interleave: {what}"
                return self._start_conflict(key, claims, why, now, payload.timestamp, involved), False
            logger.warning("%s/%s: %s (%s)", *key, what, t.message_type)
            if probation is None:
                probation = self._probation(key, claims, what, now, strict=False, shown=_shown(node))
            probation.points += 1
        else:
            self.counters["seq_gaps"] += 1
            logger.warning(
                "seq gap from %s/%s: expected %d, got %d (%s)", *key, expected, seq, t.message_type
            )
            if probation is None:
                why = f"a seq gap of {ahead - 1} messages"
                self._probation(key, claims, why, now, strict=False, shown=_shown(node))
        # Either way the stream of this message is followed from here, and the other one remembered.
        if left is not None:
            claims.left.remove(left)
        node.expected_seq = (seq + 1) % 256
        node.advance += ahead + 1
        claims.leave(expected, node.expected_seq, node.advance, now, node.bdseq)
        return self._ask_rebirth(key, f"seq gap: expected {expected}, got {seq}", now), True

    @staticmethod
    def _continued(node: _Node, seq: int, since: float) -> _Left | None:
        """The stream the host left (after `since`) that `seq` goes on from, if any."""
        for left in node.claims.left:
            if left.at < since or node.advance - left.advance >= left.budget:
                continue  # the followed stream has come to it: they can no longer be told apart
            if _ahead(seq, left.seq) <= _CONTINUES:
                return left
        return None

    def _probation(
        self, key: NodeKey, claims: _Claims, why: str, now: float, *, strict: bool, shown: tuple[str, ...]
    ) -> _Probation:
        """Hold what the node says for `hold_s`: `strict` after a birth that may be a second
        session's (one sign of the other then tells), else after a seq that may be (two signs)."""
        self.counters["probations"] += 1
        logger.warning(
            "%s/%s: %s: held for %.0f s, until no sign of a second session", *key, why, self.hold_s
        )
        probation = claims.probation = _Probation(why, now + self.hold_s, strict, shown)
        self._timed.add(key)
        return probation

    def ask_rebirth(self, group_id: str, edge_node_id: str, reason: str, now: float) -> list[Event]:
        """A rebirth the host's owner wants (as the host's own: throttled, and its NBIRTH asked for)."""
        return self._ask_rebirth((group_id, edge_node_id), reason, now)

    def _ask_rebirth(self, key: NodeKey, reason: str, now: float) -> list[Event]:
        claims = self._claims.get(key)
        if claims is not None and claims.conflict is not None:
            self.counters["rebirths_withheld"] += 1
            return []  # each session would answer, and the answers are the conflict again
        last = self._asked.get(key)
        if last is not None and now - last < self.rebirth_interval_s:
            self.counters["rebirths_throttled"] += 1
            return []
        self._asked[key] = now
        if claims is not None:
            claims.asked = now
        self.counters["rebirths_requested"] += 1
        logger.info("requesting a rebirth of %s/%s: %s", key[0], key[1], reason)
        return [RebirthRequest(key[0], key[1], reason)]

    # -- births ----------------------------------------------------------------------------
    @staticmethod
    def _birth_metrics(where: str, payload: Payload) -> list[Metric]:
        for m in payload.metrics:
            if m.name is None:
                raise PayloadError(f"{where}: a birth metric has no name (alias {m.alias})")
            if m.datatype is None:
                raise PayloadError(f"{where}: birth metric {m.name!r} has no datatype")
        return list(payload.metrics)

    def _node_birth(self, t: SparkplugTopic, payload: Payload, now: float) -> list[Event]:
        where = f"NBIRTH of {t.group_id}/{t.edge_node_id}"
        metrics = self._birth_metrics(where, payload)
        bdseq = _bdseq_of(payload)
        if bdseq is None:
            raise PayloadError(f"{where}: no bdSeq metric")
        if payload.seq != 0:
            raise PayloadError(f"{where}: seq must be 0, got {payload.seq}")
        key = t.node_key
        claims = self._claims.setdefault(key, _Claims())
        claims.prune(now, self.conflict_window_s, self.suspect_s)
        if claims.conflict is not None:
            return self._birth_in_conflict(key, claims, bdseq, payload, now)
        old = self._nodes.get(key)
        second = self._second_session(claims, old, bdseq)
        claimant = claims.born.get(bdseq)
        if claimant is None:
            claims.born[bdseq] = _Claimant(bdseq, now, payload.timestamp)
        else:
            claimant.born, claimant.born_ms, claimant.births = now, payload.timestamp, claimant.births + 1
            claimant.devices.clear()
        live = {b for b in claims.born if claims.is_live(b)}
        if second is not None:
            why, other = second
            return self._start_conflict(key, claims, why, now, payload.timestamp, {bdseq, other} | live)
        asked = claims.asked is not None and claims.asked > (claims.last_birth or float("-inf"))
        asked = asked and now - (claims.asked or 0.0) <= self.conflict_window_s
        claims.last_birth = now
        hold: str | None = None
        strict = claims.probation is not None and claims.probation.strict
        if old is not None and old.bdseq != bdseq:
            hold = f"NBIRTH with bdSeq {bdseq} while the session with bdSeq {old.bdseq} had not died"
        elif old is not None and not asked:
            claims.unasked.append(now)
            if len(claims.unasked) >= self.storm_births:
                why = (
                    f"rebirth storm: {len(claims.unasked)} NBIRTHs with bdSeq {bdseq} in "
                    f"{self.conflict_window_s:.0f} s that no rebirth request asked for"
                )
                return self._start_conflict(key, claims, why, now, payload.timestamp, live)
            hold = f"an NBIRTH with bdSeq {bdseq} that no rebirth request asked for"
            if strict:
                why = f"a second NBIRTH with bdSeq {bdseq} that no rebirth request asked for, on probation"
                return self._start_conflict(key, claims, why, now, payload.timestamp, live)
        elif old is None and claims.after_conflict and bdseq != claims.survivor:
            hold = f"the first NBIRTH (bdSeq {bdseq}) after a conflict"
        claims.after_conflict = False
        if hold is None:
            claims.left = []  # the node began again as asked: the streams before it ended
        elif old is not None:
            claims.leave(old.expected_seq, 1, 0, now, old.bdseq)
        for left in claims.left:  # the new stream starts at 1: how far it may go before meeting them
            left.advance, left.budget = 0, _ahead(left.seq, 1)
        node = _Node(bdseq=bdseq, expected_seq=1, claims=claims)
        self._register(node, None, metrics)
        self._nodes[key] = node
        self._asked.pop(key, None)
        self.counters["births"] += 1
        events: list[Event] = []
        if old is not None and old.devices and old.claims.probation is None:
            # A rebirth without a death: the old devices are gone until their DBIRTH comes again.
            # (On probation, their births are held: the new ones replace them there.)
            events.append(
                Death(t.group_id, t.edge_node_id, None, payload.timestamp, tuple(sorted(old.devices)))
            )
        node_metrics = tuple(m for m in metrics if m.name not in CONTROL_METRICS)
        update = MetricsUpdate(t.group_id, t.edge_node_id, None, node_metrics, True, payload.timestamp)
        if hold is not None and not strict:
            held = claims.probation
            self._probation(key, claims, hold, now, strict=True, shown=held.shown if held else ())
            if held is not None:  # what a seq gap began holding goes on being held
                assert claims.probation is not None
                claims.probation.held, claims.probation.messages = held.held, held.messages
        return events + self._hold(claims, [update])

    @staticmethod
    def _second_session(claims: _Claims, old: _Node | None, bdseq: int) -> tuple[str, int] | None:
        """Why an NBIRTH with `bdseq` cannot come from the edge node of the births before (and the
        bdSeq of the other one), or None. Called before this birth is noted."""
        restart = bdseq % 256 == 0 and (old is None or not claims.is_live(bdseq))
        if not restart:
            for other in claims.born.values():
                if other.bdseq != bdseq and 0 < _ahead(other.bdseq, bdseq) < 128:
                    why = (
                        f"NBIRTH with bdSeq {bdseq} after one with bdSeq {other.bdseq} "
                        "(one node's bdSeq only goes up)"
                    )
                    return why, other.bdseq
        if old is not None and old.bdseq != bdseq and {bdseq, old.bdseq} & claims.suspects.keys():
            why = (
                f"NBIRTH with bdSeq {bdseq} while bdSeq {old.bdseq} is online, after a conflict between them"
            )
            return why, old.bdseq
        return None

    def _device_birth(self, t: SparkplugTopic, node: _Node, payload: Payload) -> list[Event]:
        device = t.device_id
        assert device is not None
        metrics = self._birth_metrics(f"DBIRTH of {t.group_id}/{t.edge_node_id}/{device}", payload)
        self._register(node, device, metrics)
        node.devices.add(device)
        claimant = node.claims.born.get(node.bdseq)
        if claimant is not None:
            claimant.devices.add(device)
        self.counters["births"] += 1
        return [MetricsUpdate(t.group_id, t.edge_node_id, device, tuple(metrics), True, payload.timestamp)]

    @staticmethod
    def _register(node: _Node, device: str | None, metrics: list[Metric]) -> None:
        for m in metrics:
            assert m.name is not None
            assert m.datatype is not None
            node.types[(device, m.name)] = m.datatype
            if m.alias is not None:
                node.aliases[m.alias] = (device, m.name, m.datatype)

    # -- deaths ----------------------------------------------------------------------------
    def _node_death(self, t: SparkplugTopic, payload: Payload | None, now: float) -> list[Event]:
        """An NDEATH; `payload` None: one that could not be read."""
        key = t.node_key
        bdseq = _bdseq_of(payload)
        ts = payload.timestamp if payload is not None else 0
        claims = self._claims.get(key)
        if claims is not None and claims.conflict is not None:
            return self._death_in_conflict(key, claims, bdseq, now)
        node = self._nodes.get(key)
        if bdseq is None:
            # Which session died cannot be told: its data ends here, and it is asked to say if it lives.
            self.counters["unreadable_deaths"] += 1
            if node is None:
                logger.info("ignored an unreadable NDEATH of %s/%s: it is not online", *key)
                return []
            logger.warning(
                "NDEATH of %s/%s without a readable bdSeq: its machines are lost from now on", *key
            )
            return self._end_session(key, node, ts) + self._ask_rebirth(key, "an unreadable NDEATH", now)
        if claims is not None:
            claims.dead[bdseq] = now
        if node is None or bdseq != node.bdseq:
            # The Will of an older connection, delivered after the node connected again.
            self.counters["stale_deaths"] += 1
            logger.info("ignored NDEATH of %s/%s with bdSeq %s", t.group_id, t.edge_node_id, bdseq)
            return []
        self.counters["deaths"] += 1
        return self._end_session(key, node, ts)

    def _end_session(self, key: NodeKey, node: _Node, ts: int) -> list[Event]:
        del self._nodes[key]
        shown = _shown(node)
        probation = node.claims.probation
        if probation is not None:  # never confirmed: what it said is not applied
            node.claims.probation = None
            self.counters["unconfirmed_dropped"] += probation.messages
        return [Death(key[0], key[1], None, ts, shown)]

    # -- conflicts -------------------------------------------------------------------------
    def _start_conflict(
        self, key: NodeKey, claims: _Claims, why: str, now: float, ts: int, involved: set[int]
    ) -> list[Event]:
        """Two sessions claim the node (`involved`: the bdSeqs seen doing so)."""
        node = self._nodes.pop(key, None)
        devices = _shown(node) if node is not None else ()
        probation, claims.probation = claims.probation, None
        held = probation.messages + 1 if probation is not None else 1  # and the message that told
        live = Counter({b: 1 for b in involved if claims.is_live(b)})
        if len(involved) == 1:
            live[next(iter(involved))] = 2  # two seq streams under one bdSeq
        last = max(claims.born.values(), key=lambda c: c.born).bdseq if claims.born else None
        claims.conflict = _Conflict(now, now, live, set(involved), last, dropped=held)
        self._timed.add(key)
        self._asked.pop(key, None)
        self.counters["conflicts"] += 1
        self.counters["conflict_dropped"] += held
        self.counters["nodes_in_conflict"] = len(self.conflicts)
        logger.warning(
            "edge node %s/%s is claimed by two sessions (a cloned gateway, or two nodes configured with "
            "one id?): %s; %s. Its machines are comms_loss and its messages are dropped until one "
            "remains; no rebirth requests meanwhile",
            *key,
            self._describe(claims, involved, live),
            why,
        )
        events: list[Event] = [Death(key[0], key[1], None, ts, devices)] if devices else []
        flag = Metric(CONFLICT_METRIC, None, ts, DataType.BOOLEAN, True)
        return [*events, MetricsUpdate(key[0], key[1], None, (flag,), False, ts)]

    @staticmethod
    def _describe(claims: _Claims, involved: set[int], live: Counter[int]) -> str:
        parts = []
        for bdseq in sorted(involved):
            c = claims.born.get(bdseq)
            who = f"two sessions with bdSeq {bdseq}" if live[bdseq] > 1 else f"bdSeq {bdseq}"
            if not claims.is_live(bdseq):
                who += " (dead)"
            if c is not None:
                devices = ", ".join(sorted(c.devices)) or "no devices yet"
                who += f" (last NBIRTH stamped {iso(c.born_ms)}, {c.births} NBIRTHs, {devices})"
            parts.append(who)
        return " and ".join(parts)

    def _birth_in_conflict(
        self, key: NodeKey, claims: _Claims, bdseq: int, payload: Payload, now: float
    ) -> list[Event]:
        c = claims.conflict
        assert c is not None
        c.dropped += 1
        self.counters["conflict_dropped"] += 1
        if c.last_bdseq is not None and bdseq != c.last_bdseq:
            c.last_evidence = now
        c.last_bdseq = bdseq
        c.seen.add(bdseq)
        c.live[bdseq] = max(c.live[bdseq], 1)
        c.cursor = 1
        if bdseq not in claims.born:
            claims.born[bdseq] = _Claimant(bdseq, now, payload.timestamp)
        return []

    def _in_conflict(self, t: SparkplugTopic, claims: _Claims, payload: Payload, now: float) -> list[Event]:
        c = claims.conflict
        assert c is not None
        c.dropped += 1
        self.counters["conflict_dropped"] += 1
        seq = payload.seq
        if seq is None or not 0 <= seq <= 255:
            raise PayloadError(f"{t.message_type} needs a seq from 0 to 255, got {seq}")
        if c.cursor is not None and seq != c.cursor:
            c.last_evidence = now
        c.cursor = (seq + 1) % 256
        return []

    def _death_in_conflict(self, key: NodeKey, claims: _Claims, bdseq: int | None, now: float) -> list[Event]:
        c = claims.conflict
        assert c is not None
        if bdseq is None:
            self.counters["unreadable_deaths"] += 1
            logger.info(
                "%s/%s: an unreadable NDEATH during the conflict: which session died is unknown", *key
            )
            return []
        claims.dead[bdseq] = now
        if c.live[bdseq] <= 0:
            self.counters["stale_deaths"] += 1
            return []
        self.counters["deaths"] += 1
        before = c.live.total()
        c.live[bdseq] -= 1
        c.live = +c.live
        if before >= 2 and c.live.total() == 1:
            [remains] = c.live
            survivor = remains if remains != bdseq else None  # one of two with one bdSeq: which, unknown
            return self._end_conflict(key, claims, survivor, f"a session with bdSeq {bdseq} died", now)
        return []

    def _end_conflict(
        self, key: NodeKey, claims: _Claims, survivor: int | None, why: str, now: float
    ) -> list[Event]:
        c = claims.conflict
        assert c is not None
        claims.conflict = None
        self.counters["nodes_in_conflict"] = len(self.conflicts)
        kept = claims.born.get(survivor) if survivor is not None else None
        claims.born = {survivor: kept} if survivor is not None and kept is not None else {}
        claims.dead, claims.left, claims.unasked = {}, [], []
        claims.suspects.update((b, now) for b in c.seen if b != survivor)
        claims.after_conflict, claims.survivor = True, survivor
        remains = f"the session with bdSeq {survivor}" if survivor is not None else "one session at most"
        logger.warning(
            "edge node %s/%s: the conflict is over after %.0f s (%s; %d messages dropped): %s remains; "
            "asking for a rebirth",
            *key,
            now - c.since,
            why,
            c.dropped,
            remains,
        )
        flag = Metric(CONFLICT_METRIC, None, 0, DataType.BOOLEAN, False)
        events: list[Event] = [MetricsUpdate(key[0], key[1], None, (flag,), False, 0)]
        self._asked.pop(key, None)
        return events + self._ask_rebirth(key, "its conflict ended", now)

    # -- data ------------------------------------------------------------------------------
    def _data(self, t: SparkplugTopic, node: _Node, payload: Payload, now: float) -> list[Event]:
        device = t.device_id
        resolved: list[Metric] = []
        unknown: list[str] = []
        bad: list[str] = []
        for m in payload.metrics:
            if m.name is None:
                entry = node.aliases.get(m.alias) if m.alias is not None else None
                if entry is None or entry[0] != device:
                    unknown.append(f"alias {m.alias}")
                    continue
                _, name, datatype = entry
            else:
                name = m.name
                known = node.types.get((device, name))
                if known is None:
                    unknown.append(f"metric {name!r}")
                    continue
                datatype = known
            value = m.value
            if m.datatype is datatype:
                if m.name is not None:
                    resolved.append(m)  # named and typed as its birth says: as it came
                    continue
            elif value is not None:
                try:
                    if m.datatype is not None:
                        raise PayloadError(
                            f"{name!r} is {m.datatype.name} here but {datatype.name} in the birth"
                        )
                    value = typed_value(name, datatype, value)
                except PayloadError as exc:
                    bad.append(str(exc))
                    continue
            resolved.append(
                Metric(
                    name, m.alias, m.timestamp, datatype, value, m.is_historical, m.is_transient, m.quality
                )
            )
        if bad:
            self.counters["malformed_metrics"] += len(bad)
            logger.warning("%s on %s/%s: dropped %s", payload.seq, t.group_id, t.edge_node_id, "; ".join(bad))
        self.counters["metrics"] += len(resolved)
        events: list[Event] = []
        if unknown:
            self.counters["unknown_metrics"] += len(unknown)
            where = f"{t.group_id}/{t.edge_node_id}" + (f"/{device}" if device else "")
            logger.warning("%s: %s not in the birth", where, ", ".join(unknown))
            events += self._ask_rebirth(t.node_key, f"unknown {unknown[0]}", now)
        if resolved:
            events.append(
                MetricsUpdate(t.group_id, t.edge_node_id, device, tuple(resolved), False, payload.timestamp)
            )
        return events

    def disconnected(self) -> list[Death]:
        """The host lost its broker: every node's state is unknown until it is born again.

        What probation held is dropped; conflicts stay until they end as they would."""
        deaths = [Death(g, e, None, 0, _shown(n)) for (g, e), n in self._nodes.items()]
        self._nodes.clear()
        for key, claims in self._claims.items():
            if claims.probation is not None:
                self.counters["unconfirmed_dropped"] += claims.probation.messages
            claims.probation = None
            claims.born, claims.dead, claims.left, claims.unasked = {}, {}, [], []
            if claims.conflict is not None:
                claims.conflict.cursor = None
            else:
                self._timed.discard(key)
        return deaths
