"""Test helpers: an MQTT client that records what it receives and can wait for a message."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.sim.scenario import TruthStop
from services.context.shifts import ShiftCalendar
from services.context.state import Interval
from uns.broker import Mosquitto
from uns.mqtt import BrokerAddress, MqttClient, Will

# Every client a test starts; the autouse fixture in conftest.py stops them after the test.
OPEN: list[MqttClient] = []


def track(client: MqttClient | None) -> None:
    assert client is not None
    OPEN.append(client)


@dataclass
class Recorder:
    """An MqttHandler that keeps every message (topic, payload) in order."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    connects: int = 0
    client: MqttClient | None = None

    def on_connected(self) -> None:
        self.connects += 1

    def on_disconnected(self, reason: str) -> None:
        pass

    def on_message(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]

    async def wait_for(
        self, predicate: Callable[[str, bytes], bool], timeout: float = 10.0, count: int = 1
    ) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [(t, p) for t, p in self.messages if predicate(t, p)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; received {self.topics()}")
            await asyncio.sleep(0.02)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.client is None or not self.client.connected:
            if time.monotonic() > deadline:
                raise AssertionError("MQTT client did not connect")
            await asyncio.sleep(0.02)


def address(broker: Mosquitto, role: str) -> BrokerAddress:
    return BrokerAddress("127.0.0.1", broker.port, role, broker.creds.password(role))


async def recorder(
    broker: Mosquitto, role: str, *filters: str, client_id: str = "recorder", will: Will | None = None
) -> Recorder:
    rec = Recorder()
    rec.client = MqttClient(
        client_id,
        address(broker, role),
        rec,
        asyncio.get_running_loop(),
        subscriptions=tuple((f, 1) for f in filters),
        will=(lambda: will) if will else None,
    )
    rec.client.start()
    track(rec.client)
    await rec.wait_connected()
    await asyncio.sleep(0.1)  # let the SUBACK arrive
    return rec


# A CNC controller's signals at rest, for tests that start a simulated controller.
CNC_AT_REST: dict[str, bool | int | float | str] = {
    "execution": "READY",
    "mode": "AUTOMATIC",
    "program": "O1",
    "part_count": 1,
    "alarm_code": 0,
    "alarm_text": "",
    "estop": False,
    "spindle_speed": 0.0,
    "spindle_load": 0.0,
    "feed_override": 100.0,
}


def reason_fidelity(
    truth: list[TruthStop],
    record: list[Interval],
    calendar: ShiftCalendar | None,
    start_ms: int,
    end_ms: int,
) -> tuple[float, float, dict[tuple[str, str | None], float]]:
    """How much of the truly stopped time in [start, end) the record gives the reason a supervisor
    would (the scenario's truth; idle time inside a planned break is the break): (share, stopped
    seconds, seconds by (true reason, recorded reason) where they differ)."""
    breaks = []
    if calendar is not None:
        breaks = [(b0, b1) for s in calendar.shifts(start_ms, end_ms) for _, b0, b1 in s.breaks]
    total = right = 0.0
    wrong: dict[tuple[str, str | None], float] = {}
    for t in truth:
        a, b = max(t.start_ms, start_ms), min(t.end_ms, end_ms)
        if b <= a:
            continue
        cuts = sorted({a, b} | {x for br in breaks for x in br if a < x < b})
        for p0, p1 in itertools.pairwise(cuts):
            expected = t.reason
            if t.state == "idle" and any(b0 <= p0 and p1 <= b1 for b0, b1 in breaks):
                expected = "planned_break"
            for i in record:
                overlap = min(p1, i.end_ms) - max(p0, i.start_ms)
                if overlap <= 0:
                    continue
                total += overlap / 1000
                if i.reason == expected:
                    right += overlap / 1000
                else:
                    key = (expected, i.reason)
                    wrong[key] = wrong.get(key, 0.0) + overlap / 1000
    return (right / total if total else 0.0), total, wrong


class Held:
    """The service's monotonic clock and event-loop timers, in the test's hands."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def monotonic(self) -> float:
        return self.now

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        self.call_later(0.0, fn, *args)

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        call = functools.partial(fn, *args)
        functools.update_wrapper(call, fn)  # (its __name__, for `pending`)
        self.timers.append((self.now + delay, call))

    def pending(self, fn: str) -> list[float]:
        return [at for at, f in self.timers if getattr(f, "__name__", "") == fn]

    def run(self, advance: float = 0.0) -> None:
        """Move the clock on, then run what is due (and what that asks for at once)."""
        self.now += advance
        while due := [t for t in self.timers if t[0] <= self.now]:
            for t in due:
                self.timers.remove(t)
            for _, fn in due:
                fn()
