"""The cycles each operation showed, read from the record and kept between reports (services/oee/cycles.py
says what a cycle is). A wall display asks for OEE every minute; the cycles of closed time do not change
unless the record says so, so an operation's cycles are read again only when part counts or intervals
of it were written since, or its machine's past was rewritten (a rebuild, a backfill, a late quality
report: the record's revision log). Cycles that end in a machine's open interval are not kept.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.context.record import RecordReader
from services.context.state import MachineState
from services.oee.cycles import cycles_of

Op = tuple[str, str, str]  # (machine, job, operation)
Cycles = list[tuple[int, float]]  # (when, ms a part)


@dataclass(frozen=True, slots=True)
class OpenPiece:
    """A machine's open interval: its state since when, up to now, and the operation it runs."""

    state: MachineState
    since_ms: int
    now_ms: int
    op: tuple[str, str] | None  # (job, operation)


class ObservedCycles:
    """Each operation's cycles, kept until the record changes under them. Thread-safe."""

    def __init__(self, store: RecordReader, max_operations: int = 100_000) -> None:
        self.store = store
        self.max_operations = max_operations
        self._lock = threading.Lock()
        self._marks: tuple[int, int, int] | None = None
        self._kept: dict[Op, Cycles] = {}

    def cycles(self, wanted: Iterable[Op], now: Mapping[str, OpenPiece]) -> dict[Op, Cycles]:
        """The cycles of these operations on their machines (`now`: each machine's open interval, for
        cycles that end in it)."""
        wanted = list(dict.fromkeys(wanted))
        with self._lock:
            self._forget_changed()
            missing = [k for k in wanted if k not in self._kept]
            read = self.store.operation_cycles(missing) if missing else {}
            out: dict[Op, Cycles] = {}
            for k in wanted:
                kept = self._kept.get(k)
                if kept is not None:
                    out[k] = kept
                    continue
                counts, running, lost = read[k]
                piece = now.get(k[0])
                provisional = piece is not None and bool(counts) and counts[-1][0] > piece.since_ms
                if provisional and piece is not None:  # the last counts lie in the open interval
                    if piece.state is MachineState.COMMS_LOSS:
                        lost = [*lost, (piece.since_ms, piece.now_ms)]
                    elif piece.state is MachineState.RUNNING and piece.op == k[1:]:
                        running = [*running, (piece.since_ms, piece.now_ms)]
                out[k] = cycles_of(counts, running, lost)
                if not provisional:
                    self._kept[k] = out[k]
            if len(self._kept) > self.max_operations:
                self._kept.clear()
            return out

    def __len__(self) -> int:
        """How many operations' cycles are kept."""
        with self._lock:
            return len(self._kept)

    def _forget_changed(self) -> None:
        marks = self.store.change_marks()
        if self._marks is not None and marks != self._marks and self._kept:
            revision, part_row, interval_row = self._marks
            revised = {m for _, m, _ in self.store.revisions(revision)}
            written = self.store.operations_written_since(part_row, interval_row)
            self._kept = {k: c for k, c in self._kept.items() if k not in written and k[0] not in revised}
        self._marks = marks
