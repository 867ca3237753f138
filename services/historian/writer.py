"""Writing line protocol to InfluxDB through the v2 write API: the project's only importer of
influxdb-client.

A bounded queue and one sending thread: lines go out in batches, a batch that fails for a reason
that can pass (no connection, 5xx, 429) is sent again after a growing pause, one that InfluxDB refuses
(4xx) is logged with what it said (the bucket, the field) and counted, never retried. When the queue
is full, what does not fit is dropped, counted and logged; the historian looks at `room()` first and
waits instead, so that only happens to a writer used without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteOptions, WriteType
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)
_MS = cast("WritePrecision", WritePrecision.MS)  # the class's constants are plain strings


class InfluxSettings(BaseSettings):
    """Where the historian writes: UNS_INFLUX_URL, UNS_INFLUX_ORG, UNS_INFLUX_BUCKET, UNS_INFLUX_TOKEN."""

    model_config = SettingsConfigDict(env_prefix="UNS_INFLUX_", extra="ignore")

    url: str = Field(min_length=1, pattern=r"^https?://")
    org: str = Field(min_length=1)
    bucket: str = Field(min_length=1)
    token: SecretStr
    timeout_s: float = Field(default=10.0, gt=0)


@dataclass(slots=True)
class Counters:
    written: int = 0  # lines InfluxDB took
    dropped: int = 0  # lines that did not fit in the queue
    failed: int = 0  # lines InfluxDB refused (4xx)
    retries: int = 0  # batches sent again
    queued: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
            "retries": self.retries,
            "queued": self.queued,
        }


class InfluxWriter:
    """Lines in, batches out, on a thread of its own."""

    def __init__(
        self,
        settings: InfluxSettings,
        *,
        max_lines: int = 200_000,
        batch_lines: int = 10_000,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.settings = settings
        self.max_lines = max_lines
        self.batch_lines = batch_lines
        self.backoff_s = backoff_s
        self.counters = Counters()
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._sending = 0  # lines of the batch in flight
        self._abandoned = 0  # lines given up at exit: not settled (the historian sends them again)
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.token.get_secret_value(),
            org=settings.org,
            timeout=int(settings.timeout_s * 1000),
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._thread = threading.Thread(target=self._run, name="historian.writer", daemon=True)
        self._thread.start()

    def room(self) -> int:
        with self._cond:
            return self.max_lines - len(self._queue) - self._sending

    def put(self, lines: Iterable[str]) -> int:
        """Queue lines; returns how many were taken (the rest is dropped and counted)."""
        taken = 0
        with self._cond:
            for x in lines:
                if len(self._queue) + self._sending >= self.max_lines:
                    self.counters.dropped += 1
                    continue
                self._queue.append(x)
                taken += 1
            self.counters.queued = len(self._queue) + self._sending
            self._cond.notify()
        return taken

    def settled(self) -> int:
        """Lines done with: written, refused, or dropped for want of room (not those given up at exit:
        the historian's place in the record stays before them)."""
        with self._cond:
            c = self.counters
            return c.written + c.failed + c.dropped - self._abandoned

    def health(self) -> dict[str, int]:
        with self._cond:
            return self.counters.as_dict()

    def idle(self) -> bool:
        """Nothing queued or in flight: all that was put is written (or was refused)."""
        with self._cond:
            return not self._queue and not self._sending

    def flush(self, timeout_s: float) -> bool:
        """Wait until all that was put is sent; False when the time ran out first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (for up to `timeout_s`), then stop; what is left is counted dropped."""
        self.flush(timeout_s)
        with self._cond:
            self._stopping = True
            left = len(self._queue) + self._sending  # the batch in flight is given up too
            self.counters.dropped += left
            self._abandoned += left
            self._queue.clear()
            self._sending = 0
            self._cond.notify_all()
        if left:
            logger.warning("historian: %d lines not written to bucket %s at exit", left, self.settings.bucket)
        self._thread.join(timeout_s)
        self._client.close()

    def _run(self) -> None:
        failing_since: float | None = None
        batch: list[str] = []
        attempt = 0
        while True:
            with self._cond:
                if self._stopping:
                    return
                if not batch:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    n = min(len(self._queue), self.batch_lines)
                    batch = [self._queue.popleft() for _ in range(n)]
                    self._sending = n
            try:
                self._api.write(
                    bucket=self.settings.bucket,
                    org=self.settings.org,
                    record="\n".join(batch).encode(),
                    write_precision=_MS,
                )
            except ApiException as exc:
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    self._refused(batch, exc)
                    batch = self._done(batch, written=False)
                    continue
                failing_since, attempt = self._retry(failing_since, attempt, f"HTTP {exc.status}", len(batch))
                continue
            except Exception as exc:
                failing_since, attempt = self._retry(failing_since, attempt, _short(exc), len(batch))
                continue
            if failing_since is not None:
                logger.info(
                    "historian: InfluxDB at %s takes writes again (after %.0f s)",
                    self.settings.url,
                    time.monotonic() - failing_since,
                )
                failing_since, attempt = None, 0
            batch = self._done(batch, written=True)

    def _done(self, batch: list[str], *, written: bool) -> list[str]:
        with self._cond:
            if written:
                self.counters.written += len(batch)
            self._sending = 0
            self.counters.queued = len(self._queue)
            self._cond.notify_all()
        return []

    def _retry(self, since: float | None, attempt: int, why: str, lines: int) -> tuple[float, int]:
        with self._cond:
            self.counters.retries += 1
            queued = len(self._queue) + self._sending
        if since is None:
            logger.warning(
                "historian: cannot write to InfluxDB at %s, bucket %s (%s); %d lines queued, retrying",
                self.settings.url,
                self.settings.bucket,
                why,
                queued,
            )
            since = time.monotonic()
        low, high = self.backoff_s
        pause = min(low * 2**attempt, high)
        with self._cond:
            if not self._stopping:
                self._cond.wait(pause)
        return since, attempt + 1

    def _refused(self, batch: list[str], exc: ApiException) -> None:
        body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
        with self._cond:
            self.counters.failed += len(batch)
        logger.error(
            "historian: InfluxDB refused %d lines for bucket %s (HTTP %s): %s; first line: %s",
            len(batch),
            self.settings.bucket,
            exc.status,
            body.strip()[:500],
            batch[0][:300],
        )


def _short(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def batching_client_write(
    settings: InfluxSettings, points: Iterable[tuple[str, dict[str, str], dict[str, float], int]]
) -> float:
    """influxdb-client's own batching writer with its Point objects, for the benchmark beside ours:
    seconds to write `points` (measurement, tags, fields, ms) and flush."""
    from influxdb_client.client.write.point import Point

    started = time.perf_counter()
    with InfluxDBClient(
        url=settings.url, token=settings.token.get_secret_value(), org=settings.org
    ) as client:
        options = WriteOptions(write_type=WriteType.batching, batch_size=10_000, flush_interval=1_000)
        with client.write_api(write_options=options) as api:
            for measurement, tags, fields, ts in points:
                p = Point(measurement)
                for k, v in tags.items():
                    p = p.tag(k, v)
                for k, f in fields.items():
                    p = p.field(k, f)
                api.write(
                    bucket=settings.bucket,
                    org=settings.org,
                    record=p.time(ts, _MS),
                    write_precision=_MS,
                )
    return time.perf_counter() - started
