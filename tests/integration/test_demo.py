"""`uns demo` as a person runs it: it prints how to reach everything (and writes the same to a file
only they can read), machines show their states over the API and MQTT, the historian writes to a
local VictoriaMetrics (Debian's, started by the test), and Ctrl-C in the terminal (SIGINT to the
whole process group, our Mosquitto included) shuts it down cleanly: the services before the broker,
no comms_loss in the record's intervals, no process left behind. Started again in the same data dir,
it shows live states again instead of the first run's record, which ends in the future (its clock ran
at 60x); `make demo DEMO_ARGS=...` adds to the Makefile's options."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import recorder
from tests.historian.servers import VictoriaMetrics
from uns.broker import Credentials, Mosquitto
from uns.clock import parse_iso
from unscli.cli import DEFAULT_SITE, build_parser
from unscli.demo import set_aside

SITE = DEFAULT_SITE.read_text().split("      - name: lathes")[0]  # the mills only: 4 machines
ROOT = Path(__file__).resolve().parents[2]


def _start(site: Path, data: Path, env: dict[str, str], errors: Path, *options: str) -> subprocess.Popen[str]:
    """The demo in a process group of its own, as a terminal runs a foreground job."""
    command = [sys.executable, "-m", "unscli.cli", "--log-level", "WARNING", "demo", "--site", str(site)]
    with errors.open("w") as err:  # the child has its own copy
        return subprocess.Popen(
            [*command, "--data-dir", str(data), *options],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            start_new_session=True,
        )


def _read_banner(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    assert proc.stdout is not None
    text, deadline = "", time.monotonic() + timeout
    while "Ctrl-C stops it" not in text:
        assert time.monotonic() < deadline, f"no banner: {text}"
        line = proc.stdout.readline()
        assert line, f"demo exited early: {text}"
        text += line
    return text[text.index("uns demo: 4 simulated machines") :]


def _found(pattern: str, banner: str) -> re.Match[str]:
    found = re.search(pattern, banner)
    assert found, f"{pattern} not in\n{banner}"
    return found


async def _live(
    api: str, token: str, started: float, banner: str, speed: float
) -> tuple[list[dict[str, Any]], float]:
    """The API's machines once all four report a state of this run: not comms_loss, and since a
    moment of this run's simulated clock (from its start to now at most), not of an earlier record;
    and how far that clock can have gone by then."""
    origin = parse_iso(_found(r"clock\s+simulated: (\S+) at the start", banner).group(1))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + 60
        while True:
            machines: list[dict[str, Any]] = (await http.get(api, headers=headers)).json()
            latest = origin + (time.monotonic() - started) * speed * 1000  # the clock can be no further
            if len(machines) == 4 and all(
                m["state"] != "comms_loss" and origin <= parse_iso(m["since"]) <= latest for m in machines
            ):
                return machines, latest
            assert time.monotonic() < deadline, (origin, latest, machines)
            await asyncio.sleep(0.5)


@pytest.mark.timeout(300)  # two demos, one after the other
async def test_demo_runs_the_shop_stops_cleanly_and_starts_afresh(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNS_")}
    store = VictoriaMetrics(tmp_path / "vm")
    store.start()
    env |= {"UNS_INFLUX_URL": store.url, "UNS_INFLUX_ORG": "acme", "UNS_INFLUX_BUCKET": "uns"}
    env["UNS_INFLUX_TOKEN"] = "demo-token"
    try:
        started = time.monotonic()
        proc = _start(site, data, env, tmp_path / "first.err", "--speed", "60")
        try:
            banner = _read_banner(proc)
            api = _found(r"API\s+(http://\S+)", banner).group(1)
            token = _found(r"API token (\S+)", banner).group(1)
            mqtt = _found(r"MQTT\s+127\.0\.0\.1:(\d+)\s+viewer login: viewer / (\S+)", banner)
            assert "mosquitto_sub" in banner
            assert re.search(r"OEE\s+http://127\.0\.0\.1:\d+/api/v1/oee", banner), banner
            assert f"historian {store.url}, bucket uns" in banner
            # the rest of what a newcomer needs: the wall display's link, Swagger UI, every login
            http = api.removesuffix("/api/v1/machines")
            assert re.search(rf"floor view: {http}/floor\?key=uns_[0-9a-f]{{12}}_\S{{43}}\s", banner), banner
            assert f"Swagger UI: {http}/docs" in banner
            for user in ("integration", "services", "api", "dayton.edge-machining"):
                assert re.search(rf"\s{re.escape(user)} / \S{{20,}}\s", banner), (user, banner)
            assert f"record    {data / 'record.db'}   (a fresh one)" in banner
            # ... and the same, word for word, in a file that only its owner may read
            written = data / "banner.txt"
            assert f"banner    {written}" in banner
            assert written.stat().st_mode & 0o777 == 0o600
            assert written.read_text() == banner
            async with httpx.AsyncClient() as client:
                assert (await client.get(api)).status_code == 401
                assert (await client.get(f"{http}/docs")).status_code == 200  # open without a token
            machines, _ = await _live(api, token, started, banner, 60)
            live = time.monotonic()
            async with httpx.AsyncClient() as client:
                headers = {"Authorization": f"Bearer {token}"}
                oee = (await client.get(api.replace("/machines", "/oee"), headers=headers)).json()
            assert {r["group"]["machine"] for r in oee["rows"]} == {m["id"] for m in machines}
            assert all(m["since"].endswith("Z") for m in machines)
            # a viewer sees the readable tree, retained
            broker = Mosquitto.__new__(Mosquitto)
            broker.port, broker.creds = int(mqtt.group(1)), Credentials({"viewer": mqtt.group(2)})
            viewer = await recorder(broker, "viewer", "acme/#", client_id="person")
            [(topic, payload)] = await viewer.wait_for(lambda t, p: t.endswith("/vf2-01/state"))
            assert topic == "acme/dayton/machining/mills/cell-1/vf2-01/state"
            assert json.loads(payload)["state"] in {"running", "idle", "setup", "down"}
            assert viewer.client is not None
            viewer.client.stop()
            # let the simulated clock run minutes ahead of the wall's (4 s at 60x), as a person's does
            await asyncio.sleep(max(0.0, live + 4 - time.monotonic()))
        finally:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
            out, _ = proc.communicate(timeout=60)
        written_to_store = {m: store.samples(m) for m in ("machine_state_code", "signal_value")}
        assert proc.returncode == 0, out
        assert all(written_to_store.values()), written_to_store  # the shop's states and signals
        assert "stopped cleanly" in out
        with socket.socket() as s:  # our Mosquitto is gone
            assert s.connect_ex(("127.0.0.1", int(mqtt.group(1)))) != 0
        # The broker outlived the Ctrl-C: the services said goodbye to it, then it went, last.
        assert "lost mqtt://" not in (tmp_path / "first.err").read_text()
        log = (data / "mosquitto" / "mosquitto.log").read_text()
        assert log.index("Client uns-host.uns-host disconnected.") < log.index("terminating"), log
        with sqlite3.connect(data / "record.db") as db:
            current = dict(
                db.execute("SELECT machine_id, since_ms FROM current_state WHERE state = 'comms_loss'")
            )
            lost = db.execute("SELECT count(*) FROM state_interval WHERE state = 'comms_loss'").fetchone()[0]
            last = db.execute(
                "SELECT machine_id, state, max(end_ms) FROM state_interval GROUP BY machine_id"
            ).fetchall()
        # Every machine's last interval is what it really did, closed at the moment of the stop; no
        # comms loss anywhere in the record. After the stop nobody watches: the open piece is comms_loss.
        assert lost == 0
        assert len(current) == len(last) == 4
        for machine, state, end in last:
            assert state != "comms_loss", (machine, state)
            assert end == current[machine], (machine, end, current)
        first_end = max(current.values())

        # The second run in the same data dir: a fresh record (the first one kept aside), live states.
        # At 1x its clock stays behind where the first run's record ends (60x): a record taken over
        # from the first run would show states since the first run's end, in this run's future.
        started = time.monotonic()
        proc = _start(site, data, env, tmp_path / "second.err", "--speed", "1")
        try:
            banner = _read_banner(proc)
            api = _found(r"API\s+(http://\S+)", banner).group(1)
            token = _found(r"API token (\S+)", banner).group(1)
            _, latest = await _live(api, token, started, banner, 1)
            assert latest < first_end  # (so the first run's record would not have passed for live)
            previous = data / "previous"
            assert f"(a fresh one; the previous run's is in {previous}/)" in banner
            assert (previous / "record.db").is_file()
            assert (previous / "banner.txt").is_file()
            assert (data / "banner.txt").read_text() == banner
        finally:
            proc.send_signal(signal.SIGTERM)  # as `kill` or a service manager stops it
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped cleanly" in out
    finally:
        store.stop()


def test_make_demo_adds_demo_args_to_its_own() -> None:
    """`make demo DEMO_ARGS=...` keeps the Makefile's --speed unless DEMO_ARGS gives another."""
    for extra, speed in (("--duration 5", 30.0), ("--speed 120 --duration 5", 120.0)):
        dry = subprocess.run(
            ["make", "-n", "demo", f"DEMO_ARGS={extra}"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        [line] = [x for x in dry.stdout.splitlines() if "/bin/uns demo" in x]
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert (args.command, args.speed, args.duration) == ("demo", speed, 5.0), line


def test_a_new_run_sets_the_previous_runs_state_aside(tmp_path: Path) -> None:
    """Everything a run leaves (a record with its WAL, the historian's memory, the buffers, the
    broker's persistence, the banner) goes to previous/, replacing the run before; the broker's
    config and anything else in the data dir stay."""
    for name in ("record.db", "record.db-wal", "record.historian.db", "banner.txt", "notes.txt"):
        (tmp_path / name).write_text(name)
    for name in ("buffer/dayton.edge-machining.db", "mosquitto/data/mosquitto.db", "mosquitto/acl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "previous" / "buffer").mkdir(parents=True)
    (tmp_path / "previous" / "buffer" / "older.db").write_text("the run before")
    assert set_aside(tmp_path) == tmp_path / "previous"
    moved = {
        str(p.relative_to(tmp_path / "previous")) for p in (tmp_path / "previous").rglob("*") if p.is_file()
    }
    assert moved == {
        "record.db",
        "record.db-wal",
        "record.historian.db",
        "banner.txt",
        "buffer/dayton.edge-machining.db",
        "mosquitto/data/mosquitto.db",
    }
    assert (tmp_path / "notes.txt").exists()
    assert (tmp_path / "mosquitto" / "acl").exists()
    assert not (tmp_path / "record.db").exists()
    assert set_aside(tmp_path) is None  # nothing left of a run: previous/ stays as it is
    assert (tmp_path / "previous" / "record.db").exists()
