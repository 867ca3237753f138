"""OPC UA with a username and password, over Basic256Sha256 SignAndEncrypt with certificates,
against a real asyncua server that offers nothing weaker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bridge.opcua import CLIENT_APPLICATION_URI, CncOpcUaServer, OpcUaReader, make_certificate
from tests.helpers import CNC_AT_REST
from uns.broker import free_port
from uns.site import Machine, OpcUaSource, SiteConfigError, load_site, parse_site
from uns.sparkplug.edge import Sample

INITIAL = CNC_AT_REST


def site_text(port: int, extra: str) -> str:
    return f"""\
enterprise: acme
site: dayton
sparkplug: {{group_id: dayton}}
areas:
  - name: a
    lines:
      - name: l
        cells:
          - name: c
            machines:
              - id: m1
                source:
                  protocol: opcua
                  endpoint: opc.tcp://127.0.0.1:{port}/sim
                  signals: {{execution: "ns=2;s=Execution", mode: "ns=2;s=ControllerMode",
                            part_count: "ns=2;s=PartCount", alarm_code: "ns=2;s=AlarmCode",
                            estop: "ns=2;s=EmergencyStop"}}
{extra}"""


SECURE = """\
                  username: bridge
                  password_env: UNS_TEST_OPCUA_PASSWORD
                  security:
                    mode: SignAndEncrypt
                    certificate: pki/client.der
                    private_key: pki/client.pem
                    server_certificate: pki/server.der
"""


async def run_reader(machine: Machine, seconds: float) -> list[list[Sample]]:
    assert isinstance(machine.source, OpcUaSource)
    online: list[list[Sample]] = []
    reader = OpcUaReader(
        machine,
        machine.source,
        on_online=online.append,
        on_samples=lambda s: None,
        on_offline=lambda: None,
        now_ms=lambda: 0,
        max_backoff_s=0.5,
    )
    task = asyncio.create_task(reader.run())
    deadline = time.monotonic() + seconds
    while not online and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return online


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    (tmp_path / "pki").mkdir()
    make_certificate(
        tmp_path / "pki/server.pem",
        tmp_path / "pki/server.der",
        "urn:shopfloor-uns:cnc-simulator",
        server=True,
    )
    make_certificate(
        tmp_path / "pki/client.pem", tmp_path / "pki/client.der", CLIENT_APPLICATION_URI, server=False
    )
    return tmp_path


async def secure_server(pki: Path, port: int) -> CncOpcUaServer:
    server = CncOpcUaServer(
        "m1",
        f"opc.tcp://127.0.0.1:{port}/sim",
        users={"bridge": "s3cret-pw"},
        certificate=pki / "pki/server.der",
        private_key=pki / "pki/server.pem",
    )
    await server.start(INITIAL, 1_000)
    return server


@pytest.mark.parametrize("mode", ["SignAndEncrypt", "Sign"])
async def test_username_password_over_basic256sha256(
    pki: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    port = free_port()
    (pki / "site.yaml").write_text(site_text(port, SECURE.replace("mode: SignAndEncrypt", f"mode: {mode}")))
    machine = load_site(pki / "site.yaml").machine("m1")  # certificate paths relative to the file
    server = await secure_server(pki, port)
    try:
        monkeypatch.setenv("UNS_TEST_OPCUA_PASSWORD", "s3cret-pw")
        online = await run_reader(machine, 20)
        assert online
        assert {s.name: s.value for s in online[0]}["execution"] == "READY"
        monkeypatch.setenv("UNS_TEST_OPCUA_PASSWORD", "wrong")
        assert await run_reader(machine, 3) == []  # refused: never online, never a made-up value
    finally:
        await server.stop()


async def test_no_security_is_refused_by_a_secure_server(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    (pki / "site.yaml").write_text(
        site_text(
            port,
            "                  username: bridge\n                  password_env: UNS_TEST_OPCUA_PASSWORD\n",
        )
    )
    machine = load_site(pki / "site.yaml").machine("m1")
    server = await secure_server(pki, port)
    try:
        monkeypatch.setenv("UNS_TEST_OPCUA_PASSWORD", "s3cret-pw")
        assert await run_reader(machine, 3) == []
    finally:
        await server.stop()


def test_credentials_and_security_are_checked_in_the_site_model() -> None:
    with pytest.raises(SiteConfigError, match="username and password_env go together"):
        parse_site(site_text(1, "                  username: bridge\n"))
    with pytest.raises(SiteConfigError, match=r"security\.private_key: Field required"):
        parse_site(site_text(1, "                  security: {certificate: a.der}\n"))
    with pytest.raises(SiteConfigError, match=r"security\.mode: Input should be 'Sign' or 'SignAndEncrypt'"):
        parse_site(
            site_text(1, "                  security: {certificate: a.der, private_key: k.pem, mode: None}\n")
        )
