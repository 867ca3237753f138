"""`uns historian` and the demo's historian: the follower on a timer, beside its writer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from services.context.reasons import taxonomy
from services.context.record import RecordReader
from services.context.shifts import calendar_for
from services.historian.follow import Historian
from services.historian.memory import Memory
from services.historian.writer import InfluxSettings, InfluxWriter
from services.oee.engine import Definition
from uns.site import Site

logger = logging.getLogger(__name__)


def memory_path(record: Path) -> Path:
    """The historian's own file beside the record (`record.db` -> `record.historian.db`)."""
    return record.with_name(record.stem + ".historian.db")


class HistorianService:
    def __init__(
        self,
        site: Site,
        store: RecordReader,
        settings: InfluxSettings,
        memory: Path,
        now_ms: Callable[[], int],
        *,
        poll_s: float = 1.0,
        oee_every_ms: int = 60_000,
    ) -> None:
        reasons = taxonomy(site.config.downtime)
        shifts = site.config.shifts
        self.writer = InfluxWriter(settings)
        self.memory = Memory(memory)
        self.historian = Historian(
            site,
            store,
            self.writer,
            self.memory,
            calendar=calendar_for(shifts, site.config.timezone) if shifts is not None else None,
            taxonomy=reasons,
            definition=Definition.from_config(site.config.oee, reasons, site.config.downtime.rules),
            now_ms=now_ms,
            oee_every_ms=oee_every_ms,
        )
        self.poll_s = poll_s
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        logger.info(
            "historian: writing the record to %s, org %s, bucket %s",
            self.settings.url,
            self.settings.org,
            self.settings.bucket,
        )
        try:
            while not stop.is_set():
                try:
                    sent = await asyncio.to_thread(self.historian.poll)
                except sqlite3.Error as exc:  # a record busy or being replaced: the next poll reads it
                    logger.warning("historian: cannot read the record (%s); trying again", exc)
                    sent = 0
                except Exception:  # a bug: said with its traceback; the next poll tries again
                    logger.exception("historian: a poll of the record failed; trying again")
                    sent = 0
                if sent < self.historian.page:  # caught up: wait for more
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_s)
        finally:
            await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Send what the record holds now (it was flushed by the context service's stop), then stop."""
        try:
            for _ in range(100):
                if self.historian.poll() < self.historian.page:
                    break
        except Exception:
            logger.exception("historian: the last poll of the record failed")
        self.writer.close()
        self.historian.close()
        self.memory.close()
        c = self.writer.counters
        logger.info(
            "historian: stopped; %d lines written, %d refused, %d dropped, %d retries",
            c.written,
            c.failed,
            c.dropped,
            c.retries,
        )
