"""The standalone processes on one simulated clock: `uns sim`, `uns bridge` and `uns context`, each a
process of its own started as an integrator would (`--speed 120 --clock-start <T>`), through a real
Mosquitto. The record is in the simulated timeline (two hours of shop time a minute), and its
states are the scenario's own."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.sim.scenario import MachineScenario
from services.context.record import RecordStore
from uns.broker import Mosquitto, free_port
from uns.clock import iso

pytestmark = pytest.mark.integration

SPEED = 120.0
SITE = """\
enterprise: acme
site: dayton
sparkplug: {{group_id: dayton, edge_node_id: edge-replay, host_id: uns-host}}
areas:
  - name: turning
    lines:
      - name: lathes
        cells:
          - name: cell-2
            machines:
              - id: lynx-01
                source:
                  protocol: modbus
                  host: 127.0.0.1
                  port: {port}
                  device_id: 1
                  timeout_ms: 500
                  poll_groups:
                    fast:
                      interval_ms: 100
                      signals:
                        execution:
                          table: holding
                          address: 9
                          map: {{0: READY, 1: ACTIVE, 2: FEED_HOLD, 3: INTERRUPTED, 4: STOPPED}}
                        mode: {{table: holding, address: 1, map: {{1: AUTOMATIC, 2: MANUAL, 3: MDI}}}}
                        alarm_code: {{table: input, address: 2, type: int16}}
                        estop: {{table: discrete_input, address: 3}}
                        part_count: {{table: input, address: 3, type: uint16, rollover: 65536}}
"""


def uns(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`uns <args>` as a process of its own, its output in `log`."""
    with log.open("wb") as out:  # the process has its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-m", "unscli.cli", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_sim_bridge_and_context_as_processes_on_one_simulated_clock(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(port=free_port()))
    start_ms = int(time.time()) * 1000
    clock = ["--speed", str(SPEED), "--clock-start", iso(start_ms)]
    broker = ["--broker", f"mqtt://127.0.0.1:{mosquitto.port}"]
    record = tmp_path / "record.db"
    procs = [
        uns("sim", "--site", str(site), "--seed", "6", *clock, env={}, log=tmp_path / "sim.log"),
        uns(
            "context",
            "--site",
            str(site),
            *broker,
            "--record",
            str(record),
            *clock,
            env={"UNS_MQTT_PASSWORD": mosquitto.creds.password("services")},
            log=tmp_path / "context.log",
        ),
        uns(
            "bridge",
            "--site",
            str(site),
            *broker,
            "--buffer-dir",
            str(tmp_path / "buffer"),
            *clock,
            env={"UNS_MQTT_USERNAME": "bridge", "UNS_MQTT_PASSWORD": mosquitto.creds.password("bridge")},
            log=tmp_path / "bridge.log",
        ),
    ]
    try:
        time.sleep(12)  # 24 minutes of shop time
    finally:
        for p in reversed(procs):  # the bridge first, then the context service, then the machines
            p.send_signal(signal.SIGINT)
            p.wait(20)
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    end_ms = start_ms + int(12 * SPEED * 1000)
    store = RecordStore(record)
    try:
        intervals = store.intervals("lynx-01", 0, 2**62)
        [current] = [c for c in store.current_states() if c.machine_id == "lynx-01"]
    finally:
        store.close()
    assert intervals, logs
    # event time is the simulated clock's: minutes past the start, not seconds
    assert current.updated_ms is not None
    assert current.updated_ms - start_ms > 5 * 60_000, logs["context.log"]
    assert current.updated_ms < end_ms + 60_000
    # and the record follows the scenario (Modbus is stamped when polled: a poll, 0.1 s x 120, or so)
    scenario = MachineScenario("lynx-01", 6, start_ms)
    truth = list(itertools.takewhile(lambda s: s.start_ms < end_ms, scenario.segments()))
    tolerance_ms = 20_000
    checked = 0
    for i in intervals:
        if i.end_ms - i.start_ms < 3 * tolerance_ms or i.state.value == "comms_loss":
            continue
        middle = (i.start_ms + i.end_ms) // 2
        [seg] = [s for s in truth if s.start_ms <= middle < s.end_ms]
        assert seg.state == i.state.value, (iso(middle), seg, i)
        checked += 1
    assert checked >= 4, intervals
