"""`uns probe` against the simulator's real OPC UA (asyncua), Modbus (pymodbus) and MTConnect (an agent
over real HTTP) servers: the
entries it prints pass `uns check-site`, and used as the site model they give the same record as
the demo's own declarations of the same machines. Also: its exit codes and error lines, security
options as in the site model, and the recognising on its own (no sockets)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from bridge.modbus import TableDump
from bridge.opcua import (
    CLIENT_APPLICATION_URI,
    NAMESPACE_URI,
    BrowsedVariable,
    CncOpcUaServer,
    make_certificate,
)
from bridge.runner import run_bridge
from bridge.sim.cnc import drive, make_server
from bridge.sim.scenario import MachineScenario
from services.context.app import ContextService
from services.context.record import RecordStore
from tests.helpers import CNC_AT_REST, address, track
from uns.broker import Mosquitto, free_port
from uns.clock import ScaledClock
from uns.site import ModbusSource, MtConnectSource, OpcUaSource, Signal, Site, load_site
from unscli.cli import DEFAULT_SITE, main
from unscli.probe import recognise_modbus, recognise_opcua

ORIGIN_MS = 1_795_300_000_000
SPEED = 720.0  # 12 minutes of shop time per second
HORIZON_MS = 90 * 60 * 1000  # an hour and a half of scenario: about 8 s
HEADER = """\
enterprise: acme
site: dayton
sparkplug: {group_id: dayton, edge_node_id: edge-machining}
areas:
  - name: machining
    lines:
      - name: probed
        cells:
          - name: cell-9
            machines:
"""


async def probe(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`uns probe ...` through the CLI (in a thread: it runs its own event loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["probe", *args])
    out, err = capsys.readouterr()
    return code, out, err


def site_file(path: Path, *entries: str) -> Path:
    """The probed machine entries under a cell of a site with the demo's enterprise, site and group."""
    body = "".join("".join(f"              {line}\n" for line in entry.splitlines()) for entry in entries)
    path.write_text(HEADER + body)
    return path


async def test_probed_entries_pass_check_site_and_give_the_record_the_demos_give(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = ("vf2-01", "lynx-01", "umc-01")  # a CNC controller (OPC UA), a PLC (Modbus), an MTConnect agent
    demo = load_site(DEFAULT_SITE).with_ports({m: free_port() for m in ids}).only(ids)
    scenarios = {m.id: MachineScenario(m.id, seed=7, origin_ms=ORIGIN_MS) for m in demo.machines}
    changes = {m: scenarios[m].changes() for m in ids}
    servers = {m.id: make_server(m, scenarios[m.id]) for m in demo.machines}
    for m, server in servers.items():
        first = next(changes[m])
        await server.start(first.values, first.t_ms)
    context: ContextService | None = None
    store: RecordStore | None = None
    bridge: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    try:
        vf2, lynx = demo.machine("vf2-01").source, demo.machine("lynx-01").source
        umc = demo.machine("umc-01").source
        assert isinstance(vf2, OpcUaSource)
        assert isinstance(lynx, ModbusSource)
        assert isinstance(umc, MtConnectSource)
        code, opcua_entry, err = await probe(capsys, vf2.endpoint, "--id", "vf2-probed")
        assert code == 0, err
        assert f"nsu={NAMESPACE_URI};s=Execution" in opcua_entry  # portable node ids
        code, modbus_entry, err = await probe(
            capsys, f"modbus://127.0.0.1:{lynx.port}", "--id", "lynx-probed"
        )
        assert code == 0, err
        assert "fit the layout of docs/modbus.md" in modbus_entry
        code, mtconnect_entry, err = await probe(capsys, umc.endpoint, "--id", "umc-probed")
        assert code == 0, err
        assert "exec       EXECUTION" in mtconnect_entry  # the agent's data items, listed
        assert "-> alarm_code, alarm_text" in mtconnect_entry

        path = site_file(tmp_path / "probed.yaml", opcua_entry, modbus_entry, mtconnect_entry)
        assert main(["check-site", str(path)]) == 0
        assert "acme/dayton/machining/probed/cell-9/vf2-probed" in capsys.readouterr().out
        probed = load_site(path)
        assert set(probed.machine("vf2-probed").source.signals) == set(vf2.signals)  # all ten
        assert set(probed.machine("lynx-probed").source.signals) == set(lynx.signals)
        assert set(probed.machine("umc-probed").source.signals) == set(umc.signals)

        # the demo's declarations and the probed ones read the same servers, side by side
        site = Site(demo.config, demo.machines + probed.machines)
        clock = ScaledClock(ORIGIN_MS, SPEED)
        store = RecordStore(tmp_path / "record.db")
        context = ContextService(site, store, address(mosquitto, "services"), clock)
        context.start(asyncio.get_running_loop())
        track(context._client)
        bridge = asyncio.create_task(run_bridge(site, address(mosquitto, "bridge"), clock, stop))
        deadline = time.monotonic() + 30
        while any(t.since_ms is None for t in context.trackers.values()):
            assert time.monotonic() < deadline, "machines never came online"
            await asyncio.sleep(0.05)
        clock.restart()
        end_ms = ORIGIN_MS + HORIZON_MS
        await asyncio.gather(*(drive(servers[m], changes[m], clock, until_ms=end_ms) for m in ids))
        await asyncio.sleep(1.0)  # let the last values through

        def record(machine_id: str) -> list[tuple[int, int, str]]:
            assert store is not None
            return [(i.start_ms, i.end_ms, i.state) for i in store.intervals(machine_id, ORIGIN_MS, end_ms)]

        def parts(machine_id: str) -> int:
            assert store is not None
            return sum(p.delta for p in store.parts(machine_id, ORIGIN_MS, end_ms + 60_000))

        # OPC UA carries the controller's timestamps: the very same record
        assert record("vf2-probed") == record("vf2-01")
        assert {state for _, _, state in record("vf2-01")} >= {"running", "idle", "setup"}
        assert parts("vf2-probed") == parts("vf2-01") == scenarios["vf2-01"].parts_until(end_ms) > 0
        # Modbus is stamped when polled: two readers polling the same PLC agree to a poll or so
        tolerance_ms = int(0.1 * SPEED * 1000) + 5000
        demo_record, probed_record = record("lynx-01"), record("lynx-probed")
        checked = 0
        for start, end, state in demo_record:
            if end - start < 2 * tolerance_ms:
                continue
            middle = (start + end) // 2
            tracker = context.trackers["lynx-probed"]  # (the interval it is in now is not closed)
            now = [tracker.state] if tracker.since_ms is not None and tracker.since_ms <= middle else []
            assert ([s for a, b, s in probed_record if a <= middle < b] or now) == [state], f"at {middle}"
            checked += 1
        assert checked >= 3
        assert parts("lynx-probed") == parts("lynx-01") == scenarios["lynx-01"].parts_until(end_ms) > 0
        # MTConnect carries the agent's timestamps: the very same record
        assert record("umc-probed") == record("umc-01")
        assert {state for _, _, state in record("umc-01")} >= {"running", "idle"}
        assert parts("umc-probed") == parts("umc-01") == scenarios["umc-01"].parts_until(end_ms) > 0
    finally:
        stop.set()
        if bridge is not None:
            await bridge
        if context is not None:
            await context.stop()
        for server in servers.values():
            await server.stop()
        if store is not None:
            store.close()


async def test_probe_with_the_site_models_security_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_certificate(pki / "server.pem", pki / "server.der", NAMESPACE_URI, server=True)
    make_certificate(pki / "client.pem", pki / "client.der", CLIENT_APPLICATION_URI, server=False)
    port = free_port()
    server = CncOpcUaServer(
        "vmc-7",
        f"opc.tcp://127.0.0.1:{port}/sim",
        users={"bridge": "s3cret-pw"},
        certificate=pki / "server.der",
        private_key=pki / "server.pem",
        trusted_clients=[],  # a controller that has not been told to trust the bridge yet
    )
    await server.start(CNC_AT_REST, 1_000)
    monkeypatch.setenv("UNS_TEST_OPCUA_PASSWORD", "s3cret-pw")
    monkeypatch.chdir(tmp_path)  # the certificate paths as the site file beside pki/ has them
    args = [
        f"opc.tcp://127.0.0.1:{port}/sim",
        *("--username", "bridge", "--password-env", "UNS_TEST_OPCUA_PASSWORD"),
        *("--certificate", "pki/client.der", "--private-key", "pki/client.pem"),
    ]
    try:
        code, out, err = await probe(capsys, *args)
        assert (code, out) == (2, "")
        assert err.startswith(f"uns probe: opc.tcp://127.0.0.1:{port}/sim: connecting: ")
        assert f"the controller does not trust our certificate {(pki / 'client.der').resolve()}" in err
        assert "add it to the server's trusted certificates" in err

        server.trust(pki / "client.der")  # done on the controller; then it works
        code, out, err = await probe(capsys, *args)
        assert code == 0, err
        entry = yaml.safe_load(out)[0]
        assert entry["id"] == "vmc-7"  # named after the object that holds the signals
        assert entry["source"]["username"] == "bridge"
        assert entry["source"]["password_env"] == "UNS_TEST_OPCUA_PASSWORD"
        assert entry["source"]["security"] == {
            "mode": "SignAndEncrypt",
            "certificate": "pki/client.der",
            "private_key": "pki/client.pem",
        }
        path = site_file(tmp_path / "site.yaml", out)
        assert main(["check-site", str(path)]) == 0
    finally:
        await server.stop()


async def test_probe_exit_codes_and_what_it_says_when_it_cannot_connect(
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = free_port()
    code, out, err = await probe(capsys, f"opc.tcp://127.0.0.1:{closed}")
    assert (code, out) == (2, "")
    assert f"uns probe: opc.tcp://127.0.0.1:{closed}: connecting: connection refused" in err
    assert "nothing listens on that port" in err
    code, out, err = await probe(capsys, f"modbus+tcp://127.0.0.1:{closed}?unit=3")
    assert (code, out) == (2, "")
    assert f"uns probe: modbus://127.0.0.1:{closed}/3: connecting: connection refused" in err
    code, out, err = await probe(capsys, f"http://127.0.0.1:{closed}")
    assert (code, out) == (2, "")
    assert f"uns probe: http://127.0.0.1:{closed}: connecting: connection refused" in err
    code, _, err = await probe(capsys, "ftp://127.0.0.1")
    assert code == 2
    assert "unknown kind of endpoint" in err
    code, _, err = await probe(capsys, "modbus://127.0.0.1:502?unit=300")
    assert code == 2
    assert "unit must be a number from 0 to 247" in err


def var(name: str, data_type: str, value: object, path: tuple[str, ...] = ("Channel1",)) -> BrowsedVariable:
    return BrowsedVariable(f"nsu=urn:x;s={name}", (*path, name), data_type, value, None)


def test_recognising_signals_by_browse_name_type_and_value() -> None:
    rec = recognise_opcua(
        [
            var("ExecutionState", "String", "ACTIVE"),
            var("OperationMode", "String", "AUTO"),  # a mode by name, but not one of ours
            var("Mode", "String", "MDI"),
            var("PartCounter", "UInt32", 12),
            var("AlarmNumber", "Int32", 0),
            var("EmergencyStop", "Int32", 3),  # named right, but a bool it is not
            var("EStop", "Boolean", False),
            var("ActSpindleSpeed", "Double", 1200.5),
            var("SpindleSpeed", "Double", 0.0, ("Channel2",)),
            var("Temperature", "Double", 21.0),
        ]
    )
    assert {s: v.path[-1] for s, v in rec.found.items()} == {
        Signal.EXECUTION: "ExecutionState",
        Signal.MODE: "Mode",
        Signal.PART_COUNT: "PartCounter",
        Signal.ALARM_CODE: "AlarmNumber",
        Signal.ESTOP: "EStop",
        Signal.SPINDLE_SPEED: "SpindleSpeed",  # the exact name first; the other is listed as "also"
    }
    assert rec.complete
    assert [v.path[-1] for v in rec.also[Signal.SPINDLE_SPEED]] == ["ActSpindleSpeed"]
    assert {(s, v.path[-1]) for s, v, _ in rec.misfits} == {
        (Signal.MODE, "OperationMode"),
        (Signal.ESTOP, "EmergencyStop"),
    }
    assert not recognise_opcua([var("Execution", "String", "READY")]).complete


def test_a_register_map_that_is_not_the_known_layout_gets_a_template() -> None:
    dump = TableDump(holding=dict.fromkeys(range(16), 7))
    assert recognise_modbus(dump, 0, 16).base is None
    layout = [0b0001, 1, 0, 5, 4711, 0x4496, 0x0000, 125, 100, 1]  # running, automatic, 1200 rpm
    dump = TableDump(holding={100 + i: v for i, v in enumerate(layout)})
    assert recognise_modbus(dump, 95, 20).base == 100
    layout[0] = 0b0000  # "cycle running" off while execution says ACTIVE: not that layout
    assert recognise_modbus(TableDump(holding=dict(enumerate(layout))), 0, 10).base is None


async def serve_once(body: bytes, status: str = "200 OK") -> tuple[asyncio.Server, str]:
    """An HTTP server on a free port that answers every request with `body`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


DEVICES = """<?xml version="1.0"?>
<MTConnectDevices xmlns="urn:mtconnect.org:MTConnectDevices:2.0">
  <Header instanceId="7" bufferSize="131072" creationTime="2026-12-01T00:00:00Z" version="2.0"/>
  <Devices>
    <Device id="d1" name="Lathe-A" uuid="lathe-a"><DataItems>
      <DataItem id="a_exec" type="EXECUTION" category="EVENT"/>
      <DataItem id="a_mode" type="CONTROLLER_MODE" category="EVENT"/>
      <DataItem id="a_parts" type="PART_COUNT" category="EVENT"/>
      <DataItem id="a_sys" type="SYSTEM" category="CONDITION"/>
      <DataItem id="a_estop" type="EMERGENCY_STOP" category="EVENT"/>
    </DataItems></Device>
    <Device id="d2" name="Mill-B" uuid="mill-b"><DataItems>
      <DataItem id="b_exec" type="EXECUTION" category="EVENT"/>
      <DataItem id="b_mode" type="CONTROLLER_MODE" category="EVENT"/>
      <DataItem id="b_cycles" type="PART_COUNT" category="EVENT"/>
    </DataItems></Device>
  </Devices>
</MTConnectDevices>
"""


async def test_probing_an_agent_of_two_devices_and_one_that_lacks_signals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, url = await serve_once(DEVICES.encode())
    try:
        code, out, err = await probe(capsys, url)
        assert code == 0, err
        assert "2 devices: Lathe-A (lathe-a), Mill-B (mill-b)" in out
        assert "--device <name> makes it for another one" in out
        [entry] = yaml.safe_load(out)
        assert entry["id"] == "Lathe-A"
        assert entry["source"]["device"] == "Lathe-A"  # the agent has more than one: it is named
        assert "spindle_speed" not in entry["source"]["signals"]
        code, out, err = await probe(capsys, url, "--device", "mill-b", "--id", "mill-b")
        assert code == 1  # no CONDITION, no EMERGENCY_STOP: the entry says what to fill in
        assert "# not recognised: alarm_code, estop: name their data items under data_items" in out
        assert "      # estop: <data item id>" in out
        code, out, err = await probe(capsys, url, "--device", "Grinder-C")
        assert (code, out) == (2, "")
        assert "the agent has no device 'Grinder-C' (its devices: 'Lathe-A', 'Mill-B')" in err
    finally:
        server.close()


@pytest.mark.parametrize(
    ("body", "status", "said"),
    [
        (b"<html><body>It works!</body></html>", "200 OK", "not an MTConnect devices document"),
        (DEVICES.encode()[:300], "200 OK", "not an MTConnect devices document"),
        (b"", "404 Not Found", "HTTP 404"),
    ],
    ids=["a web page", "cut off", "not found"],
)
async def test_probing_something_that_is_no_agent_says_so(
    capsys: pytest.CaptureFixture[str], body: bytes, status: str, said: str
) -> None:
    server, url = await serve_once(body, status)
    try:
        code, out, err = await probe(capsys, url)
        assert (code, out) == (2, "")
        assert err.startswith(f"uns probe: {url}/probe: ")
        assert said in err
    finally:
        server.close()
