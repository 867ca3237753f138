"""What every machine reader shares: its callbacks, its counters, and the reconnect loop."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Required, TypedDict

from uns.site import Machine
from uns.sparkplug.edge import Sample

logger = logging.getLogger(__name__)


class ReaderOptions(TypedDict, total=False):
    """What every reader is given besides its machine and source (see MachineReader)."""

    on_online: Required[Callable[[list[Sample]], None]]
    on_samples: Required[Callable[[list[Sample]], None]]
    on_offline: Required[Callable[[], None]]
    now_ms: Required[Callable[[], int]]
    max_backoff_s: float


class MachineReader(ABC):
    """Reads one machine; reports `on_online(samples)`, `on_samples(samples)` and `on_offline()`.

    `run()` connects (`_session`, the protocol's part) and, whenever the session ends, reports the
    machine offline and tries again, backing off from 0.5 s to `max_backoff_s`.
    """

    def __init__(
        self,
        machine: Machine,
        *,
        on_online: Callable[[list[Sample]], None],
        on_samples: Callable[[list[Sample]], None],
        on_offline: Callable[[], None],
        now_ms: Callable[[], int],
        max_backoff_s: float = 5.0,
    ) -> None:
        self.machine = machine
        self._on_online, self._on_samples, self._on_offline = on_online, on_samples, on_offline
        self._now_ms = now_ms
        self._max_backoff = max_backoff_s
        self._online = False
        self.counters = {"samples": 0, "bad_reads": 0, "bad_values": 0, "connects": 0, "losses": 0}

    @property
    def online(self) -> bool:
        return self._online

    @property
    def where(self) -> str:
        return self.machine.where

    @abstractmethod
    async def _session(self) -> None:
        """Connect, report online, report data; return or raise when the connection is gone."""

    def _reset(self) -> None:  # noqa: B027 (an optional hook: most readers keep nothing per session)
        """Forget what belonged to the session that ended."""

    async def run(self) -> None:
        """Runs until cancelled."""
        backoff = 0.5
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the machine's connection: report, retry
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # the library turned our cancellation into an error of its own: stop all the same
                    raise asyncio.CancelledError from exc
                logger.warning("machine %s: %s: %s", self.machine.id, self.where, exc or type(exc).__name__)
            if self._online:
                self._online = False
                self.counters["losses"] += 1
                self._on_offline()
                backoff = 0.5
            self._reset()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)
