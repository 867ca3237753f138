"""Every Grafana panel's query answers with rows from the demo's data, asked of a real InfluxQL
server: Debian's InfluxDB 1.6 (the InfluxQL that InfluxDB 2 and 3 answer too). The demo runs the
example job shop (with shifts every day, so the test does not depend on the weekday it runs on); the
historian sends its record; InfluxDB 1.6 has no v2 write API, so the lines go through its 1.x /write."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from grafana.generate import interpolate, panel_queries
from services.context.reasons import taxonomy
from services.context.record import RecordStore
from services.context.shifts import calendar_for
from services.historian.follow import Historian
from services.historian.memory import Memory
from services.oee.engine import Definition
from tests.historian.servers import Influx16
from tests.historian.test_historian import Lines, rows
from uns.site import parse_site
from unscli.cli import DEFAULT_SITE
from unscli.demo import DemoOptions, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # a demo, a historian, InfluxDB


def every_day_site() -> str:
    """The example shop with its three shifts on every day and no holidays."""
    text = DEFAULT_SITE.read_text()
    text = re.sub(r"days: \[[a-z, ]+\]", "days: [mon, tue, wed, thu, fri, sat, sun]", text)
    return re.sub(r"  holidays: \[.*\]\n", "", text)


async def test_every_panel_query_answers_with_rows_from_the_demo(tmp_path: Path, influx16: Influx16) -> None:
    site = parse_site(every_day_site())
    data = tmp_path / "demo"
    await run_demo(DemoOptions(site, data, speed=240, duration=12, seed=3), out=io.StringIO())
    store = RecordStore(data / "record.db")
    try:
        now = max(c.updated_ms or 0 for c in store.current_states())
        reasons = taxonomy(site.config.downtime)
        shifts = site.config.shifts
        assert shifts is not None
        sink = Lines()
        h = Historian(
            site,
            store,
            sink,
            Memory(tmp_path / "h.db"),
            calendar=calendar_for(shifts, site.config.timezone),
            taxonomy=reasons,
            definition=Definition.from_config(site.config.oee, reasons, site.config.downtime.rules),
            now_ms=lambda: now,
        )
        while h.poll():
            pass
    finally:
        store.close()
    influx16.write(sink.lines)
    end = datetime.fromtimestamp(now / 1000, UTC) + timedelta(minutes=5)
    values = {
        "site": "dayton",
        "area": sorted({m.path.area for m in site.machines}),
        "machine": [m.id for m in site.machines],
        "shift_name": ["first", "second", "third"],
        "tz": site.config.timezone,
    }
    queries = panel_queries()
    assert len(queries) >= 20
    empty = []
    for q in queries:
        text = interpolate(q.query, start=end - timedelta(hours=12), end=end, values=values, interval="1m")
        if not rows(influx16, text):
            empty.append(f"{q.dashboard} / {q.panel} ({q.ref_id}): {text}")
    assert not empty, "\n".join(empty)
