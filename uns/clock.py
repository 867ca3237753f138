"""Event time. Every service reads "now" from a Clock, so the demo can run faster than real time.

In a plant the clock is the wall clock. In the demo and the tests every process of one run shares a
`ScaledClock`: event time = origin + (wall time since start) x speed. Values keep their own source
timestamps either way; the clock only stamps what the services observe themselves (a lost device, a
death, the host's STATE). Wall time (time.monotonic) stays for liveness: timeouts and throttles.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    def now_ms(self) -> int:
        """Event time now, in UTC milliseconds."""
        ...

    @property
    def speed(self) -> float: ...


class WallClock:
    speed = 1.0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ScaledClock:
    """Event time that runs `speed` times faster than the wall clock, starting at `origin_ms`."""

    def __init__(self, origin_ms: int, speed: float, *, wall_start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.origin_ms = origin_ms
        self._speed = speed
        self.wall_start = time.time() if wall_start is None else wall_start

    @property
    def speed(self) -> float:
        return self._speed

    def now_ms(self) -> int:
        return self.origin_ms + int((time.time() - self.wall_start) * 1000 * self._speed)

    def restart(self) -> None:
        """Event time is `origin_ms` again now (a simulation whose start was delayed)."""
        self.wall_start = time.time()

    def wall_seconds_until(self, event_ms: int) -> float:
        """How long to sleep on the wall clock until event time reaches `event_ms`."""
        target = self.wall_start + (event_ms - self.origin_ms) / 1000 / self._speed
        return max(0.0, target - time.time())


_ISO_SECOND: tuple[int, str] = (0, "1970-01-01T00:00:00")  # the last second formatted, and how


def iso(ms: int) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-22T06:00:00.000Z. In integers (no float
    rounding), and the second's text kept from the last call: most calls share it."""
    global _ISO_SECOND
    second, millis = divmod(ms, 1000)
    last = _ISO_SECOND  # (one read: another thread may replace it, never half of it)
    if last[0] != second:
        last = _ISO_SECOND = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{last[1]}.{millis:03d}Z"


def parse_iso(text: str) -> int:
    """UTC milliseconds from an ISO-8601 time; a time without an offset is refused."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone offset (use Z or +hh:mm)")
    return (dt - _EPOCH) // timedelta(milliseconds=1)
