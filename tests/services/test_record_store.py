"""The record store on SQLite and on PostgreSQL: the same seeded writes to both, and every read
compared (before and after rewrites: REPLACE, rebuilds, operators' reasons, backfill, quality
reports); schema versions and migrations on both; PostgreSQL unreachable at start (tried again with
backoff, and taken once it answers), a wrong database (refused at once, saying which). A real SQLite
file and a real PostgreSQL (the machine's, in a database of the test run's own)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.context.jobs import Operation, Pending
from services.context.record import (
    DAY_MS,
    SCHEMA_VERSION,
    RecordError,
    RecordStore,
    open_record,
)
from services.context.state import LOST, MachineState, PartsMade, SignalValue, Story
from services.context.timeline import Hold, OpEvent
from tests.conftest import postgres_url
from tests.services.test_shift_time import HOUR, MACHINES, T0, pieces

S = MachineState
END = T0 + 6 * DAY_MS


def seed(store: RecordStore, rng: random.Random) -> None:
    """Six days of two machines, with everything the record holds."""
    store.register_machines((m, f"acme/plant/a/l/c/{m}", m.upper()) for m in MACHINES)
    for m in MACHINES:
        made = pieces(rng, m, T0, END)
        story = Story.from_json(None)
        store.write(
            intervals=[
                dataclasses.replace(i, story=story, memory=story) if i.state is S.RUNNING else i for i in made
            ],
            parts=[
                PartsMade(m, t, 1 + t % 3, n, "J1" if n % 2 else "J2", "10", f"2026-10-2{7 + n % 3}/first")
                for n, t in enumerate(range(T0 + 60_000, END, 7 * HOUR))
            ],
            current=[(m, S.IDLE, END, END + 5_000, 41, story, story, {"reason": "setup", "job": "J1"})],
            events=[
                *(
                    (m, SignalValue("execution", "ACTIVE" if n % 2 else "READY", T0 + n * HOUR), "live")
                    for n in range(40)
                ),
                *((m, SignalValue("part_count", n, T0 + n * HOUR + 1), "live") for n in range(40)),
                (m, SignalValue(LOST, None, T0 + 20 * HOUR + 5), "lost"),
                (m, SignalValue("spindle_load", 12.5, T0 + 21 * HOUR), "birth"),
            ],
        )
    ops = [
        Operation("J1", "10", "m1", "O1000", 40, 1, "P-1", 61_000, T0, T0 + 3 * DAY_MS, "active", T0 + HOUR),
        Operation("J2", "10", "m2", "O2000", 10, 1, "P-2", None, T0 + DAY_MS, T0 + 2 * DAY_MS),
        Operation("J3", "20", "m1", "O3000", 5, 2, "P-3", 30_000, END, END + DAY_MS),
    ]
    store.save_dispatch("all", "planner", "api", T0, '{"ops": 3}', ops, [])
    store.save_dispatch("m2", "planner", "api", T0 + 5, "{}", [], [("J2", "10")])
    store.add_op_events([OpEvent("m1", T0 + HOUR, "J1", "10", "start", "program", None)], ops[:1])
    store.set_pending("m2", Pending(T0 + 9, "O2000", (("J2", "10"),)))
    store.add_operator_event("m1", T0 + 2, "ana", "api")
    store.put_hold(Hold("H1", T0 + DAY_MS, T0 + 2 * DAY_MS, "m1", "J1", "10", "burr"), "qa", "qa")
    stops = [i for i in store.intervals("m1", T0, END) if i.state is not S.RUNNING]
    first_stop = stops[3].stop_start_ms or stops[3].run_start_ms or stops[3].start_ms
    store.set_reason("m1", first_stop, stops[3].reason, "tooling", "ana", "api", T0 + 3 * DAY_MS, "insert")
    store.add_quality("m1", T0 + 2 * DAY_MS, ("J1", "10"), "2026-10-28/first", "scrap", 2, "qa", "api")
    store.add_quality("m2", T0 + 3 * DAY_MS, None, None, "rework", 1, None, "mqtt")
    store.add_token("tok1", "digest", "line lead", "operator", ["a/l/c"], T0, None)
    store.mark_applied("cmd-1", "reason", T0, '{"ok": true}')
    store.write_health([("host/h", "seq_gaps", 0.0, T0), ("edge/e", "rebirths", 2.0, T0)])


def reads(store: RecordStore) -> dict[str, Any]:
    """Everything the record's readers give, for windows inside shifts, across days and the whole."""
    out: dict[str, Any] = {
        "current": store.current_states(),
        "health": store.health(),
        "tokens": store.tokens(),
        "token": store.token("tok1"),
        "applied": store.applied("cmd-1"),
        "operations": store.operations(),
        "operations m2": store.operations("m2"),
        "operations J1": store.operations(job="J1"),
        "operations by key": store.operations(keys=[("J2", "10"), ("J1", "10"), ("nope", "10")]),
        "operations none": store.operations(keys=[]),
        "dispatch": store.dispatch_version(),
        "op_events": store.op_events(),
        "pending": store.pending("m2"),
        "operators": store.operator_events("m1"),
        "holds": store.holds(),
        "ideals": store.operation_ideals(),
        "revisions": store.revisions(0),
        "last_revision": store.last_revision(),
        "held": store.held("H1"),
        "op_time": _rounded(store.operation_time("J1", "10")),
        "cycles": store.operation_cycles([("m1", "J1", "10"), ("m2", "J2", "10"), ("m1", "J1", "20")]),
    }
    for m in MACHINES:
        out[f"intervals {m}"] = store.intervals(m, T0, END)
        out[f"from {m}"] = store.intervals_from(m, T0 + DAY_MS, 50)
        out[f"parts {m}"] = store.parts(m, T0, END)
        out[f"events {m}"] = store.signal_events(m, T0, 100)
        out[f"overrides {m}"] = store.overrides(m)
        out[f"dropped {m}"] = store.dropped(m)
        out[f"verdicts {m}"] = store.verdicts(m)
        out[f"audit {m}"] = store.reason_audit(m)
        out[f"rejects {m}"] = store.rejects(m, T0, END)
        out[f"rebuild {m}"] = store.rebuild_start(m, T0 + 30 * HOUR)
    windows = [
        (T0, END),
        (T0 + 9 * HOUR + 17, T0 + 2 * DAY_MS + 3 * HOUR),
        (T0 + DAY_MS, T0 + DAY_MS + HOUR),
        (T0 - DAY_MS, T0 + 20 * HOUR),
    ]
    for n, (a, b) in enumerate(windows):
        for flags in ((True, False, True), (False, True, True), (False, False, False)):
            by_operation, by_start, running_outside = flags
            rows = store.oee_time(
                MACHINES, a, b, by_operation=by_operation, by_start=by_start, running_outside=running_outside
            )
            out[f"oee_time {n} {flags}"] = sorted(rows, key=repr)
        out[f"oee_parts {n}"] = sorted(store.oee_parts(MACHINES, a, b, by_start=True), key=repr)
        out[f"oee_rejects {n}"] = store.oee_rejects(MACHINES, a, b)
        summed, cut = store.stopped_by_shift(MACHINES, a, b)
        out[f"stopped {n}"] = (sorted(summed, key=repr), cut)
        out[f"with reason {n}"] = store.stops_with_reason(MACHINES, "tooling", a, b)
        out[f"made {n}"] = store.made_by_machine(MACHINES, a, b)
        out[f"counts {n}"] = store.counts(a, b)
        out[f"report ops {n}"] = store.report_operations(MACHINES, a, b)
        out[f"export intervals {n}"] = list(store.export_intervals(MACHINES, a, b, page=7))
        out[f"export counts {n}"] = list(store.export_counts(MACHINES, a, b, page=3))
        out[f"export ops {n}"] = list(store.export_operations(MACHINES, a, b, page=1))
        out[f"export audit {n}"] = list(store.export_reason_audit(MACHINES, a, b + 4 * DAY_MS, page=1))
    return out


def _rounded(times: tuple[dict[str, float], dict[str, float], int]) -> Any:
    """Seconds summed in the order the database gives the rows: equal to the microsecond."""
    by_state, by_reason, stops = times
    return (
        {k: round(v, 6) for k, v in by_state.items()},
        {k: round(v, 6) for k, v in by_reason.items()},
        stops,
    )


def rewrite(store: RecordStore, rng: random.Random) -> None:
    """What rewrites the past: pieces written again, a rebuild, a reason, a backfill, a late report."""
    for i in store.intervals("m2", T0 + DAY_MS, T0 + 2 * DAY_MS)[:4]:
        store.write(intervals=[dataclasses.replace(i, reason="micro_stop", job="J2")])
    start = store.rebuild_start("m1", T0 + 2 * DAY_MS)
    again = pieces(rng, "m1", start.start_ms, END)
    store.replace_from(
        "m1",
        start,
        again,
        [PartsMade("m1", start.start_ms + 1, 2, 77, "J1", "10", None)],
        (S.DOWN, END, END, 77),
    )
    stops = [i for i in store.intervals("m2", T0, END) if i.state is not S.RUNNING]
    store.set_reason("m2", stops[1].start_ms, stops[1].reason, "waiting_inspection", None, "mqtt", END, "")
    store.backfill(
        "m2", [SignalValue("execution", "ACTIVE", T0 + 20 * HOUR + 9)], T0 + 20 * HOUR, T0 + 21 * HOUR
    )
    store.add_quality("m1", T0 + 2 * DAY_MS + 7, ("J1", "10"), None, "fail", 1, "qa", "api")
    store.revoke_tokens("line lead", END)


@pytest.fixture
def both(tmp_path: Path, pg_url: str) -> Iterator[tuple[RecordStore, RecordStore]]:
    lite, pg = open_record(tmp_path / "record.db"), open_record(pg_url)
    yield lite, pg
    lite.close()
    pg.close()


def test_both_stores_give_the_same_record(both: tuple[RecordStore, RecordStore]) -> None:
    lite, pg = both
    for store in both:
        seed(store, random.Random(11))
    first, second = reads(lite), reads(pg)
    assert first.keys() == second.keys()
    for key in first:
        assert second[key] == first[key], key
    assert first["oee_time 0 (True, False, True)"], "the windows read something"
    assert first["export counts 0"]
    assert first["cycles"][("m1", "J1", "10")][0]
    for store in both:
        rewrite(store, random.Random(5))
    first, second = reads(lite), reads(pg)
    for key in first:
        assert second[key] == first[key], key
    assert first["revisions"]
    assert first["tokens"][0][-1] == END
    # shift_time: kept by SQLite's triggers and by PostgreSQL's, the same sums
    with lite._use() as a, pg._use() as b:
        sums = "SELECT * FROM shift_time ORDER BY machine_id, shift, state, reason, job, operation"
        assert [tuple(r) for r in a.execute(sums).fetchall()] == [
            tuple(r) for r in b.execute(sums).fetchall()
        ]


def test_writes_are_idempotent_on_both(both: tuple[RecordStore, RecordStore]) -> None:
    for store in both:
        seed(store, random.Random(3))
        before = reads(store)
        store.write(  # the same intervals, counts and events again (a replay)
            intervals=store.intervals("m1", T0, END),
            parts=store.parts("m1", T0, END),
            events=[("m1", SignalValue("execution", "READY", T0), "live")],
        )
        after = reads(store)
        assert {k: v for k, v in after.items() if "export" not in k} == {
            k: v for k, v in before.items() if "export" not in k
        }
        marks = store.change_marks()
        store.write(intervals=store.intervals("m2", T0, T0 + HOUR))
        assert store.change_marks()[2] > marks[2], "a piece written again counts as written"
        assert store.operations_written_since(marks[1], marks[2]) <= {("m2", "J1", "10"), ("m2", "J2", "10")}


def test_schema_versions_and_migrations(tmp_path: Path, pg_url: str) -> None:
    lite, pg = open_record(tmp_path / "record.db"), open_record(pg_url)
    assert lite.schema_version() == pg.schema_version() == SCHEMA_VERSION
    pg.close()
    lite.close()
    again = open_record(pg_url)  # opened again: nothing to migrate
    assert again.schema_version() == SCHEMA_VERSION
    with again._use() as db:
        db.execute("INSERT INTO record_schema VALUES (?)", (SCHEMA_VERSION + 1,))
    again.close()
    newer = rf"schema version {SCHEMA_VERSION + 1}, newer than this program's \({SCHEMA_VERSION}\)"
    with pytest.raises(RecordError, match=newer):
        open_record(pg_url)
    with sqlite3.connect(tmp_path / "record.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RecordError, match=rf"record\.db has {newer}"):
        open_record(tmp_path / "record.db")


def test_a_record_of_version_1_gets_the_index_of_parts_by_operation(tmp_path: Path, pg_url: str) -> None:
    """Schema version 2 adds `part_count_job` (an operation's parts, summed by index): a record of
    version 1 gets it when it is opened, on both stores, and keeps what it held."""
    lite, pg = open_record(tmp_path / "record.db"), open_record(pg_url)
    for store in (lite, pg):
        store.register_machines([("m1", "a/b/c/d/e/m1", "M1")])
        store.write(parts=[PartsMade("m1", T0, 1, 1, "J1", "10")])
    with lite._use() as db:  # as a record of version 1 was
        db.execute("DROP INDEX part_count_job")
        db.execute("PRAGMA user_version = 1")
    with pg._use() as db:
        db.execute("DROP INDEX part_count_job")
        db.execute("DELETE FROM record_schema WHERE version = 2")
    lite.close()
    pg.close()
    for where, indexes in (
        (tmp_path / "record.db", "SELECT name FROM sqlite_master WHERE type = 'index'"),
        (pg_url, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"),
    ):
        store = open_record(where)
        try:
            assert store.schema_version() == SCHEMA_VERSION == 2
            with store._use() as db:
                assert "part_count_job" in {row[0] for row in db.execute(indexes)}, where
            assert sum(p.delta for p in store.parts("m1", 0, T0 + 1)) == 1
        finally:
            store.close()


def test_workers_opening_a_new_record_together_migrate_it_once(pg_url: str) -> None:
    opened: list[RecordStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(open_record(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with opened[0]._use() as db:
        versions = [row[0] for row in db.execute("SELECT version FROM record_schema ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1)), "each migration once"
    for store in opened:
        store.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_postgres_is_tried_again_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    caplog.set_level(logging.WARNING, "services.context.record_pg")
    with pytest.raises(
        RecordError, match=rf"record at postgresql://postgres@127\.0\.0\.1:{port}/uns cannot be reached"
    ):
        open_record(f"postgresql://postgres:secret@127.0.0.1:{port}/uns", wait_s=2.0)
    waits = [r.getMessage() for r in caplog.records]
    assert len(waits) >= 2
    assert "trying again in 0.5 s" in waits[0]
    assert "trying again in 1.0 s" in waits[1]
    assert all("secret" not in w for w in waits)


def test_a_postgres_that_comes_up_later_is_taken(pg_url: str) -> None:
    """A port that answers only after a while (a proxy to the tests' PostgreSQL, started late)."""
    import psycopg

    target = psycopg.conninfo.conninfo_to_dict(pg_url)
    port = _closed_port()
    proxy = _LateProxy(port, str(target.get("host", "127.0.0.1")), int(str(target.get("port", 5432))))
    threading.Timer(1.2, proxy.start).start()
    late = pg_url.replace(f":{target.get('port', 5432)}/", f":{port}/")
    try:
        store = open_record(late, wait_s=30.0)
        store.register_machines([("m1", "a/b/c/d/e/m1", "M1")])
        assert [c.machine_id for c in store.current_states()] == ["m1"]
        store.close()
    finally:
        proxy.stop()


def test_a_wrong_database_is_refused_at_once(postgres_db: str) -> None:
    url = postgres_url(postgres_db, dbname="no_such_db")
    started = time.monotonic()
    with pytest.raises(RecordError, match=r"no_such_db.*does not exist"):
        open_record(url, wait_s=60.0)
    assert time.monotonic() - started < 30, "not tried again for a minute"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://[::1",
        "postgresql://u:p%zzsecret@h/db",
        "postgresql://u:sec ret@h/db",
        "postgresql://u:secret@[::1/db",
    ],
)
def test_a_bad_url_is_said_plainly_and_without_its_password(url: str) -> None:
    with pytest.raises(RecordError, match="PostgreSQL URL is not one libpq can read") as info:
        open_record(url)
    assert "secret" not in str(info.value)
    assert "sec ret" not in str(info.value)


def test_sorts_leave_never_null_columns_to_their_index() -> None:
    """NULLs are sorted as SQLite sorts them only where a column can hold one: a `NULLS FIRST` on
    ts_ms would keep PostgreSQL from reading `ORDER BY ts_ms DESC LIMIT 1` off the index."""
    from services.context.record_pg import Translator

    t = Translator({}, frozenset({"ts_ms", "start_ms"}))
    sql, _ = t.translate("SELECT value FROM signal_event WHERE ts_ms < ? ORDER BY ts_ms DESC LIMIT 1")
    assert sql.endswith("ORDER BY ts_ms DESC LIMIT 1")
    sql, _ = t.translate("SELECT 1 FROM state_interval ORDER BY i.start_ms, shift DESC, 3")
    assert sql.endswith("ORDER BY i.start_ms, shift DESC NULLS LAST, 3 NULLS FIRST")


def test_writers_take_turns_so_readers_following_a_sequence_miss_nothing(pg_url: str) -> None:
    """Two writers of one PostgreSQL record (a context worker, an API replica): the second waits for
    the first's commit before it takes a revision number, so a reader that has seen revision N has
    seen every one before it."""
    import psycopg

    from services.context.record import _revised

    worker, replica, reader = open_record(pg_url), open_record(pg_url), open_record(pg_url)
    for store in (worker, replica):
        store.register_machines([("m1", "acme/plant/a/l/c/m1", "M1"), ("m2", "acme/plant/a/l/c/m2", "M2")])
    taken, release, done = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with worker._transaction() as db:
            _revised(db, "m1", 100)  # its revision number taken; not committed yet
            taken.set()
            release.wait(30)

    def second() -> None:
        replica.add_quality("m2", 200, None, None, "scrap", 1, None, "api")
        done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert taken.wait(30)
    threads[1].start()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the second waits on the writers' lock
        deadline = time.monotonic() + 30
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        while not (conn.execute(waiting).fetchone() or (0,))[0]:
            assert time.monotonic() < deadline, "the second writer never waited"
            time.sleep(0.01)
    assert reader.revisions(0) == []
    assert not done.is_set()
    release.set()
    for t in threads:
        t.join(30)
    seen = reader.revisions(0)
    assert [(m, f) for _, m, f in seen] == [("m1", 100), ("m2", 200)]
    assert seen[0][0] < seen[1][0]
    for store in (worker, replica, reader):
        store.close()


class _LateProxy:
    """A TCP proxy on `port` to the tests' PostgreSQL that listens only once started."""

    def __init__(self, port: int, host: str, target_port: int) -> None:
        self.port, self.target = port, (host, target_port)
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._open: list[socket.socket] = []

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        server.settimeout(0.2)
        self._server = server
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # stopped: the socket is closed
            upstream = socket.create_connection(self.target)
            self._open += (client, upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        for s in self._open:
            s.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def test_a_machine_id_of_another_site_is_refused(make_record: Callable[..., RecordStore]) -> None:
    """One record for several sites: machine ids must differ across them (the record keys on them)."""
    store = make_record()
    store.register_machines([("vf2-01", "acme/dayton/machining/mills/cell-1/vf2-01", "VF2")])
    store.register_machines([("vf2-01", "acme/dayton/milling/mills/cell-1/vf2-01", "VF2")])  # renamed area
    said = r"'vf2-01' is already in this record for another site \(acme/dayton"
    with pytest.raises(RecordError, match=said):
        store.register_machines([("vf2-01", "acme/toledo/machining/mills/cell-1/vf2-01", "VF2")])
    assert [c.path for c in store.current_states()] == ["acme/dayton/milling/mills/cell-1/vf2-01"]
