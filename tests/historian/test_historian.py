"""The historian against real servers: a record the context service wrote goes to Debian's
VictoriaMetrics through the InfluxDB v2 write API; sent twice it duplicates nothing; a reason edited
after the fact takes back the point it changed; an InfluxDB that is away or refuses is retried or
reported, and the record keeps going."""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.context.state import Interval, MachineState, PartsMade
from services.historian.follow import Historian
from services.historian.lines import Encoder, line, machine_tags, retraction, series
from services.historian.memory import Memory
from services.historian.writer import InfluxSettings, InfluxWriter
from services.oee.engine import Definition
from tests.historian.servers import Influx16, VictoriaMetrics
from tests.services.test_jobshop import Shop, when
from tests.services.test_oee import first_five_parts
from uns.broker import free_port

WHERE = machine_tags("acme/dayton/machining/mills/cell-1/vf2-01")


def settings(url: str) -> InfluxSettings:
    return InfluxSettings(url=url, org="acme", bucket="uns", token=SecretStr("test-token"))


def historian(shop: Shop, writer: InfluxWriter, memory: Path) -> Historian:
    return Historian(
        shop.site,
        shop.store,
        writer,
        Memory(memory),
        calendar=shop.service.calendar,
        taxonomy=shop.service.taxonomy,
        definition=Definition.from_config(shop.site.config.oee, shop.service.taxonomy),
        now_ms=shop.clock.now_ms,
    )


def send_all(h: Historian, writer: InfluxWriter) -> None:
    while h.poll():
        pass
    assert writer.flush(30)
    h.close()  # the memory is saved: everything sent is written


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    """vf2-01: set up, five parts, 20 min waiting on the first article, five more, one scrapped."""
    shop = first_five_parts(tmp_path)
    shop.at(43, execution="READY", parts=5)
    shop.ok("parts", machine="vf2-01", result="scrap", quantity=1, at=when(44))
    shop.at(45, execution="ACTIVE")
    shop.at(60, execution="READY")
    return shop


@pytest.fixture
def writer(victoria: VictoriaMetrics) -> Iterator[InfluxWriter]:
    w = InfluxWriter(settings(victoria.url))
    yield w
    w.close()


# -- line protocol (pure) --------------------------------------------------------------------------
def test_lines_escape_what_line_protocol_needs_and_leave_out_what_is_empty() -> None:
    out = line(
        "signal",
        {"machine": "vf 2,01", "signal": "alarm=text", "job": None},
        {"text": 'SPINDLE "OVER"\\LOAD', "n": 3, "x": float("nan"), "ok": True},
        5,
    )
    assert out == r'signal,machine=vf\ 2\,01,signal=alarm\=text n=3i,ok=true,text="SPINDLE \"OVER\"\\LOAD" 5'
    assert line("signal", {"machine": "m"}, {"x": float("inf"), "y": None}, 5) is None
    assert series("oee", {"b": "2", "a": "1"}) == "oee,a=1,b=2"  # sorted: what InfluxDB keys a series by


def test_an_interval_is_a_state_interval_and_a_machine_state_point_with_its_context() -> None:
    from services.context.reasons import DEFAULT_REASONS

    enc = Encoder(DEFAULT_REASONS, Definition())
    i = Interval("vf2-01", 1_000, 61_000, MachineState.IDLE, "waiting_inspection", "rule", "J1", "10")
    i = Interval(**{**{f: getattr(i, f) for f in i.__dataclass_fields__}, "shift": "2026-11-18/first"})
    (key, x, ts), (state_key, y, _) = enc.interval(WHERE, i)
    assert ts == 1_000
    assert x.startswith("state_interval,area=machining,cell=cell-1,enterprise=acme,job=J1,line=mills,")
    assert "reason=waiting_inspection,reason_group=quality," in x
    assert ",planned=false," in x
    assert ",shift=2026-11-18/first,shift_name=first," in x
    assert x.endswith(' code=2i,duration_s=60.0,source="rule" 1000')
    assert y == state_key + ' code=2i,job="J1",operation="10",reason="waiting_inspection" 1000'
    assert retraction(key, ts) == key + " code=-1i,duration_s=0.0 1000"
    assert enc.part(WHERE, PartsMade("vf2-01", 7, 2, 102, "J1", "10", None))[1].endswith(
        " counter=102i,delta=2i 7"
    )


# -- against VictoriaMetrics -----------------------------------------------------------------------
def test_the_record_reaches_victoriametrics_and_sending_it_again_duplicates_nothing(
    shop: Shop, writer: InfluxWriter, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    intervals = shop.intervals("vf2-01") + shop.intervals("vf2-02")
    parts = shop.store.parts("vf2-01", 0, 2**62)
    send_all(historian(shop, writer, tmp_path / "h1.db"), writer)
    counts = {
        name: victoria.samples(name)
        for name in ("state_interval_duration_s", "machine_state_code", "part_count_delta", "signal_value")
    }
    assert counts["state_interval_duration_s"] == len(intervals)
    assert counts["part_count_delta"] == len(parts)
    # one state point a piece, and the open state of each machine
    assert counts["machine_state_code"] == len({(i.machine_id, i.start_ms) for i in intervals}) + 2
    assert counts["signal_value"] > 0
    durations = victoria.export("state_interval_duration_s")
    total = sum(v for s in durations for v in s["values"])
    assert total == pytest.approx(sum((i.end_ms - i.start_ms) / 1000 for i in intervals))
    oee = {s["metric"]["machine"]: s for s in victoria.export("oee_oee")}
    # 08:00-09:00 of the first shift: run 36 of 60 min, 10 parts at 1 min, 9 good (test_oee.py)
    assert oee["vf2-01"]["metric"]["shift"] == "2026-11-18/first"
    assert oee["vf2-01"]["values"] == [pytest.approx(9 / 60, abs=1e-4)]
    losses = {
        s["metric"]["reason"]: s["values"]
        for s in victoria.export("loss_seconds")
        if s["metric"]["machine"] == "vf2-01"
    }
    assert losses["waiting_inspection"] == [1200.0]
    assert losses["machine_fault"] == [0.0]  # every reason of the tree, zero where there was none

    # a backfill: a historian with a new memory sends the whole record again; nothing doubles
    again = InfluxWriter(settings(victoria.url))
    send_all(historian(shop, again, tmp_path / "h2.db"), again)
    again.close()
    assert {name: victoria.samples(name) for name in counts} == counts
    assert victoria.samples("oee_oee") == len(oee)


class Lines:
    """A sink that keeps the lines (to load them into InfluxDB 1.6, which has no v2 write API)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, lines: list[str]) -> int:
        self.lines += lines
        return len(lines)

    def room(self) -> int:
        return 1_000_000

    def settled(self) -> int:
        return len(self.lines)

    def health(self) -> Mapping[str, int]:
        return {"written": len(self.lines)}


def rows(influx: Influx16, q: str) -> list[dict[str, object]]:
    """An InfluxQL answer as rows (tags and columns)."""
    out: list[dict[str, object]] = []
    for result in influx.query(q)["results"]:
        assert "error" not in result, (q, result)
        for s in result.get("series", []):
            out += [{**s.get("tags", {}), **dict(zip(s["columns"], v, strict=True))} for v in s["values"]]
    return out


def test_a_reason_edited_after_the_fact_changes_what_influxql_answers_and_nothing_else(
    shop: Shop, influx16: Influx16, tmp_path: Path
) -> None:
    """InfluxDB overwrites a point of the same series and time: the take-back of the changed piece,
    the shift's losses and OEE sent again, as InfluxQL (and so Grafana) reads them."""
    sink = Lines()
    h = Historian(
        shop.site,
        shop.store,
        sink,
        Memory(tmp_path / "h.db"),
        calendar=shop.service.calendar,
        taxonomy=shop.service.taxonomy,
        definition=Definition.from_config(shop.site.config.oee, shop.service.taxonomy),
        now_ms=shop.clock.now_ms,
    )
    while h.poll():
        pass
    influx16.write(sink.lines)
    by_reason = "SELECT sum(duration_s) FROM state_interval WHERE machine = 'vf2-01' GROUP BY reason"
    before = {r["reason"]: r["sum"] for r in rows(influx16, by_reason)}
    assert before["waiting_inspection"] == 1200.0
    other = rows(influx16, "SELECT * FROM oee WHERE machine = 'vf2-02'")
    sent = len(sink.lines)
    shop.ok("reason", machine="vf2-01", stop_at=when(20), reason="maintenance_planned", by="lead")
    while h.poll():
        pass
    influx16.write(sink.lines[sent:])
    after = {r["reason"]: r["sum"] for r in rows(influx16, by_reason)}
    assert after == {**before, "waiting_inspection": 0.0, "maintenance_planned": 1200.0}
    state = "SELECT count(code) FROM state_interval WHERE machine = 'vf2-01' AND code >= 0 GROUP BY reason"
    assert "waiting_inspection" not in {r["reason"] for r in rows(influx16, state)}
    losses = "SELECT sum(seconds) FROM loss WHERE machine = 'vf2-01' GROUP BY reason"
    loss = {r["reason"]: r["sum"] for r in rows(influx16, losses)}
    assert (loss["waiting_inspection"], loss["maintenance_planned"]) == (0.0, 1200.0)
    oee = rows(influx16, "SELECT planned_s, availability FROM oee WHERE machine = 'vf2-01'")
    assert [(r["planned_s"], r["availability"]) for r in oee] == [(40 * 60.0, pytest.approx(36 / 40))]
    assert rows(influx16, "SELECT * FROM oee WHERE machine = 'vf2-02'") == other  # nothing else changed


def test_an_influxdb_that_is_away_is_retried_and_nothing_is_lost(tmp_path: Path, shop: Shop) -> None:
    port = free_port()
    w = InfluxWriter(settings(f"http://127.0.0.1:{port}"), backoff_s=(0.05, 0.2))
    h = historian(shop, w, tmp_path / "h.db")
    sent = 0
    while n := h.poll():
        sent += n
    deadline = time.monotonic() + 10
    while w.counters.retries < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.counters.retries >= 3
    assert w.counters.written == 0
    shop.at(70, execution="ACTIVE")  # the record keeps going meanwhile
    server = VictoriaMetrics(tmp_path / "vm", port=port)
    server.start()
    try:
        assert w.flush(30)
        send_all(h, w)
        assert w.counters.written >= sent
        assert w.counters.dropped == 0
        assert w.counters.failed == 0
        intervals = shop.intervals("vf2-01") + shop.intervals("vf2-02")
        assert server.samples("state_interval_duration_s") == len(intervals)
    finally:
        w.close()
        server.stop()


def test_the_queue_is_bounded_and_a_drop_is_counted_and_said(caplog: pytest.LogCaptureFixture) -> None:
    w = InfluxWriter(settings(f"http://127.0.0.1:{free_port()}"), max_lines=10, backoff_s=(0.05, 0.1))
    try:
        assert w.put([f"m,machine=a v=1i {t}" for t in range(25)]) == 10
        assert w.counters.dropped == 15
        assert w.room() == 0
    finally:
        with caplog.at_level(logging.WARNING):
            w.close(timeout_s=0.2)
    assert w.counters.dropped == 25  # and what was queued at exit
    assert "10 lines not written to bucket uns at exit" in caplog.text


def test_a_historian_with_no_room_reads_nothing_and_keeps_its_place(shop: Shop, tmp_path: Path) -> None:
    class Full:
        def put(self, lines: list[str]) -> int:
            raise AssertionError("nothing is sent while there is no room")

        def room(self) -> int:
            return 10

        def settled(self) -> int:
            return 0

        def health(self) -> Mapping[str, int]:
            return {}

    h = Historian(
        shop.site,
        shop.store,
        Full(),
        Memory(tmp_path / "h.db"),
        calendar=shop.service.calendar,
        taxonomy=shop.service.taxonomy,
        definition=Definition(),
        now_ms=shop.clock.now_ms,
    )
    before = {m: (c.interval_ms, c.part_ms, c.signal_ms) for m, c in h.cursors.items()}
    assert h.poll() == 0
    assert {m: (c.interval_ms, c.part_ms, c.signal_ms) for m, c in h.cursors.items()} == before


def test_a_wrong_token_is_refused_once_with_the_bucket_named_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """VictoriaMetrics with a login of its own answers 401 to a token it does not know."""
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    server.stop()
    import subprocess

    from tests.historian import servers

    log = (tmp_path / "vm-auth.log").open("ab")
    process = subprocess.Popen(
        [
            servers._binary("victoria-metrics", "victoria-metrics"),
            f"-storageDataPath={tmp_path / 'vm' / 'data'}",
            f"-httpListenAddr=127.0.0.1:{server.port}",
            "-httpAuth.username=historian",
            "-httpAuth.password=not-the-token",
            "-loggerLevel=ERROR",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        w = InfluxWriter(settings(server.url), backoff_s=(0.05, 0.1))
        with caplog.at_level(logging.ERROR):
            while time.monotonic() < deadline and w.counters.failed == 0:
                w.put(["m,machine=a v=1i 1"]) if w.idle() else None
                time.sleep(0.2)
        assert w.counters.failed >= 1
        assert w.counters.written == 0
        assert "InfluxDB refused 1 lines for bucket uns (HTTP 401)" in caplog.text
        w.close()
    finally:
        process.terminate()
        process.wait(10)
        log.close()


class _Conflict(http.server.BaseHTTPRequestHandler):
    """InfluxDB 2's answer to a field of the wrong type. There is no InfluxDB 2 on Debian, and
    VictoriaMetrics takes any field type, so this one answer comes from a stand-in."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = (
            b'{"code":"unprocessable entity","message":"failure writing points to database: partial'
            b' write: field type conflict: input field \\"value\\" on measurement \\"signal\\" is type'
            b' string, already exists as type float dropped=1"}'
        )
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_field_type_conflict_is_logged_naming_the_bucket_and_the_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Conflict)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    w = InfluxWriter(settings(f"http://127.0.0.1:{server.server_address[1]}"))
    try:
        with caplog.at_level(logging.ERROR):
            w.put(['signal,machine=a,signal=mode value="AUTO" 1'])
            assert w.flush(10)
        assert (w.counters.failed, w.counters.retries, w.counters.written) == (1, 0, 0)
        assert "refused 1 lines for bucket uns (HTTP 422)" in caplog.text
        assert 'input field \\"value\\" on measurement \\"signal\\"' in caplog.text
    finally:
        w.close()
        server.shutdown()
        server.server_close()


def test_missing_influx_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from unscli.processes import ConfigError, influx_settings

    for name in ("URL", "ORG", "BUCKET", "TOKEN"):
        monkeypatch.delenv(f"UNS_INFLUX_{name}", raising=False)
    monkeypatch.setenv("UNS_INFLUX_URL", "influxdb:8086")
    with pytest.raises(
        ConfigError, match=r"UNS_INFLUX_URL: String should match pattern.*UNS_INFLUX_ORG: Field"
    ):
        influx_settings()
