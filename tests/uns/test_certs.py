"""uns/certs.py (`uns make-certs`): the plant CA made once and reused, the broker's certificate with
the names clients use, client certificates, private keys for their owner only; and Python's own TLS
stack accepts the chain for the names in it and refuses it for others."""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from uns.certs import make_certs
from unscli.cli import main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_a_ca_a_server_certificate_with_its_names_and_client_certificates(tmp_path: Path) -> None:
    made = make_certs(tmp_path, server_names=["broker.plant.local", "10.0.4.2"], clients=["dayton.gw-1"])
    assert made.ca_created
    names = sorted(p.name for p in made.files)
    assert names == sorted(
        ["ca.crt", "ca.key", "server.crt", "server.key", "dayton.gw-1.crt", "dayton.gw-1.key"]
    )
    for key in ("ca.key", "server.key", "dayton.gw-1.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600, key
    ca, server, client = (_cert(tmp_path / n) for n in ("ca.crt", "server.crt", "dayton.gw-1.crt"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        assert leaf.issuer == ca.subject
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"mosquitto", "localhost", "broker.plant.local"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.4.2"),
    }
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_the_ca_is_kept_when_run_again(tmp_path: Path) -> None:
    make_certs(tmp_path)
    ca = (tmp_path / "ca.crt").read_bytes()
    again = make_certs(tmp_path, clients=["viewer"], server=False)
    assert not again.ca_created
    assert (tmp_path / "ca.crt").read_bytes() == ca
    assert _cert(tmp_path / "viewer.crt").issuer == _cert(tmp_path / "ca.crt").subject


def test_pythons_tls_verifies_the_chain_for_its_names_only(tmp_path: Path) -> None:
    make_certs(tmp_path, server_names=["broker.plant.local"], key_type="rsa")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))

    def handshake(name: str) -> None:
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        c = client.wrap_bio(c_in, c_out, server_hostname=name)
        s = server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for side, out, other_in in ((c, c_out, s_in), (s, s_out, c_in)):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                other_in.write(out.read())
            if c.version() and s.version():
                return
        raise AssertionError("the handshake did not finish")

    handshake("broker.plant.local")
    handshake("127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake("elsewhere.plant.local")


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a host name nor an IP address"):
        make_certs(tmp_path, server_names=["bad name"])
    with pytest.raises(ValueError, match="client name 'ca'"):
        make_certs(tmp_path, clients=["ca"])
    assert not (tmp_path / "ca.key").exists(), "nothing made"


def test_the_command_lists_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-certs", "--dir", str(tmp_path), "--server-name", "10.0.4.2", "--client", "erp"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'server.crt'}" in out
    assert f"wrote {tmp_path / 'erp.key'}" in out
    assert main(["make-certs", "--dir", str(tmp_path), "--no-server", "--client", "qms"]) == 0
    assert "kept as it was" in capsys.readouterr().out
    assert main(["broker-users"]) == 0
    assert "dayton.edge-machining UNS_MQTT_DAYTON_EDGE_MACHINING_PASSWORD\n" in capsys.readouterr().out
