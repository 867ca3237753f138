"""OPC UA node ids by namespace URI (`nsu=`), and what the reader's log says when a machine cannot
be read: every line names the machine, the endpoint, what failed, the cause and what to do. Against
real asyncua servers (the simulator's), a TCP socket that never answers, and a closed port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bridge.opcua import (
    CLIENT_APPLICATION_URI,
    NAMESPACE_URI,
    CncOpcUaServer,
    OpcUaReader,
    make_certificate,
    portable_node_id,
    resolve_node_id,
)
from bridge.reader import ReaderError, describe, explain
from tests.helpers import CNC_AT_REST
from uns.broker import free_port
from uns.site import Machine, OpcUaSource, load_site

SIGNALS = {
    "execution": "Execution",
    "mode": "ControllerMode",
    "part_count": "PartCount",
    "alarm_code": "AlarmCode",
    "estop": "EmergencyStop",
}


def write_site(tmp_path: Path, port: int, *, ids: str = "nsu", extra: str = "", **names: str) -> Machine:
    """A one-machine site file (certificate paths relative to it) and its machine."""
    signals = {**SIGNALS, **names}
    if ids == "nsu":
        listed = ", ".join(f'{s}: "nsu={NAMESPACE_URI};s={n}"' for s, n in signals.items())
    else:
        listed = ", ".join(f'{s}: "ns=2;s={n}"' for s, n in signals.items())
    (tmp_path / "site.yaml").write_text(f"""\
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
                  signals: {{{listed}}}
{extra}""")
    return load_site(tmp_path / "site.yaml").machine("m1")


class Run:
    """A reader running in the background, and what it reported."""

    def __init__(self, machine: Machine) -> None:
        assert isinstance(machine.source, OpcUaSource)
        self.online: list[dict[str, object]] = []
        self.reader = OpcUaReader(
            machine,
            machine.source,
            on_online=lambda samples: self.online.append({s.name: s.value for s in samples}),
            on_samples=lambda s: None,
            on_offline=lambda: None,
            now_ms=lambda: 0,
            max_backoff_s=0.5,
        )
        self.task = asyncio.create_task(self.reader.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def logged(caplog: pytest.LogCaptureFixture, *parts: str, timeout: float = 15.0) -> str:
    """The first warning from a reader that has all of `parts`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            text = record.getMessage()
            if record.name == "bridge.reader" and all(p in text for p in parts):
                return text
        await asyncio.sleep(0.05)
    seen = [r.getMessage() for r in caplog.records if r.name == "bridge.reader"]
    raise AssertionError(f"no log line with {parts}; the reader logged {seen}")


async def test_a_node_id_by_namespace_uri_reads_whatever_index_the_server_gives_it(tmp_path: Path) -> None:
    port = free_port()
    # two namespaces registered first: the signals' namespace is ns=4 here, not ns=2 as elsewhere
    server = CncOpcUaServer("m1", f"opc.tcp://127.0.0.1:{port}/sim", namespaces_before=["urn:a", "urn:b"])
    await server.start(CNC_AT_REST, 1_000)
    run = Run(write_site(tmp_path, port))
    try:
        deadline = time.monotonic() + 15
        while not run.online:
            assert time.monotonic() < deadline, "never online"
            await asyncio.sleep(0.05)
        assert run.online[0] == {
            "execution": "READY",
            "mode": "AUTOMATIC",
            "part_count": 1,
            "alarm_code": 0,
            "estop": False,
        }
    finally:
        await run.stop()
        await server.stop()


async def test_a_namespace_uri_the_server_does_not_have_names_the_signal_and_node_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    server = CncOpcUaServer("m1", f"opc.tcp://127.0.0.1:{port}/sim")
    await server.start(CNC_AT_REST, 1_000)
    machine = write_site(tmp_path, port)
    source = machine.source
    assert isinstance(source, OpcUaSource)
    signals = {**source.signals}
    signals[next(iter(signals))] = "nsu=urn:somebody-else;s=Execution"
    machine = Machine(
        machine.id,
        machine.name,
        machine.path,
        machine.edge_node,
        source.model_copy(update={"signals": signals}),
    )
    run = Run(machine)
    try:
        line = await logged(caplog, "machine m1", "resolving node ids")
        assert f"opc.tcp://127.0.0.1:{port}/sim" in line
        assert "signal execution: node id 'nsu=urn:somebody-else;s=Execution'" in line
        assert "the server has no namespace 'urn:somebody-else'" in line
        assert NAMESPACE_URI in line  # what it does have
        assert run.online == []
    finally:
        await run.stop()
        await server.stop()


async def test_an_unknown_node_id_names_the_signal_and_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    server = CncOpcUaServer("m1", f"opc.tcp://127.0.0.1:{port}/sim")
    await server.start(CNC_AT_REST, 1_000)
    run = Run(write_site(tmp_path, port, ids="ns", estop="EStopp"))
    try:
        line = await logged(caplog, "machine m1", "subscribing")
        assert "signal estop: the server has no node ns=2;s=EStopp (BadNodeIdUnknown)" in line
        assert f"uns probe opc.tcp://127.0.0.1:{port}/sim" in line
    finally:
        await run.stop()
        await server.stop()


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    (tmp_path / "pki").mkdir()
    make_certificate(tmp_path / "pki/server.pem", tmp_path / "pki/server.der", NAMESPACE_URI, server=True)
    make_certificate(
        tmp_path / "pki/client.pem", tmp_path / "pki/client.der", CLIENT_APPLICATION_URI, server=False
    )
    make_certificate(
        tmp_path / "pki/other.pem", tmp_path / "pki/other.der", CLIENT_APPLICATION_URI, server=False
    )
    return tmp_path


SECURE = """\
                  username: bridge
                  password_env: UNS_TEST_OPCUA_PASSWORD
                  security: {mode: SignAndEncrypt, certificate: pki/client.der, private_key: pki/client.pem}
"""


async def test_an_untrusted_certificate_says_where_ours_is_and_that_the_controller_must_trust_it(
    pki: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    server = CncOpcUaServer(
        "m1",
        f"opc.tcp://127.0.0.1:{port}/sim",
        users={"bridge": "s3cret-pw"},
        certificate=pki / "pki/server.der",
        private_key=pki / "pki/server.pem",
        trusted_clients=[pki / "pki/other.der"],  # somebody's, not ours: the usual first connection
    )
    await server.start(CNC_AT_REST, 1_000)
    monkeypatch.setenv("UNS_TEST_OPCUA_PASSWORD", "s3cret-pw")
    run = Run(write_site(pki, port, extra=SECURE))
    try:
        line = await logged(caplog, "machine m1", "BadCertificateUntrusted")
        assert f"machine m1: opc.tcp://127.0.0.1:{port}/sim: connecting: " in line
        assert f"the controller does not trust our certificate {(pki / 'pki/client.der').resolve()}" in line
        assert "add it to the server's trusted certificates" in line
        assert run.online == []
    finally:
        await run.stop()
        await server.stop()


async def test_a_wrong_password_says_which_user_and_where_the_password_comes_from(
    pki: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    server = CncOpcUaServer(
        "m1",
        f"opc.tcp://127.0.0.1:{port}/sim",
        users={"bridge": "s3cret-pw"},
        certificate=pki / "pki/server.der",
        private_key=pki / "pki/server.pem",
    )
    await server.start(CNC_AT_REST, 1_000)
    monkeypatch.setenv("UNS_TEST_OPCUA_PASSWORD", "wrong")
    run = Run(write_site(pki, port, extra=SECURE))
    try:
        line = await logged(caplog, "machine m1", "BadUserAccessDenied")
        assert "the server refused user 'bridge'" in line
        assert "UNS_TEST_OPCUA_PASSWORD" in line
        assert "wrong" not in line  # never the password itself
    finally:
        await run.stop()
        await server.stop()


async def test_a_server_that_never_answers_is_a_timeout_with_what_to_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    run = Run(write_site(tmp_path, port))
    try:
        line = await logged(caplog, "machine m1", "no answer")
        assert (
            f"machine m1: opc.tcp://127.0.0.1:{port}/sim: connecting: no answer within 4 s (TimeoutError)"
            in line
        )
        assert "check the address and port" in line
        assert "firewall" in line
    finally:
        await run.stop()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_a_closed_port_is_connection_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    run = Run(write_site(tmp_path, port))
    try:
        line = await logged(caplog, "machine m1", "connection refused")
        assert (
            f"opc.tcp://127.0.0.1:{port}/sim: connecting: connection refused (ConnectionRefusedError" in line
        )
        assert "nothing listens on that port" in line
    finally:
        await run.stop()


def test_an_error_without_a_message_is_told_by_its_type_and_causes() -> None:
    error = ConnectionError()
    error.__cause__ = OSError(9, "Bad file descriptor")
    assert describe(error) == "ConnectionError (after OSError: [Errno 9] Bad file descriptor)"
    assert explain(error) == describe(error)
    assert describe(TimeoutError()) == "TimeoutError"
    assert explain(ConnectionError("x"), 2.5) == "ConnectionError: x"
    assert explain(ReaderError("what: cause: what to do")) == "what: cause: what to do"


def test_node_ids_by_namespace_uri_resolve_to_the_servers_index_and_back() -> None:
    namespaces = ["http://opcfoundation.org/UA/", "urn:local", "urn:a;b", NAMESPACE_URI]
    for text, expected in [
        (f"nsu={NAMESPACE_URI};s=Execution", "ns=3;s=Execution"),
        (f"nsu={NAMESPACE_URI};i=1234", "ns=3;i=1234"),
        ("nsu=urn:a%3Bb;s=X", "ns=2;s=X"),  # a ';' in the URI is written %3B
        ("ns=2;s=A;B", "ns=2;s=A;B"),
        ("i=2253", "i=2253"),
        (
            "nsu=urn:local;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
        ),
        ("nsu=urn:local;b=AQI=", "ns=1;b=AQI="),
    ]:
        node_id = resolve_node_id("execution", text, namespaces, "opc.tcp://x:4840")
        assert node_id.to_string() == expected, text
        again = resolve_node_id("execution", portable_node_id(node_id, namespaces), namespaces, "opc.tcp://x")
        assert again == node_id
    assert (
        portable_node_id(resolve_node_id("s", "ns=2;s=X", namespaces, ""), namespaces) == "nsu=urn:a%3Bb;s=X"
    )
    with pytest.raises(ReaderError, match=r"signal execution: 'Execution' is not an OPC UA node id"):
        resolve_node_id("execution", "Execution", namespaces, "opc.tcp://x:4840")
