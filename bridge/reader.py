"""What every machine reader shares: its callbacks, its counters, the reconnect loop, and how a
failure is told: `machine <id>: <endpoint>: <what failed>: <the cause>: <what to do>`."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Required, TypedDict

from uns.site import Machine
from uns.sparkplug.edge import Sample

logger = logging.getLogger(__name__)


class ReaderError(ConnectionError):
    """A failure the reader has already explained: what failed, and what to do about it."""


def chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what caused it (`raise ... from`), then what it happened during."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe(exc: BaseException) -> str:
    """`Type: message`; for an exception without a message, its type and the chain of causes
    (`ConnectionError (after OSError: [Errno 9] Bad file descriptor)`): never an empty line."""
    text = str(exc).strip()
    if text:
        return f"{type(exc).__name__}: {text}"
    if isinstance(exc, TimeoutError):
        return type(exc).__name__  # (what it interrupted, a CancelledError, says nothing more)
    causes = [
        f"{type(c).__name__}: {str(c).strip()}" if str(c).strip() else type(c).__name__
        for c in list(chain(exc))[1:]
    ]
    return type(exc).__name__ + (f" (after {', after '.join(causes)})" if causes else "")


_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


def explain(exc: BaseException, timeout_s: float | None = None) -> str:
    """What went wrong with a connection, and what to do: the network failures every protocol shares."""
    if isinstance(exc, ReaderError):
        return str(exc)
    for cause in chain(exc):
        if isinstance(cause, ReaderError):
            return str(cause)
        if isinstance(cause, TimeoutError):  # (asyncio.TimeoutError is TimeoutError since 3.11)
            within = f" within {timeout_s:g} s" if timeout_s is not None else ""
            return (
                f"no answer{within} ({describe(cause)}): check the address and port, that the machine's"
                " server is on, and that no firewall between the bridge and the machine drops the traffic"
            )
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"connection refused ({describe(cause)}): nothing listens on that port: check the port"
                " and that the machine's server is running"
            )
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name ({describe(cause)}): check the address"
        if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
            return f"the machine is unreachable ({describe(cause)}): check the address, cabling and routing"
        if isinstance(cause, ConnectionResetError | BrokenPipeError):
            return (
                f"the machine closed the connection ({describe(cause)}): check that the bridge may"
                " connect (some servers take only a few clients, or only known addresses)"
            )
    return describe(exc)


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
        self._stage: str | None = None  # what the session is doing, for the log when it fails
        self.counters = {"samples": 0, "bad_reads": 0, "bad_values": 0, "connects": 0, "losses": 0}

    @property
    def online(self) -> bool:
        return self._online

    @property
    def where(self) -> str:
        return self.machine.where

    @property
    def timeout_s(self) -> float | None:
        """How long the reader waits for an answer (for "no answer within N s")."""
        return None

    def explain(self, exc: BaseException) -> str:
        """What failed and what to do, for the log: the protocol's own errors, else the network's."""
        return explain(exc, self.timeout_s)

    @abstractmethod
    async def _session(self) -> None:
        """Connect, report online, report data; return or raise when the connection is gone."""

    def _reset(self) -> None:  # noqa: B027 (an optional hook: most readers keep nothing per session)
        """Forget what belonged to the session that ended."""

    async def run(self) -> None:
        """Runs until cancelled."""
        backoff = 0.5
        while True:
            self._stage = None
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the machine's connection: report, retry
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # the library turned our cancellation into an error of its own: stop all the same
                    raise asyncio.CancelledError from exc
                stage = self._stage or ("reading" if self._online else "connecting")
                logger.warning(
                    "machine %s: %s: %s: %s", self.machine.id, self.where, stage, self.explain(exc)
                )
                logger.debug("machine %s: the failure in full", self.machine.id, exc_info=exc)
            if self._online:
                self._online = False
                self.counters["losses"] += 1
                self._on_offline()
                backoff = 0.5
            self._reset()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)
