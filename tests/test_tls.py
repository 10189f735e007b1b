"""TLS on both doors: DICOM over TLS (PS3.15 Annex B.9) beside the plain port, and HTTPS.

A test PKI is made with `cryptography`: a CA, a server certificate for
127.0.0.1/localhost, client certificates the CA signed, and a client
certificate with the same common name from another CA, which must be refused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import add_certs_to_session, create_session
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from archive.config import Config, ConfigError, Tls
from archive.tls import certificate_names, hospital_for_certificate, server_context
from gateway.tls import certificate_name, tls_hospital
from tests.conftest import ROOT, Huren, dcmtk, dcmtk_env, free_port, huren_config
from tests.factory import instance, write


@dataclass(frozen=True)
class Pki:
    folder: Path
    # Each name: <name>.pem (certificate) and <name>.key (unencrypted PKCS#8 key) in `folder`.

    def pem(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def der(self, name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.pem(name).read_text())

    def fingerprint(self, name: str) -> str:
        """As `openssl x509 -fingerprint -sha256` prints it: upper-case pairs with colons."""
        digest = hashlib.sha256(self.der(name)).hexdigest().upper()
        return ":".join(digest[i:i + 2] for i in range(0, 64, 2))

    def tls(self, **settings: object) -> dict[str, object]:
        """A `tls` config section serving the server certificate."""
        return {"certificate": str(self.pem("server")), "key": str(self.key("server")), **settings}


def _certificate(folder: Path, name: str, common_name: str, issuer: tuple[x509.Certificate, object] | None,
                 *, ca: bool = False, usage: x509.ObjectIdentifier | None = None,
                 hosts: bool = False) -> tuple[x509.Certificate, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                       critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1")),
        ]), critical=False)
    certificate = builder.sign(issuer_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))
    return certificate, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _certificate(folder, "ca", "Huren Test CA", None, ca=True)
    _certificate(folder, "server", "localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=True)
    _certificate(folder, "client", "CT_A-cert", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _certificate(folder, "client_b", "PACS_B-cert", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_ca = _certificate(folder, "rogue_ca", "Somebody Else's CA", None, ca=True)
    # The same common name as the good client: only the signature tells them apart.
    _certificate(folder, "rogue", "CT_A-cert", rogue_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(folder)


class HttpsHuren(Huren):
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.config['http']['port']}"

    @property
    def tls_port(self) -> int:
        return self.config["dicom"]["tls"]["port"]


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsHuren]:
    """Both doors under TLS, client certificates required on DICOM, in two forked workers.

    No hospitals, so the HTTP door is open on the loopback address (no tokens needed).
    """
    workdir = tmp_path_factory.mktemp("huren")
    config = huren_config(
        workdir, workers=2, hospitals=[],
        dicom={"tls": pki.tls(port=free_port(), client_ca=str(pki.pem("ca")), require_client_certificate=True)},
        http={"tls": pki.tls()},
    )
    huren = HttpsHuren(workdir, config)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SSL_CERT_FILE", str(pki.pem("ca")))  # the fixture's health probe trusts our CA
        huren.start()
    yield huren
    huren.stop()


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki.pem("ca"))


def echo(port: int, *options: str, calling: str = "ECHOSCU") -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("echoscu"), *options, "-aet", calling, "-aec", "HUREN", "127.0.0.1", str(port)],
                          env=dcmtk_env(), capture_output=True, text=True, timeout=60)


def store_over_tls(huren: HttpsHuren, pki: Pki, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), *with_certificate(pki), "-aet", "CT_A", "-aec", "HUREN",
                           "127.0.0.1", str(huren.tls_port), *map(str, files)],
                          env=dcmtk_env(), capture_output=True, text=True, timeout=120)


def with_certificate(pki: Pki, name: str = "client") -> tuple[str, ...]:
    """DCMTK's options for TLS with a client certificate, trusting our CA for the server's."""
    return ("+tls", str(pki.key(name)), str(pki.pem(name)), "+cf", str(pki.pem("ca")))


def log_events(huren: Huren, event: str) -> list[dict]:
    lines = (json.loads(line) for line in huren.log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


# -- DICOM over TLS -------------------------------------------------------------------------------

def test_echo_over_tls_with_a_client_certificate(server: HttpsHuren, pki: Pki) -> None:
    result = echo(server.tls_port, *with_certificate(pki), calling="TLS_ECHO")
    assert result.returncode == 0, result.stderr
    accepted = [line for line in log_events(server, "association accepted") if line["ae"] == "TLS_ECHO"]
    assert accepted and accepted[-1]["certificate"] == "CT_A-cert"


def test_store_over_tls_then_find_it_over_https(server: HttpsHuren, pki: Pki, tmp_path: Path) -> None:
    ds = instance(PatientID="TLS-1")
    path = write(ds, tmp_path / "ct.dcm")
    result = store_over_tls(server, pki, path)
    assert result.returncode == 0, result.stderr
    response = httpx.get(f"{server.dicomweb}/studies", params={"PatientID": "TLS-1"}, verify=trusting(pki))
    assert response.status_code == 200
    [study] = response.json()
    assert study["0020000D"]["Value"] == [ds.StudyInstanceUID]
    assert study["00081190"]["Value"] == [f"{server.dicomweb}/studies/{ds.StudyInstanceUID}"]


def test_certificate_from_another_ca_is_refused_in_the_handshake(server: HttpsHuren, pki: Pki) -> None:
    result = echo(server.tls_port, *with_certificate(pki, "rogue"), calling="ROGUE")
    assert result.returncode != 0
    assert not [line for line in log_events(server, "association accepted") if line["ae"] == "ROGUE"]
    assert any("CERTIFICATE_VERIFY_FAILED" in line["reason"] for line in log_events(server, "TLS handshake failed"))


def test_no_client_certificate_is_refused_when_one_is_required(server: HttpsHuren, pki: Pki) -> None:
    result = echo(server.tls_port, "+tla", "+cf", str(pki.pem("ca")), calling="NOCERT")
    assert result.returncode != 0
    assert not [line for line in log_events(server, "association accepted") if line["ae"] == "NOCERT"]
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in line["reason"]
               for line in log_events(server, "TLS handshake failed"))


def test_plain_association_to_the_tls_port_fails(server: HttpsHuren) -> None:
    result = echo(server.tls_port, calling="PLAIN_TO_TLS")
    assert result.returncode != 0
    assert not [line for line in log_events(server, "association accepted") if line["ae"] == "PLAIN_TO_TLS"]
    assert any("WRONG_VERSION_NUMBER" in line["reason"] for line in log_events(server, "TLS handshake failed"))


def test_the_plain_port_still_works(server: HttpsHuren) -> None:
    result = echo(server.dicom_port, calling="PLAIN")
    assert result.returncode == 0, result.stderr
    [accepted] = [line for line in log_events(server, "association accepted") if line["ae"] == "PLAIN"]
    assert "certificate" not in accepted


def test_a_silent_peer_does_not_hold_up_others(server: HttpsHuren, pki: Pki) -> None:
    # Two connections that never shake hands: one per worker, so each must accept beside them.
    silent = [socket.create_connection(("127.0.0.1", server.tls_port)) for _ in range(2)]
    try:
        result = echo(server.tls_port, *with_certificate(pki), calling="AFTER_SILENT")
        assert result.returncode == 0, result.stderr
    finally:
        for sock in silent:
            sock.close()


# -- HTTPS ----------------------------------------------------------------------------------------

def test_https_health(server: HttpsHuren, pki: Pki) -> None:
    assert httpx.get(f"{server.url}/health", verify=trusting(pki)).status_code == 200
    [listening] = log_events(server, "DICOMweb listening")[:1]
    assert listening["scheme"] == "https"


def test_plain_http_to_the_https_port_fails(server: HttpsHuren) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.config['http']['port']}/health", timeout=5)


def test_dicomweb_client_over_https(server: HttpsHuren, pki: Pki, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these variables override a session's CA bundle.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    ds = instance(PatientID="TLS-2")
    assert store_over_tls(server, pki, write(ds, tmp_path / "ct.dcm")).returncode == 0
    session = add_certs_to_session(create_session(), ca_bundle=str(pki.pem("ca")))
    client = DICOMwebClient(server.dicomweb, session=session)
    [study] = client.search_for_studies(search_filters={"PatientID": "TLS-2"})
    retrieve_url = study["00081190"]["Value"][0]
    assert retrieve_url.startswith("https://")
    assert client.retrieve_study_metadata(ds.StudyInstanceUID)[0]["00080018"]["Value"] == [ds.SOPInstanceUID]


# -- Which hospital a certificate speaks for ------------------------------------------------------

def test_tls_hospital_names_the_hospital_of_a_verified_certificate(pki: Pki) -> None:
    """In-process: a calling AE title no hospital owns, a certificate listed by fingerprint."""
    config = Config(hospitals=[
        {"id": "hosp-a", "name": "Hospital A", "ae_titles": ["CT_A"], "certificates": ["CT_A-cert"]},
        {"id": "hosp-b", "name": "Hospital B", "ae_titles": ["PACS_B"], "certificates": [pki.fingerprint("client_b")]},
    ])
    seen: list[tuple[str | None, str | None]] = []

    def accepted(event: evt.Event) -> None:
        seen.append((tls_hospital(config, event.assoc), certificate_name(event.assoc)))

    scp = AE("HUREN")
    scp.add_supported_context(Verification)
    handlers = [(evt.EVT_ACCEPTED, accepted)]
    context = server_context(Tls(**pki.tls(client_ca=str(pki.pem("ca")))))
    tls_server = scp.start_server(("127.0.0.1", 0), block=False, ssl_context=context, evt_handlers=handlers)
    plain_server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    client = ssl.create_default_context(cafile=pki.pem("ca"))
    client.load_cert_chain(pki.pem("client_b"), pki.key("client_b"))
    scu = AE("SOMEONE")
    scu.add_requested_context(Verification)
    try:
        for port, tls_args in ((tls_server.server_address[1], (client, "localhost")),
                               (plain_server.server_address[1], None)):
            assoc = scu.associate("127.0.0.1", port, ae_title="HUREN", tls_args=tls_args)
            assert assoc.is_established
            assoc.release()
    finally:
        tls_server.shutdown()
        plain_server.shutdown()
    assert seen == [("hosp-b", "PACS_B-cert"), (None, None)]


@pytest.fixture
def mapped(pki: Pki, tmp_path: Path) -> Iterator[Huren]:
    """DICOM over TLS with optional client certificates that name hospitals."""
    config = huren_config(
        tmp_path,
        dicom={"tls": pki.tls(port=free_port(), client_ca=str(pki.pem("ca")))},
        hospitals=[
            {"id": "hosp-a", "name": "Hospital A", "ae_titles": ["CT_A"], "certificates": ["CT_A-cert"]},
            {"id": "hosp-b", "name": "Hospital B", "ae_titles": ["PACS_B"],
             "certificates": [pki.fingerprint("client_b").lower().replace(":", "")]},
        ],
    )
    huren = Huren(tmp_path, config).start()
    yield huren
    huren.stop()


def test_the_certificates_hospital_is_logged(mapped: Huren, pki: Pki) -> None:
    port = mapped.config["dicom"]["tls"]["port"]
    assert echo(port, *with_certificate(pki), calling="CT_A").returncode == 0
    assert echo(port, *with_certificate(pki, "client_b"), calling="PACS_B").returncode == 0
    # Optional: a TLS client without a certificate gets in, as its AE title's hospital.
    assert echo(port, "+tla", "+cf", str(pki.pem("ca")), calling="CT_A").returncode == 0
    accepted = [(line["ae"], line.get("hospital"), line.get("certificate"))
                for line in log_events(mapped, "association accepted")]
    assert accepted == [("CT_A", "hosp-a", "CT_A-cert"), ("PACS_B", "hosp-b", "PACS_B-cert"),
                        ("CT_A", "hosp-a", None)]


def test_certificate_names_and_hospitals(pki: Pki) -> None:
    der = pki.der("client")
    fingerprint = hashlib.sha256(der).hexdigest()
    assert certificate_names(der) == {"CT_A-cert", fingerprint}
    for entry in ("CT_A-cert", fingerprint, fingerprint.upper(), pki.fingerprint("client"),
                  f" {pki.fingerprint('client').lower()} "):
        config = Config(hospitals=[{"id": "h", "name": "H", "certificates": [entry]}])
        assert hospital_for_certificate(config, der).id == "h", entry
    config = Config(hospitals=[{"id": "h", "name": "H", "certificates": ["ct_a-cert", pki.fingerprint("client_b")]}])
    assert hospital_for_certificate(config, der) is None


# -- The server context and bad files -------------------------------------------------------------

def test_server_context_settings(pki: Pki) -> None:
    plain = server_context(Tls(**pki.tls()))
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    ca = str(pki.pem("ca"))
    assert server_context(Tls(**pki.tls(client_ca=ca))).verify_mode == ssl.CERT_OPTIONAL
    assert server_context(Tls(**pki.tls(client_ca=ca, require_client_certificate=True))).verify_mode \
        == ssl.CERT_REQUIRED


def test_server_context_names_the_bad_file(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(serialization.load_pem_private_key(pki.key("server").read_bytes(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))
    server, key = str(pki.pem("server")), str(pki.key("server"))
    cases = [
        ({"certificate": str(tmp_path / "missing.pem"), "key": key}, "missing.pem: cannot read"),
        ({"certificate": str(junk), "key": key}, "junk.pem: not a PEM certificate"),
        ({"certificate": server, "key": str(junk)}, "junk.pem: not a PEM private key"),
        ({"certificate": server, "key": str(pki.key("client"))}, "client.key: does not match the certificate"),
        ({"certificate": server, "key": str(encrypted)}, "encrypted.key: the private key is encrypted"),
        ({"certificate": server, "key": key, "client_ca": str(junk)}, "junk.pem: not a PEM CA certificate"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            server_context(Tls(**settings))


@pytest.mark.parametrize("door", ["http", "dicom"])
def test_a_missing_certificate_stops_serve_and_check_config(tmp_path: Path, pki: Pki, door: str) -> None:
    missing = tmp_path / "nowhere" / "server.pem"
    tls = {"certificate": str(missing), "key": str(pki.key("server"))}
    if door == "dicom":
        tls["port"] = free_port()
    path = tmp_path / "huren.yaml"
    path.write_text(yaml.safe_dump(huren_config(tmp_path, **{door: {"tls": tls}})))
    for command in (["serve", "--config", str(path)], ["check-config", str(path)]):
        result = subprocess.run([sys.executable, "-m", "huren", *command], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"{missing}: cannot read: No such file or directory" in result.stderr
        assert "Traceback" not in result.stderr


# -- HTTPS client certificates ----------------------------------------------------------------------

@pytest.fixture
def certified(pki: Pki, tmp_path: Path) -> Iterator[HttpsHuren]:
    """HTTPS asking for optional client certificates, which name hospitals as on the DICOM door."""
    config = huren_config(
        tmp_path,
        http={"tls": pki.tls(client_ca=str(pki.pem("ca")))},
        hospitals=[
            {"id": "hosp-a", "name": "Hospital A", "ae_titles": ["CT_A"], "certificates": ["CT_A-cert"]},
            {"id": "hosp-b", "name": "Hospital B", "ae_titles": ["PACS_B"],
             "certificates": [pki.fingerprint("client_b")]},
        ],
    )
    huren = HttpsHuren(tmp_path, config)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SSL_CERT_FILE", str(pki.pem("ca")))
        huren.start()
    yield huren
    huren.stop()


def test_a_client_certificate_names_the_hospital_over_https(certified: HttpsHuren, pki: Pki) -> None:
    def caller(certificate: str | None, token: str | None = None) -> httpx.Response:
        context = trusting(pki)
        if certificate:
            context.load_cert_chain(pki.pem(certificate), pki.key(certificate))
        with httpx.Client(verify=context, timeout=30) as c:
            return c.get(certified.url + "/api/recognition", params={"patient_id": "P1", "issuer": "CN-RESIDENT-ID"},
                         headers={"Authorization": f"Bearer {token}"} if token else {})

    assert caller("client").status_code == 200  # CT_A-cert: hosp-a
    assert caller("client_b").status_code == 200  # by fingerprint: hosp-b
    assert caller(None).status_code == 401  # no certificate, no token
    token_a = certified.token("hosp-a")
    assert caller(None, token_a).status_code == 200
    assert caller("client", token_a).status_code == 200
    refused = caller("client_b", token_a)  # a token of hosp-a on hosp-b's certificate
    assert refused.status_code == 401 and "client certificate" in refused.headers["WWW-Authenticate"]
    assert caller("client_b", certified.token(None, admin=True)).status_code == 200
    time.sleep(1.5)  # the audit trail is written in batches
    with sqlite3.connect(certified.workdir / "index.db") as db:
        rows = db.execute("SELECT hospital_id, actor, outcome FROM audit_events WHERE door = 'http' "
                          "AND action = 'query'").fetchall()
    assert ("hosp-a", "certificate:CT_A-cert", "success") in rows
    assert ("hosp-b", "certificate:PACS_B-cert", "success") in rows
