"""`uns demo` as a person runs it: it prints how to reach everything, machines show their states
over the API and MQTT, the historian writes to a local VictoriaMetrics (Debian's, started by the test),
and Ctrl-C shuts it down cleanly with no process left behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import recorder
from tests.historian.servers import VictoriaMetrics
from uns.broker import Credentials, Mosquitto
from uns.cli import DEFAULT_SITE

SITE = DEFAULT_SITE.read_text().split("      - name: lathes")[0]  # the mills only: 4 machines


def _read_banner(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    assert proc.stdout is not None
    text, deadline = "", time.monotonic() + timeout
    while "Ctrl-C stops it." not in text:
        assert time.monotonic() < deadline, f"no banner: {text}"
        line = proc.stdout.readline()
        assert line, f"demo exited early: {text}"
        text += line
    return text


async def test_demo_runs_the_shop_and_stops_cleanly(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNS_")}
    store = VictoriaMetrics(tmp_path / "vm")
    store.start()
    env |= {"UNS_INFLUX_URL": store.url, "UNS_INFLUX_ORG": "acme", "UNS_INFLUX_BUCKET": "uns"}
    env["UNS_INFLUX_TOKEN"] = "demo-token"
    proc = subprocess.Popen(  # noqa: ASYNC220 (a person's terminal: the demo runs beside the test)
        [
            sys.executable,
            "-m",
            "uns.cli",
            "--log-level",
            "WARNING",
            "demo",
            "--site",
            str(site),
            "--speed",
            "60",
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        banner = _read_banner(proc)
        api = re.search(r"API\s+(http://\S+)", banner)
        token = re.search(r"API token (\S+)", banner)
        mqtt = re.search(r"MQTT\s+127\.0\.0\.1:(\d+)\s+viewer login: viewer / (\S+)", banner)
        assert api, banner
        assert token, banner
        assert mqtt, banner
        assert "mosquitto_sub" in banner
        assert re.search(r"OEE\s+http://127\.0\.0\.1:\d+/api/v1/oee", banner), banner
        assert f"historian {store.url}, bucket uns" in banner
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        async with httpx.AsyncClient() as http:
            assert (await http.get(api.group(1))).status_code == 401
            deadline = time.monotonic() + 60
            while True:
                machines = (await http.get(api.group(1), headers=headers)).json()
                if len(machines) == 4 and all(m["state"] != "comms_loss" for m in machines):
                    break
                assert time.monotonic() < deadline, machines
                await asyncio.sleep(0.5)
            oee = (await http.get(api.group(1).replace("/machines", "/oee"), headers=headers)).json()
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
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        written = {m: store.samples(m) for m in ("machine_state_code", "signal_value")}
        store.stop()
    assert proc.returncode == 0, out
    assert all(written.values()), written  # the historian wrote the shop's states and signals
    assert "stopped cleanly" in out
    with socket.socket() as s:  # our Mosquitto is gone
        assert s.connect_ex(("127.0.0.1", int(mqtt.group(1)))) != 0
    import sqlite3

    with sqlite3.connect(data / "record.db") as db:
        states = {row[0] for row in db.execute("SELECT state FROM current_state")}
        closed = db.execute("SELECT count(*) FROM state_interval").fetchone()[0]
    assert states == {"comms_loss"}  # flushed at shutdown: nobody is watching any more
    assert closed >= 4
